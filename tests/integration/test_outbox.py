"""The outbox contract: SQLiteOutbox and MemoryOutbox pass the same tests."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time
import typing as t

import pytest
from _postgres import POSTGRES_VARIANTS
from _sqlite import open_sqlite

from flask_keen_signup.database import Database
from flask_keen_signup.delivery import MemoryOutbox
from flask_keen_signup.delivery import Outbox
from flask_keen_signup.delivery import QueuedEvent
from flask_keen_signup.delivery.sqlite_outbox import SQLiteOutbox
from flask_keen_signup.stores.sqlite import SQLiteStore

LEASE = 1000.0


def event(n: int, collection: str = "signups") -> QueuedEvent:
    uid = f"auth0|user{n}"
    token = f"{n:064x}"
    body = {"userId": uid, "name": f"Ünïcode {n}", "keen": {"uniqueness_token": token}}
    return QueuedEvent(collection, uid, token, body)


@pytest.fixture(params=["sqlite", "memory", *POSTGRES_VARIANTS])
def outbox(request: pytest.FixtureRequest, tmp_path: t.Any) -> t.Iterator[Outbox]:
    if request.param == "sqlite":
        box: Outbox = SQLiteOutbox(Database(str(tmp_path / "outbox.sqlite3")))
    elif request.param in POSTGRES_VARIANTS:  # direct, or through PgBouncer
        from flask_keen_signup.delivery.postgres_outbox import PostgresOutbox

        box = PostgresOutbox(request.getfixturevalue(POSTGRES_VARIANTS[request.param]))
    else:
        box = MemoryOutbox()
    yield box
    box.close()


def test_enqueue_then_claim_returns_rows_oldest_first_with_body(outbox: Outbox) -> None:
    ids = [outbox.enqueue(event(n), now=1000.0 + n) for n in range(3)]
    rows = outbox.claim_due(10, now=2000.0, lease_seconds=LEASE, owner="a")
    assert [r.id for r in rows] == ids
    first = rows[0]
    assert first.collection == "signups"
    assert first.user_id == "auth0|user0"
    assert first.uniqueness_token == f"{0:064x}"
    assert first.body == event(0).body
    assert " " not in first.body_json.replace("Ünïcode 0", "")  # compact JSON
    assert first.attempts == 1
    assert first.created_at == 1000.0
    assert first.state == "pending"


def test_claim_respects_limit_and_due_time(outbox: Outbox) -> None:
    for n in range(5):
        outbox.enqueue(event(n), now=100.0)
    outbox.enqueue(event(9), now=500.0)
    assert len(outbox.claim_due(3, now=200.0, lease_seconds=LEASE, owner="a")) == 3
    assert len(outbox.claim_due(10, now=200.0, lease_seconds=LEASE, owner="a")) == 2
    assert outbox.claim_due(10, now=200.0, lease_seconds=LEASE, owner="a") == []
    assert [r.user_id for r in outbox.claim_due(10, now=500.0, lease_seconds=LEASE, owner="a")] == [
        "auth0|user9"
    ]


def test_leased_rows_are_invisible_until_the_lease_expires(outbox: Outbox) -> None:
    outbox.enqueue(event(1), now=100.0)
    (row,) = outbox.claim_due(10, now=100.0, lease_seconds=10, owner="a")
    assert outbox.claim_due(10, now=105.0, lease_seconds=10, owner="b") == []
    stats = outbox.stats(now=105.0)
    assert (stats.pending, stats.due, stats.in_flight) == (1, 0, 1)
    # The owner died: after the lease runs out another owner gets it, and it counts as a
    # probable resend because the first claim never recorded an outcome.
    (again,) = outbox.claim_due(10, now=111.0, lease_seconds=10, owner="b")
    assert again.id == row.id
    assert again.attempts == 2
    assert outbox.stats(now=111.0).resends == 1


def test_expire_leases_of_orphans(outbox: Outbox) -> None:
    outbox.enqueue(event(1), now=100.0)
    outbox.enqueue(event(2), now=100.0)
    outbox.claim_due(1, now=100.0, lease_seconds=1000, owner="dead")
    outbox.claim_due(1, now=100.0, lease_seconds=1000, owner="alive")
    assert outbox.expire_leases(lambda owner: owner == "dead") == 1
    rows = outbox.claim_due(10, now=101.0, lease_seconds=10, owner="new")
    assert [r.user_id for r in rows] == ["auth0|user1"]
    assert outbox.stats(now=101.0).resends == 1


def test_mark_delivered(outbox: Outbox) -> None:
    for n in range(3):
        outbox.enqueue(event(n), now=100.0)
    rows = outbox.claim_due(10, now=100.0, lease_seconds=LEASE, owner="a")
    outbox.mark_delivered([r.id for r in rows[:2]], now=101.0)
    stats = outbox.stats(now=200.0)
    assert (stats.pending, stats.delivered, stats.dead) == (1, 2, 0)
    # Marking twice changes nothing.
    outbox.mark_delivered([rows[0].id])
    assert outbox.stats(now=200.0).delivered == 2
    assert outbox.claim_due(10, now=1500.0, lease_seconds=LEASE, owner="a")[0].id == rows[2].id


def test_mark_retry_reschedules_and_records_error(outbox: Outbox) -> None:
    outbox.enqueue(event(1), now=100.0)
    (row,) = outbox.claim_due(10, now=100.0, lease_seconds=LEASE, owner="a")
    outbox.mark_retry(row.id, next_attempt_at=150.0, error="Keen answered 503")
    assert outbox.claim_due(10, now=149.0, lease_seconds=LEASE, owner="a") == []
    stats = outbox.stats(now=149.0)
    assert (stats.pending, stats.due, stats.in_flight) == (1, 0, 0)
    assert stats.last_error == "Keen answered 503"
    assert stats.resends == 0
    (again,) = outbox.claim_due(10, now=150.0, lease_seconds=LEASE, owner="a")
    assert again.attempts == 2
    assert again.last_error == "Keen answered 503"


def test_flush_claims_backed_off_rows_once(outbox: Outbox) -> None:
    outbox.enqueue(event(1), now=100.0)
    outbox.enqueue(event(2), now=100.0)
    (row, other) = outbox.claim_due(10, now=100.0, lease_seconds=LEASE, owner="a")
    outbox.mark_retry(row.id, next_attempt_at=10_000.0, error="x")
    # other is still leased by "a": a flush by "b" must not steal it.
    rows = outbox.claim_due(10, now=110.0, lease_seconds=LEASE, owner="b", flush_since=105.0)
    assert [r.id for r in rows] == [row.id]
    outbox.mark_retry(row.id, next_attempt_at=10_000.0, error="x")
    # Attempted since the flush started: not again in the same flush.
    assert outbox.claim_due(10, now=111.0, lease_seconds=LEASE, owner="b", flush_since=105.0) == []
    assert other.id != row.id


def test_release_gives_rows_back_without_counting_an_attempt(outbox: Outbox) -> None:
    outbox.enqueue(event(1), now=100.0)
    (row,) = outbox.claim_due(10, now=100.0, lease_seconds=LEASE, owner="a")
    outbox.release([row.id], now=101.0)
    (again,) = outbox.claim_due(10, now=101.0, lease_seconds=LEASE, owner="b")
    assert again.attempts == 1
    assert outbox.stats(now=101.0).resends == 0


def test_dead_letters_and_retry_dead(outbox: Outbox) -> None:
    for n in range(3):
        outbox.enqueue(event(n), now=100.0)
    rows = outbox.claim_due(10, now=100.0, lease_seconds=LEASE, owner="a")
    outbox.mark_dead(
        rows[0].id,
        reason="InvalidPropertyNameError: bad.name",
        error_code="InvalidPropertyNameError",
        now=102.0,
    )
    outbox.mark_dead_many([(rows[1].id, "gave up after 3 attempts: 503", None)], now=103.0)
    dead = outbox.dead_letters()
    assert [d.id for d in dead] == [rows[0].id, rows[1].id]
    assert dead[0].error_code == "InvalidPropertyNameError"
    assert dead[0].reason.startswith("InvalidPropertyNameError")
    assert dead[0].body == event(0).body
    assert dead[0].attempts == 1
    assert dead[0].died_at == 102.0
    assert dead[1].error_code is None
    stats = outbox.stats(now=104.0)
    assert (stats.pending, stats.dead) == (1, 2)
    # A dead row cannot be marked again.
    outbox.mark_delivered([rows[0].id])
    assert outbox.stats(now=104.0).delivered == 0

    assert outbox.retry_dead([rows[0].id], now=200.0) == 1
    assert [d.id for d in outbox.dead_letters()] == [rows[1].id]
    assert outbox.retry_dead(now=200.0) == 1
    assert outbox.dead_letters() == []
    back = outbox.claim_due(10, now=200.0, lease_seconds=LEASE, owner="a")
    assert sorted(r.id for r in back) == sorted([rows[0].id, rows[1].id])
    assert all(r.attempts == 1 for r in back)
    assert outbox.retry_dead([], now=200.0) == 0


def test_skipped_and_confirming(outbox: Outbox) -> None:
    for n in range(3):
        outbox.enqueue(event(n), now=100.0)
    a, b, c = outbox.claim_due(10, now=100.0, lease_seconds=LEASE, owner="a")
    outbox.mark_skipped({a.id: "already marked in app_metadata"})
    outbox.mark_confirming([b.id], next_attempt_at=150.0, error="Auth0 answered 429")
    stats = outbox.stats(now=120.0)
    assert (stats.pending, stats.skipped, stats.delivered) == (2, 1, 0)
    assert outbox.claim_due(10, now=120.0, lease_seconds=LEASE, owner="a") == []
    (confirming,) = outbox.claim_due(10, now=150.0, lease_seconds=LEASE, owner="a")
    assert confirming.id == b.id
    assert confirming.state == "confirming"
    assert confirming.attempts == 1  # its own budget
    outbox.mark_delivered([b.id, c.id])
    assert outbox.stats(now=200.0).delivered == 2
    assert outbox.pending_count() == 0


def test_prune_delivered(outbox: Outbox) -> None:
    for n in range(3):
        outbox.enqueue(event(n), now=100.0)
    a, b, c = outbox.claim_due(10, now=100.0, lease_seconds=LEASE, owner="a")
    outbox.mark_delivered([a.id], now=100.0)
    outbox.mark_skipped({b.id: "old"}, now=300.0)
    assert outbox.prune_delivered(100.0, now=350.0) == 1
    assert outbox.prune_delivered(0.0, now=350.0) == 1
    stats = outbox.stats(now=350.0)
    assert (stats.pending, stats.delivered, stats.skipped) == (1, 1, 1)


def test_stats_oldest_pending_age(outbox: Outbox) -> None:
    assert outbox.stats(now=100.0).oldest_pending_age is None
    outbox.enqueue(event(1), now=100.0)
    outbox.enqueue(event(2), now=150.0)
    assert outbox.stats(now=160.0).oldest_pending_age == pytest.approx(60.0)


def test_two_threads_never_claim_the_same_row(outbox: Outbox) -> None:
    total = 400
    for n in range(total):
        outbox.enqueue(event(n))
    claimed: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    start = threading.Barrier(len(claimed))

    def worker(owner: str) -> None:
        start.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rows = outbox.claim_due(7, now=time.time(), lease_seconds=LEASE, owner=owner)
            if not rows:
                return
            claimed[owner].extend(r.id for r in rows)
            outbox.mark_delivered([r.id for r in rows])

    threads = [threading.Thread(target=worker, args=(o,)) for o in claimed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    everything = [i for ids in claimed.values() for i in ids]
    assert len(everything) == total
    assert len(set(everything)) == total
    assert outbox.stats().delivered == total


CLAIMER = textwrap.dedent(
    """
    import json, sys, time
    from flask_keen_signup.database import Database
    from flask_keen_signup.delivery.sqlite_outbox import SQLiteOutbox

    box = SQLiteOutbox(Database(sys.argv[1]))
    owner = sys.argv[2]
    while not __import__("os").path.exists(sys.argv[3]):
        time.sleep(0.005)
    got = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = box.claim_due(5, now=time.time(), lease_seconds=300, owner=owner)
        if not rows:
            break
        got.extend(r.id for r in rows)
        box.mark_delivered([r.id for r in rows])
    print(json.dumps(got))
    """
)


@pytest.mark.slow
def test_two_processes_never_claim_the_same_row(tmp_path: t.Any) -> None:
    path = str(tmp_path / "shared.sqlite3")
    box = SQLiteOutbox(Database(path))
    total = 600
    for n in range(total):
        box.enqueue(event(n))
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, path, f"proc{i}", str(go)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    go.touch()
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        results.append(json.loads(out))
    everything = [i for ids in results for i in ids]
    assert len(everything) == total
    assert len(set(everything)) == total
    assert box.stats().delivered == total


def test_enqueue_in_shares_the_ledger_transaction(tmp_path: t.Any) -> None:
    db = Database(str(tmp_path / "app.sqlite3"))
    ledger = SQLiteStore(db, "signups")
    box = SQLiteOutbox(db)

    class Boom(Exception):
        pass

    with pytest.raises(Boom), db.transaction() as conn:
        assert ledger.claim_in(conn, "auth0|user1")
        box.enqueue_in(conn, event(1))
        raise Boom
    # Rolled back together: no marker, no queued event.
    assert ledger.lookup("auth0|user1") is None
    assert box.pending_count() == 0

    for _ in range(2):
        with db.transaction() as conn:
            if ledger.claim_in(conn, "auth0|user1"):
                box.enqueue_in(conn, event(1))
    assert ledger.lookup("auth0|user1") is not None
    assert box.pending_count() == 1


def test_database_file_is_private(tmp_path: t.Any) -> None:
    path = str(tmp_path / "private" / "keen.sqlite3")
    box = SQLiteOutbox(Database(path))
    box.enqueue(event(1))
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            assert stat.S_IMODE(os.stat(path + suffix).st_mode) == 0o600, suffix


def test_keep_delivered_false_deletes_rows_but_counts(tmp_path: t.Any) -> None:
    for box in (
        SQLiteOutbox(Database(str(tmp_path / "k.sqlite3")), keep_delivered=False),
        MemoryOutbox(keep_delivered=False),
    ):
        box.enqueue(event(1))
        rows = box.claim_due(10, now=time.time() + 1, lease_seconds=LEASE, owner="a")
        box.mark_delivered([r.id for r in rows])
        assert box.stats().delivered == 1
        assert box.prune_delivered(0.0) == 0


def test_outbox_survives_reopening(tmp_path: t.Any) -> None:
    path = str(tmp_path / "reopen.sqlite3")
    first = SQLiteOutbox(Database(path))
    first.enqueue(event(1))
    first.close()
    second = SQLiteOutbox(Database(path))
    rows = second.claim_due(10, now=time.time() + 1, lease_seconds=LEASE, owner="a")
    assert [r.user_id for r in rows] == ["auth0|user1"]


def test_a_queued_event_is_serialised_once_when_it_is_made() -> None:
    """Compact JSON, computed before any outbox takes its write lock; a body that is not
    JSON fails there, before anything is written."""
    event = QueuedEvent("signups", "auth0|a", "t" * 64, {"userId": "auth0|a", "name": "Zoë"})
    assert event.body_json == '{"userId":"auth0|a","name":"Zoë"}'
    assert json.loads(event.body_json) == event.body
    with pytest.raises(ValueError, match="JSON"):
        QueuedEvent("signups", "auth0|b", "t" * 64, {"n": float("nan")})
    with pytest.raises(TypeError, match="not JSON serializable"):
        QueuedEvent("signups", "auth0|c", "t" * 64, {"when": object()})


def _table_ids(box: SQLiteOutbox) -> list[int]:
    with box.database.reading() as conn:
        return [r[0] for r in conn.execute("SELECT id FROM keen_signup_outbox ORDER BY id")]


@pytest.mark.parametrize("keep_delivered", [True, False])
@pytest.mark.parametrize("finish", ["delivered", "dead", "pruned"])
def test_row_ids_are_never_reused(tmp_path: t.Any, keep_delivered: bool, finish: str) -> None:
    """A sender that lost its lease may still record an outcome by row id, and dead letters
    keep their row's id: a new signup must never get the id of a finished row, even the
    newest one (the table has no AUTOINCREMENT: the newest row is never deleted)."""
    box = SQLiteOutbox(Database(str(tmp_path / "ids.sqlite3")), keep_delivered=keep_delivered)
    box.enqueue(event(1))
    box.enqueue(event(2))
    rows = box.claim_due(10, now=time.time() + 1, lease_seconds=LEASE, owner="b")
    newest = max(r.id for r in rows)
    if finish == "dead":
        box.mark_dead_many([(r.id, "refused", "InvalidEventError") for r in rows])
    else:
        box.mark_delivered([r.id for r in rows])
    if finish == "pruned":
        box.prune_delivered(0.0, now=time.time() + 10)
    assert box.pending_count() == 0
    assert box.claim_due(10, now=time.time() + 1000, lease_seconds=LEASE, owner="b") == []

    new_id = box.enqueue(event(3))
    assert new_id > newest
    # A late outcome from a sender that had lost the lease on ``newest`` changes nothing.
    box.mark_delivered([newest])
    box.mark_dead_many([(newest, "late", None)])
    assert box.pending_count() == 1
    (fresh,) = box.claim_due(10, now=time.time() + 1, lease_seconds=LEASE, owner="c")
    assert (fresh.id, fresh.user_id) == (new_id, "auth0|user3")
    if finish == "dead":
        assert sorted(d.id for d in box.dead_letters()) == sorted(r.id for r in rows)
    else:
        assert box.stats().delivered == 2


def test_the_newest_dead_letter_can_be_retried(tmp_path: t.Any) -> None:
    box = SQLiteOutbox(Database(str(tmp_path / "retry.sqlite3")))
    row_id = box.enqueue(event(1))
    box.claim_due(10, now=time.time() + 1, lease_seconds=LEASE, owner="b")
    box.mark_dead_many([(row_id, "refused", None)])
    with box.database.reading() as conn:  # the newest row's id is kept by a blank placeholder
        placeholder = conn.execute(
            "SELECT id, state, user_id, body FROM keen_signup_outbox"
        ).fetchall()
    assert placeholder == [(row_id, "skipped", "", "")]
    assert box.pending_count() == 0 and box.stats().skipped == 0
    assert box.retry_dead() == 1
    (row,) = box.claim_due(10, now=time.time() + 1, lease_seconds=LEASE, owner="b")
    assert (row.id, row.user_id, row.body) == (row_id, "auth0|user1", event(1).body)


def test_without_keeping_delivered_rows_only_the_newest_stays(tmp_path: t.Any) -> None:
    box = SQLiteOutbox(Database(str(tmp_path / "sweep.sqlite3")), keep_delivered=False)
    ids = []
    for n in range(3):
        ids.append(box.enqueue(event(n)))
        rows = box.claim_due(10, now=time.time() + 1, lease_seconds=LEASE, owner="b")
        box.mark_delivered([r.id for r in rows])
        assert _table_ids(box) == [ids[-1]]  # kept (finished) until a newer row exists
    assert ids == sorted(set(ids)) and box.stats().delivered == 3


def test_a_file_made_with_autoincrement_keeps_working(tmp_path: t.Any) -> None:
    """Files made by earlier versions have ``id ... AUTOINCREMENT``; nothing migrates them."""
    from flask_keen_signup.delivery import sqlite_outbox

    path = str(tmp_path / "old.sqlite3")
    old_schema = sqlite_outbox.SCHEMA.replace(
        "id               INTEGER PRIMARY KEY,\n    collection",
        "id               INTEGER PRIMARY KEY AUTOINCREMENT,\n    collection",
        1,
    )
    assert old_schema != sqlite_outbox.SCHEMA
    with open_sqlite(path) as conn:
        conn.executescript(old_schema)
    box = SQLiteOutbox(Database(path), keep_delivered=False)
    ids = [box.enqueue(event(n)) for n in range(3)]
    rows = box.claim_due(10, now=time.time() + 1, lease_seconds=LEASE, owner="b")
    box.mark_delivered([ids[0], ids[2]])
    box.mark_dead_many([(ids[1], "refused", None)])
    assert box.enqueue(event(3)) > ids[2]
    assert box.pending_count() == 1 and box.stats().delivered == 2 and len(rows) == 3
    with box.database.reading() as conn:
        (sql,) = conn.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'keen_signup_outbox'"
        ).fetchone()
    assert "AUTOINCREMENT" in sql


def test_bodies_are_serialised_as_compact_json() -> None:
    from flask_keen_signup.delivery import dumps_body

    body = {
        "userId": "auth0|a",
        "name": 'Zoë \u2028 "q" \\ \x00',
        "n": [1, 2.5, None, True, 2**70],
        "keen": {"timestamp": "2026-11-26T10:00:00.000Z"},
    }
    expected = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    assert dumps_body(body) == expected
    assert dumps_body(dict(body)) == expected
    with pytest.raises(ValueError):
        dumps_body({"n": float("inf")})
    cyclic: dict[str, t.Any] = {}
    cyclic["self"] = cyclic
    with pytest.raises((RecursionError, ValueError)):
        dumps_body(cyclic)


def test_first_failed_at_is_the_first_failure_until_a_replay(outbox: Outbox) -> None:
    """KEEN_SIGNUP_RETRY_FOR counts from here (issue 16): set by the first retry, kept by
    later ones, cleared when a dead letter is replayed."""
    outbox.enqueue(event(1), now=100.0)
    (row,) = outbox.claim_due(10, now=100.0, lease_seconds=LEASE, owner="a")
    assert row.first_failed_at is None
    outbox.mark_retry(row.id, next_attempt_at=150.0, error="503", now=120.0)
    (row,) = outbox.claim_due(10, now=150.0, lease_seconds=LEASE, owner="a")
    assert row.first_failed_at == 120.0
    outbox.mark_retry(row.id, next_attempt_at=200.0, error="503", now=170.0)
    (row,) = outbox.claim_due(10, now=200.0, lease_seconds=LEASE, owner="a")
    assert row.first_failed_at == 120.0
    outbox.mark_dead(row.id, reason="gave up", error_code=None, now=210.0)
    assert outbox.retry_dead(now=300.0) == 1
    (row,) = outbox.claim_due(10, now=300.0, lease_seconds=LEASE, owner="a")
    assert row.first_failed_at is None


#: keen_signup_outbox as releases before first_failed_at made it.
_OLD_OUTBOX = """
CREATE TABLE keen_signup_outbox (
    id INTEGER PRIMARY KEY, collection TEXT NOT NULL, user_id TEXT NOT NULL,
    uniqueness_token TEXT NOT NULL, body TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'confirming', 'delivered', 'skipped')),
    attempts INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL, lease_owner TEXT, last_attempt_at REAL,
    last_error TEXT, reclaimed INTEGER NOT NULL DEFAULT 0, done_at REAL
);
INSERT INTO keen_signup_outbox (collection, user_id, uniqueness_token, body, attempts,
    created_at, next_attempt_at, last_error)
VALUES ('signups', 'auth0|old', 'tok-old', '{"userId":"auth0|old"}', 7, 1.0, 50.0, '503');
"""


def test_an_sqlite_file_from_an_earlier_release_gains_first_failed_at(tmp_path: t.Any) -> None:
    path = str(tmp_path / "old.sqlite3")
    with open_sqlite(path) as conn:
        conn.executescript(_OLD_OUTBOX)
    box = SQLiteOutbox(Database(path))
    try:
        (row,) = box.claim_due(10, now=100.0, lease_seconds=LEASE, owner="a")
        assert (row.user_id, row.attempts, row.first_failed_at) == ("auth0|old", 8, None)
        box.mark_retry(row.id, next_attempt_at=150.0, error="503", now=100.0)
        (row,) = box.claim_due(10, now=150.0, lease_seconds=LEASE, owner="a")
        assert row.first_failed_at == 100.0
        again = SQLiteOutbox(Database(path))  # a second process: the column is there once
        assert again.pending_count() == 1
    finally:
        box.close()
