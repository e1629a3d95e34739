"""Run the example app offline: both emulators in-process, nothing to configure.

With no ``AUTH0_DOMAIN`` and no ``FLASK_KEEN_PROJECT_ID`` (environment or ``.env``), this
starts the bundled Auth0 emulator (login / sign-up form) and Keen emulator on 127.0.0.1 and
points the quickstart app at them. With real settings it runs against the real tenant and
project.

Environment:

* ``PORT`` (default 3000): the app's port on ``localhost``.
* ``EXAMPLE_INSTANCE_PATH`` (default ``example_app/instance``): where the offline demo keeps
  its data (``auth0-emulator.sqlite3``, the tenant's users; ``keen-emulator.sqlite3``, the
  events Keen received; and ``keen_signup.sqlite3``, the extension's outbox and signedUp
  markers), so all three survive restarts and agree with each other.
* ``EXAMPLE_OFFLINE=1``: run offline even when a ``.env`` or the environment has real settings.
"""

from __future__ import annotations

import os
import signal
import sys
import typing as t
from datetime import datetime
from datetime import timezone

from flask import Flask

from flask_keen_signup.testing import Auth0Emulator
from flask_keen_signup.testing import KeenEmulator

from .server import create_app

# The app is served on "localhost" and the emulators on 127.0.0.1: different hosts, so the
# browser keeps their cookies apart even though cookies ignore ports. "localhost" is also the
# host of the callback URL that Auth0's quickstart registers (http://localhost:3000/callback).
APP_HOST = "localhost"
APP_PORT = int(os.environ.get("PORT", "3000"))
DEFAULT_INSTANCE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "instance")


def start_offline_app(
    *,
    app_port: int = APP_PORT,
    instance_path: str | None = None,
    extra: dict[str, t.Any] | None = None,
) -> tuple[Flask, Auth0Emulator, KeenEmulator]:
    """Start both emulators and build the app pointing at them (the caller serves it on
    ``app_port`` and stops the emulators).

    The Auth0 emulator only accepts this app's callback and logout URLs, as a real tenant
    whose Dashboard lists ``http://localhost:<app_port>/callback`` would.
    """
    instance = instance_path or os.environ.get("EXAMPLE_INSTANCE_PATH") or DEFAULT_INSTANCE_PATH
    os.makedirs(instance, exist_ok=True)
    origins = [f"http://{host}:{app_port}" for host in (APP_HOST, "127.0.0.1")]
    auth0 = Auth0Emulator(
        client_id="example-client",
        client_secret="example-secret",
        allowed_callback_urls=[f"{origin}/callback" for origin in origins],
        allowed_logout_urls=[f"{origin}/" for origin in origins],
        # Users survive a restart like Keen's events do: a returning email is the same
        # user_id, so the demo never shows one person as two signups.
        database=os.path.join(instance, "auth0-emulator.sqlite3"),
    )
    keen = KeenEmulator(
        project_id="example-project",
        write_key="example-write-key",
        read_key="example-read-key",
        database=os.path.join(instance, "keen-emulator.sqlite3"),
    )
    auth0.start()
    try:
        keen.start()
    except BaseException:
        auth0.stop()
        raise
    config = {
        "SECRET_KEY": os.environ.get("APP_SECRET_KEY", "offline-demo-not-secret"),
        "AUTH0_DOMAIN": auth0.domain,
        "AUTH0_SCHEME": "http",
        "AUTH0_CLIENT_ID": "example-client",
        "AUTH0_CLIENT_SECRET": "example-secret",
        "KEEN_PROJECT_ID": "example-project",
        "KEEN_WRITE_KEY": "example-write-key",
        "KEEN_READ_KEY": "example-read-key",
        "KEEN_API_URL": keen.url,
        "KEEN_SIGNUP_DATABASE": os.path.join(instance, "keen_signup.sqlite3"),
        # The demo's tenant began empty when the demo first started: nobody older needs
        # migrating, so nobody is told to migrate. SINCE is that first start; the sender
        # looks up created_at through the emulator's machine-to-machine app below, which
        # also lets `flask keen-signup migrate` be rehearsed against the demo tenant.
        "KEEN_SIGNUP_SINCE": _first_start(instance),
        "KEEN_SIGNUP_AUTH0_DOMAIN": auth0.url,
        "KEEN_SIGNUP_AUTH0_CLIENT_ID": auth0.m2m_client_id,
        "KEEN_SIGNUP_AUTH0_CLIENT_SECRET": auth0.m2m_client_secret,
        "EXAMPLE_OFFLINE": True,
        **(extra or {}),
    }
    try:
        return create_app(config), auth0, keen
    except BaseException:
        auth0.stop()
        keen.stop()
        raise


def _first_start(instance: str) -> str:
    """When the demo first ran with this instance folder (UTC, ISO-8601), kept in it."""
    path = os.path.join(instance, "demo-first-start.txt")
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except FileNotFoundError:
        pass
    started = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    with open(path, "w", encoding="ascii") as f:
        f.write(started)
    return started


def _exit_on_sigterm() -> None:
    """SIGTERM stops the demo like Ctrl-C: ``finally`` blocks and exit hooks run, exit code 0.

    Installed before the app is built, so flask-keen-signup's own SIGTERM handler (flush the
    outbox, then chain to the previous handler) chains to this one.
    """

    def handler(signum: int, frame: object) -> None:
        sys.exit(0)

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        pass


def main() -> None:
    if os.environ.get("EXAMPLE_OFFLINE") != "1":
        try:
            from dotenv import find_dotenv
            from dotenv import load_dotenv

            load_dotenv(find_dotenv(usecwd=True))
        except ImportError:  # python-dotenv is optional
            pass
    _exit_on_sigterm()
    real = os.environ.get("AUTH0_DOMAIN") and os.environ.get("FLASK_KEEN_PROJECT_ID")
    if real and os.environ.get("EXAMPLE_OFFLINE") != "1":
        app = create_app()
        print(f" * Using your Auth0 tenant and Keen project: http://{APP_HOST}:{APP_PORT}/")
        app.run(host=APP_HOST, port=APP_PORT, use_reloader=False)
        return
    app, auth0, keen = start_offline_app()
    print(" * Offline demo on the bundled emulators (no Auth0 or Keen account needed)")
    print(f" * Auth0 emulator: {auth0.url}   Keen emulator: {keen.url}")
    print(f" * Open http://{APP_HOST}:{APP_PORT}/ , sign up, then see /signups", flush=True)
    try:
        app.run(host=APP_HOST, port=APP_PORT, use_reloader=False)
    finally:
        auth0.stop()
        keen.stop()
