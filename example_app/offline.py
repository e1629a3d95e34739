"""Run the example app offline: both emulators in-process, nothing to configure.

With no ``AUTH0_DOMAIN`` and no ``KEEN_PROJECT_ID`` (environment or ``.env``), this starts
the bundled Auth0 emulator (login / sign-up form) and Keen emulator (events kept in
``instance/keen-emulator.sqlite3`` so they survive restarts) on 127.0.0.1 and points the
quickstart app at them. With real settings it runs against the real tenant and project.
"""

from __future__ import annotations

import os
import typing as t

from flask import Flask

from flask_keen_signup.testing import Auth0Emulator
from flask_keen_signup.testing import KeenEmulator

from .server import create_app

APP_HOST = "localhost"  # the emulators listen on 127.0.0.1: separate cookie jars
APP_PORT = int(os.environ.get("PORT", "3000"))


def start_offline_app(
    *,
    app_port: int = APP_PORT,
    instance_path: str | None = None,
    extra: dict[str, t.Any] | None = None,
) -> tuple[Flask, Auth0Emulator, KeenEmulator]:
    """Start both emulators and build the app pointing at them (the caller serves it)."""
    instance = instance_path or os.path.join(os.path.dirname(__file__), "instance")
    os.makedirs(instance, exist_ok=True)
    auth0 = Auth0Emulator(client_id="example-client", client_secret="example-secret")
    keen = KeenEmulator(
        project_id="example-project",
        write_key="example-write-key",
        read_key="example-read-key",
        database=os.path.join(instance, "keen-emulator.sqlite3"),
    )
    auth0.start()
    keen.start()
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
        "EXAMPLE_OFFLINE": True,
        **(extra or {}),
    }
    return create_app(config), auth0, keen


def main() -> None:
    try:
        from dotenv import find_dotenv
        from dotenv import load_dotenv

        load_dotenv(find_dotenv(usecwd=True))
    except ImportError:  # python-dotenv is optional
        pass
    if os.environ.get("AUTH0_DOMAIN") and os.environ.get("FLASK_KEEN_PROJECT_ID"):
        app = create_app()
        print(f" * Using your Auth0 tenant and Keen project: http://{APP_HOST}:{APP_PORT}")
        app.run(host=APP_HOST, port=APP_PORT)
        return
    app, auth0, keen = start_offline_app()
    print(" * Offline demo on the bundled emulators (no Auth0 or Keen account needed)")
    print(f" * Auth0 emulator: {auth0.url}   Keen emulator: {keen.url}")
    print(f" * Open http://{APP_HOST}:{APP_PORT}/ , sign up, then see /signups")
    try:
        app.run(host=APP_HOST, port=APP_PORT, use_reloader=False)
    finally:
        auth0.stop()
        keen.stop()
