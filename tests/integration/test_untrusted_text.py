"""Untrusted text in CLI output and log lines (issue 10, item 6).

A ``sub``, a name or Keen's error message with a newline must not forge a row of
``flask keen-signup dead`` or a log line; an ANSI escape sequence or a bidi override must
not reach the operator's terminal. Real app, real SQLite file, real Keen emulator.
"""

from __future__ import annotations

import logging
import typing as t

import pytest
from _flow import quickstart_app
from flask import Flask

from flask_keen_signup import signup_state
from flask_keen_signup._text import printable
from flask_keen_signup._text import safe_repr
from flask_keen_signup.stores import MarkerState
from flask_keen_signup.stores import MarkerStore
from flask_keen_signup.testing import Auth0Emulator
from flask_keen_signup.testing import KeenEmulator

#: Subs an attacker may choose (Auth0 database connections let users pick much of a
#: profile; custom social connections pass ids through).
HOSTILE = [
    "auth0|a\n9999\tauth0|forged\tInvalidEventError\tforged row",
    "auth0|b\r\x1b[2K\x1b[31mred\x1b[0m",
    "auth0|c\x1b]0;window title\x07\x1b]52;c;Y2xpcGJvYXJk\x07",
    "auth0|d\u202egnp.exe\u2066\u200b\u2028",
    "auth0|e" + "x" * 5000,
]
#: What must never reach a terminal or a log line.
FORBIDDEN = ["\x1b", "\r", "\x07", "\u202e", "\u2066", "\u200b", "\u2028"]


def _assert_one_safe_line(text: str) -> None:
    for bad in FORBIDDEN:
        assert bad not in text, (bad, text[:200])
    assert "\n" not in text


@pytest.mark.parametrize("sub", HOSTILE)
def test_printable_is_one_safe_bounded_line(sub: str) -> None:
    shown = printable(sub, limit=120)
    _assert_one_safe_line(shown)
    assert len(shown) <= 120
    assert shown.startswith("auth0|")


def test_printable_shows_what_it_escapes() -> None:
    assert printable("a\nb") == "a\\nb"
    assert printable("\x1b[31m") == "\\x1b[31m"
    assert printable("x\u202ey") == "x\\u202ey"
    assert printable("back\\slash") == "back\\\\slash"
    assert printable("Ada Lovelace, 漢字, é, 😀") == "Ada Lovelace, 漢字, é, 😀"
    long = printable("y" * 1000, limit=50)
    assert len(long) == 50 and long.endswith("…(1000 chars)")
    assert printable(None) == "None"
    assert safe_repr(10**5000).startswith("<an integer of")


@pytest.fixture
def app(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, tmp_path: t.Any
) -> t.Iterator[Flask]:
    app, _ = quickstart_app(keen_signup_auth0, keen_signup_keen, str(tmp_path / "t.sqlite3"))
    signup_state(app).sender.stop(timeout=5)  # the CLI drives delivery here
    yield app
    signup_state(app).sender.shutdown(timeout=5)


def _queue(app: Flask, *subs: str) -> None:
    signup = signup_state(app)
    with app.test_request_context():
        for sub in subs:
            signup.tracker.track_claims({"sub": sub, "name": sub[:50]}, ip=None, user_agent=None)


def test_dead_prints_one_escaped_row_per_letter(
    app: Flask, keen_signup_keen: KeenEmulator
) -> None:
    _queue(app, *HOSTILE)
    keen_signup_keen.fail_next(
        100,
        400,
        error_code="InvalidPropertyValueError\x1b[31m",
        message="refused\nFAKE\tROW \x1b]0;pwned\x07 \u202eevil",
    )
    runner = app.test_cli_runner()
    runner.invoke(args=["keen-signup", "flush", "--timeout", "20"])
    result = runner.invoke(args=["keen-signup", "dead"])
    assert result.exit_code == 0, result.output
    rows = result.output.splitlines()
    assert len(rows) == len(HOSTILE), rows
    for row in rows:
        _assert_one_safe_line(row)
        assert len(row.split("\t")) == 4, row
        assert len(row) < 1000
    shown = {row.split("\t")[1] for row in rows}
    assert "auth0|a\\n9999\\tauth0|forged\\tInvalidEventError\\tforged row" in shown

    status = runner.invoke(args=["keen-signup", "status"])
    for line in status.output.splitlines():
        _assert_one_safe_line(line)


def test_keens_error_text_is_escaped_in_the_senders_log(
    app: Flask, keen_signup_keen: KeenEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="flask_keen_signup")
    _queue(app, "auth0|z")
    keen_signup_keen.fail_next(
        20, 503, message="down\n2026-12-01 ERROR forged log line \x1b[31m\u202e"
    )
    runner = app.test_cli_runner()
    runner.invoke(args=["keen-signup", "flush", "--timeout", "3"])
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("flask_keen_signup")]
    assert any("Keen" in m and "forged log line" in m for m in messages), messages
    for message in messages:
        _assert_one_safe_line(message)
    status = runner.invoke(args=["keen-signup", "status"])
    assert "forged log line" in status.output
    for line in status.output.splitlines():
        _assert_one_safe_line(line)


class _BrokenStore(MarkerStore):
    """A custom store with a bug: every call raises something that is not a StoreError, so
    the login cannot spool the signup either and logs it as not recorded."""

    def lookup(self, user_id: str) -> MarkerState | None:
        raise RuntimeError("cannot read the marker ledger: disk I/O error")

    def claim(self, user_id: str) -> bool:
        raise RuntimeError("cannot claim: disk I/O error")

    def confirm(self, user_id: str) -> None:
        raise RuntimeError("cannot confirm: disk I/O error")

    def release(self, user_id: str) -> None:
        raise RuntimeError("cannot release: disk I/O error")


@pytest.mark.parametrize("sub", HOSTILE)
def test_the_not_recorded_line_escapes_the_sub(
    keen_signup_auth0: Auth0Emulator,
    keen_signup_keen: KeenEmulator,
    tmp_path: t.Any,
    caplog: pytest.LogCaptureFixture,
    sub: str,
) -> None:
    app, signup = quickstart_app(
        keen_signup_auth0,
        keen_signup_keen,
        str(tmp_path / "t.sqlite3"),
        KEEN_SIGNUP_STORE=_BrokenStore(),
        KEEN_SIGNUP_PROPAGATE_ERRORS=False,
    )
    assert signup is not None
    caplog.set_level(logging.ERROR, logger="flask_keen_signup")
    with app.test_request_context():
        assert signup.track_claims({"sub": sub}) is None
    (record,) = [r for r in caplog.records if "not recorded" in r.getMessage()]
    message = record.getMessage()
    _assert_one_safe_line(message)
    assert message.startswith("signup of auth0|")
    assert len(message) < 1000
    signup_state(app).sender.shutdown(timeout=5)
