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
import json
import sqlite3
import time
import typing as t

from ..database import Database
from ..database_transaction import SENDER_CHUNK_ROWS
from ..database_transaction import yield_to_writers
from ..exceptions import StoreError
from ..salvage import inventory_due
from ..salvage import take_inventory
from . import sqlite_schema as schema
from .base import DeadLetter
from .base import ErasedRows
from .base import OutboxRow
from .base import QueuedEvent
from .outbox import Outbox
from .sqlite_schema import SCHEMA as SCHEMA


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
        fields = (event.collection, event.user_id, event.uniqueness_token, event.body_json)
        return int(conn.execute(schema.INSERT, (*fields, now, now)).lastrowid or 0)

    def enqueue(self, event: QueuedEvent, *, now: float | None = None) -> int:
        try:
            with self.database.transaction() as conn:
                return self.enqueue_in(conn, event, now=now)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot enqueue in the outbox: {exc}") from exc

    # -- sender -----------------------------------------------------------------------

    def _lease_due(
        self, limit: int, now: float, until: float, owner: str, flush_since: float | None
    ) -> list[OutboxRow]:
        self._upgrade()
        # Before the sender's next batch (or its idle poll): the WAL is copied into the
        # file here, on the sender's connection, rather than by a login's COMMIT.
        self._checkpoint()
        if flush_since is None and not self._read(schema.ANY_DUE, (now,)):
            return []  # the idle poll stays a read: no write lock taken every interval
        sql = schema.CLAIM if flush_since is None else schema.CLAIM_FLUSH
        params = {"now": now, "until": until, "owner": owner, "since": flush_since}
        # In short transactions (SENDER_CHUNK_ROWS rows each), so that a login never waits
        # long for the write lock; a leased row is not due again, so the next one picks
        # the next rows. A zero lease would leave them due: one transaction then.
        step = SENDER_CHUNK_ROWS if until > now else limit
        records: list[t.Any] = []
        while len(records) < limit:
            want = min(step, limit - len(records))
            if records:
                yield_to_writers()
            with self._write() as conn:
                got = conn.execute(sql, {**params, "limit": want}).fetchall()
                schema.bump(conn, "resends", sum(r[11] for r in got))
            records += got
            if len(got) < want:
                break
        return [OutboxRow(*r[:11]) for r in records]

    def _set_done(self, state: str, ids: list[int], reasons: list[str] | None, now: float) -> None:
        # Delivered rows in short transactions, as in _lease_due; a crash between two
        # leaves the rest leased, resent after the lease, and de-duplicated by Keen (the
        # uniqueness token). Skipped ones (a hook's few) in one.
        step = SENDER_CHUNK_ROWS if reasons is None else len(ids)
        for start in range(0, len(ids), step):
            if start:
                yield_to_writers()
            chunk = ids[start : start + step]
            marks = json.dumps(chunk)
            with self._write() as conn:
                if reasons is not None:
                    conn.executemany(
                        "UPDATE keen_signup_outbox SET last_error = ? WHERE id = ?",
                        [(f"skipped: {why}", i) for i, why in zip(chunk, reasons, strict=True)],
                    )
                done = 0
                if not self.keep_delivered:  # the newest row stays, finished (NOT_NEWEST)
                    done = conn.execute(
                        f"DELETE FROM keen_signup_outbox WHERE {schema.IDS} AND {schema.OPEN} "
                        f"AND {schema.NOT_NEWEST}",
                        (marks,),
                    ).rowcount
                done += conn.execute(schema.FINISH, (state, now, marks)).rowcount
                if not self.keep_delivered:
                    conn.execute(schema.SWEEP)
                schema.bump(conn, state, done)

    def _set_confirming(self, ids: list[int], next_attempt_at: float, error: str) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE keen_signup_outbox SET state = 'confirming', attempts = 0, "
                f"lease_owner = NULL, next_attempt_at = ?, last_error = ? WHERE {schema.IDS} "
                f"AND {schema.OPEN}",
                (next_attempt_at, error, json.dumps(ids)),
            )
            schema.set_last_error(conn, error)

    def _set_retry(self, items: list[tuple[int, float, str]], now: float) -> None:
        with self._write() as conn:
            conn.executemany(
                "UPDATE keen_signup_outbox SET lease_owner = NULL, next_attempt_at = ?, "
                "last_error = ?, first_failed_at = COALESCE(first_failed_at, ?) "
                f"WHERE id = ? AND {schema.OPEN}",
                [(next_at, error, now, row_id) for row_id, next_at, error in items],
            )
            schema.set_last_error(conn, items[-1][2])

    def _to_dead(self, items: list[tuple[int, str, str | None]], now: float) -> None:
        with self._write() as conn:
            for row_id, reason, error_code in items:
                cursor = conn.execute(
                    "INSERT INTO keen_signup_dead_letters (id, collection, user_id, "
                    "uniqueness_token, body, attempts, created_at, reason, error_code, died_at) "
                    "SELECT id, collection, user_id, uniqueness_token, body, attempts, "
                    f"created_at, ?, ?, ? FROM keen_signup_outbox WHERE id = ? AND {schema.OPEN}",
                    (reason, error_code, now, row_id),
                )
                if cursor.rowcount:
                    deleted = conn.execute(
                        f"DELETE FROM keen_signup_outbox WHERE id = ? AND {schema.NOT_NEWEST}",
                        (row_id,),
                    ).rowcount
                    if not deleted:  # the newest row (see schema.NOT_NEWEST)
                        conn.execute(schema.PLACEHOLDER, (now, row_id))
            schema.set_last_error(conn, items[-1][1])

    def _unlease(self, ids: list[int], now: float) -> None:
        self._change(
            "UPDATE keen_signup_outbox SET lease_owner = NULL, next_attempt_at = ?, "
            f"attempts = MAX(0, attempts - 1) WHERE {schema.IDS} AND {schema.OPEN} "
            "AND lease_owner IS NOT NULL",
            (now, json.dumps(ids)),
        )

    def _extend_leases(self, ids: list[int], owner: str, until: float) -> int:
        return self._change(
            "UPDATE keen_signup_outbox SET next_attempt_at = ? "
            f"WHERE {schema.IDS} AND lease_owner = ? AND {schema.OPEN}",
            (until, json.dumps(ids), owner),
        )

    def _lease_owners(self) -> list[str]:
        return [
            owner
            for (owner,) in self._read(
                "SELECT DISTINCT lease_owner FROM keen_signup_outbox "
                f"WHERE {schema.OPEN} AND lease_owner IS NOT NULL"
            )
        ]

    def _expire_owners(self, owners: list[str]) -> int:
        return self._change(
            "UPDATE keen_signup_outbox SET next_attempt_at = MIN(next_attempt_at, 0) "
            f"WHERE lease_owner IN (SELECT value FROM json_each(?)) AND {schema.OPEN}",
            (json.dumps(owners),),
        )

    # -- status and maintenance -------------------------------------------------------

    def pending_count(self) -> int:
        ((count,),) = self._read(f"SELECT COUNT(*) FROM keen_signup_outbox WHERE {schema.OPEN}")
        return int(count)

    def _counts(self, now: float) -> t.Sequence[t.Any]:
        meta = "(SELECT value FROM keen_signup_outbox_meta WHERE key = '{}')".format
        (counts,) = self._read(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE next_attempt_at <= :now), "
            "COUNT(*) FILTER (WHERE lease_owner IS NOT NULL AND next_attempt_at > :now), "
            "MIN(created_at), (SELECT COUNT(*) FROM keen_signup_dead_letters), "
            f"{meta('delivered')}, {meta('skipped')}, {meta('resends')}, "
            f"{meta('last_error')} FROM keen_signup_outbox WHERE {schema.OPEN}",
            {"now": now},
        )
        return t.cast("t.Sequence[t.Any]", counts)

    def _read_dead(self, limit: int) -> list[DeadLetter]:
        return [
            DeadLetter(*record)
            for record in self._read(
                "SELECT id, collection, user_id, uniqueness_token, body, attempts, created_at, "
                "reason, error_code, died_at FROM keen_signup_dead_letters "
                "ORDER BY died_at, id LIMIT ?",
                (limit,),
            )
        ]

    def _replay_dead(self, ids: list[int] | None, now: float) -> int:
        where = "" if ids is None else f"WHERE {schema.IDS}"
        params = () if ids is None else (json.dumps(ids),)
        with self._write() as conn:
            cursor = conn.execute(
                # OR REPLACE: a dead-lettered newest row left a placeholder with its id (see
                # schema.NOT_NEWEST); no other row can have it.
                "INSERT OR REPLACE INTO keen_signup_outbox (id, collection, user_id, "
                "uniqueness_token, body, state, attempts, created_at, next_attempt_at, "
                "last_error) SELECT id, collection, user_id, uniqueness_token, body, "
                f"'pending', 0, created_at, ?, reason FROM keen_signup_dead_letters {where}",
                (now, *params),
            )
            conn.execute(f"DELETE FROM keen_signup_dead_letters {where}", params)
        return cursor.rowcount

    def _delete_done(self, cutoff: float) -> int:
        return self._change(
            "DELETE FROM keen_signup_outbox WHERE state IN ('delivered', 'skipped') "
            f"AND done_at < ? AND {schema.NOT_NEWEST}",
            (cutoff,),
        )

    def _empty_bodies(self, cutoff: float) -> int:
        # The partial index keen_signup_outbox_bodies holds only finished rows that still
        # have a body, so the periodic pass costs one index probe when there is nothing to
        # drop, however many delivered rows the file keeps.
        if not self._read(schema.ANY_BODY, (cutoff,)):
            return 0
        dropped = self._change(
            "UPDATE keen_signup_outbox SET body = '' WHERE state IN ('delivered', "
            "'skipped') AND body <> '' AND done_at < ?",
            (cutoff,),
        )
        self.database.scrub()  # the old bodies are still in the WAL (privacy.md)
        return dropped

    def _erase_user(self, collection: str, user_id: str, erased_id: str, now: float) -> ErasedRows:
        key = (collection, user_id)
        with self._write() as conn:
            skipped = conn.execute(
                "UPDATE keen_signup_outbox SET state = 'skipped', lease_owner = NULL, "
                "done_at = ?, last_error = 'skipped: erased on request', user_id = ?, "
                f"body = '' WHERE collection = ? AND user_id = ? AND {schema.OPEN}",
                (now, erased_id, *key),
            ).rowcount
            schema.bump(conn, "skipped", skipped)
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

    def _read(self, sql: str, params: t.Any = ()) -> list[t.Any]:
        try:
            with self.database.reading() as conn:
                return conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the outbox: {exc}") from exc

    def _change(self, sql: str, params: t.Any) -> int:
        """One statement in a write transaction; the rows it changed."""
        with self._write() as conn:
            return int(conn.execute(sql, params).rowcount)

    @contextlib.contextmanager
    def _write(self) -> t.Iterator[sqlite3.Connection]:
        """``database.transaction()`` with sqlite3 errors turned into :class:`StoreError`."""
        try:
            with self.database.transaction() as conn:
                yield conn
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write to the outbox: {exc}") from exc


__all__ = ["SCHEMA", "SQLiteOutbox"]
