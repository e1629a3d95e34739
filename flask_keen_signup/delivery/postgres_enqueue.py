"""The request path's writes into the ``postgres`` outbox (:class:`PostgresEnqueue`).

A login's claim-and-enqueue is one statement (``WITH claimed AS (INSERT INTO markers …)
INSERT INTO outbox …``), on the extension's pool or inside the app's own transaction;
each also runs ``pg_notify`` (transactional: it fires at commit) to wake the senders.
The sender's side is :class:`~.postgres_outbox.PostgresOutbox`, which inherits this.
"""

from __future__ import annotations

import time
import typing as t

from ..postgres import PostgresDatabase
from ..postgres import driver_error
from ..postgres_pools import WORKER
from ..stores.postgres import PostgresStore
from ..stores.postgres import execute
from .base import QueuedEvent

T = t.TypeVar("T")


class PostgresEnqueue:
    """Enqueueing into the outbox tables in ``database``."""

    def __init__(self, database: PostgresDatabase) -> None:
        self.database = database
        d = database.table
        self._outbox, self._dead, self._meta = d("outbox"), d("dead_letters"), d("outbox_meta")
        self._insert = (
            f"INSERT INTO {self._outbox} (collection, user_id, uniqueness_token, body, "
            "created_at, next_attempt_at) "
        )
        self._notify = f"pg_notify('{database.channel}', '')"

    def enqueue(self, event: QueuedEvent, *, now: float | None = None) -> int:
        now = time.time() if now is None else now
        row = self.database.run(
            f"WITH q AS ({self._insert} VALUES (%s, %s, %s, %s, %s, %s) RETURNING id) "
            f"SELECT id, {self._notify} FROM q",
            (event.collection, event.user_id, event.uniqueness_token, event.body_json, now, now),
            what="enqueue in the outbox",
            fetch="one",
        )
        return int(row[0])

    def claim_and_enqueue_sql(self, store: PostgresStore) -> str:
        """The one statement that claims a user's marker and, only if won, queues the event.

        ``WITH claimed AS (INSERT INTO markers … ON CONFLICT DO NOTHING RETURNING …)
        INSERT INTO outbox … SELECT … FROM claimed``, then ``pg_notify``: all or nothing.
        """
        claimed = store.claim_sql(
            "%(marker_collection)s", "%(user_id)s", "%(erased)s", returning="user_id"
        )
        return (
            f"WITH claimed AS ({claimed}), "
            f"queued AS ({self._insert} SELECT %(collection)s, user_id, %(token)s, %(body)s, "
            "%(now)s, %(now)s FROM claimed RETURNING id) "
            f"SELECT id, {self._notify} FROM queued"
        )

    def claim_and_enqueue(
        self,
        store: PostgresStore,
        user_id: str,
        event: QueuedEvent,
        *,
        now: float | None = None,
        connection: t.Any = None,
        savepoint: bool = True,
    ) -> bool:
        """Claim ``user_id``'s marker in ``store`` and queue ``event``: one statement.

        :param connection: run it on the app's own connection (psycopg 3, or a SQLAlchemy
            ``Connection``), inside the app's transaction: it commits or rolls back with
            the app's writes, and its NOTIFY wakes the senders only at commit.
        :param savepoint: with ``connection``, run in :meth:`in_app_transaction` (a failure
            rolls back only this statement, never the app's transaction). ``False`` when
            the caller already is inside it.
        :returns: ``True`` if this call claimed the user (and queued the event).
        :raises StoreError: PostgreSQL failed; then nothing was written.
        """
        params = {
            "marker_collection": store.collection,
            "user_id": user_id,
            "erased": store.erased(user_id),
            "collection": event.collection,
            "token": event.uniqueness_token,
            "body": event.body_json,
            "now": time.time() if now is None else now,
        }
        sql = self.claim_and_enqueue_sql(store)
        if connection is not None:

            def claim() -> bool:
                return execute(connection, sql, params).fetchone() is not None

            return self.in_app_transaction(connection, claim) if savepoint else claim()
        row = self.database.run(sql, params, what="claim and enqueue", fetch="one")
        return row is not None

    def claim_and_enqueue_many(
        self, store: PostgresStore, events: t.Sequence[QueuedEvent], *, now: float | None = None
    ) -> list[bool]:
        """:meth:`claim_and_enqueue` for many users in one statement, on the sender's pool
        (the spool's drain, on the sender thread). Returns, per event, whether its user
        was claimed here (and its event queued); a user twice in ``events`` wins once.
        """
        if not events:
            return []
        claimed = store.claim_sql(
            "%(marker_collection)s",
            "i.user_id",
            "i.erased",
            returning="user_id",
            source="FROM items i",
        )
        unique = {event.user_id: event for event in reversed(events)}.values()
        what = "claim and enqueue spooled signups"
        won = self._enqueue_claimed(store, claimed, unique, now, what)
        result = []
        for event in events:  # the first event of a user carries the win
            result.append(event.user_id in won)
            won.discard(event.user_id)
        return result

    def report_confirmed(
        self, store: PostgresStore, events: t.Sequence[QueuedEvent], *, now: float | None = None
    ) -> int:
        """For each event: create its user's *confirmed* marker and queue the event, both
        or neither, all in one statement; users whose marker exists are left alone.

        For bulk reporting (``flask keen-signup migrate``): their markers are confirmed at
        once, so a later login never reports them, whatever the sender does. Returns how
        many events were queued.
        """
        if not events:
            return 0
        claimed = (
            f"INSERT INTO {store.database.table('markers')} "
            "(collection, user_id, state, claimed_at, confirmed_at) "
            "SELECT %(marker_collection)s, user_id, 'confirmed', %(now)s, %(now)s FROM items "
            "ON CONFLICT (collection, user_id) DO NOTHING RETURNING user_id"
        )
        unique = {event.user_id: event for event in events}.values()
        return len(self._enqueue_claimed(store, claimed, unique, now, "report users"))

    def _enqueue_claimed(
        self,
        store: PostgresStore,
        claimed: str,
        events: t.Iterable[QueuedEvent],
        now: float | None,
        what: str,
    ) -> set[str]:
        """In one statement: ``events`` as the ``items`` table, the ``claimed`` statement
        (``RETURNING user_id``) on it, and the event of each user it returns queued.
        Returns those users."""
        events = list(events)
        rows = self._fetch(
            f"""
WITH items AS (
    SELECT * FROM unnest(%(users)s::text[], %(collections)s::text[], %(tokens)s::text[],
                         %(bodies)s::text[], %(erased)s::text[])
        AS i(user_id, collection, token, body, erased)
), claimed AS ({claimed}
), queued AS (
    {self._insert}
    SELECT i.collection, i.user_id, i.token, i.body, %(now)s, %(now)s
    FROM items i JOIN claimed c ON c.user_id = i.user_id RETURNING user_id
)
SELECT user_id, {self._notify} FROM queued""",
            {
                "users": [e.user_id for e in events],
                "collections": [e.collection for e in events],
                "tokens": [e.uniqueness_token for e in events],
                "bodies": [e.body_json for e in events],
                "erased": [store.erased(e.user_id) for e in events],
                "marker_collection": store.collection,
                "now": time.time() if now is None else now,
            },
            what,
        )
        return {user_id for (user_id, _) in rows}

    def in_app_transaction(self, connection: t.Any, work: t.Callable[[], T]) -> T:
        """Run ``work`` (statements on the app's ``connection``) in a savepoint.

        A database error rolls back the savepoint only, so the app's transaction stays
        usable, and comes out as a :class:`StoreError` without the driver's message
        details (SQLAlchemy's carry the statement's parameters: personal data).
        """
        failure = None
        try:
            return in_savepoint(connection, work)
        except Exception as exc:
            cause = driver_error(exc)
            if cause is None:
                raise
            failure = self.database.error("record a signup on the app's connection", cause)
        raise failure  # outside the except block: not chained to a message with data

    def _run(self, sql: str, params: t.Any, what: str) -> int:
        """A statement of the sender's side, on the worker pool: how many rows it changed."""
        return int(self.database.run(sql, params, what=what, role=WORKER))

    def _fetch(self, sql: str, params: t.Any, what: str, fetch: str = "all") -> t.Any:
        """A query of the sender's side, on the worker pool: ``fetch`` ``one`` or ``all``."""
        return self.database.run(sql, params, what=what, role=WORKER, fetch=fetch)


def in_savepoint(conn: t.Any, work: t.Callable[[], T]) -> T:
    """Run ``work`` on the app's connection so that its failure leaves the app's
    transaction usable: a savepoint (SQLAlchemy's ``begin_nested``), or nothing when a
    psycopg connection is in autocommit mode (the statement is its own transaction).
    """
    if hasattr(conn, "begin_nested"):  # SQLAlchemy Connection
        with conn.begin_nested():
            return work()
    if getattr(conn, "autocommit", False):
        return work()
    conn.execute("SAVEPOINT keen_signup")
    try:
        result = work()
    except BaseException:
        conn.execute("ROLLBACK TO SAVEPOINT keen_signup")
        raise
    conn.execute("RELEASE SAVEPOINT keen_signup")
    return result
