"""``migrate --dry-run`` writes nothing: not even the app's SQLite file.

``init_app`` opens ``KEEN_SIGNUP_DATABASE`` to refuse a bad path at start-up, and that
creates the file (and its directory) when it does not exist yet. Every ``flask`` command
initialises the app before it runs, so a dry run on a fresh checkout would leave
``instance/keen_signup.sqlite3`` behind. This module removes again what this process
created (:data:`flask_keen_signup.database.created_paths`), and only when the file still
holds no row at all: checked and removed under SQLite's exclusive lock, so an app that
started meanwhile on the same path and wrote to it keeps its file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import typing as t

from . import database as database_module

if t.TYPE_CHECKING:  # pragma: no cover
    from .state import SignupState

logger = logging.getLogger(__name__)

#: The threads ``init_app`` starts that may still open the file (see extension.py).
_STARTUP_THREADS = ("flask-keen-signup-known-users",)


def remove_created_database(state: SignupState) -> bool:
    """Remove the SQLite file (and directories) this process created, if still empty.

    Stops the app's sender first (it would open the file again). Returns whether the
    file was removed.
    """
    if not state.parts.uses_database:
        return False
    path = os.path.abspath(state.database.path)
    created = database_module.created_paths
    if path not in created:
        return False  # it was there before: the dry run only read it
    state.sender.shutdown(timeout=1.0)
    for thread in threading.enumerate():
        if thread.name in _STARTUP_THREADS:
            thread.join(timeout=5.0)
    # Nobody uses them any more (the sender is stopped): close them, this thread's first
    # so that it would open a fresh one if asked again.
    with contextlib.suppress(Exception):
        state.database.close()
        state.database._close_all()
    if not _remove_if_empty(path):
        return False
    # init_app made the not-recorded count's file beside it (unrecorded.py): still zero.
    if state.unrecorded.path is not None and not state.unrecorded.read().count:
        with contextlib.suppress(OSError):
            os.unlink(state.unrecorded.path)
    created.remove(path)
    for directory in reversed([p for p in created if path.startswith(p + os.sep)]):
        with contextlib.suppress(OSError):
            os.rmdir(directory)  # only if empty: another file may live there now
            created.remove(directory)
    return True


def _remove_if_empty(path: str) -> bool:
    try:
        conn = sqlite3.connect(path, timeout=5.0, isolation_level=None)
    except sqlite3.Error:
        return False
    try:
        conn.execute("BEGIN EXCLUSIVE")
        tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        for (name,) in tables:
            quoted = '"' + name.replace('"', '""') + '"'
            if conn.execute(f"SELECT EXISTS (SELECT 1 FROM {quoted})").fetchone()[0]:
                return False
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path + suffix)
        return True
    except sqlite3.Error:
        logger.debug("cannot check the database file a dry run created", exc_info=True)
        return False
    finally:
        with contextlib.suppress(sqlite3.Error):
            conn.rollback()
        conn.close()
