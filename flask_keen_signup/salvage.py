"""What survives when the SQLite file is deleted or replaced under a running app.

:class:`~flask_keen_signup.database.Database` notices the swap (the inode at its path
changed) and, before it closes its connections to the old file, hands one of them to
:func:`salvage`. That reads what the new file needs so that nothing is lost and nobody is
reported twice: every marker (a user already reported stays reported) and every event still
waiting to be sent. The returned function writes them into the new file in one
transaction, with the same rules as a login: a marker is added only where the new file
has none, and an event only where the new file has no open or finished row for its user.
"""

from __future__ import annotations

import sqlite3
import typing as t

_MARKERS = "keen_signup_markers"
_OUTBOX = "keen_signup_outbox"


def salvage(old: sqlite3.Connection) -> t.Callable[[sqlite3.Connection], str]:
    """Read the old file's markers and open events; return the writer for the new file."""
    tables = {
        name for (name,) in old.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    markers: list[tuple[t.Any, ...]] = []
    events: list[tuple[t.Any, ...]] = []
    if _MARKERS in tables:
        markers = old.execute(
            f"SELECT collection, user_id, state, claimed_at, confirmed_at FROM {_MARKERS}"
        ).fetchall()
    if _OUTBOX in tables:
        events = old.execute(
            "SELECT collection, user_id, uniqueness_token, body, created_at "
            f"FROM {_OUTBOX} WHERE state IN ('pending', 'confirming') ORDER BY id"
        ).fetchall()

    def write(new: sqlite3.Connection) -> str:
        added_markers = 0
        for row in markers:
            cursor = new.execute(
                f"INSERT INTO {_MARKERS} (collection, user_id, state, claimed_at, confirmed_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (collection, user_id) DO NOTHING",
                row,
            )
            added_markers += cursor.rowcount
        added_events = 0
        for collection, user_id, token, body, created_at in events:
            known = new.execute(
                f"SELECT 1 FROM {_OUTBOX} WHERE uniqueness_token = ? LIMIT 1", (token,)
            ).fetchone()
            if known:
                continue
            new.execute(
                f"INSERT INTO {_OUTBOX} (collection, user_id, uniqueness_token, body, "
                "created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?)",
                (collection, user_id, token, body, created_at, created_at),
            )
            added_events += 1
        return (
            f"{added_events} of {len(events)} queued event(s) and {added_markers} of "
            f"{len(markers)} marker(s) copied from the old file"
        )

    return write


__all__ = ["salvage"]
