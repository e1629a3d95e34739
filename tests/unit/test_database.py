"""The shared SQLite file: opened concurrently, private, per-thread and fork-aware."""

from __future__ import annotations

import os
import threading
import typing as t

import pytest

from flask_keen_signup.database import Database
from flask_keen_signup.exceptions import StoreError
from flask_keen_signup.stores.sqlite import SQLiteStore


@pytest.mark.parametrize("round_", range(15))
def test_many_threads_opening_a_new_file_at_once_never_fail(tmp_path: t.Any, round_: int) -> None:
    # The sender thread and the first request open the same new file at the same moment:
    # switching it to WAL must not surface "database is locked".
    database = Database(str(tmp_path / f"race{round_}.sqlite3"))
    store = SQLiteStore(database, "signups")
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def open_and_claim(n: int) -> None:
        barrier.wait()
        try:
            store.claim(f"auth0|{n}")
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=open_and_claim, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.counts() == {"pending": 6}


def test_each_thread_has_its_own_connection(tmp_path: t.Any) -> None:
    database = Database(str(tmp_path / "x.sqlite3"))
    here = database.connection()
    there: list[t.Any] = []
    thread = threading.Thread(target=lambda: there.append(database.connection()))
    thread.start()
    thread.join()
    assert there[0] is not here
    assert database.connection() is here


def test_a_forked_child_opens_its_own_connection(tmp_path: t.Any) -> None:
    database = Database(str(tmp_path / "fork.sqlite3"))
    store = SQLiteStore(database, "signups")
    parent_conn = database.connection()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must not reuse the parent's connection
        ok = database.connection() is not parent_conn and store.claim("auth0|child")
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.waitpid(pid, 0)
    assert answer == b"1"
    assert store.lookup("auth0|child") is not None


def test_unopenable_path_is_a_clear_store_error(tmp_path: t.Any) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot open the SQLite database"):
        Database(str(blocker / "sub" / "db.sqlite3")).connection()


def test_synchronous_setting_is_applied(tmp_path: t.Any) -> None:
    # (A Database closes its connections when it is dropped: keep it while using one.)
    normal = Database(str(tmp_path / "n.sqlite3"))
    full = Database(str(tmp_path / "f.sqlite3"), synchronous="full")
    assert normal.connection().execute("PRAGMA synchronous").fetchone()[0] == 1
    assert full.connection().execute("PRAGMA synchronous").fetchone()[0] == 2
    with pytest.raises(ValueError):
        Database("x", synchronous="off")


def _count(database: Database) -> int:
    with database.reading() as conn:
        return int(conn.execute("SELECT COUNT(*) FROM items").fetchone()[0])


def _with_table(tmp_path: t.Any) -> Database:
    database = Database(str(tmp_path / "tx.sqlite3"))
    database.add_schema("CREATE TABLE IF NOT EXISTS items (n INTEGER);")
    return database


def test_a_transaction_commits_its_block(tmp_path: t.Any) -> None:
    database = _with_table(tmp_path)
    with database.transaction() as conn:
        conn.execute("INSERT INTO items VALUES (1)")
        conn.execute("INSERT INTO items VALUES (2)")
    other = Database(database.path)  # another connection sees the commit
    assert _count(other) == 2


def test_a_block_that_raises_is_rolled_back_and_its_exception_propagates(tmp_path: t.Any) -> None:
    database = _with_table(tmp_path)
    with pytest.raises(KeyError, match="boom"):
        with database.transaction() as conn:
            conn.execute("INSERT INTO items VALUES (1)")
            raise KeyError("boom")
    assert _count(database) == 0
    with database.transaction() as conn:  # the connection is usable again
        conn.execute("INSERT INTO items VALUES (3)")
    assert _count(database) == 1


@pytest.mark.slow
def test_a_write_lock_held_elsewhere_is_a_clear_store_error(
    tmp_path: t.Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flask_keen_signup.database as database_module

    monkeypatch.setattr(database_module, "BUSY_TIMEOUT_MS", 50)
    database = _with_table(tmp_path)
    database.connection()
    other = Database(database.path)
    holder = other.connection()
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreError, match="cannot start a transaction") as caught:
            with database.transaction():
                pass  # pragma: no cover - never entered
        assert "locked" in str(caught.value)
    finally:
        holder.execute("ROLLBACK")


def test_failed_transactions_leave_nothing_that_blocks_a_fork(tmp_path: t.Any) -> None:
    """Every way out of ``transaction()`` and ``reading()`` releases the fork gate: a
    fork afterwards neither waits for it nor warns."""
    import flask_keen_signup.database_fork_gate as database_fork_gate

    database = _with_table(tmp_path)
    with pytest.raises(RuntimeError):
        with database.transaction():
            raise RuntimeError
    with pytest.raises(RuntimeError):
        with database.reading():
            raise RuntimeError
    with database.reading():
        pass
    assert database_fork_gate.gate._active == 0
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os._exit(0)
    os.waitpid(pid, 0)
    assert database_fork_gate.gate._active == 0
    assert _count(database) == 0  # the parent reopened its connection after the fork


