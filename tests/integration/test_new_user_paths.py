"""The one way a new user is recorded, on real SQLite files.

A login this process does not remember reads the ledger; a user found absent fires
``signup_detected``, gets an event built (the app's ``@event_properties`` callback runs
here, outside the write transaction), and is claimed and queued in one transaction. It
must record the signup exactly once and never leave a half-recorded one. (A second,
claim-first path was removed: bench/README.md has the measurement.)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import threading
import typing as t

import pytest
from _sqlite import open_sqlite
from flask import Flask

from flask_keen_signup import KeenSignup
from flask_keen_signup import signals
from flask_keen_signup import signup_state
from flask_keen_signup.tracker import TrackOutcome

NOW = dt.datetime(2026, 11, 26, 10, 0, 0, 123456, tzinfo=dt.timezone.utc)
CLAIMS = {
    "sub": "google-oauth2|1234",
    "name": "Ada Lovelace",
    "email": "ada@example.com",
    "https://example.com/created_at": "2026-11-20T08:00:00Z",
}


@pytest.fixture
def make_app(tmp_path: t.Any) -> t.Iterator[t.Callable[..., tuple[Flask, KeenSignup]]]:
    built: list[Flask] = []

    def make(database: str | None = None, **config: t.Any) -> tuple[Flask, KeenSignup]:
        app = Flask(f"paths{len(built)}")
        app.config.update(
            {
                "KEEN_PROJECT_ID": "p",
                "KEEN_WRITE_KEY": "w",
                "KEEN_API_URL": "http://127.0.0.1:9",  # nothing listens: rows stay queued
                "KEEN_SIGNUP_DATABASE": database or str(tmp_path / f"app{len(built)}.sqlite3"),
                "KEEN_SIGNUP_CLAIMS": ["name"],
                "KEEN_SIGNUP_PROPAGATE_ERRORS": False,
                **config,
            }
        )
        signup = KeenSignup(app)
        state = signup_state(app)
        state.sender.stop(timeout=5)  # keep the queued rows for inspection
        wait_for_known_users_load()  # so that it cannot land in the middle of a test
        state.tracker.clock = lambda: NOW
        built.append(app)
        return app, signup

    yield make
    for app in built:
        signup_state(app).sender.shutdown(timeout=1)


def wait_for_known_users_load() -> None:
    """Join the threads ``init_app`` starts to load the ledger's users."""
    for thread in threading.enumerate():
        if thread.name == "flask-keen-signup-known-users":
            thread.join(10)


def rows(app: Flask) -> list[tuple[str, str]]:
    """(user_id, body) of every outbox row, read through a connection of our own."""
    path = signup_state(app).database.path
    with open_sqlite(path) as conn:
        return conn.execute("SELECT user_id, body FROM keen_signup_outbox ORDER BY id").fetchall()


def markers(app: Flask) -> list[tuple[str, str]]:
    path = signup_state(app).database.path
    with open_sqlite(path) as conn:
        return conn.execute("SELECT user_id, state FROM keen_signup_markers").fetchall()


def track(app: Flask, signup: KeenSignup, claims: t.Mapping[str, t.Any]) -> TrackOutcome | None:
    with app.test_request_context(
        "/callback", environ_base={"REMOTE_ADDR": "203.0.113.7"}, headers={"User-Agent": "UA/1"}
    ):
        return signup.track_claims(claims)


@contextlib.contextmanager
def receiving(signal: t.Any, app: Flask) -> t.Iterator[list[str]]:
    """The user ids ``signal`` is sent for by ``app`` while the block runs."""
    got: list[str] = []

    def receiver(sender: Flask, user_id: str, **extra: t.Any) -> None:
        got.append(user_id)

    with signal.connected_to(receiver, app):
        yield got


