"""A deadline for each PostgreSQL statement, kept from the client's side.

``statement_timeout`` bounds what the server runs, but not a pooler that has no server to
give: PgBouncer keeps such a client waiting until its ``query_wait_timeout`` (120 s by
default), and a cancel request does not reach it. A login must not wait that long, so
:class:`~flask_keen_signup.postgres.PostgresDatabase` runs each statement under
:meth:`Deadlines.guard`: past the deadline the connection's socket is shut down, libpq
fails the statement at once and the pool discards the connection.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import threading
import time
import typing as t

if t.TYPE_CHECKING:  # pragma: no cover
    import psycopg

logger = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False)
class Guard:
    """One statement's deadline (``time.monotonic()``; see :class:`Deadlines`)."""

    conn: psycopg.Connection[t.Any]
    deadline: float
    fired: bool = False

    def extend(self, seconds: float) -> None:
        self.deadline = max(self.deadline, time.monotonic() + seconds)


class Deadlines:
    """Closes, from this side, a connection whose statement outlived its deadline.

    One thread per process watches the statements in flight (it sleeps while there are
    none, so an idle app costs nothing); a guard costs a lock and a set insert. A forked
    child calls :meth:`reset` (lifecycle's ``"postgres"`` step): the parent's watch thread
    is not there, and its lock may have been held at the fork.
    """

    #: How often the watch looks while statements are in flight (s).
    TICK = 0.02

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._lock = threading.Lock()
        self._busy = threading.Event()
        self._guards: set[Guard] = set()
        self._thread: threading.Thread | None = None
        self._pid = 0

    @contextlib.contextmanager
    def guard(self, conn: psycopg.Connection[t.Any], seconds: float) -> t.Iterator[Guard]:
        entry = Guard(conn, time.monotonic() + seconds)
        with self._lock:
            if self._pid != os.getpid() or self._thread is None or not self._thread.is_alive():
                self._start()
            self._guards.add(entry)
            self._busy.set()
        try:
            yield entry
        finally:
            with self._lock:
                self._guards.discard(entry)

    def _start(self) -> None:
        self._pid = os.getpid()
        self._guards = set()
        self._thread = threading.Thread(
            target=self._watch, name="flask-keen-signup-pg-deadlines", daemon=True
        )
        self._thread.start()

    def _watch(self) -> None:
        pid = os.getpid()
        while os.getpid() == pid:
            self._busy.wait()
            with self._lock:
                if not self._guards:
                    self._busy.clear()
                    continue
                now = time.monotonic()
                late = [guard for guard in self._guards if guard.deadline <= now]
                for guard in late:
                    guard.fired = True
                    self._guards.discard(guard)
            for guard in late:
                _shut_down(guard.conn)
            time.sleep(self.TICK)


def _shut_down(conn: psycopg.Connection[t.Any]) -> None:
    """Shut ``conn``'s socket down under libpq's feet (a duplicate descriptor: libpq's
    own stays valid until the pool closes the connection)."""
    with contextlib.suppress(Exception):
        duplicate = socket.socket(fileno=os.dup(conn.pgconn.socket))
        try:
            duplicate.shutdown(socket.SHUT_RDWR)
        finally:
            duplicate.close()
    logger.debug("a PostgreSQL statement outlived its deadline: connection closed")


deadlines = Deadlines()

