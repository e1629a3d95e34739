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

Fixture names carry the ``keen_signup_`` prefix because plugin fixtures are global.
"""

from __future__ import annotations

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
def keen_signup_auth0() -> t.Iterator[Auth0Emulator]:
    """An Auth0 emulator on a free port of 127.0.0.1, stopped after the test."""
    from .auth0 import Auth0Emulator

    with Auth0Emulator() as emulator:
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
