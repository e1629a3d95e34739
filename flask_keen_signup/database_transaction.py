"""A thread's use of its SQLite connection: a read, or a transaction that takes the write
lock fairly, so that a login never waits behind the sender for long.

Every use passes the fork gate (:mod:`.database_fork_gate`) and, on the way in, the
file check (:meth:`.database.Database._check_file`).

SQLite's own busy handler sleeps 1 ms, then 2, 5, 10 ms... between tries, so a login that
finds the sender's short bookkeeping transaction (a fraction of a millisecond) holding the
lock would wait at least a millisecond. :func:`begin_immediate` retries in steps of tens of
microseconds instead; the sender, which begins its next transaction microseconds after
committing the last, calls :func:`yield_to_writers` between its transactions so that it
does not win the lock again and again while a login of this process sleeps between tries.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
import typing as t

from .database_fork_gate import gate
from .exceptions import StoreError

if t.TYPE_CHECKING:  # pragma: no cover
    from .database import Database

#: The first pause between two tries at the write lock, and the longest, in seconds.
LOCK_RETRY_FIRST = 0.00005
LOCK_RETRY_MAX = 0.001
#: Rows the sender's bookkeeping writes per transaction (see :func:`yield_to_writers`).
#: SQLite rewrites a row and its index entries in ~5-10 µs here, so a transaction of this
#: many rows holds the write lock for about 0.1-0.2 ms.
SENDER_CHUNK_ROWS = 16
#: How long the sender's bookkeeping waits at most, between two of its transactions, for
#: a thread of this process that is waiting for the write lock (a login), in seconds.
YIELD_MAX = 0.002

# Threads of this process waiting for the write lock right now (see begin_immediate).
_waiting = 0
_waiting_lock = threading.Lock()


def writers_waiting() -> int:
    """How many threads of this process wait for a SQLite write lock right now."""
    return _waiting


def yield_to_writers() -> None:
    """Let a waiting login take the write lock before the sender's next transaction.

    Waits until nobody of this process is waiting, at most :data:`YIELD_MAX`. Logins of
    other processes are not seen here; they get the gaps between the transactions.
    """
    deadline = time.monotonic() + YIELD_MAX
    while _waiting and time.monotonic() < deadline:
        time.sleep(LOCK_RETRY_FIRST)


def _busy(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


def begin_immediate(conn: sqlite3.Connection, local: t.Any, timeout: float) -> None:
    """``BEGIN IMMEDIATE``, waiting for the write lock in steps of tens of microseconds.

    The first try fails at once (``busy_timeout`` 0) and the retries start at
    :data:`LOCK_RETRY_FIRST`, doubling up to :data:`LOCK_RETRY_MAX`, until ``timeout``
    (counted as a waiter meanwhile). Only ``BEGIN`` waits for a lock: once it holds the
    write lock, the transaction's statements do not (WAL). The connection stays at 0
    until the thread's next read outside a transaction restores its timeout
    (``local.zero``), so a login that only writes pays for no ``PRAGMA``.
    """
    global _waiting
    if not local.zero:
        conn.execute("PRAGMA busy_timeout = 0")
        local.zero = True
    try:
        conn.execute("BEGIN IMMEDIATE")
        return
    except sqlite3.OperationalError as exc:
        if not _busy(exc):
            raise
    with _waiting_lock:
        _waiting += 1
    try:
        deadline = time.monotonic() + timeout
        pause = LOCK_RETRY_FIRST
        while True:
            time.sleep(pause)
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not _busy(exc) or time.monotonic() >= deadline:
                    raise
            pause = min(pause * 2, LOCK_RETRY_MAX)
    finally:
        with _waiting_lock:
            _waiting -= 1


class Scope:
    """See :meth:`Database.reading` (``timeout`` None) and :meth:`Database.transaction`.

    A small class rather than a ``@contextlib.contextmanager`` generator: the claim and
    the enqueue of a new user's login run through it, and a generator-based manager costs
    several times more per use on that path (see bench/callback.py --profile).
    """

    __slots__ = ("_database", "_conn", "_timeout")

    def __init__(self, database: Database, timeout: float | None) -> None:
        self._database = database
        self._timeout = timeout

    def __enter__(self) -> sqlite3.Connection:
        database = self._database
        if not gate.inside():
            database._check_file(force=getattr(database._local, "conn", None) is None)
        gate.__enter__()
        try:
            conn = self._conn = database.connection()
            local = database._local
            if self._timeout is not None:
                begin_immediate(conn, local, self._timeout)
            elif local.zero and not conn.in_transaction:  # left at 0 by a transaction
                conn.execute(f"PRAGMA busy_timeout = {database._busy_ms()}")
                local.zero = False
            return conn
        except BaseException as exc:
            gate.__exit__()
            if self._timeout is not None and isinstance(exc, sqlite3.Error):
                path = database.path
                raise StoreError(f"cannot start a transaction on {path!r}: {exc}") from exc
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        try:
            if self._timeout is None:
                return
            if exc_type is not None:
                self._conn.execute("ROLLBACK")
                return  # the block's exception propagates
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error as error:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                path = self._database.path
                raise StoreError(f"cannot commit to {path!r}: {error}") from error
        finally:
            gate.__exit__()
