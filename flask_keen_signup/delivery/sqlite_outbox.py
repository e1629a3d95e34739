"""The default outbox: two tables in the app's SQLite file, beside the marker ledger.

Sharing the file with the ledger is the point: the request path claims the user *and*
enqueues the event in one ``BEGIN IMMEDIATE`` transaction (:meth:`SQLiteOutbox.enqueue_in`),
so a signup is either fully recorded or not at all, and nothing is lost between the two.

Cost on the request path: one INSERT of pre-serialised compact JSON. The sender's claim is
one short write transaction (``UPDATE ... WHERE id IN (SELECT ... LIMIT) RETURNING``), so
every worker process of a host can run a sender against the same file and no row is ever
leased to two of them.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
import typing as t

from ..database import SENDER_CHUNK_ROWS
from ..database import Database
from ..database import yield_to_writers
from ..exceptions import StoreError
from ..salvage import inventory_due
from ..salvage import take_inventory
from . import DELIVERED
from . import SKIPPED
from . import DeadLetter
from . import ErasedRows
from . import Outbox
from . import OutboxRow
from . import OutboxStats
from . import QueuedEvent

SCHEMA = """
CREATE TABLE IF NOT EXISTS keen_signup_outbox (
    id               INTEGER PRIMARY KEY,
    collection       TEXT    NOT NULL,
    user_id          TEXT    NOT NULL,
    uniqueness_token TEXT    NOT NULL,
    body             TEXT    NOT NULL,
    state            TEXT    NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'confirming', 'delivered', 'skipped')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    created_at       REAL    NOT NULL,
    next_attempt_at  REAL    NOT NULL,
    lease_owner      TEXT,
    last_attempt_at  REAL,
    last_error       TEXT,
    reclaimed        INTEGER NOT NULL DEFAULT 0,
    done_at          REAL,
    first_failed_at  REAL
);
CREATE INDEX IF NOT EXISTS keen_signup_outbox_due
    ON keen_signup_outbox (next_attempt_at) WHERE state IN ('pending', 'confirming');
CREATE INDEX IF NOT EXISTS keen_signup_outbox_done
    ON keen_signup_outbox (done_at) WHERE state IN ('delivered', 'skipped');
CREATE INDEX IF NOT EXISTS keen_signup_outbox_bodies
    ON keen_signup_outbox (done_at) WHERE state IN ('delivered', 'skipped') AND body <> '';
CREATE TABLE IF NOT EXISTS keen_signup_dead_letters (
    id               INTEGER PRIMARY KEY,
    collection       TEXT    NOT NULL,
    user_id          TEXT    NOT NULL,
    uniqueness_token TEXT    NOT NULL,
    body             TEXT    NOT NULL,
    attempts         INTEGER NOT NULL,
    created_at       REAL    NOT NULL,
    reason           TEXT    NOT NULL,
    error_code       TEXT,
    died_at          REAL    NOT NULL
);
CREATE TABLE IF NOT EXISTS keen_signup_outbox_meta (
    key   TEXT PRIMARY KEY,
    value
) WITHOUT ROWID;
"""

_INSERT = (
    "INSERT INTO keen_signup_outbox "
    "(collection, user_id, uniqueness_token, body, created_at, next_attempt_at) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)

_ROW_COLUMNS = (
    "id, collection, user_id, uniqueness_token, body, attempts, created_at, "
    "next_attempt_at, last_error, state, first_failed_at"
)


# Old values are used on the right-hand side of SET, so ``lease_owner IS NOT NULL`` sees
# the previous claim: a pending row still leased when it is claimed again had no outcome
# recorded (its owner died or hung), so this claim is probably a resend.
def _claim_sql(which: str) -> str:
    """Lease the open rows ``which`` picks (a WHERE/ORDER/LIMIT tail) in one UPDATE."""
    return f"""
UPDATE keen_signup_outbox
SET attempts = attempts + 1,
    last_attempt_at = :now,
    next_attempt_at = :now + :lease,
    lease_owner = :owner,
    reclaimed = (lease_owner IS NOT NULL AND state = 'pending')
