"""The fork gate: any number of threads may use SQLite at once; a fork waits until none does.

SQLite keeps per-process lock bookkeeping and mutexes in library memory, and a child forked
while *any* connection to the file is open inherits them; its own new connections then see
locks nobody holds ("database is locked" forever) or deadlock (gunicorn ``--preload``,
uWSGI). So every use of SQLite passes :data:`gate`, and the ``"sqlite"`` step of
:mod:`.lifecycle` waits before a fork until no thread is inside SQLite, closes every
connection of every :class:`~.database.Database` of the process, and lets both processes
reopen lazily afterwards: a thread's connection from an older :data:`generation` is
reopened on its next use. :mod:`.database_file_watch` does the same for one file's
connections when the file is replaced under the app.
"""

from __future__ import annotations

import logging
import threading
import time
import typing as t
import weakref

from . import lifecycle

if t.TYPE_CHECKING:  # pragma: no cover
    from .database import Database

#: How long a fork waits for threads to leave SQLite before going ahead anyway, in seconds.
FORK_WAIT_SECONDS = 15.0

logger = logging.getLogger("flask_keen_signup.database")


class ForkGate:
    """Use as ``with gate:``. Re-entrant per thread (a read inside a transaction), and
    cheap: one uncontended lock round trip on the way in and out."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._active = 0
        self._forking = False
        self._depth = threading.local()

    def inside(self) -> bool:
        """Whether this thread is inside SQLite already."""
        return bool(getattr(self._depth, "n", 0))

    def __enter__(self) -> None:
        local = self._depth
        depth: int = getattr(local, "n", 0)
        if depth == 0:
            with self._lock:
                while self._forking:
                    self._idle.wait()
                self._active += 1
        local.n = depth + 1

    def __exit__(self, *exc_info: object) -> None:
        local = self._depth
        depth: int = getattr(local, "n", 1) - 1  # a fork in between reset the depth
        if depth > 0:
            local.n = depth
            return
        local.n = 0
        with self._lock:
            active = self._active = max(0, self._active - 1)
            # Only a fork waits for the gate to empty: don't pay for a notify otherwise
            # (a Condition's notify is slow, and this runs in every login's transaction).
            if active == 0 and self._forking:
                self._idle.notify_all()

    def close(self) -> None:
        """Wait until no other thread is inside SQLite; keep them out until :meth:`open`."""
        own = 1 if self.inside() else 0
        with self._lock:
            self._forking = True
            deadline = time.monotonic() + FORK_WAIT_SECONDS
            while self._active > own:
                left = deadline - time.monotonic()
                if left <= 0:
                    logger.warning("forking while %d thread(s) still use SQLite", self._active)
                    break
                self._idle.wait(left)

    def open(self) -> None:
        with self._lock:
            self._forking = False
            self._idle.notify_all()

    def reset_in_child(self) -> None:
        # Other threads did not survive the fork: fresh primitives, nobody inside.
        self.__init__()  # type: ignore[misc]


gate = ForkGate()
#: Every live :class:`~.database.Database` of this process.
databases: weakref.WeakSet[Database] = weakref.WeakSet()
#: Bumped whenever connections were closed under their threads (a fork, a replaced file).
generation = 0


def close_connections(of: t.Iterable[Database]) -> None:
    """Close every connection of ``of``; their threads reopen on next use."""
    global generation
    for database in of:
        database._close_all()
    generation += 1


def _before_fork() -> None:
    gate.close()
    close_connections(list(databases))


def _after_fork_in_child() -> None:
    gate.reset_in_child()
    # Forked by uWSGI from C, without the hook above: close the copies of the master's
    # connections here, in the child (after os.fork there are none left).
    close_connections(list(databases))


def _at_exit() -> None:
    """Close the connections of ended threads and of this one (after the senders' exit
    flush: see :mod:`.lifecycle`)."""
    for database in list(databases):
        database.close_finished()
        database.close()


lifecycle.register(
    "sqlite",
    before=_before_fork,
    after_in_parent=gate.open,
    after_in_child=_after_fork_in_child,
    at_exit=_at_exit,
)
