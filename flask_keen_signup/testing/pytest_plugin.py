"""pytest plugin: emulator fixtures for your own test suite.

Installed with the package (entry point ``pytest11``), so these fixtures are available in
any project that has ``flask-keen-signup`` installed:

``keen_signup_keen``
    A running :class:`~flask_keen_signup.testing.KeenEmulator` (function scope). Point your
    app at it with ``KEEN_API_URL = keen_signup_keen.url`` and the emulator's keys.
``keen_signup_auth0``
    A running :class:`~flask_keen_signup.testing.Auth0Emulator` (function scope).
``keen_signup_config``
    A dict of config keys that point an app at both emulators: the Keen keys and URL, a
    database in ``tmp_path``, and ``AUTH0_CLIENT_ID`` / ``AUTH0_CLIENT_SECRET`` /
    ``AUTH0_SERVER_METADATA_URL``, which Authlib reads for a client registered as
    ``"auth0"``. ``app.config.update(keen_signup_config)`` before ``oauth.register``.
``keen_signup_login``
    ``keen_signup_login(client, email, password="password", name=None)``: sign up or log in
    through your app's ``/login`` and the Auth0 emulator's form, over real HTTP. Returns
    your callback's response.
``keen_signup_deliver``
    ``keen_signup_deliver(app)``: send everything queued now; fails if anything is left.
``keen_signup_environ``
    Sets the environment that Auth0's quickstart reads at import (``AUTH0_DOMAIN``,
    ``AUTH0_CLIENT_ID``, ``AUTH0_CLIENT_SECRET``, ``APP_SECRET_KEY``) and the ``FLASK_KEEN_*``
    variables that ``app.config.from_prefixed_env()`` turns into this extension's keys, all
    pointing at the emulators; returns what it set. The Auth0 emulator then serves HTTPS
    (the quickstart writes ``https://{AUTH0_DOMAIN}/...``) with a throwaway CA that
    ``REQUESTS_CA_BUNDLE`` makes ``requests`` trust for this test.
``keen_signup_import``
    ``keen_signup_import("server")``: import your app module *after* that environment is
    set, afresh for each test (a module-level app reads its settings once, at import).

Fixture names carry the ``keen_signup_`` prefix because plugin fixtures are global.
"""

from __future__ import annotations

import importlib
import sys
import typing as t

import pytest

if t.TYPE_CHECKING:  # pragma: no cover
    from .auth0 import Auth0Emulator
    from .keen import KeenEmulator


@pytest.fixture
def keen_signup_keen() -> t.Iterator[KeenEmulator]:
    """A Keen emulator on a free port of 127.0.0.1, stopped after the test."""
    from .keen import KeenEmulator

    with KeenEmulator() as emulator:
        yield emulator


@pytest.fixture
def keen_signup_auth0(request: pytest.FixtureRequest) -> t.Iterator[Auth0Emulator]:
    """An Auth0 emulator on a free port of 127.0.0.1, stopped after the test.

    It serves HTTPS when the test uses :func:`keen_signup_environ` (an app written the
    quickstart's way builds ``https://`` URLs itself), plain HTTP otherwise.
    """
    from .auth0 import Auth0Emulator

    with Auth0Emulator(tls="keen_signup_environ" in request.fixturenames) as emulator:
        yield emulator


@pytest.fixture
def keen_signup_config(
    keen_signup_keen: KeenEmulator, keen_signup_auth0: Auth0Emulator, tmp_path: t.Any
) -> dict[str, t.Any]:
    """Config that points an app (and its Authlib ``auth0`` client) at both emulators."""
    return {
        "KEEN_PROJECT_ID": keen_signup_keen.project_id,
        "KEEN_WRITE_KEY": keen_signup_keen.write_key,
        "KEEN_READ_KEY": keen_signup_keen.read_key,
        "KEEN_API_URL": keen_signup_keen.url,
        "KEEN_SIGNUP_DATABASE": str(tmp_path / "keen_signup.sqlite3"),
        "KEEN_SIGNUP_AUTH0_DOMAIN": keen_signup_auth0.url,
        "KEEN_SIGNUP_AUTH0_CLIENT_ID": keen_signup_auth0.m2m_client_id,
        "KEEN_SIGNUP_AUTH0_CLIENT_SECRET": keen_signup_auth0.m2m_client_secret,
        "AUTH0_CLIENT_ID": keen_signup_auth0.client_id,
        "AUTH0_CLIENT_SECRET": keen_signup_auth0.client_secret,
        "AUTH0_SERVER_METADATA_URL": keen_signup_auth0.server_metadata_url,
    }


@pytest.fixture
def keen_signup_login() -> t.Callable[..., t.Any]:
    """Log in through the Auth0 emulator: see :func:`flask_keen_signup.testing.flow.login`."""
    from .flow import login

    return login


@pytest.fixture
def keen_signup_deliver() -> t.Callable[..., None]:
    """Flush an app's outbox: see :func:`flask_keen_signup.testing.flow.deliver`."""
    from .flow import deliver

    return deliver


@pytest.fixture
def keen_signup_environ(
    keen_signup_keen: KeenEmulator,
    keen_signup_auth0: Auth0Emulator,
    tmp_path: t.Any,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, str]:
    """The environment Auth0's quickstart (plus ``from_prefixed_env()``) reads, pointed at
    the emulators for this test; undone after it."""
    environ = {
        "AUTH0_DOMAIN": keen_signup_auth0.domain,
        "AUTH0_CLIENT_ID": keen_signup_auth0.client_id,
        "AUTH0_CLIENT_SECRET": keen_signup_auth0.client_secret,
        "APP_SECRET_KEY": "keen-signup-test-secret",
        "REQUESTS_CA_BUNDLE": str(keen_signup_auth0.ca_bundle),
        "FLASK_KEEN_PROJECT_ID": keen_signup_keen.project_id,
        "FLASK_KEEN_WRITE_KEY": keen_signup_keen.write_key,
        "FLASK_KEEN_READ_KEY": keen_signup_keen.read_key,
        "FLASK_KEEN_API_URL": keen_signup_keen.url,
        "FLASK_KEEN_SIGNUP_DATABASE": str(tmp_path / "keen_signup.sqlite3"),
        "FLASK_KEEN_SIGNUP_AUTH0_DOMAIN": keen_signup_auth0.url,
        "FLASK_KEEN_SIGNUP_AUTH0_CLIENT_ID": keen_signup_auth0.m2m_client_id,
        "FLASK_KEEN_SIGNUP_AUTH0_CLIENT_SECRET": keen_signup_auth0.m2m_client_secret,
    }
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    return environ


@pytest.fixture
def keen_signup_import(
    keen_signup_environ: dict[str, str],
) -> t.Iterator[t.Callable[[str], t.Any]]:
    """``keen_signup_import("server")``: import an app module with the emulators'
    environment set, afresh; the module is forgotten again after the test."""
    imported: list[str] = []

    def import_fresh(name: str) -> t.Any:
        sys.modules.pop(name, None)
        imported.append(name)
        return importlib.import_module(name)

    yield import_fresh
    for name in imported:
        module = sys.modules.pop(name, None)
        app = getattr(module, "app", None)
        if app is not None and "keen_signup" in getattr(app, "extensions", {}):
            from ..state import signup_state

            signup_state(app).sender.stop()
