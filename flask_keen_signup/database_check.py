"""Is ``KEEN_SIGNUP_DATABASE`` usable? Asked once, at ``init_app``.

A directory where the file should be, a file that is not SQLite, a read-only file system
or a path without write permission cannot heal by itself: the app must not start and
then fail in every login and every flush interval, it must refuse to start with one
sentence naming the key and the reason. Trouble that only begins later (a disk that fills
up, a volume remounted read-only) is the sender's and ``health()``'s to report.
"""

from __future__ import annotations

import os
import sqlite3

from ._text import printable
from .database import Database
from .exceptions import ConfigurationError
from .exceptions import StoreError

_SQLITE_HEADER = b"SQLite format 3\x00"


def _read_only_fs(directory: str) -> bool:
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:  # SQLite will tell
        return False


def problem_with(path: str) -> str | None:
    """Why ``path`` cannot hold the SQLite ledger and outbox, or ``None`` if it looks fine.

    Checks only what the file system can say without opening the database.
    """
    if "\x00" in path:
        return "the path contains a NUL character"
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    if os.path.isdir(path):
        return "it is a directory, not a file"
    if os.path.exists(path) and not os.path.isfile(path):
        return "it is not a regular file"
    if os.path.isfile(path):
        try:
            with open(path, "rb") as f:
                header = f.read(len(_SQLITE_HEADER))
        except OSError as exc:
            return f"it cannot be read ({exc.strerror or type(exc).__name__})"
        if header and header != _SQLITE_HEADER:
            return "it is not a SQLite database (another kind of file is at that path)"
    existing = directory  # the nearest directory that exists (an absolute path's / does)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"{printable(existing, limit=120)} is not a directory"
    if _read_only_fs(existing):
        return "it is on a read-only file system"
    if os.geteuid() != 0:
        if os.path.isfile(path) and not os.access(path, os.R_OK | os.W_OK):
            return "no permission to read and write it"
        if not os.access(existing, os.W_OK | os.X_OK):
            # SQLite writes the -wal and -shm files beside the database.
            return f"no permission to write in {printable(existing, limit=120)}"
    return None


def check_database(database: Database) -> None:
    """Raise :class:`ConfigurationError` if ``database`` cannot be used, else return.

    After the file-system checks, opens this thread's connection (which creates the file
    and the tables) and reads the outbox: a file SQLite calls corrupt or encrypted fails
    here too. Never waits on another process's write lock longer than SQLite's busy
    timeout, and never takes the write lock itself when the file and tables exist.
    """
    where = f"KEEN_SIGNUP_DATABASE ({printable(database.path, limit=200)})"
    problem = problem_with(database.path)
    if problem is None:
        try:
            with database.reading() as conn:
                conn.execute("SELECT name FROM sqlite_master LIMIT 1").fetchall()
        except (StoreError, sqlite3.Error, OSError) as exc:
            problem = printable(str(exc), limit=300)
    if problem is not None:
        raise ConfigurationError(
            f"{where} is not usable: {problem}. Point KEEN_SIGNUP_DATABASE at a file in a "
            "writable directory (it is created with mode 0600), or use another store."
        )
