"""The default marker store: a ledger table in the app's SQLite file.

One file is shared by all worker processes of a host. A claim is one
``INSERT ... ON CONFLICT DO NOTHING`` inside ``BEGIN IMMEDIATE``: SQLite serialises writers,
so exactly one thread or process wins. The claim can run inside a caller's transaction
(:meth:`SQLiteStore.claim_in`) so that the background mode claims the user and queues the
event atomically: either both happen or neither.
"""

from __future__ import annotations

import sqlite3
import time
import typing as t

from ..database import Database
from ..database_transaction import SENDER_CHUNK_ROWS
from ..database_transaction import yield_to_writers
from ..exceptions import StoreError
from . import MarkerState
from . import MarkerStore
from . import erased_user_id

SCHEMA = """
CREATE TABLE IF NOT EXISTS keen_signup_markers (
    collection   TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('pending', 'confirmed')),
    claimed_at   REAL NOT NULL,
    confirmed_at REAL,
    PRIMARY KEY (collection, user_id)
) WITHOUT ROWID;
"""


_LOOKUP = "SELECT state FROM keen_signup_markers WHERE collection = ? AND user_id = ?"
# Under the id, or under its hash once the user was erased (forget()): both probes of the
# primary key in one statement; the second runs only when the first finds nothing.
_LOOKUP_EITHER = f"{_LOOKUP} UNION ALL {_LOOKUP} LIMIT 1"
_CLAIM = (
    "INSERT INTO keen_signup_markers (collection, user_id, state, claimed_at) "
    "VALUES (?, ?, 'pending', ?) ON CONFLICT (collection, user_id) DO NOTHING"
)

_CONFIRM = (
    "INSERT INTO keen_signup_markers (collection, user_id, state, claimed_at, confirmed_at) "
    "VALUES (?, ?, 'confirmed', ?, ?) ON CONFLICT (collection, user_id) "
    "DO UPDATE SET state = 'confirmed', confirmed_at = excluded.confirmed_at"
)


_CONFIRM_IF_ABSENT = (
    "INSERT INTO keen_signup_markers (collection, user_id, state, claimed_at, confirmed_at) "
    "VALUES (?, ?, 'confirmed', ?, ?) ON CONFLICT (collection, user_id) DO NOTHING"
)


