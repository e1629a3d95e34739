"""No secret in a URL, a log line or an exception message, across a whole life: logins,
failures, retries, delivery, the CLI. Distinctive keys make any leak easy to spot."""

from __future__ import annotations

import logging
import traceback
import typing as t

import pytest
from _flow import login
from _flow import quickstart_app
from flask import Flask

from flask_keen_signup import signals
from flask_keen_signup import signup_state
from flask_keen_signup.exceptions import ConfigurationError
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


# -- issue 16, item 5: keys that cannot be a header, secrets echoed by Keen, URL keys -----

MASTER_KEY = "mk-SECRET-41d7e2"
READ_KEY = "rk-SECRET-0b9e55"
REDIS_PASSWORD = "rd-SECRET-6a2f13"


def _everything_about(exc: BaseException | None) -> str:
    """The exception as a traceback would print it, its whole chain included."""
    if exc is None:
        return ""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


@pytest.mark.parametrize(
    "key", ["KEEN_WRITE_KEY", "KEEN_MASTER_KEY", "KEEN_SIGNUP_AUTH0_CLIENT_SECRET"]
)
@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ("\nline2", "line break"),
        ("\rline2", "line break"),
        ("\x00nul", "U+0000"),
        ("\x1b[31m", "U+001B"),
        ("\u2028sep", "outside Latin-1"),
        ("漢字", "outside Latin-1"),
    ],
)
def test_a_key_that_cannot_be_a_header_is_refused_at_init_app_unquoted(
    key: str,
    bad: str,
    problem: str,
    keen: KeenEmulator,
    auth0: Auth0Emulator,
    tmp_path: t.Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``http.client`` answered a write key with a newline with ``Invalid header value
    b'<the key>'`` in an ERROR line, a logged traceback and ``forget``'s crash."""
    caplog.set_level(logging.DEBUG)
    value = f"WRITEKEY-{key[-6:]}-c0ffee{bad}tail-SECRET"
    config = {
        "KEEN_MASTER_KEY": MASTER_KEY,
        "KEEN_SIGNUP_AUTH0_DOMAIN": auth0.url,
        "KEEN_SIGNUP_AUTH0_CLIENT_ID": auth0.m2m_client_id,
        "KEEN_SIGNUP_AUTH0_CLIENT_SECRET": M2M_SECRET,
        key: value,
    }
    with pytest.raises(ConfigurationError) as raised:
        quickstart_app(auth0, keen, str(tmp_path / "s.sqlite3"), **config)
    message = str(raised.value)
    assert key in message and problem in message
    shown = _everything_about(raised.value) + caplog.text
    for piece in ("WRITEKEY", "c0ffee", "tail-SECRET", bad.strip()):
        assert piece not in shown
    assert not keen.request_log, "nothing was sent"


@pytest.mark.parametrize("bad", ["\n", "\u2028"])
def test_the_clients_refuse_such_a_key_unquoted(bad: str, keen: KeenEmulator) -> None:
    from flask_keen_signup.keen import KeenClient
    from flask_keen_signup.keen_admin import KeenAdminClient

    key = f"KEY-c0ffee{bad}SECRET"  # (a traceback shows the lines below, not this one)
    for make in (KeenClient, KeenAdminClient):
        with pytest.raises(ValueError, match="cannot be sent in an HTTP header") as raised:
            make(keen.project_id, key, api_url=keen.url)
        assert "c0ffee" not in _everything_about(raised.value)


@pytest.fixture
def erasing_app(
    keen: KeenEmulator, auth0: Auth0Emulator, tmp_path: t.Any
) -> t.Iterator[Flask]:
    """An app holding every kind of secret, with a master key for ``forget``."""
    app, _ = quickstart_app(
        auth0,
        keen,
        str(tmp_path / "s.sqlite3"),
        KEEN_MASTER_KEY=MASTER_KEY,
        KEEN_READ_KEY=READ_KEY,
        KEEN_SIGNUP_STORE="auth0",
        KEEN_SIGNUP_AUTH0_DOMAIN=auth0.url,
        KEEN_SIGNUP_AUTH0_CLIENT_ID=auth0.m2m_client_id,
        KEEN_SIGNUP_AUTH0_CLIENT_SECRET=M2M_SECRET,
        # not the store here, but a configured secret all the same
        KEEN_SIGNUP_REDIS_URL=f"redis://:{REDIS_PASSWORD}@127.0.0.1:1/0",
    )
    yield app
    signup_state(app).sender.shutdown(timeout=5)


def test_forget_masks_every_configured_secret_a_keen_401_echoes(
    erasing_app: Flask, keen: KeenEmulator, auth0: Auth0Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """A 401 body quoting the *write* key, answering a request made with the master key,
    was printed as is by ``forget``: every configured secret is masked, whichever key the
    request carried."""
    caplog.set_level(logging.DEBUG)
    login(erasing_app.test_client(), auth0, "a@example.com")
    sub = auth0.users()[0]["user_id"]
    # The Management API token the app holds (its cached one: the emulator logs none)
    # is a secret too.
    store = signup_state(erasing_app).store
    tokens = [store.client._tokens.get()[0]]  # type: ignore[attr-defined]
    secrets = (WRITE_KEY, MASTER_KEY, READ_KEY, M2M_SECRET, CLIENT_SECRET, REDIS_PASSWORD)
    echoed = " ".join((*secrets, tokens[-1]))
    runner = erasing_app.test_cli_runner()
    outputs = []
    for fault in (
        {"body": f"<html><p>401 Unauthorized: {echoed}</p></html>"},
        {"error_code": "InvalidApiKeyError", "message": f"bad key: {echoed}"},
    ):
        keen.fail_next(1, 401, **fault)
        result = runner.invoke(args=["keen-signup", "forget", sub])
        assert result.exit_code == 1, result.output
        assert "the delete failed" in result.output and "***" in result.output
        outputs.append(result.output + _everything_about(result.exception))
    ours = [  # the emulators' own server-side logs (Authlib's "Issue token ...") left out
        caplog.handler.format(r)
        for r in caplog.records
        if not r.name.startswith(("authlib", "werkzeug", "flask_keen_signup.testing"))
    ]
    everything = "\n".join([*outputs, *ours])
    for secret in (*secrets, *tokens):
        assert secret not in everything


@pytest.mark.parametrize(
    ("key", "value", "store"),
    [
        ("KEEN_API_URL", "https://api.keen.io:wk-SECRET-8c1f0e", "sqlite"),
        ("KEEN_API_URL", "https://api.keen.io/3.0 wk-SECRET-8c1f0e", "sqlite"),
        ("KEEN_API_URL", "ftp://wk-SECRET-8c1f0e", "sqlite"),
        ("KEEN_SIGNUP_REDIS_URL", "redis://:pw@127.0.0.1:wk-SECRET-8c1f0e/0", "redis"),
        ("KEEN_SIGNUP_REDIS_URL", "redis://127.0.0.1/0?socket_timeout=wk-SECRET-8c1f0e", "redis"),
        ("KEEN_SIGNUP_DATABASE_URL", "postgresql://u:pw@db:wk-SECRET-8c1f0e/app", "postgres"),
        ("KEEN_SIGNUP_AUTH0_DOMAIN", "tenant.auth0.com:wk-SECRET-8c1f0e", "sqlite"),
        ("KEEN_SIGNUP_AUTH0_DOMAIN", "https://u:wk-SECRET-8c1f0e@tenant.auth0.com", "sqlite"),
        ("KEEN_SIGNUP_AUTH0_DOMAIN", "tenant.auth0.com/wk-SECRET-8c1f0e", "sqlite"),
    ],
)
def test_config_errors_of_url_keys_name_the_key_not_the_value(
    key: str, value: str, store: str, keen: KeenEmulator, auth0: Auth0Emulator, tmp_path: t.Any
) -> None:
    """``KEEN_API_URL=https://api.keen.io:KEY`` was answered ``invalid host or port:
    '…KEY'``: a URL key may hold a password or a pasted key, so its value is never shown."""
    with pytest.raises(ConfigurationError) as raised:
        quickstart_app(
            auth0, keen, str(tmp_path / "s.sqlite3"), KEEN_SIGNUP_STORE=store, **{key: value}
        )
    assert key in str(raised.value)
    assert "SECRET" not in _everything_about(raised.value)
