"""The SQLite file deleted, or truncated in place, under a running app (issue 16, item 3).

Through the CLI (``status``, ``dead``, ``retry-dead``, ``flush``) against the Keen emulator
and real SQLite files: what was committed before the damage either reaches Keen afterwards
or is reported, by count, in ``status``, ``health()`` and the log. Never silently gone.
"""

from __future__ import annotations

import logging
import os
import re
import time
import typing as t

import pytest
from _flow import quickstart_app
from _sqlite import open_sqlite
from flask import Flask

from flask_keen_signup import salvage
from flask_keen_signup import signup_state
from flask_keen_signup.database import FILE_CHECK_INTERVAL
from flask_keen_signup.health import health_of
from flask_keen_signup.testing import Auth0Emulator
from flask_keen_signup.testing import KeenEmulator


@pytest.fixture
def app(
    keen_signup_auth0: Auth0Emulator,
    keen_signup_keen: KeenEmulator,
    tmp_path: t.Any,
    monkeypatch: pytest.MonkeyPatch,
) -> t.Iterator[Flask]:
    # Count the rows at every sender round, not every 30 s: the test is shorter than that.
    monkeypatch.setattr(salvage, "INVENTORY_INTERVAL", 0.0)
    app, _ = quickstart_app(keen_signup_auth0, keen_signup_keen, str(tmp_path / "d.sqlite3"))
    signup_state(app).sender.stop(timeout=5)  # the CLI drives delivery here
    yield app
    signup_state(app).sender.shutdown(timeout=5)


def _queue(app: Flask, *subs: str) -> None:
    tracker = signup_state(app).tracker
    with app.test_request_context():
        for sub in subs:
            tracker.track_claims({"sub": sub, "name": sub}, ip=None, user_agent=None)


def _cli(app: Flask, *args: str) -> t.Any:
    return app.test_cli_runner().invoke(args=["keen-signup", *args])


def _dead_letter_and_queue(app: Flask, keen: KeenEmulator) -> None:
    """auth0|poison in the dead letters; auth0|q1 and auth0|q2 queued (Keen down)."""
    _queue(app, "auth0|poison")
    keen.fail_next(50, 400, error_code="InvalidPropertyValueError", message="for the test")
    _cli(app, "flush", "--timeout", "5")
    keen.clear_faults()
    assert "auth0|poison" in _cli(app, "dead").output
    keen.set_down(True)
    _queue(app, "auth0|q1", "auth0|q2")
    assert _cli(app, "flush", "--timeout", "1").exit_code != 0  # claims: counts the rows
    assert signup_state(app).outbox.stats().pending == 2


def _userids(keen: KeenEmulator) -> list[str]:
    return sorted(e["userId"] for e in keen.events("signups"))


