"""The SQLite file shared by the marker ledger and the outbox.

One file per app (``KEEN_SIGNUP_DATABASE``), shared by every worker process of a host.
WAL lets readers run beside the one writer; ``busy_timeout`` makes concurrent writers
queue instead of failing; ``BEGIN IMMEDIATE`` takes the write lock up front so a claim is
atomic across threads and processes. Each thread of each process gets its own connection
(sqlite3 connections must not cross threads, and must never cross a ``fork``).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import typing as t

from .exceptions import StoreError

#: How long a writer waits for the lock before giving up, in milliseconds.
BUSY_TIMEOUT_MS = 10_000


class Database:
    """A SQLite file with per-thread, per-process connections.

    :param path: the database file; its directory is created if missing, and the file is
        created with mode 0600 (it holds user ids and queued events).
    :param synchronous: ``"normal"`` (crash-safe under WAL: a committed transaction
        survives a process crash, the default) or ``"full"`` (also survives power loss, at
        the cost of an fsync per commit).
    """

    def __init__(self, path: str, *, synchronous: str = "normal") -> None:
        if synchronous not in ("normal", "full"):
            raise ValueError("synchronous must be 'normal' or 'full'")
        self.path = path
        self.synchronous = synchronous
        self._local = threading.local()
        self._schema_lock = threading.Lock()
        self._schemas: list[str] = []

    def __repr__(self) -> str:
        return f"<Database {self.path!r} synchronous={self.synchronous}>"

    def _create_file(self) -> None:
        # Never open()/close() a database file this process may already have connections
        # to: closing *any* descriptor of a file drops all of the process's POSIX locks on
        # it, so another process closing its last connection would think it is the last
        # one, checkpoint and delete the WAL and -shm under our live connections; our next
        # commits would then go to an unlinked WAL, invisible to other processes and lost
        # at exit. Only a file this call creates (O_EXCL) is opened, under the lock, before
        # any connection of this instance exists.
        if os.path.exists(self.path):
            return
        with self._schema_lock:
            directory = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(directory, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return
            os.close(fd)

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use (and again after a fork)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                conn = self._open()
                break
            except sqlite3.OperationalError as exc:
                # Switching a new file to WAL takes an exclusive lock and SQLite may answer
                # "locked" at once, without its busy handler, when another connection (the
                # sender thread, another worker) opens the same new file at that moment.
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise StoreError(
                        f"cannot open the SQLite database {self.path!r}: {exc}"
                    ) from exc
                time.sleep(0.01)
            except (sqlite3.Error, OSError) as exc:
                raise StoreError(f"cannot open the SQLite database {self.path!r}: {exc}") from exc
        self._local.conn = conn
        self._local.pid = os.getpid()
        return conn

    def _open(self) -> sqlite3.Connection:
        self._create_file()
        conn = sqlite3.connect(
            self.path,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
            with self._schema_lock:
                for script in self._schemas:
                    conn.executescript(script)
        except BaseException:
            conn.close()
            raise
        return conn

    def add_schema(self, script: str) -> None:
        """Register ``CREATE ... IF NOT EXISTS`` statements, run on every new connection.

        Each part (ledger, outbox) owns its own tables; this keeps them in one file so that
        a claim and an enqueue can share one transaction.
        """
        with self._schema_lock:
            if script not in self._schemas:
                self._schemas.append(script)
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.executescript(script)

    @contextlib.contextmanager
    def transaction(self) -> t.Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; rolled back if the block raises."""
        conn = self.connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot start a transaction on {self.path!r}: {exc}") from exc
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise StoreError(f"cannot commit to {self.path!r}: {exc}") from exc

    def close(self) -> None:
        """Close this thread's connection (others close when their thread ends)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local.conn = None
