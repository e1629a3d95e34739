"""An in-memory :class:`~flask_keen_signup.delivery.Outbox`: for tests and fakes.

The SQLite outbox's own statements on a private in-memory database, so its semantics
(leases, attempts, dead letters, counters) are the SQLite outbox's by construction; but
everything is lost at exit and it is shared only by the threads of one process.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import typing as t
import weakref

from .sqlite_outbox import SQLiteOutbox

if t.TYPE_CHECKING:  # pragma: no cover
    from ..database import Database


class _MemoryDatabase:
    """What :class:`SQLiteOutbox` uses of a :class:`~flask_keen_signup.database.Database`:
    one connection to a private in-memory database, used by one thread at a time."""

    path = ":memory:"

    def __init__(self) -> None:
        self._conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        self._lock = threading.RLock()
        # Closed with the outbox (Python 3.13 warns about a connection left open).
        weakref.finalize(self, self._conn.close)

    def add_schema(self, script: str) -> None:
        with self._lock:
            self._conn.executescript(script)

    @contextlib.contextmanager
    def reading(self) -> t.Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._conn

    @contextlib.contextmanager
    def transaction(self) -> t.Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def scrub(self) -> bool:
        return True  # no file, no journal: nothing of a dropped row is left behind


class MemoryOutbox(SQLiteOutbox):
    """The outbox tables in this process's memory.

    :param keep_delivered: keep finished rows until :meth:`prune_delivered` (like the
        SQLite outbox) or forget them at once.
    """

    def __init__(self, *, keep_delivered: bool = True) -> None:
        super().__init__(t.cast("Database", _MemoryDatabase()), keep_delivered=keep_delivered)

    def __repr__(self) -> str:
        return f"<MemoryOutbox pending={self.pending_count()}>"

    def _checkpoint(self) -> None:
        return None  # no write-ahead log, no file to take an inventory of

    def close(self) -> None:
        return None  # the rows live as long as the outbox
