"""Noticing that the SQLite file was deleted, replaced or truncated under the running app.

:meth:`~.database.Database._check_file` compares the path's inode and size with the file
its connections have open; when they differ, :func:`file_replaced` closes every connection
of this process to the old file (with the fork gate closed), lets the salvager
(:mod:`.salvage`) read what must survive through them, copies it into the file now at the
path, and says so once: in the log, and in :data:`replacements` for ``health()`` and
``status``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sqlite3
import threading
import time
import typing as t

from . import database_fork_gate as fork_gate

if t.TYPE_CHECKING:  # pragma: no cover
    from .database import Database

#: How long the copy into the new file waits for the write lock, in seconds: it is rare
#: and must not fail on the login path's short timeout (only ``BEGIN`` waits for it).
COPY_TIMEOUT = 10.0

logger = logging.getLogger("flask_keen_signup.database")  # where operators look for it


@dataclasses.dataclass(frozen=True)
class FileReplacement:
    """The file at a :class:`Database`'s path changed under the running process.

    :param how: ``"deleted"`` (nothing at the path any more: a new file was created),
        ``"replaced"`` (another file is there now) or ``"truncated"`` (the file shrank in
        place, which SQLite never does here: the damaged file was removed and a new one
        created).
    :param salvaged: what was copied from the old file into the new one, in words.
    """

    path: str
    how: str
    at: float
    salvaged: str


#: Every replacement this process noticed, oldest first (``health()`` and ``status``).
replacements: list[FileReplacement] = []
_replace_lock = threading.RLock()


def stat_of(path: str) -> tuple[tuple[int, int] | None, int]:
    """``((st_dev, st_ino), st_size)`` of ``path``, or ``(None, 0)`` if nothing is there."""
    try:
        st = os.stat(path)
    except OSError:
        return None, 0
    return (st.st_dev, st.st_ino), st.st_size


def file_replaced(database: Database, how: str) -> None:
    """Close every connection of this process to the old file, copy over what the old
    file still held that the new one needs, and log it once. See
    :meth:`~.database.Database._check_file`.

    A truncated file (``how == "truncated"``: same inode, fewer bytes) is removed once read,
    so that every connection opens a new one: SQLite would otherwise read zeros where the
    cut pages were, and the first new connection would delete the WAL that still holds the
    last commits (it does that to a zero-length database file).

    Runs with the fork gate closed (no thread inside SQLite), so no connection is closed
    under a thread using it, and no connection to the new file is opened while one to the
    old file is still open in this process (both would use the same ``-wal`` and ``-shm``).
    """
    with _replace_lock:
        if database._identity is None or (
            how != "truncated" and database._identity == stat_of(database.path)[0]
        ):
            return  # another thread handled it meanwhile
        path = os.path.abspath(database.path)
        same = [db for db in fork_gate.databases if os.path.abspath(db.path) == path]
        write: t.Callable[[sqlite3.Connection], str] | None = None
        fork_gate.gate.close()
        try:
            # Every one of them: their page caches differ, and after a truncation one may
            # still read a table another cannot.
            old: list[sqlite3.Connection] = []
            for db in same:
                with db._connections_lock:
                    old += [conn for _, conn in db._connections]
            salvager = next((db.on_replaced for db in same if db.on_replaced), None)
            if old and salvager is not None:
                try:
                    write = salvager(old)
                except Exception:  # noqa: BLE001 - reopening matters more than salvaging
                    logger.exception("flask-keen-signup: could not read the old SQLite file")
            fork_gate.close_connections(same)
            if how == "truncated" and stat_of(path)[0] == database._identity:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
            for db in same:
                db._identity = None  # set again, with its size, by the next connection
        finally:
            fork_gate.gate.open()
        summary = "nothing copied"
        if write is not None:
            copied = _copy(database, write)
            if copied is None:
                # Another process may still hold the old -wal/-shm: try again shortly.
                unsalvaged.append((database, write, 0))
                summary = "copy failed; retrying (see the warning above)"
            else:
                summary = copied
        replacements.append(FileReplacement(path, how, time.time(), summary))
        logger.error(
            "flask-keen-signup: the SQLite file %s was %s under the running app; every "
            "connection of this process (pid %d) now uses the file at that path (%s)",
            path,
            how,
            os.getpid(),
            summary,
        )


#: Copies from a replaced file that failed (``(database, write, attempts)``), retried by
#: :meth:`~.database.Database._check_file` at most once per check interval.
unsalvaged: list[tuple[Database, t.Callable[[sqlite3.Connection], str], int]] = []
#: How many times a failed copy is retried (about a minute) before it is given up, loudly.
SALVAGE_ATTEMPTS = 120


def _copy(database: Database, write: t.Callable[[sqlite3.Connection], str]) -> str | None:
    """Run ``write`` in one transaction on ``database``; its summary, or None if it failed."""
    try:
        with database.transaction(COPY_TIMEOUT) as conn:
            return write(conn)
    except Exception:  # noqa: BLE001 - reported by the caller; retried
        logger.warning("flask-keen-signup: could not copy the old file's rows", exc_info=True)
        return None


def retry_copies() -> None:
    with _replace_lock:
        pending = list(unsalvaged)
        unsalvaged.clear()
    for database, write, attempts in pending:
        summary = _copy(database, write)
        if summary is not None:
            path = os.path.abspath(database.path)
            with _replace_lock:  # the file's last replacement says what was copied now
                last = max(i for i, r in enumerate(replacements) if r.path == path)
                replacements[last] = dataclasses.replace(replacements[last], salvaged=summary)
            logger.warning(
                "flask-keen-signup: the rows of the replaced SQLite file %s are copied now (%s)",
                database.path,
                summary,
            )
        elif attempts + 1 >= SALVAGE_ATTEMPTS:
            logger.error(
                "flask-keen-signup: gave up copying the rows of the replaced SQLite file %s; "
                "signups queued in it and not delivered must be backfilled",
                database.path,
            )
        else:
            with _replace_lock:
                unsalvaged.append((database, write, attempts + 1))
