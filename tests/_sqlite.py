"""A SQLite connection for a test's own look at a file, closed when the block ends.

``with sqlite3.connect(path) as conn:`` commits or rolls back at the end of the block but
never closes the connection: Python 3.13 then warns (``ResourceWarning: unclosed
database``) when it is collected, in whichever test runs at that moment, and the suite
runs with warnings as errors.
"""

from __future__ import annotations

import contextlib
import sqlite3
import typing as t


@contextlib.contextmanager
def open_sqlite(path: str, **kwargs: t.Any) -> t.Iterator[sqlite3.Connection]:
    """``sqlite3.connect(path, **kwargs)``: committed if the block ends well, rolled
    back if it raises, closed either way."""
    conn = sqlite3.connect(path, **kwargs)
    try:
        with conn:
            yield conn
    finally:
        conn.close()