def test_a_dead_letter_survives_the_file_deleted_under_the_app(
    app: Flask, keen_signup_keen: KeenEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    keen = keen_signup_keen
    _dead_letter_and_queue(app, keen)
    database = signup_state(app).database.path
    os.remove(database)
    time.sleep(FILE_CHECK_INTERVAL + 0.1)
    caplog.set_level(logging.INFO, logger="flask_keen_signup")

    status = _cli(app, "status")
    assert "deleted under the app" in status.output, status.output
    assert "1 of 1 dead letter(s)" in status.output
    assert "dead:              1" in status.output
    listing = _cli(app, "dead")
    assert "auth0|poison" in listing.output
    keen.set_down(False)
    moved = _cli(app, "retry-dead")
    assert moved.exit_code == 0 and "moved 1" in moved.output, moved.output
    _queue(app, "auth0|after")  # a new row after the copied ones: no id collides
    flushed = _cli(app, "flush", "--timeout", "30")
    assert flushed.exit_code == 0, flushed.output
    assert _userids(keen) == ["auth0|after", "auth0|poison", "auth0|q1", "auth0|q2"]
    _queue(app, "auth0|poison", "auth0|q1")  # their markers survived too: not reported again
    assert signup_state(app).outbox.stats().pending == 0
    assert os.path.exists(database)


def _lost_counts(status: str) -> dict[str, int]:
    match = re.search(r"NOT RECOVERED:\s+(.*)", status)
    if match is None:
        return {}
    counts = {}
    for number, what in re.findall(r"(\d+) (queued event|dead letter|marker)", match.group(1)):
        counts[what] = int(number)
    return counts


@pytest.mark.parametrize("checkpointed", [False, True], ids=["in-wal", "checkpointed"])
def test_a_file_truncated_in_place_loses_nothing_or_says_how_much(
    app: Flask,
    keen_signup_keen: KeenEmulator,
    caplog: pytest.LogCaptureFixture,
    checkpointed: bool,
) -> None:
    keen = keen_signup_keen
    _dead_letter_and_queue(app, keen)
    database = signup_state(app).database.path
    if checkpointed:
        # Every commit copied into the file and the WAL emptied (as the sender's checkpoints
        # do over time): then the truncation cuts pages no WAL frame holds any more.
        with open_sqlite(database) as conn:
            assert conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
    os.truncate(database, 0)
    caplog.set_level(logging.INFO, logger="flask_keen_signup")
    time.sleep(FILE_CHECK_INTERVAL + 0.1)

    status = _cli(app, "status").output
    assert "truncated under the app" in status, status
    lost = _lost_counts(status)
    health = health_of(signup_state(app))
    assert health["database_replaced"]["how"] == "truncated"
    logged = [r.getMessage() for r in caplog.records if "was truncated" in r.getMessage()]
    assert len(logged) == 1
    if lost:  # said loudly: in status, health and the log, by count
        assert health["database_unrecovered"] is not None
        assert "NOT RECOVERED" in logged[0]
        assert all(n >= 0 for n in lost.values())

    keen.set_down(False)
    _cli(app, "retry-dead")
    assert _cli(app, "flush", "--timeout", "30").exit_code == 0
    delivered = _userids(keen)
    # Each of the two queued events and the dead letter reached Keen, or is counted lost.
    queued = sum(1 for u in ("auth0|q1", "auth0|q2") if u in delivered)
    assert queued + lost.get("queued event", 0) == 2, (delivered, status)
    dead = 1 if "auth0|poison" in delivered else 0
    assert dead + lost.get("dead letter", 0) == 1, (delivered, status)
    with open_sqlite(database) as conn:
        markers = conn.execute("SELECT COUNT(*) FROM keen_signup_markers").fetchone()[0]
    assert markers + lost.get("marker", 0) >= 3, (markers, status)
    if not checkpointed:
        assert not lost, f"everything was still in the WAL: {status}"
    else:  # nothing left to read: each kind counted, as of the sender's last round
        assert lost == {"queued event": 2, "dead letter": 1, "marker": 3}, status


@pytest.mark.parametrize("run", range(3))
def test_a_file_truncated_under_a_running_sender_loses_nothing_unsaid(
    keen_signup_auth0: Auth0Emulator,
    keen_signup_keen: KeenEmulator,
    tmp_path: t.Any,
    monkeypatch: pytest.MonkeyPatch,
    run: int,
) -> None:
    """The issue's case (a queued event lost in 1 run of 2): the sender keeps running
    (checkpointing every 0.2 s) and has the events in flight (Keen is slow to answer)
    when the file is truncated."""
    monkeypatch.setattr(salvage, "INVENTORY_INTERVAL", 0.0)
    keen = keen_signup_keen
    app, _ = quickstart_app(keen_signup_auth0, keen, str(tmp_path / f"run{run}.sqlite3"))
    state = signup_state(app)
    try:
        _queue(app, "auth0|running-first")
        assert state.sender.flush(timeout=30) == 0  # rounds ran: checkpoints, an inventory
        keen.add_latency(1.5, count=1)
        users = [f"auth0|running-{run}-{n}" for n in range(5)]
        _queue(app, *users)
        time.sleep(0.5)  # the sender's batch is waiting for Keen's answer
        os.truncate(state.database.path, 0)
        time.sleep(FILE_CHECK_INTERVAL + 0.3)
        _queue(app, f"auth0|running-{run}-after")
        assert state.sender.flush(timeout=30) == 0
        delivered = set(_userids(keen))
        status = _cli(app, "status").output
        assert "truncated under the app" in status, status
        lost = _lost_counts(status)
        missing = [u for u in users if u not in delivered]
        assert len(missing) == lost.get("queued event", 0), (missing, status)
        assert f"auth0|running-{run}-after" in delivered
    finally:
        state.sender.shutdown(timeout=5)
