"""The SQLite file shared by the marker ledger and the outbox: its connections.

One file per app (``KEEN_SIGNUP_DATABASE``), shared by every worker process of a host.
WAL lets readers run beside the one writer; ``busy_timeout`` makes concurrent writers
queue instead of failing; ``BEGIN IMMEDIATE`` takes the write lock up front so a claim is
atomic across threads and processes. Each thread of each process gets its own connection
(sqlite3 connections must not cross threads, and must never cross a ``fork``).

Three neighbours do one job each: :mod:`.database_transaction` (:meth:`Database.reading`
and :meth:`Database.transaction`; a login waits for the write lock in steps of
microseconds, and the sender yields to it), :mod:`.database_fork_gate` (every use of SQLite
passes its gate, so a fork never happens while a thread is inside) and
:mod:`.database_file_watch` (the file deleted, replaced or truncated under the app).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
import typing as t
import weakref

from . import database_file_watch as file_watch
from . import database_fork_gate as fork_gate
from .database_fork_gate import gate
from .database_transaction import Scope
from .exceptions import StoreError

#: How long a writer waits for the lock before giving up, in milliseconds.
BUSY_TIMEOUT_MS = 10_000

#: WAL pages past which a committing connection checkpoints the file itself. SQLite's
#: default (1,000) makes every few hundredth login's COMMIT copy the WAL into the file and
#: fsync it (milliseconds: the tail of the login path). Here it is only a backstop: the
#: sender checkpoints long before (:meth:`Database.checkpoint`), off the request path.
WAL_AUTOCHECKPOINT_PAGES = 8_000
#: How often (at most) :meth:`Database.checkpoint` runs, in seconds.
CHECKPOINT_INTERVAL = 0.2
#: How often (at most) the sender closes the connections of threads that ended, in seconds.
REAP_INTERVAL = 5.0
#: How long :meth:`Database.scrub` waits at most for readers to leave the WAL, in seconds.
SCRUB_WAIT = 5.0
#: How often (at most) a :class:`Database` checks that its path still names the file its
#: connections have open, in seconds (one ``os.stat``; see :meth:`Database._check_file`).
FILE_CHECK_INTERVAL = 0.5

logger = logging.getLogger(__name__)

#: ``salvager(old_conns)`` reads what must survive a replaced file through this process's
#: connections to it and returns ``write(new_conn) -> summary`` (see
#: :mod:`flask_keen_signup.salvage`).
Salvager = t.Callable[[t.Sequence[sqlite3.Connection]], t.Callable[[sqlite3.Connection], str]]
#: Files whose WAL must still be truncated (a :meth:`Database.scrub` that could not finish);
#: any instance's next :meth:`Database.checkpoint` on that file tries again.
_scrub_pending: set[str] = set()
#: What this process created for its databases, in order: missing directories (outermost
#: first), then each file. ``migrate --dry-run`` removes them again if it wrote nothing.
created_paths: list[str] = []


def _close_connections(
    connections: list[tuple[weakref.ref[threading.Thread], sqlite3.Connection]],
    lock: threading.Lock,
) -> None:
    with lock:
        closing = [conn for _, conn in connections]
        connections.clear()
    for conn in closing:
        with contextlib.suppress(sqlite3.Error):
            conn.close()


class Database:
    """A SQLite file with per-thread, per-process connections.

    :param path: the database file; its directory is created if missing, and the file is
        created with mode 0600 (it holds user ids and queued events).
    :param synchronous: ``"normal"`` (crash-safe under WAL: a committed transaction
        survives a process crash, the default) or ``"full"`` (also survives power loss, at
        the cost of an fsync per commit).
    :param busy_timeout: seconds a statement waits for another connection's lock before
        failing with "database is locked". Long for the sender; the login path opens the
        same file through a second instance whose timeout is ``KEEN_SIGNUP_STORE_TIMEOUT``
        (see :mod:`flask_keen_signup.spool`).
    :param on_replaced: a :data:`Salvager`, called when the file at ``path`` turns out to be
        another file than the one open (deleted, replaced by a copy, truncated).
    """

    def __init__(
        self,
        path: str,
        *,
        synchronous: str = "normal",
        busy_timeout: float = BUSY_TIMEOUT_MS / 1000,
        on_replaced: Salvager | None = None,
    ) -> None:
        if synchronous not in ("normal", "full"):
            raise ValueError("synchronous must be 'normal' or 'full'")
        self.path = path
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self.on_replaced = on_replaced
        #: (st_dev, st_ino) of the file the connections have open, once one is open.
        self._identity: tuple[int, int] | None = None
        #: The largest size seen of that file: SQLite never shrinks it here (no VACUUM).
        self._size = 0
        self._check_at = 0.0
        self._checkpoint_at = 0.0
        self._reap_at = 0.0
        self._local = threading.local()
        self._schema_lock = threading.Lock()
        self._schemas: list[str] = []
        # Every open connection of this instance and the thread that opened it, so a fork
        # can close them all. Connections of finished threads are closed at the next open.
        self._connections: list[tuple[weakref.ref[threading.Thread], sqlite3.Connection]] = []
        self._connections_lock = threading.Lock()
        fork_gate.databases.add(self)
        # An instance dropped with connections still open (an app torn down, a one-off
        # tool) closes them: Python 3.13 warns about every connection left to the GC.
        weakref.finalize(
            self, _close_connections, self._connections, self._connections_lock
        ).atexit = False  # at exit: the "sqlite" step of .lifecycle, after the senders'

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
            missing = []
            while not os.path.exists(directory) and directory != os.path.dirname(directory):
                missing.append(directory)
                directory = os.path.dirname(directory)
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            created_paths.extend(reversed(missing))
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return
            os.close(fd)
            created_paths.append(os.path.abspath(self.path))

    def _current(self) -> sqlite3.Connection | None:
        """This thread's connection if it is open and not from before a fork."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.generation == fork_gate.generation:
            return conn
        return None

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use (and again after a fork).

        Product code uses it inside :meth:`reading` or :meth:`transaction`, which let a
        fork wait for it; calling it bare is for tests and one-off tools.
        """
        conn = self._current()
        if conn is not None:
            return conn
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                conn = self._open()
                break
            except (sqlite3.Error, OSError) as exc:
                # Switching a new file to WAL takes an exclusive lock and SQLite may answer
                # "locked" at once, without its busy handler, when another connection (the
                # sender thread, another worker) opens the same new file at that moment.
                locked = isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)
                if not locked or time.monotonic() > deadline:
                    raise StoreError(
                        f"cannot open the SQLite database {self.path!r}: {exc}"
                    ) from exc
                time.sleep(0.01)
        self._local.conn = conn
        self._local.generation = fork_gate.generation
        self._local.zero = False  # busy_timeout is the instance's (see begin_immediate)
        self.close_finished()
        with self._connections_lock:
            self._connections.append((weakref.ref(threading.current_thread()), conn))
        if self._identity is None:
            self._identity, self._size = file_watch.stat_of(self.path)
            self._check_at = time.monotonic() + FILE_CHECK_INTERVAL
        return conn

    def _check_file(self, *, force: bool = False) -> None:
        """Reopen everything if ``path`` no longer names the file that is open, or the file
        was truncated in place.

        Called on the way into :meth:`reading` and :meth:`transaction` when the thread is
        not already inside SQLite: at most one ``os.stat`` per :data:`FILE_CHECK_INTERVAL`
        per instance, and before a thread opens its connection (``force``): a new
        connection to a truncated file would delete its WAL. A file deleted or replaced
        under a running app would otherwise leave some connections on the old inode (the
        sender's) and others on the new file (new request threads): nothing delivered,
        nothing said.
        """
        now = time.monotonic()
        if (now < self._check_at and not force) or self._identity is None:
            return
        self._check_at = now + FILE_CHECK_INTERVAL
        if file_watch.unsalvaged:
            file_watch.retry_copies()
        current, size = file_watch.stat_of(self.path)
        if current != self._identity:
            file_watch.file_replaced(self, "deleted" if current is None else "replaced")
        elif size < self._size:
            # Never its header read to tell a VACUUM from a cut: opening and closing the
            # file would drop this process's SQLite locks (see _create_file). No VACUUM on
            # a live file, then (docs/degraded-store.md).
            file_watch.file_replaced(self, "truncated")
        else:
            self._size = size

    def close_finished(self) -> int:
        """Close the connections of threads that have ended; return how many.

        Called when a thread opens its connection, by the sender now and then
        (:meth:`checkpoint`), and at exit.
        """
        main_thread = threading.main_thread()
        finished = []
        with self._connections_lock:
            alive = []
            for thread_ref, conn in self._connections:
                thread = thread_ref()
                # The main thread counts as finished once the interpreter starts exiting,
                # yet it still runs the atexit flush with its connection: keep that one.
                if thread is not None and (thread.is_alive() or thread is main_thread):
                    alive.append((thread_ref, conn))
                else:  # its thread is gone (e.g. a prefetch helper): nobody will use it
                    finished.append(conn)
            self._connections[:] = alive  # in place: the finalizer holds this list
        for conn in finished:
            with gate, contextlib.suppress(sqlite3.Error):
                conn.close()
        return len(finished)

    def reading(self) -> Scope:
        """This thread's connection, for reads outside a transaction (fork-gated).

        ``with database.reading() as conn: ...``
        """
        return Scope(self, None)

    def transaction(self, timeout: float | None = None) -> Scope:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; rolled back if the block raises.

        ``with database.transaction() as conn: ...``; ``timeout``: how long ``BEGIN``
        waits for the write lock, default ``busy_timeout``.
        """
        return Scope(self, self.busy_timeout if timeout is None else timeout)

    def _open(self) -> sqlite3.Connection:
        self._create_file()
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {self._busy_ms()}")
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
            conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
            # Deleted or overwritten content is zeroed, in the page and in freed pages: an
            # erased user or a dropped body leaves no bytes behind (see scrub()).
            conn.execute("PRAGMA secure_delete = ON")
            with self._schema_lock:
                for script in self._schemas:
                    conn.executescript(script)
        except BaseException:
            conn.close()
            raise
        return conn

    def _busy_ms(self) -> int:
        return max(1, round(self.busy_timeout * 1000))

    def checkpoint(self, *, now: float | None = None) -> bool:
        """Copy the WAL's committed pages into the file, at most every
        :data:`CHECKPOINT_INTERVAL`; True if it ran.

        The sender calls this (through the outbox, before each claim), so a login's COMMIT
        never has to: a ``PASSIVE`` checkpoint takes no write lock and waits for nobody,
        and copies what readers no longer need; the next writer then restarts the WAL
        from its beginning, so the file stays small and in cache. Where no sender runs
        (it is stopped, or dead), ``wal_autocheckpoint`` (:data:`WAL_AUTOCHECKPOINT_PAGES`)
        still bounds the WAL.
        """
        now = time.monotonic() if now is None else now
        if now < self._checkpoint_at:
            return False
        self._checkpoint_at = now + CHECKPOINT_INTERVAL
        if not gate.inside():
            # Before copying WAL pages into the file: a checkpoint into a truncated file
            # would grow it back (hiding the cut) and let the WAL be reset after it.
            self._check_file(force=True)
        if now >= self._reap_at:
            self._reap_at = now + REAP_INTERVAL
            for database in list(fork_gate.databases):
                database.close_finished()
        if _scrub_pending and os.path.abspath(self.path) in _scrub_pending:
            self.scrub(wait=0.0)
            return True
        with self.reading() as conn:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        return True

    def scrub(self, *, wait: float = SCRUB_WAIT) -> bool:
        """Copy the WAL into the file and truncate it to zero bytes; True once done.

        Called after personal data was deleted (``forget``, retention): the WAL still holds
        the pages as they were before, and :meth:`checkpoint` (``PASSIVE``) only ever
        overwrites it. With ``secure_delete`` (every connection) the file itself keeps no
        freed bytes, so once this returns True nothing deleted is left in any of the
        file's bytes. A ``TRUNCATE`` checkpoint cannot finish while another connection
        (any process) reads an older snapshot: this retries for ``wait`` seconds, then
        leaves it to the next :meth:`checkpoint` of any instance on the same file (the
        sender's, every :data:`CHECKPOINT_INTERVAL`), which tries again until it is done.
        """
        deadline = time.monotonic() + wait
        key = os.path.abspath(self.path)
        while True:
            try:
                with self.reading() as conn:
                    # Short waits for the lock here; the loop does the waiting.
                    conn.execute("PRAGMA busy_timeout = 20")
                    try:
                        busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                    finally:
                        conn.execute(f"PRAGMA busy_timeout = {self._busy_ms()}")
            except (sqlite3.OperationalError, StoreError):
                busy = 1  # "database is locked" (a writer holds the lock), or cannot open
            if not busy:
                if key in _scrub_pending:
                    logger.info("flask-keen-signup: the WAL of %s is truncated now", self.path)
                    _scrub_pending.discard(key)
                return True
            if time.monotonic() >= deadline:
                if key not in _scrub_pending and wait > 0:
                    logger.warning(
                        "flask-keen-signup: could not truncate the WAL of %s within %.1fs "
                        "(another connection is reading); deleted data may stay in it until "
                        "the sender's next checkpoint succeeds",
                        self.path,
                        wait,
                    )
                _scrub_pending.add(key)
                return False
            time.sleep(0.02)

    def add_schema(self, script: str) -> None:
        """Register ``CREATE ... IF NOT EXISTS`` statements, run on every new connection.

        Each part (ledger, outbox) owns its own tables; this keeps them in one file so that
        a claim and an enqueue can share one transaction.
        """
        with self._schema_lock:
            if script not in self._schemas:
                self._schemas.append(script)
        conn = self._current()
        if conn is not None:
            with gate:
                conn.executescript(script)

    def close(self) -> None:
        """Close this thread's connection (others close when their thread ends)."""
        conn = self._current()
        if conn is not None:
            with gate:
                conn.close()
        self._local.conn = None

    def _close_all(self) -> None:
        """Close every connection of this instance (a fork, a replaced file: see
        :mod:`.database_fork_gate`). Their threads reopen on next use: the generation
        moves on."""
        _close_connections(self._connections, self._connections_lock)
