"""The login's tail on SQLite: checkpoints off the request path, short sender transactions,
and a write-lock wait that hands the lock to a waiting login (issue 9, item 6).

Real SQLite files, real threads; no timing assertions (the figures are in bench/tail.py).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import typing as t

import pytest
from _waits import wait_until

from flask_keen_signup import database as database_module
from flask_keen_signup.database import WAL_AUTOCHECKPOINT_PAGES
from flask_keen_signup.database import Database
from flask_keen_signup.database_transaction import SENDER_CHUNK_ROWS
from flask_keen_signup.database_transaction import writers_waiting
from flask_keen_signup.database_transaction import yield_to_writers
from flask_keen_signup.delivery import QueuedEvent
from flask_keen_signup.delivery.sqlite_outbox import SQLiteOutbox
from flask_keen_signup.exceptions import StoreError
from flask_keen_signup.stores import MarkerState
from flask_keen_signup.stores.sqlite import SQLiteStore


def wait_until_fine(predicate: t.Callable[[], bool], timeout: float = 10.0) -> bool:
    """A millisecond poll: these tests race a lock by design."""
    return wait_until(predicate, timeout, interval=0.001)


def event(n: int) -> QueuedEvent:
    return QueuedEvent(
        "signups", f"auth0|{n}", f"token-{n}", {"userId": f"auth0|{n}", "keen": {}}
    )


def file_size(path: str) -> int:
    """The main file's size: it grows only when a checkpoint copies pages into it."""
    return os.path.getsize(path)


def test_connections_leave_the_checkpoint_to_the_sender(tmp_path: t.Any) -> None:
    database = Database(str(tmp_path / "c.sqlite3"))
    (pages,) = database.connection().execute("PRAGMA wal_autocheckpoint").fetchone()
    assert pages == WAL_AUTOCHECKPOINT_PAGES > 1000  # SQLite's default is 1,000


def test_checkpoint_copies_the_wal_and_runs_at_most_once_per_interval(tmp_path: t.Any) -> None:
    path = str(tmp_path / "c.sqlite3")
    database = Database(path)
    outbox = SQLiteOutbox(database)
    outbox.enqueue(event(0))
    before = file_size(path)
    for n in range(1, 200):
        outbox.enqueue(event(n))
    assert file_size(path) == before  # the enqueues did not checkpoint
    assert database.checkpoint(now=1000.0) is True
    grown = file_size(path)
    assert grown > before
    for n in range(200, 400):
        outbox.enqueue(event(n))
    assert database.checkpoint(now=1000.0) is False  # within the interval
    assert file_size(path) == grown
    assert database.checkpoint(now=1000.0 + database_module.CHECKPOINT_INTERVAL) is True
    assert file_size(path) > grown


def test_the_senders_claim_checkpoints_the_file(tmp_path: t.Any) -> None:
    path = str(tmp_path / "s.sqlite3")
    outbox = SQLiteOutbox(Database(path))
    outbox.enqueue(event(0))
    before = file_size(path)
    for n in range(1, 200):
        outbox.enqueue(event(n))
    assert file_size(path) == before
    outbox.claim_due(100, now=time.time(), lease_seconds=60, owner="me")
    assert file_size(path) > before  # the sender copied the WAL before claiming