def test_a_fork_waits_for_a_thread_inside_a_transaction(tmp_path: t.Any) -> None:
    """The at-fork hook waits until no thread uses SQLite (the child would inherit its
    locks otherwise), and is woken as soon as the last one leaves."""
    import time

    database = _with_table(tmp_path)
    inside = threading.Event()
    events: list[str] = []

    def writer() -> None:
        with database.transaction() as conn:
            conn.execute("INSERT INTO items VALUES (1)")
            inside.set()
            time.sleep(0.3)
            events.append("committed")

    thread = threading.Thread(target=writer)
    thread.start()
    assert inside.wait(10)
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os._exit(0 if _count(Database(database.path)) == 1 else 1)
    events.append("forked")
    waited = time.monotonic() - started
    _, status = os.waitpid(pid, 0)
    thread.join()
    assert events == ["committed", "forked"]
    assert os.WEXITSTATUS(status) == 0, "the child sees the committed row and can read"
    assert waited < 10, "woken when the thread left, not at the fork wait's deadline"


def _is_closed(conn: t.Any) -> bool:
    import sqlite3

    try:
        conn.execute("SELECT 1")
    except sqlite3.ProgrammingError:
        return True
    return False


def test_connections_of_ended_threads_and_of_a_dropped_database_are_closed(
    tmp_path: t.Any,
) -> None:
    """Python 3.13 warns about every sqlite3 connection left to the garbage collector
    (``ResourceWarning: unclosed database``): none of the package's is."""
    import gc

    databases = [_with_table(tmp_path)]
    opened: list[t.Any] = []
    together = threading.Barrier(3)

    def use() -> None:
        with databases[0].reading() as conn:
            opened.append(conn)
        together.wait(10)  # all three open at once (an open closes ended threads' ones)

    threads = [threading.Thread(target=use) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(opened) == 3 and not any(_is_closed(conn) for conn in opened)
    assert databases[0].close_finished() == 3
    assert all(_is_closed(conn) for conn in opened)

    mine = databases[0].connection()  # the main thread's stays open until the end
    assert databases[0].close_finished() == 0 and not _is_closed(mine)
    databases.clear()
    gc.collect()
    assert _is_closed(mine), "a dropped Database closes what it opened"


def test_a_scrub_blocked_by_a_reader_is_finished_by_the_next_checkpoint(
    tmp_path: t.Any, caplog: pytest.LogCaptureFixture
) -> None:
    """``PRAGMA wal_checkpoint(TRUNCATE)`` cannot finish while another connection reads
    an older snapshot: the scrub says so, and the sender's next checkpoint (any instance
    on the file) truncates the WAL once the reader is gone."""
    import logging

    from _sqlite import open_sqlite

    caplog.set_level(logging.INFO, logger="flask_keen_signup")
    database = _with_table(tmp_path)
    other = Database(database.path)  # the login path's instance on the same file
    with database.transaction() as conn:
        conn.execute("INSERT INTO items VALUES (1)")
    wal = database.path + "-wal"
    with open_sqlite(database.path, isolation_level=None) as reader:
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM items").fetchone()
        with other.transaction() as conn:  # a commit the reader does not see
            conn.execute("DELETE FROM items")
        assert other.scrub(wait=0.2) is False
        assert "could not truncate the WAL" in caplog.text
        assert os.path.getsize(wal) > 0
        assert database.checkpoint(now=1e12) is True  # still blocked: stays pending
        assert os.path.getsize(wal) > 0
        reader.execute("COMMIT")
    assert database.checkpoint(now=2e12) is True
    assert os.path.getsize(wal) == 0
    assert "is truncated now" in caplog.text


def test_a_failed_copy_from_a_replaced_file_is_retried_and_then_reported(
    tmp_path: t.Any,
) -> None:
    import sqlite3

    from flask_keen_signup.database_file_watch import replacements

    tries: list[int] = []

    def write(conn: sqlite3.Connection) -> str:
        tries.append(1)
        if len(tries) == 1:
            raise sqlite3.OperationalError("database is locked")
        return "copied on the second try"

    path = str(tmp_path / "app.sqlite3")
    database = Database(path, on_replaced=lambda old: write)
    with database.transaction() as conn:
        conn.execute("CREATE TABLE items (id INTEGER)")
    other = sqlite3.connect(str(tmp_path / "copy.sqlite3"))
    other.execute("CREATE TABLE items (id INTEGER)")
    other.close()
    os.replace(str(tmp_path / "copy.sqlite3"), path)
    database._check_file(force=True)  # notices the new file; the copy fails
    assert replacements[-1].how == "replaced"
    assert replacements[-1].salvaged.startswith("copy failed; retrying")
    with database.reading():  # reopened on the new file
        pass
    database._check_file(force=True)  # the next check retries the copy
    assert len(tries) == 2
    assert replacements[-1].salvaged == "copied on the second try"
    database.close()
    database._close_all()