WHERE id IN (
    SELECT id FROM keen_signup_outbox
    WHERE state IN ('pending', 'confirming') AND {which}
)
RETURNING {_ROW_COLUMNS}, reclaimed
"""


_CLAIM = _claim_sql("next_attempt_at <= :now ORDER BY next_attempt_at LIMIT :limit")

_ANY_DUE = (
    "SELECT 1 FROM keen_signup_outbox "
    "WHERE state IN ('pending', 'confirming') AND next_attempt_at <= ? LIMIT 1"
)

_ANY_BODY = (
    "SELECT 1 FROM keen_signup_outbox WHERE state IN ('delivered', 'skipped') "
    "AND body <> '' AND done_at < ? LIMIT 1"
)

_CLAIM_FLUSH = _claim_sql(
    "(next_attempt_at <= :now OR (lease_owner IS NULL "
    "AND (last_attempt_at IS NULL OR last_attempt_at < :since))) ORDER BY id LIMIT :limit"
)


# Row ids are never reused: a sender that lost its lease may still record an outcome by id,
# and dead letters keep their row's id. SQLite gives a new row the largest id + 1, so the
# newest row is never deleted. Where it would be, it stays, finished: a delivered one as
# delivered, a dead-lettered one as a blank placeholder (state 'skipped', no user, no body;
# its event is in the dead letters). Either is deleted once a newer row exists (_SWEEP,
# without keep_delivered) or by prune_delivered. AUTOINCREMENT would give the same
# guarantee by writing one more page (``sqlite_sequence``) in every signup's transaction;
# files made before this keep it, and the rule is harmless there.
_NOT_NEWEST = "id < (SELECT MAX(id) FROM keen_signup_outbox)"
_SWEEP = f"DELETE FROM keen_signup_outbox WHERE state IN ('delivered', 'skipped') AND {_NOT_NEWEST}"
#: The placeholder a dead-lettered newest row leaves (see above).
_PLACEHOLDER = (
    "UPDATE keen_signup_outbox SET state = 'skipped', user_id = '', uniqueness_token = '', "
    "body = '', lease_owner = NULL, done_at = ?, last_error = 'placeholder keeping the id of "
    "a dead letter' WHERE id = ?"
)


def _bump(conn: sqlite3.Connection, key: str, by: int) -> None:
    if by:
        conn.execute(
            "INSERT INTO keen_signup_outbox_meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
            (key, by),
        )


def _set(conn: sqlite3.Connection, key: str, value: object) -> None:
    conn.execute(
        "INSERT INTO keen_signup_outbox_meta (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def _placeholders(count: int) -> str:
    return ",".join("?" * count)


def _chunks(ids: t.Sequence[int], size: int = 500) -> t.Iterator[t.Sequence[int]]:
    # Stay far below SQLite's limit on bound parameters.
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


class SQLiteOutbox(Outbox):
    """The outbox tables in ``database``.

    :param keep_delivered: keep delivered rows (with their body) until
        :meth:`prune_delivered`, for audits and ``status``; ``False`` deletes each row as
        soon as Keen accepts it (the delivered counter is kept either way).
    """

    def __init__(self, database: Database, *, keep_delivered: bool = True) -> None:
        self.database = database
        self.keep_delivered = keep_delivered
        database.add_schema(SCHEMA)
        #: Whether :meth:`_upgrade` ran (on the first claim: not here, where the file may
        #: not be checked yet; only the sender's claims and retries use the new column).
        self._upgraded = False

    def _upgrade(self) -> None:
        """Bring a file made by an older version up to :data:`SCHEMA` (once; idempotent).

        ``CREATE TABLE IF NOT EXISTS`` leaves an existing table as it is, so columns added
        since are added here: ``first_failed_at`` (``KEEN_SIGNUP_RETRY_FOR`` counts from
        it). In the write transaction, so that processes starting together add it once.
        """
        if self._upgraded:
            return
        with self._write() as conn:
            columns = {row[1] for row in conn.execute("PRAGMA table_info(keen_signup_outbox)")}
            if "first_failed_at" not in columns:
                conn.execute("ALTER TABLE keen_signup_outbox ADD COLUMN first_failed_at REAL")
        self._upgraded = True

    def __repr__(self) -> str:
        return f"<SQLiteOutbox {self.database.path!r}>"

    # -- request path -----------------------------------------------------------------

    def enqueue_in(
        self, conn: sqlite3.Connection, event: QueuedEvent, *, now: float | None = None
    ) -> int:
        """Enqueue inside the caller's open transaction (see :meth:`Database.transaction`).

        One INSERT of the JSON the event was serialised to when it was created.
        """
        now = time.time() if now is None else now
        cursor = conn.execute(
            _INSERT,
            (
                event.collection,
                event.user_id,
                event.uniqueness_token,
                event.body_json,
                now,
                now,
            ),
        )
        return int(cursor.lastrowid or 0)

    def enqueue(self, event: QueuedEvent, *, now: float | None = None) -> int:
        try:
            with self.database.transaction() as conn:
                return self.enqueue_in(conn, event, now=now)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot enqueue in the outbox: {exc}") from exc

    # -- sender -----------------------------------------------------------------------

    def claim_due(
        self,
        limit: int,
        *,
        now: float,
        lease_seconds: float,
        owner: str,
        flush_since: float | None = None,
    ) -> list[OutboxRow]:
        self._upgrade()
        # Before the sender's next batch (or its idle poll): the WAL is copied into the
        # file here, on the sender's connection, rather than by a login's COMMIT.
        self._checkpoint()
        if flush_since is None and not self._read(_ANY_DUE, (now,)):
            return []  # the idle poll stays a read: no write lock taken every interval
        params = {"now": now, "lease": lease_seconds, "owner": owner}
        sql = _CLAIM
        if flush_since is not None:
            sql = _CLAIM_FLUSH
            params["since"] = flush_since
        # In short transactions (SENDER_CHUNK_ROWS rows each), so that a login never waits
        # long for the write lock; a leased row is not due again, so the next one picks
        # the next rows. A zero lease would leave them due: one transaction then.
        step = SENDER_CHUNK_ROWS if lease_seconds > 0 else limit
        records: list[t.Any] = []
        while len(records) < limit:
            want = min(step, limit - len(records))
            if records:
                yield_to_writers()
            with self._write() as conn:
                got = conn.execute(sql, {**params, "limit": want}).fetchall()
                _bump(conn, "resends", sum(r[11] for r in got))
            records += got
            if len(got) < want:
                break
        rows = [
            OutboxRow(
                id=r[0],
                collection=r[1],
                user_id=r[2],
                uniqueness_token=r[3],
                body_json=r[4],
                attempts=r[5],
                created_at=r[6],
                next_attempt_at=r[7],
                last_error=r[8],
                state=r[9],
                first_failed_at=r[10],
            )
            for r in records
        ]
        rows.sort(key=lambda row: row.id)
        return rows

    def _finish(
        self, conn: sqlite3.Connection, ids: t.Sequence[int], state: str, now: float
    ) -> int:
        done = 0
        for chunk in _chunks(ids):
            marks = _placeholders(len(chunk))
            if self.keep_delivered:
                cursor = conn.execute(
                    f"UPDATE keen_signup_outbox SET state = ?, lease_owner = NULL, done_at = ? "
                    f"WHERE id IN ({marks}) AND state IN ('pending', 'confirming')",
                    (state, now, *chunk),
                )
            else:
                cursor = conn.execute(
                    f"DELETE FROM keen_signup_outbox WHERE id IN ({marks}) "
                    f"AND state IN ('pending', 'confirming') AND {_NOT_NEWEST}",
                    tuple(chunk),
                )
                done += cursor.rowcount
                # The newest row stays, finished (see _NOT_NEWEST); older ones kept so go.
                cursor = conn.execute(
                    "UPDATE keen_signup_outbox SET state = ?, lease_owner = NULL, done_at = ? "
                    f"WHERE id IN ({marks}) AND state IN ('pending', 'confirming')",
                    (state, now, *chunk),
                )
            done += cursor.rowcount
        if not self.keep_delivered:
            conn.execute(_SWEEP)
        return done

    def mark_delivered(self, ids: t.Collection[int], *, now: float | None = None) -> None:
        if not ids:
            return
        now = time.time() if now is None else now
        # Short transactions, as in claim_due; a crash between two leaves the rest leased,
        # resent after the lease, and de-duplicated by Keen (the uniqueness token).
        for index, chunk in enumerate(_chunks(list(ids), SENDER_CHUNK_ROWS)):
            if index:
                yield_to_writers()
            with self._write() as conn:
                _bump(conn, DELIVERED, self._finish(conn, chunk, DELIVERED, now))

    def mark_skipped(self, reasons: t.Mapping[int, str], *, now: float | None = None) -> None:
        if not reasons:
            return
        now = time.time() if now is None else now
        with self._write() as conn:
            conn.executemany(
                "UPDATE keen_signup_outbox SET last_error = ? WHERE id = ?",
                [(f"skipped: {reason}", row_id) for row_id, reason in reasons.items()],
            )
            _bump(conn, SKIPPED, self._finish(conn, list(reasons), SKIPPED, now))

    def mark_confirming(
        self, ids: t.Collection[int], *, next_attempt_at: float, error: str
    ) -> None:
        if not ids:
            return
        with self._write() as conn:
            for chunk in _chunks(list(ids)):
                conn.execute(
                    "UPDATE keen_signup_outbox SET state = 'confirming', attempts = 0, "
                    "lease_owner = NULL, next_attempt_at = ?, last_error = ? "
                    f"WHERE id IN ({_placeholders(len(chunk))}) "
                    "AND state IN ('pending', 'confirming')",
                    (next_attempt_at, error, *chunk),
                )
            _set(conn, "last_error", error)

    def mark_retry_many(
        self, items: t.Sequence[tuple[int, float, str]], *, now: float | None = None
    ) -> None:
        if not items:
            return
        now = time.time() if now is None else now
        with self._write() as conn:
            conn.executemany(
                "UPDATE keen_signup_outbox SET lease_owner = NULL, next_attempt_at = ?, "
                "last_error = ?, first_failed_at = COALESCE(first_failed_at, ?) "
                "WHERE id = ? AND state IN ('pending', 'confirming')",
                [(next_at, error, now, row_id) for row_id, next_at, error in items],
            )
            _set(conn, "last_error", items[-1][2])

    def mark_dead_many(
        self, items: t.Sequence[tuple[int, str, str | None]], *, now: float | None = None
    ) -> None:
        if not items:
            return
        now = time.time() if now is None else now
        with self._write() as conn:
            for row_id, reason, error_code in items:
                cursor = conn.execute(
                    "INSERT INTO keen_signup_dead_letters (id, collection, user_id, "
                    "uniqueness_token, body, attempts, created_at, reason, error_code, died_at) "
                    "SELECT id, collection, user_id, uniqueness_token, body, attempts, "
                    "created_at, ?, ?, ? FROM keen_signup_outbox "
                    "WHERE id = ? AND state IN ('pending', 'confirming')",
                    (reason, error_code, now, row_id),
                )
                if cursor.rowcount:
                    deleted = conn.execute(
                        f"DELETE FROM keen_signup_outbox WHERE id = ? AND {_NOT_NEWEST}",
                        (row_id,),
                    ).rowcount
                    if not deleted:  # the newest row (see _NOT_NEWEST)
                        conn.execute(_PLACEHOLDER, (now, row_id))
            _set(conn, "last_error", items[-1][1])

    def release(self, ids: t.Collection[int], *, now: float | None = None) -> None:
        if not ids:
            return
        now = time.time() if now is None else now
        with self._write() as conn:
            for chunk in _chunks(list(ids)):
                conn.execute(
                    "UPDATE keen_signup_outbox SET lease_owner = NULL, next_attempt_at = ?, "
                    "attempts = MAX(0, attempts - 1) "
                    f"WHERE id IN ({_placeholders(len(chunk))}) "
                    "AND state IN ('pending', 'confirming') AND lease_owner IS NOT NULL",
                    (now, *chunk),
                )

    def renew_leases(
        self, ids: t.Collection[int], *, owner: str, now: float, lease_seconds: float
    ) -> int:
        count = 0
        with self._write() as conn:
            for chunk in _chunks(sorted(ids)):
                cursor = conn.execute(
                    "UPDATE keen_signup_outbox SET next_attempt_at = ? "
                    f"WHERE id IN ({_placeholders(len(chunk))}) AND lease_owner = ? "
                    "AND state IN ('pending', 'confirming')",
                    (now + lease_seconds, *chunk, owner),
                )
                count += cursor.rowcount
        return count

    def expire_leases(self, is_orphan: t.Callable[[str], bool]) -> int:
        owners = [
            owner
            for (owner,) in self._read(
                "SELECT DISTINCT lease_owner FROM keen_signup_outbox "
                "WHERE state IN ('pending', 'confirming') AND lease_owner IS NOT NULL"
            )
        ]
        orphans = [owner for owner in owners if is_orphan(owner)]
        if not orphans:
            return 0
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE keen_signup_outbox SET next_attempt_at = MIN(next_attempt_at, 0) "
                f"WHERE lease_owner IN ({_placeholders(len(orphans))}) "
                "AND state IN ('pending', 'confirming')",
                orphans,
            )
            return cursor.rowcount

    # -- status and maintenance -------------------------------------------------------

    def pending_count(self) -> int:
        ((count,),) = self._read(
            "SELECT COUNT(*) FROM keen_signup_outbox WHERE state IN ('pending', 'confirming')"
        )
        return int(count)

    def stats(self, now: float | None = None) -> OutboxStats:
        now = time.time() if now is None else now
        ((pending, due, in_flight, oldest),) = self._read(
            "SELECT COUNT(*), "
            "COUNT(*) FILTER (WHERE next_attempt_at <= ?), "
            "COUNT(*) FILTER (WHERE lease_owner IS NOT NULL AND next_attempt_at > ?), "
            "MIN(created_at) "
            "FROM keen_signup_outbox WHERE state IN ('pending', 'confirming')",
            (now, now),
        )
        ((dead,),) = self._read("SELECT COUNT(*) FROM keen_signup_dead_letters")
        meta = dict(self._read("SELECT key, value FROM keen_signup_outbox_meta"))
        return OutboxStats(
            pending=int(pending),
            due=int(due),
            in_flight=int(in_flight),
            delivered=int(meta.get(DELIVERED, 0)),
            skipped=int(meta.get(SKIPPED, 0)),
            dead=int(dead),
            oldest_pending_age=None if oldest is None else max(0.0, now - float(oldest)),
            last_error=meta.get("last_error"),
            resends=int(meta.get("resends", 0)),
        )

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return [
            DeadLetter(*record)
            for record in self._read(
                "SELECT id, collection, user_id, uniqueness_token, body, attempts, created_at, "
                "reason, error_code, died_at FROM keen_signup_dead_letters "
                "ORDER BY died_at, id LIMIT ?",
                (limit,),
            )
        ]

    def retry_dead(self, ids: t.Collection[int] | None = None, *, now: float | None = None) -> int:
        now = time.time() if now is None else now
        where, params = "", [now]
        if ids is not None:
            ids = list(ids)
            if not ids:
                return 0
            where = f"WHERE id IN ({_placeholders(len(ids))})"
            params.extend(ids)
        with self._write() as conn:
            cursor = conn.execute(
                # OR REPLACE: a dead-lettered newest row left a placeholder with its id (see
                # _NOT_NEWEST); no other row can have it.
                "INSERT OR REPLACE INTO keen_signup_outbox (id, collection, user_id, "
                "uniqueness_token, "
                "body, state, attempts, created_at, next_attempt_at, last_error) "
                "SELECT id, collection, user_id, uniqueness_token, body, 'pending', 0, "
                f"created_at, ?, reason FROM keen_signup_dead_letters {where}",
                params,
            )
            moved = cursor.rowcount
            conn.execute(f"DELETE FROM keen_signup_dead_letters {where}", params[1:])
        return moved

    def prune_delivered(self, older_than_seconds: float, *, now: float | None = None) -> int:
        now = time.time() if now is None else now
        with self._write() as conn:
            cursor = conn.execute(
                "DELETE FROM keen_signup_outbox WHERE state IN ('delivered', 'skipped') "
                f"AND done_at < ? AND {_NOT_NEWEST}",
                (now - older_than_seconds,),
            )
            return cursor.rowcount

    def drop_delivered_bodies(
        self, older_than_seconds: float, *, now: float | None = None
    ) -> int:
        # The partial index keen_signup_outbox_bodies holds only finished rows that still
        # have a body, so the periodic pass costs one index probe when there is nothing to
        # drop, however many delivered rows the file keeps.
        now = time.time() if now is None else now
        cutoff = now - older_than_seconds
        if not self._read(_ANY_BODY, (cutoff,)):
            return 0
        with self._write() as conn:
            dropped: int = conn.execute(
                "UPDATE keen_signup_outbox SET body = '' WHERE state IN ('delivered', "
                "'skipped') AND body <> '' AND done_at < ?",
                (cutoff,),
            ).rowcount
        self.database.scrub()  # the old bodies are still in the WAL (privacy.md)
        return dropped

    def forget_user(
        self, collection: str, user_id: str, *, erased_id: str, now: float | None = None
    ) -> ErasedRows:
        now = time.time() if now is None else now
        key = (collection, user_id)
        with self._write() as conn:
            skipped = conn.execute(
                "UPDATE keen_signup_outbox SET state = 'skipped', lease_owner = NULL, "
                "done_at = ?, last_error = 'skipped: erased on request', user_id = ?, "
                "body = '' WHERE collection = ? AND user_id = ? "
                "AND state IN ('pending', 'confirming')",
                (now, erased_id, *key),
            ).rowcount
            _bump(conn, SKIPPED, skipped)
            erased = conn.execute(
                "UPDATE keen_signup_outbox SET user_id = ?, body = '' "
                "WHERE collection = ? AND user_id = ?",
                (erased_id, *key),
            ).rowcount
            dead = conn.execute(
                "DELETE FROM keen_signup_dead_letters WHERE collection = ? AND user_id = ?", key
            ).rowcount
            # The last error may quote the user's event (a dead letter's reason).
            conn.execute("DELETE FROM keen_signup_outbox_meta WHERE key = 'last_error'")
        self.database.scrub()  # their rows as they were are still in the WAL (privacy.md)
        return ErasedRows(skipped=skipped, erased=erased, dead_letters=dead)

    def close(self) -> None:
        self.database.close()

    # -- helpers ----------------------------------------------------------------------

    def _checkpoint(self) -> None:
        """Checkpoint the WAL from the sender's connection (see :meth:`Database.checkpoint`).

        Only sender-side methods call this, so the login path's COMMITs are spared the
        checkpoint SQLite would otherwise run in whichever commit crosses its threshold.
        Best effort: a failure leaves the backstop (``wal_autocheckpoint``) to do it.
        """
        try:
            self.database.checkpoint()
            if inventory_due(self.database.path):
                # What a damaged file would lose, counted now and then (see salvage).
                with self.database.reading() as conn:
                    take_inventory(conn)
        except (sqlite3.Error, StoreError):
            pass

    def _read(self, sql: str, params: t.Sequence[object] = ()) -> list[t.Any]:
        try:
            with self.database.reading() as conn:
                return conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the outbox: {exc}") from exc

    @contextlib.contextmanager
    def _write(self) -> t.Iterator[sqlite3.Connection]:
        """``database.transaction()`` with sqlite3 errors turned into :class:`StoreError`."""
        try:
            with self.database.transaction() as conn:
                yield conn
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write to the outbox: {exc}") from exc


__all__ = ["SCHEMA", "SQLiteOutbox"]
