"""pytest plugin: emulator fixtures for your own test suite.

Installed with the package (entry point ``pytest11``), so these fixtures are available in
any project that has ``flask-keen-signup`` installed:

``keen_signup_keen``
    A running :class:`~flask_keen_signup.testing.KeenEmulator` (function scope). Point your
    app at it with ``KEEN_API_URL = keen_signup_keen.url`` and the emulator's keys.
``keen_signup_auth0``
    A running :class:`~flask_keen_signup.testing.Auth0Emulator` (function scope).
``keen_signup_config``
    A dict of config keys that point an app at both emulators (sync-free defaults).

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