class SQLiteStore(MarkerStore):
    """Markers in the ``keen_signup_markers`` table of ``database``.

    :param collection: markers are per collection, like Keen's uniqueness tokens.
    :param reclaim_after: a *pending* marker older than this many seconds may be claimed
        again. Sync mode sets it just above the Keen timeouts, so a process killed in the
        middle of a send does not block the user forever. Background mode leaves it
        ``None``: there a pending marker means "queued in the outbox", which is durable.
    """

    remembered = True

    def __init__(
        self, database: Database, collection: str, *, reclaim_after: float | None = None
    ) -> None:
        self.database = database
        self.collection = collection
        self.reclaim_after = reclaim_after
        database.add_schema(SCHEMA)

    def __repr__(self) -> str:
        return f"<SQLiteStore {self.database.path!r} collection={self.collection!r}>"

    def lookup(self, user_id: str) -> MarkerState | None:
        collection = self.collection
        params = (collection, user_id, collection, erased_user_id(collection, user_id))
        try:
            with self.database.reading() as conn:
                row = conn.execute(_LOOKUP_EITHER, params).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the marker ledger: {exc}") from exc
        return MarkerState(row[0]) if row else None

    def claim_in(self, conn: sqlite3.Connection, user_id: str, *, now: float | None = None) -> bool:
        """Claim inside the caller's open transaction (see :meth:`Database.transaction`)."""
        now = time.time() if now is None else now
        cursor = conn.execute(_CLAIM, (self.collection, user_id, now))
        if cursor.rowcount == 1:
            # New under its id; but an erased user's marker is under its hash (forget()):
            # then the claim is lost, and undone in this same transaction.
            erased = (self.collection, erased_user_id(self.collection, user_id))
            if conn.execute(_LOOKUP, erased).fetchone() is None:
                return True
            conn.execute(
                "DELETE FROM keen_signup_markers WHERE collection = ? AND user_id = ?",
                (self.collection, user_id),
            )
            return False
        if self.reclaim_after is None:
            return False
        cursor = conn.execute(
            "UPDATE keen_signup_markers SET claimed_at = ? WHERE collection = ? AND user_id = ? "
            "AND state = 'pending' AND claimed_at < ?",
            (now, self.collection, user_id, now - self.reclaim_after),
        )
        return cursor.rowcount == 1

    def claim(self, user_id: str) -> bool:
        try:
            with self.database.transaction() as conn:
                return self.claim_in(conn, user_id)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot claim in the marker ledger: {exc}") from exc

    def confirm_many(self, user_ids: t.Iterable[str]) -> None:
        """Confirm many users (the sender, after a delivered batch), in short transactions."""
        now = time.time()
        rows = [(self.collection, user_id, now, now) for user_id in user_ids]
        if not rows:
            return
        try:
            # Short transactions, so that a login never waits long for the write lock
            # (see SENDER_CHUNK_ROWS); each confirmation stands alone.
            for start in range(0, len(rows), SENDER_CHUNK_ROWS):
                if start:
                    yield_to_writers()
                with self.database.transaction() as conn:
                    conn.executemany(_CONFIRM, rows[start : start + SENDER_CHUNK_ROWS])
        except sqlite3.Error as exc:
            raise StoreError(f"cannot confirm in the marker ledger: {exc}") from exc

    def confirm(self, user_id: str) -> None:
        self.confirm_many([user_id])

    def release(self, user_id: str) -> None:
        try:
            with self.database.transaction() as conn:
                conn.execute(
                    "DELETE FROM keen_signup_markers WHERE collection = ? AND user_id = ? "
                    "AND state = 'pending'",
                    (self.collection, user_id),
                )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot release in the marker ledger: {exc}") from exc

    def forget(self, user_id: str) -> bool:
        """Keep the marker under :func:`erased_user_id` instead of the id (confirmed)."""
        erased = erased_user_id(self.collection, user_id)
        now = time.time()
        try:
            with self.database.transaction() as conn:
                hashed = (
                    conn.execute(
                        "UPDATE OR REPLACE keen_signup_markers SET user_id = ?, "
                        "state = 'confirmed', confirmed_at = COALESCE(confirmed_at, ?) "
                        "WHERE collection = ? AND user_id = ?",
                        (erased, now, self.collection, user_id),
                    ).rowcount
                    > 0
                )
                if not hashed:
                    # No marker yet (a signup still in the local spool, or none at all):
                    # create the erased one, so a spooled signup is dropped, never sent.
                    conn.execute(_CONFIRM_IF_ABSENT, (self.collection, erased, now, now))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot forget in the marker ledger: {exc}") from exc
        self.database.scrub()  # the marker under the raw id is still in the WAL (privacy.md)
        return hashed

    def recent_user_ids(self, states: t.Sequence[str], *, limit: int) -> list[str]:
        """Up to ``limit`` user ids whose marker is in one of ``states``, newest claim first."""
        marks = ",".join("?" * len(states))
        try:
            with self.database.reading() as conn:
                rows = conn.execute(
                    "SELECT user_id FROM keen_signup_markers WHERE collection = ? "
                    f"AND state IN ({marks}) ORDER BY claimed_at DESC LIMIT ?",
                    (self.collection, *states, limit),
                ).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the marker ledger: {exc}") from exc
        return [user_id for (user_id,) in rows]

    def counts(self) -> dict[str, int]:
        """Markers by state, for ``flask keen-signup status``."""
        with self.database.reading() as conn:
            rows = conn.execute(
                "SELECT state, COUNT(*) FROM keen_signup_markers WHERE collection = ? "
                "GROUP BY state",
                (self.collection,),
            ).fetchall()
        return {state: count for state, count in rows}

    def close(self) -> None:
        self.database.close()
