"""``flask keen-signup status | flush | retry-dead | dead`` through Flask's CLI runner,
against the real Keen and Auth0 emulators and a real SQLite outbox.

``migrate`` has its own file, test_migrate.py."""

from __future__ import annotations

import typing as t

import pytest
from _flow import quickstart_app
from flask import Flask

from flask_keen_signup import KeenSignup
from flask_keen_signup import signup_state
from flask_keen_signup.testing import Auth0Emulator
from flask_keen_signup.testing import KeenEmulator


@pytest.fixture
def app(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, tmp_path: t.Any
) -> t.Iterator[Flask]:
    app, _ = quickstart_app(
        keen_signup_auth0,
        keen_signup_keen,
        str(tmp_path / "cli.sqlite3"),
        KEEN_SIGNUP_AUTH0_DOMAIN=keen_signup_auth0.url,
        KEEN_SIGNUP_AUTH0_CLIENT_ID=keen_signup_auth0.m2m_client_id,
        KEEN_SIGNUP_AUTH0_CLIENT_SECRET=keen_signup_auth0.m2m_client_secret,
        KEEN_SIGNUP_SINCE="2026-11-18T00:00:00Z",
    )
    signup_state(app).sender.stop(timeout=5)  # the CLI drives delivery here
    yield app
    signup_state(app).sender.shutdown(timeout=5)


def queue(app: Flask, *subs: str) -> None:
    signup = signup_state(app)
    with app.test_request_context():
        for sub in subs:
            signup.tracker.track_claims({"sub": sub, "name": sub}, ip=None, user_agent=None)


def test_status_shows_counts_and_circuit(app: Flask) -> None:
    queue(app, "auth0|a", "auth0|b")
    result = app.test_cli_runner().invoke(args=["keen-signup", "status"])
    assert result.exit_code == 0, result.output
    assert "pending:           2" in result.output
    assert "dead:              0" in result.output
    assert "circuit:           closed" in result.output


def test_flush_sends_everything_and_exits_zero(app: Flask, keen_signup_keen: KeenEmulator) -> None:
    queue(app, "auth0|a", "auth0|b", "auth0|c")
    result = app.test_cli_runner().invoke(args=["keen-signup", "flush", "--timeout", "30"])
    assert result.exit_code == 0, result.output
    assert "delivered 3 signup(s); nothing left" in result.output
    assert len(keen_signup_keen.events("signups")) == 3


def test_flush_exits_non_zero_when_keen_is_down(app: Flask, keen_signup_keen: KeenEmulator) -> None:
    queue(app, "auth0|a")
    keen_signup_keen.set_down(True)
    result = app.test_cli_runner().invoke(args=["keen-signup", "flush", "--timeout", "3"])
    assert result.exit_code != 0
    assert "1 signup(s) still queued" in result.output
    assert "demo-write-key" not in result.output
    keen_signup_keen.set_down(False)
    result = app.test_cli_runner().invoke(args=["keen-signup", "flush", "--timeout", "30"])
    assert result.exit_code == 0, result.output
    assert len(keen_signup_keen.events("signups")) == 1


def test_dead_letters_are_listed_and_replayed(app: Flask, keen_signup_keen: KeenEmulator) -> None:
    queue(app, "auth0|poison")
    keen_signup_keen.fail_next(
        50, 400, error_code="InvalidPropertyValueError", message="rejected for the test"
    )
    runner = app.test_cli_runner()
    runner.invoke(args=["keen-signup", "flush", "--timeout", "5"])
    listing = runner.invoke(args=["keen-signup", "dead"])
    assert "auth0|poison" in listing.output and "InvalidPropertyValueError" in listing.output
    status = runner.invoke(args=["keen-signup", "status"])
    assert "dead:              1" in status.output
    keen_signup_keen.clear_faults()
    dead_id = listing.output.split("\t", 1)[0]
    result = runner.invoke(args=["keen-signup", "retry-dead", "--id", dead_id])
    assert result.exit_code == 0 and "moved 1" in result.output
    result = runner.invoke(args=["keen-signup", "flush", "--timeout", "30"])
    assert result.exit_code == 0, result.output
    assert [e["userId"] for e in keen_signup_keen.events("signups")] == ["auth0|poison"]
    bad = runner.invoke(args=["keen-signup", "retry-dead", "--id", "999999"])
    assert bad.exit_code != 0


def test_flush_during_a_whole_outage_is_paced_honest_and_kills_nothing(
    app: Flask, keen_signup_keen: KeenEmulator
) -> None:
    """Issue 16: Keen down for the whole command, all defaults. The command used to try
    every row about once a second, spend KEEN_SIGNUP_MAX_ATTEMPTS in seconds, dead-letter
    all three and print success with exit 0."""
    queue(app, "auth0|a", "auth0|b", "auth0|c")
    keen_signup_keen.set_down(True)
    before = len(keen_signup_keen.request_log)
    result = app.test_cli_runner().invoke(args=["keen-signup", "flush", "--timeout", "12"])
    assert result.exit_code != 0
    assert "delivered 0 signup(s); 3 signup(s) still queued" in result.output
    assert "dead letters" not in result.output and "nothing left" not in result.output
    state = signup_state(app)
    assert state.outbox.stats().dead == 0
    assert state.outbox.pending_count() == 3
    # Paced by the circuit (threshold 3, cool-down from 5 s doubling): a handful of tries
    # in 12 s, not one a second.
    tries = keen_signup_keen.request_log[before:]
    assert len(tries) <= 6, len(tries)
    keen_signup_keen.set_down(False)
    result = app.test_cli_runner().invoke(args=["keen-signup", "flush", "--timeout", "60"])
    assert result.exit_code == 0, result.output
    assert "delivered 3 signup(s); nothing left" in result.output
    assert sorted(e["userId"] for e in keen_signup_keen.events("signups")) == [
        "auth0|a",
        "auth0|b",
        "auth0|c",
    ]


@pytest.mark.parametrize(
    "args",
    [
        ["dead", "--limit", "99999999999999999999"],
        ["dead", "--limit", "0"],
        ["retry-dead", "--id", "99999999999999999999"],
        ["retry-dead", "--id", "-1"],
        ["flush", "--timeout", "1e300"],
        ["flush", "--timeout", "inf"],
        ["flush", "--timeout", "nan"],
        ["flush", "--timeout", "-5"],
    ],
)
def test_every_out_of_range_number_is_a_usage_error(app: Flask, args: list[str]) -> None:
    """Issue 16: these ended in OverflowError tracebacks (or waited forever)."""
    result = app.test_cli_runner().invoke(args=["keen-signup", *args])
    assert result.exit_code == 2, result.output
    assert "Invalid value" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("timeout", [float("inf"), 1e300, float("nan"), -1.0])
def test_signup_flush_takes_any_float_timeout(
    app: Flask, keen_signup_keen: KeenEmulator, timeout: float
) -> None:
    """Issue 16: ``signup.flush(float("inf"))`` raised OverflowError. ``inf`` and huge
    values mean no deadline (the flush still ends once nothing more may be sent now);
    NaN and negative values mean 0 (nothing is waited for)."""
    signup = KeenSignup()  # the app's own extension, reached through app=
    queue(app, "auth0|a")
    left = signup.flush(timeout, app=app)
    if timeout > 0:
        assert left == 0
        assert [e["userId"] for e in keen_signup_keen.events("signups")] == ["auth0|a"]
    else:
        assert left in (0, 1)
