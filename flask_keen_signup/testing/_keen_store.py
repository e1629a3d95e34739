"""Where the Keen emulator keeps events and uniqueness tokens: memory, or a SQLite file.

Both stores make "check the token, then store the event" one atomic step under a lock, so two
concurrent sends of the same token can never both be stored; that is the property the
product's exactly-once guarantee is tested against. The SQLite store survives restarts (for
the offline demo and for crash tests that kill and restart everything).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import typing as t


class PendingEvent(t.NamedTuple):
    """A validated, enriched event on its way into the store."""

    event: dict[str, t.Any]
    token: str | None
    created: float  # receipt time, epoch seconds (drives visibility and token expiry)
    timestamp: float  # keen.timestamp, epoch seconds (drives query timeframes)


class StoredEvent(t.NamedTuple):
    seq: int  # arrival order across all collections
    collection: str
    created: float
    timestamp: float
    event: dict[str, t.Any]


class EventStore:
    """Interface of the two stores. ``add`` is atomic per call."""

    def add(self, collection: str, pending: list[PendingEvent], token_ttl: float) -> list[bool]:
        """Store ``pending`` in order; per item ``True`` if stored, ``False`` if a duplicate.

        A token counts as a duplicate when the same (collection, token) was stored less than
        ``token_ttl`` seconds before this event's receipt time, including earlier in the same
        call.
        """
        raise NotImplementedError

    def load(self, collection: str | None = None) -> list[StoredEvent]:
        """Stored events in arrival order. Memory stores return their own dicts: copy them."""
        raise NotImplementedError

    def collections(self) -> list[str]:
        raise NotImplementedError

    def delete(self, collection: str, seqs: set[int]) -> None:
        raise NotImplementedError

    def clear(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release resources; a later call reopens them."""


class MemoryStore(EventStore):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, list[StoredEvent]] = {}
        self._tokens: dict[tuple[str, str], float] = {}
        self._seq = 0

    def add(self, collection: str, pending: list[PendingEvent], token_ttl: float) -> list[bool]:
        results = []
        with self._lock:
            bucket = self._events.setdefault(collection, [])
            for item in pending:
                if item.token is not None:
                    key = (collection, item.token)
                    seen = self._tokens.get(key)
                    if seen is not None and item.created - seen < token_ttl:
                        results.append(False)
                        continue
                    self._tokens[key] = item.created
                self._seq += 1
                bucket.append(
                    StoredEvent(self._seq, collection, item.created, item.timestamp, item.event)
                )
                results.append(True)
        return results

    def load(self, collection: str | None = None) -> list[StoredEvent]:
        with self._lock:
            if collection is not None:
                return list(self._events.get(collection, ()))
            merged = [e for bucket in self._events.values() for e in bucket]
        merged.sort(key=lambda e: e.seq)
        return merged

    def collections(self) -> list[str]:
        with self._lock:
            return [name for name, bucket in self._events.items() if bucket]

    def delete(self, collection: str, seqs: set[int]) -> None:
        with self._lock:
            bucket = self._events.get(collection, [])
            bucket[:] = [e for e in bucket if e.seq not in seqs]

    def clear(self) -> None:
        with self._lock:
            self._events.clear()
            self._tokens.clear()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS keen_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    project TEXT NOT NULL,
    collection TEXT NOT NULL,
    created REAL NOT NULL,
    timestamp REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS keen_events_by_collection ON keen_events (project, collection);
CREATE TABLE IF NOT EXISTS keen_tokens (
    project TEXT NOT NULL,
    collection TEXT NOT NULL,
    token TEXT NOT NULL,
    seen REAL NOT NULL,
    PRIMARY KEY (project, collection, token)
);
"""


class SQLiteStore(EventStore):
    """Events and tokens in a SQLite file, one connection guarded by a lock.

    One connection (rather than one per thread) keeps writes serialised in-process, which is
    what makes the token check atomic; WAL lets another process read the file meanwhile.
    """

    def __init__(self, path: str, project_id: str) -> None:
        self._path = path
        self._project = project_id
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        with self._lock:
            self._connect()

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            db = sqlite3.connect(self._path, check_same_thread=False, timeout=30)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    def add(self, collection: str, pending: list[PendingEvent], token_ttl: float) -> list[bool]:
        results = []
        rows = []
        with self._lock:
            db = self._connect()
            with db:
                for item in pending:
                    if item.token is not None:
                        key = (self._project, collection, item.token)
                        row = db.execute(
                            "SELECT seen FROM keen_tokens"
                            " WHERE project = ? AND collection = ? AND token = ?",
                            key,
                        ).fetchone()
                        if row is not None and item.created - row[0] < token_ttl:
                            results.append(False)
                            continue
                        db.execute(
                            "INSERT OR REPLACE INTO keen_tokens VALUES (?, ?, ?, ?)",
                            (*key, item.created),
                        )
                    rows.append(
                        (
                            self._project,
                            collection,
                            item.created,
                            item.timestamp,
                            json.dumps(item.event, separators=(",", ":")),
                        )
                    )
                    results.append(True)
                db.executemany(
                    "INSERT INTO keen_events (project, collection, created, timestamp, body)"
                    " VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
        return results

    def load(self, collection: str | None = None) -> list[StoredEvent]:
        sql = "SELECT seq, collection, created, timestamp, body FROM keen_events WHERE project = ?"
        args: tuple[str, ...] = (self._project,)
        if collection is not None:
            sql += " AND collection = ?"
            args += (collection,)
        with self._lock:
            rows = self._connect().execute(sql + " ORDER BY seq", args).fetchall()
        return [StoredEvent(seq, coll, c, ts, json.loads(body)) for seq, coll, c, ts, body in rows]

    def collections(self) -> list[str]:
        with self._lock:
            rows = (
                self._connect()
                .execute(
                    "SELECT collection, MIN(seq) AS first FROM keen_events WHERE project = ?"
                    " GROUP BY collection ORDER BY first",
                    (self._project,),
                )
                .fetchall()
            )
        return [row[0] for row in rows]

    def delete(self, collection: str, seqs: set[int]) -> None:
        with self._lock:
            db = self._connect()
            with db:
                db.executemany("DELETE FROM keen_events WHERE seq = ?", [(s,) for s in seqs])

    def clear(self) -> None:
        with self._lock:
            db = self._connect()
            with db:
                db.execute("DELETE FROM keen_events WHERE project = ?", (self._project,))
                db.execute("DELETE FROM keen_tokens WHERE project = ?", (self._project,))

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __del__(self) -> None:
        # Reopened by a read after stop() (events() stays readable): closed with the
        # emulator, not left to the garbage collector (Python 3.13 warns about that).
        db, self._db = getattr(self, "_db", None), None
        if db is not None:
            db.close()