def counting_reads(app: Flask, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every ledger read."""
    tracker = signup_state(app).tracker
    reads: list[str] = []
    lookup = tracker.claimer.lookup

    def counting(user_id: str) -> t.Any:
        reads.append(user_id)
        return lookup(user_id)

    monkeypatch.setattr(tracker.claimer, "lookup", counting)
    return reads


def test_a_new_user_is_read_then_claimed_and_queued_once(
    make_app: t.Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, signup = make_app()
    reads = counting_reads(app, monkeypatch)
    with receiving(signals.signup_detected, app) as detected:
        assert track(app, signup, CLAIMS) is TrackOutcome.QUEUED
        assert track(app, signup, CLAIMS) is TrackOutcome.RETURNING  # from memory
    assert reads == [CLAIMS["sub"]] and detected == [CLAIMS["sub"]]
    ((user_id, body),) = rows(app)
    assert user_id == CLAIMS["sub"]
    assert '"timestamp":"2026-11-20T08:00:00.000Z"' in body  # created_at from the claim
    assert '"ip":"203.0.113.7"' in body and '"user_agent":"UA/1"' in body
    assert '"connection":"google-oauth2"' in body and "email" not in body
    assert markers(app) == [(CLAIMS["sub"], "pending")]


def test_a_returning_user_from_another_process_is_not_queued_again(
    make_app: t.Any, tmp_path: t.Any
) -> None:
    database = str(tmp_path / "shared.sqlite3")
    first, first_signup = make_app(database)
    second, second_signup = make_app(database)  # another worker: same file, empty memory
    assert track(first, first_signup, CLAIMS) is TrackOutcome.QUEUED
    with receiving(signals.signup_recorded, second) as recorded:
        assert track(second, second_signup, CLAIMS) is TrackOutcome.RETURNING
    assert recorded == []
    assert CLAIMS["sub"] in signup_state(second).tracker.known
    assert len(rows(first)) == 1 and markers(first) == [(CLAIMS["sub"], "pending")]


@pytest.mark.parametrize(
    ("sub", "message"),
    [
        ("auth0|\ud800x", "claim 'sub' is not valid Unicode text"),
        ("auth0|" + "x" * 10_000, "claim 'sub' is longer than Keen's 9999 chars"),
        ("  ", "claim 'sub' is empty"),
        (42, "claim 'sub' must be a string, got int"),
    ],
)
def test_an_unusable_sub_is_refused_before_anything_is_stored(
    make_app: t.Any, caplog: pytest.LogCaptureFixture, sub: object, message: str
) -> None:
    app, signup = make_app()
    with caplog.at_level(logging.ERROR, logger="flask_keen_signup"):
        assert track(app, signup, {"sub": sub, "name": "N"}) is None  # the login goes on
    assert f"signup not tracked: {message}" in caplog.text
    assert "Traceback" not in caplog.text and "x" * 100 not in caplog.text
    assert markers(app) == [] and rows(app) == []


def test_a_failure_after_the_claim_leaves_no_marker_behind(
    make_app: t.Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The claim is won, then building the event fails (simulated: real claims that pass
    the ``sub`` checks always build): the whole transaction rolls back, so the user is not
    marked as reported when nothing was queued, and the next login tries again."""
    import flask_keen_signup.tracker as tracker_module

    app, signup = make_app()
    real_build = tracker_module.build_signup_event

    def broken(*args: t.Any, **kwargs: t.Any) -> t.Any:
        raise RuntimeError("simulated bug in the builder")

    monkeypatch.setattr(tracker_module, "build_signup_event", broken)
    with caplog.at_level(logging.ERROR, logger="flask_keen_signup"):
        assert track(app, signup, CLAIMS) is None
    assert "not recorded" in caplog.text and CLAIMS["sub"] in caplog.text
    assert markers(app) == [] and rows(app) == []
    assert CLAIMS["sub"] not in signup_state(app).tracker.known

    monkeypatch.setattr(tracker_module, "build_signup_event", real_build)
    assert track(app, signup, CLAIMS) is TrackOutcome.QUEUED
    assert len(rows(app)) == 1


def test_an_event_properties_callback_runs_outside_the_write_lock(
    make_app: t.Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, signup = make_app()
    reads = counting_reads(app, monkeypatch)
    seen: list[bool] = []

    @signup.event_properties
    def plan(claims: t.Mapping[str, t.Any], request: t.Any) -> dict[str, t.Any]:
        # The app's code runs outside the write transaction: the file is not locked.
        database = signup_state(app).database.path
        with open_sqlite(database, timeout=0) as other:
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
        seen.append(True)
        return {"plan": "pro"}

    assert track(app, signup, CLAIMS) is TrackOutcome.QUEUED
    assert track(app, signup, {**CLAIMS, "sub": "auth0|second"}) is TrackOutcome.QUEUED
    assert reads == [CLAIMS["sub"], "auth0|second"] and seen == [True, True]
    assert all('"plan":"pro"' in body for _, body in rows(app))


def test_concurrent_first_logins_of_one_user_queue_one_event(make_app: t.Any) -> None:
    app, signup = make_app()
    outcomes: list[TrackOutcome | None] = []
    barrier = threading.Barrier(8)

    def login() -> None:
        barrier.wait()
        outcomes.append(track(app, signup, CLAIMS))

    threads = [threading.Thread(target=login) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(o.value for o in outcomes if o) == ["queued"] + ["returning"] * 7
    assert len(rows(app)) == 1


def test_since_is_honoured_on_the_new_user_path(
    make_app: t.Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, signup = make_app(
        KEEN_SIGNUP_SINCE="2026-11-18T00:00:00Z",
        KEEN_SIGNUP_CREATED_AT_CLAIM="https://example.com/created_at",
    )
    reads = counting_reads(app, monkeypatch)
    old = {**CLAIMS, "sub": "auth0|old", "https://example.com/created_at": "2026-11-01T00:00:00Z"}
    assert track(app, signup, old) is TrackOutcome.MARKED_ONLY
    assert track(app, signup, CLAIMS) is TrackOutcome.QUEUED  # created 2026-11-20
    assert reads == ["auth0|old", CLAIMS["sub"]]
    ((user_id, body),) = rows(app)
    assert user_id == CLAIMS["sub"] and '"timestamp":"2026-11-20T08:00:00.000Z"' in body
    assert sorted(markers(app)) == [("auth0|old", "confirmed"), (CLAIMS["sub"], "pending")]


def _claim_at(app: Flask, user_id: str, claimed_at: float, state: str = "pending") -> None:
    path = signup_state(app).database.path
    with open_sqlite(path) as conn:
        conn.execute(
            "INSERT INTO keen_signup_markers (collection, user_id, state, claimed_at) "
            "VALUES ('signups', ?, ?, ?)",
            (user_id, state, claimed_at),
        )


def test_a_restarted_app_knows_the_ledger_users_without_reading_per_login(
    make_app: t.Any, tmp_path: t.Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = str(tmp_path / "restart.sqlite3")
    first, first_signup = make_app(database)
    assert track(first, first_signup, CLAIMS) is TrackOutcome.QUEUED

    second, second_signup = make_app(database)  # the restart: a new process, empty memory
    tracker = signup_state(second).tracker
    assert CLAIMS["sub"] in tracker.known  # loaded at start (make_app waits for it)
    reads = counting_reads(second, monkeypatch)
    claims: list[str] = []
    claim_in = tracker.claimer.claim_in

    def counting_claim(conn: t.Any, user_id: str, **kwargs: t.Any) -> bool:
        claims.append(user_id)
        return claim_in(conn, user_id, **kwargs)

    monkeypatch.setattr(tracker.claimer, "claim_in", counting_claim)
    assert track(second, second_signup, CLAIMS) is TrackOutcome.RETURNING
    assert reads == [] and claims == [], "answered from memory: no read, no claim"


def test_the_load_takes_the_newest_permanent_markers_up_to_the_bound(make_app: t.Any) -> None:
    from flask_keen_signup.tracker import KnownUsers

    app, _ = make_app()
    tracker = signup_state(app).tracker
    for n, at in enumerate([100.0, 300.0, 200.0, 400.0]):
        _claim_at(app, f"auth0|u{n}", at)
    _claim_at(app, "auth0|confirmed", 50.0, state="confirmed")
    tracker.known = KnownUsers(maximum=3)
    tracker.known.add("auth0|seen-by-a-request")
    assert tracker.load_known_users() == 2
    assert all(u in tracker.known for u in ("auth0|u3", "auth0|u1", "auth0|seen-by-a-request"))
    assert len(tracker.known) == 3

    sync_app, _ = make_app(KEEN_SIGNUP_DELIVERY="sync")
    sync_tracker = signup_state(sync_app).tracker
    _claim_at(sync_app, "auth0|pending", 100.0)
    _claim_at(sync_app, "auth0|done", 100.0, state="confirmed")
    sync_tracker.known = KnownUsers()
    assert sync_tracker.load_known_users() == 1, "in sync mode a pending claim may be stale"
    assert "auth0|done" in sync_tracker.known and "auth0|pending" not in sync_tracker.known


def test_a_ledger_that_cannot_be_read_at_start_is_a_warning(
    make_app: t.Any, caplog: pytest.LogCaptureFixture
) -> None:
    from flask_keen_signup.assembly import load_known_users as _load_known_users

    app, _ = make_app()
    state = signup_state(app)
    state.database._close_all()
    for suffix in ("-wal", "-shm"):  # else SQLite may find page 1 in the WAL
        if os.path.exists(state.database.path + suffix):
            os.remove(state.database.path + suffix)
    size = os.path.getsize(state.database.path)
    with open(state.database.path, "wb") as broken:  # no smaller: not a truncation
        broken.write(b"not a database" * (size // 14 + 100))
    with caplog.at_level(logging.WARNING, logger="flask_keen_signup"):
        loader = threading.Thread(target=_load_known_users, args=(state.tracker,))
        loader.start()
        loader.join(10)
    assert "could not load the known users from the ledger" in caplog.text