def test_claims_in_short_transactions_lease_every_row_once(tmp_path: t.Any) -> None:
    path = str(tmp_path / "o.sqlite3")
    count = SENDER_CHUNK_ROWS * 10 + 3
    setup = SQLiteOutbox(Database(path))
    for n in range(count):
        setup.enqueue(event(n))
    claimed: list[list[int]] = []
    barrier = threading.Barrier(3)

    def sender(owner: str) -> None:
        outbox = SQLiteOutbox(Database(path))
        barrier.wait()
        mine: list[int] = []
        while True:
            rows = outbox.claim_due(
                SENDER_CHUNK_ROWS * 3 + 1, now=time.time(), lease_seconds=60, owner=owner
            )
            if not rows:
                break
            assert [r.id for r in rows] == sorted(r.id for r in rows)
            mine += [r.id for r in rows]
            outbox.mark_delivered([r.id for r in rows])
        claimed.append(mine)

    threads = [threading.Thread(target=sender, args=(f"s{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    every = [row_id for mine in claimed for row_id in mine]
    assert len(every) == len(set(every)) == count
    stats = setup.stats()
    assert (stats.pending, stats.delivered, stats.resends) == (0, count, 0)


def test_a_claim_with_no_lease_is_one_transaction(tmp_path: t.Any) -> None:
    outbox = SQLiteOutbox(Database(str(tmp_path / "z.sqlite3")))
    for n in range(SENDER_CHUNK_ROWS * 2):
        outbox.enqueue(event(n))
    rows = outbox.claim_due(SENDER_CHUNK_ROWS + 5, now=time.time(), lease_seconds=0, owner="me")
    assert len({row.id for row in rows}) == SENDER_CHUNK_ROWS + 5


def test_confirm_many_in_short_transactions_confirms_everyone(tmp_path: t.Any) -> None:
    store = SQLiteStore(Database(str(tmp_path / "m.sqlite3")), "signups")
    users = [f"auth0|{n}" for n in range(SENDER_CHUNK_ROWS * 4 + 1)]
    for user in users:
        assert store.claim(user)
    store.confirm_many(users)
    assert store.counts() == {"confirmed": len(users)}
    assert store.lookup(users[-1]) is MarkerState.CONFIRMED


class Holder:
    """Another connection (as another process would) holding the write lock."""

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        self.conn.execute("COMMIT")
        self.conn.close()


def test_a_transaction_waits_for_the_lock_and_counts_as_a_waiter(tmp_path: t.Any) -> None:
    path = str(tmp_path / "w.sqlite3")
    outbox = SQLiteOutbox(Database(path))
    outbox.enqueue(event(0))  # the file and its tables exist
    holder = Holder(path)
    done: list[int] = []
    thread = threading.Thread(target=lambda: done.append(outbox.enqueue(event(1))))
    thread.start()
    assert wait_until_fine(lambda: writers_waiting() == 1)
    assert not done  # still waiting for the lock
    holder.release()
    thread.join(10)
    assert done and writers_waiting() == 0
    assert outbox.pending_count() == 2


def test_the_wait_gives_up_at_the_databases_timeout(tmp_path: t.Any) -> None:
    path = str(tmp_path / "t.sqlite3")
    database = Database(path, busy_timeout=0.05)
    outbox = SQLiteOutbox(database)
    outbox.enqueue(event(0))
    holder = Holder(path)
    try:
        with pytest.raises(StoreError, match="locked"):
            outbox.enqueue(event(1))
    finally:
        holder.release()
    assert writers_waiting() == 0
    # Reads outside a transaction get the connection's own timeout back.
    with database.reading() as conn:
        (ms,) = conn.execute("PRAGMA busy_timeout").fetchone()
    assert ms == 50
    with database.transaction() as conn:  # a transaction waits in its own steps
        (ms,) = conn.execute("PRAGMA busy_timeout").fetchone()
    assert ms == 0


def test_the_sender_yields_the_lock_to_a_waiting_login(tmp_path: t.Any) -> None:
    path = str(tmp_path / "y.sqlite3")
    login = Database(path)
    SQLiteOutbox(login).enqueue(event(0))
    holder = Holder(path)  # the sender's previous transaction
    inside = threading.Event()
    leave = threading.Event()

    def a_login() -> None:
        with login.transaction():
            inside.set()
            leave.wait(10)

    thread = threading.Thread(target=a_login)
    thread.start()
    assert wait_until_fine(lambda: writers_waiting() == 1)
    holder.release()
    yield_to_writers()  # what the sender does before its next transaction
    # The login holds the lock now: the sender's next transaction would have to wait.
    assert inside.wait(10)
    probe = sqlite3.connect(path, isolation_level=None, timeout=0)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        probe.execute("BEGIN IMMEDIATE")
    probe.close()
    leave.set()
    thread.join(10)
