"""No secret in a URL, a log line or an exception message, across a whole life: logins,
failures, retries, delivery, the CLI. Distinctive keys make any leak easy to spot."""

from __future__ import annotations

import logging
import typing as t

import pytest
from _flow import login
from _flow import quickstart_app

from flask_keen_signup import signals
from flask_keen_signup import signup_state
from flask_keen_signup.testing import Auth0Emulator
from flask_keen_signup.testing import KeenEmulator

WRITE_KEY = "wk-SECRET-8c1f0e"
CLIENT_SECRET = "cs-SECRET-77aa41"
M2M_SECRET = "m2m-SECRET-5d3b9c"


@pytest.fixture
def keen() -> t.Iterator[KeenEmulator]:
    with KeenEmulator(write_key=WRITE_KEY) as emulator:
        yield emulator


@pytest.fixture
def auth0() -> t.Iterator[Auth0Emulator]:
    with Auth0Emulator(client_secret=CLIENT_SECRET, m2m_client_secret=M2M_SECRET) as emulator:
        yield emulator


@pytest.mark.parametrize("delivery", ["background", "sync"])
def test_no_secret_leaks_through_a_troubled_life(
    delivery: str,
    keen: KeenEmulator,
    auth0: Auth0Emulator,
    tmp_path: t.Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, _ = quickstart_app(
        auth0,
        keen,
        str(tmp_path / "s.sqlite3"),
        KEEN_SIGNUP_DELIVERY=delivery,
        KEEN_SIGNUP_STORE="auth0",
        KEEN_SIGNUP_AUTH0_DOMAIN=auth0.url,
        KEEN_SIGNUP_AUTH0_CLIENT_ID=auth0.m2m_client_id,
        KEEN_SIGNUP_AUTH0_CLIENT_SECRET=M2M_SECRET,
        KEEN_SIGNUP_MAX_ATTEMPTS=2,
    )
    state = signup_state(app)
    errors: list[str] = []

    def on_failed(sender: t.Any, error: BaseException, **extra: t.Any) -> None:
        errors.append(f"{error!s} {error!r}")

    signals.signup_failed.connect(on_failed, app)
    caplog.set_level(logging.DEBUG)
    tokens: list[str] = []
    try:
        keen.fail_next(3, 503, retry_after=1)
        response = login(app.test_client(), auth0, "a@example.com")
        tokens.append(str(response.headers.get("Set-Cookie")))
        keen.set_down(True)
        login(app.test_client(), auth0, "b@example.com")
        state.sender.flush(timeout=5)
        keen.set_down(False)
        keen.fail_next(1, 401)
        state.sender.flush(timeout=5)
        auth0.rate_limit_next(2, reset_in=1)
        login(app.test_client(), auth0, "c@example.com")
        for _ in range(3):
            state.sender.flush(timeout=10)
        result = app.test_cli_runner().invoke(args=["keen-signup", "status"])
        status_text = result.output
    finally:
        signals.signup_failed.disconnect(on_failed)
        state.sender.shutdown(timeout=5)
    everything = "\n".join([caplog.text, status_text, *errors])
    for secret in (WRITE_KEY, CLIENT_SECRET, M2M_SECRET):
        assert secret not in everything
    for entry in keen.request_log:
        assert WRITE_KEY not in entry.path
        assert WRITE_KEY not in str(entry.query)
        assert entry.headers.get("Authorization") in (None, WRITE_KEY)
    for entry in auth0.request_log:
        assert M2M_SECRET not in entry.path and M2M_SECRET not in str(entry.query)
    assert errors, "the troubled life did produce failures to inspect"
    ours = "\n".join(
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("flask_keen_signup")
        and not record.name.startswith("flask_keen_signup.testing")
    )
    assert "Bearer" not in ours and "access_token" not in ours, "no token in our logs"
    assert "id_token" not in ours
