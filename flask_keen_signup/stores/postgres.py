"""The ``postgres`` marker store: the ``markers`` table in the app's own PostgreSQL.

Use it when the app runs on several hosts and already has PostgreSQL: every host sees the
same markers, and a claim is one ``INSERT … ON CONFLICT DO NOTHING``, so exactly one
caller wins however many threads, processes or hosts race (the primary key decides).
With the ``postgres`` outbox, a new user's claim and event are a single statement
(:meth:`~flask_keen_signup.delivery.postgres_outbox.PostgresOutbox.claim_and_enqueue`),
which may also run inside the app's own transaction.

Times of claims come from the server's clock (``now()``), so hosts whose clocks drift
agree on when a pending claim became stale (sync mode's ``reclaim_after``).
"""

from __future__ import annotations

import typing as t

from ..postgres import PostgresDatabase
from ..postgres_pools import REQUEST
from ..postgres_pools import WORKER
from . import MarkerState
from . import MarkerStore
from . import erased_user_id

if t.TYPE_CHECKING:  # pragma: no cover
    import psycopg

#: The server's clock in seconds, as every ``claimed_at`` / ``confirmed_at`` is stored.
SERVER_NOW = "extract(epoch FROM clock_timestamp())::double precision"


class PostgresStore(MarkerStore):
    """Markers as rows of ``<schema>.markers``, shared by every host of the app.

    :param database: the :class:`~flask_keen_signup.postgres.PostgresDatabase`.
    :param collection: markers are per collection, like Keen's uniqueness tokens.
    :param reclaim_after: a *pending* marker older than this many seconds may be claimed
        again (sync mode). ``None`` (background mode) never reclaims: pending means queued.
    :param close_database: :meth:`close` closes the database's pools.
    """

    remembered = True

    def __init__(
        self,
        database: PostgresDatabase,
        collection: str,
        *,
        reclaim_after: float | None = None,
        close_database: bool = False,
    ) -> None:
        if reclaim_after is not None and reclaim_after < 0:
            raise ValueError("reclaim_after must be >= 0 or None")
        self.database = database
        self.collection = collection
        self.reclaim_after = reclaim_after
        self.close_database = close_database
        markers = database.table("markers")
        # Under the id, or under its hash once the user was erased (forget()): one probe
        # of the primary key for each, in one statement; the second only runs when the
        # first finds nothing (an Append stops at LIMIT 1).
        probe = f"SELECT state FROM {markers} WHERE collection = %s AND user_id = %s"
        self._lookup = f"({probe}) UNION ALL ({probe}) LIMIT 1"
        self._claim = self.claim_sql(
            "%(collection)s", "%(user_id)s", "%(erased)s", returning="1"
        )
        self._confirm = (
            f"INSERT INTO {markers} (collection, user_id, state, claimed_at, confirmed_at) "
            f"SELECT %s, u, 'confirmed', {SERVER_NOW}, {SERVER_NOW} FROM unnest(%s::text[]) u "
            "ON CONFLICT (collection, user_id) DO UPDATE "
            "SET state = 'confirmed', confirmed_at = excluded.confirmed_at"
        )
        self._release = (
            f"DELETE FROM {markers} WHERE collection = %s AND user_id = %s AND state = 'pending'"
        )

    def __repr__(self) -> str:
        return f"<PostgresStore {self.database!r} collection={self.collection!r}>"

    def claim_sql(
        self,
        collection: str,
        user_id: str,
        erased: str,
        *,
        returning: str,
        source: str | None = None,
    ) -> str:
        """The claiming ``INSERT`` for SQL expressions ``collection``, ``user_id`` and
        ``erased`` (the user's :func:`~flask_keen_signup.stores.erased_user_id`).

        Returns a row (``RETURNING returning``) only for the caller that claimed: a new
        marker, or a stale pending one when ``reclaim_after`` is set; never for a user
        erased by ``forget`` (their marker is under the hash). The outbox embeds it in its
        claim-and-enqueue statements. ``source`` (``FROM items i``) claims one user per
        row of a set; its users must be distinct.
        """
        markers = self.database.table("markers")
        values = f"{collection}, {user_id}, 'pending', {SERVER_NOW}"
        not_erased = (
            f"NOT EXISTS (SELECT 1 FROM {markers} e "
            f"WHERE e.collection = {collection} AND e.user_id = {erased})"
        )
        if source is None:
            rows = f"SELECT {values} WHERE {not_erased}"
        else:
            rows = f"SELECT {values} {source} WHERE {not_erased}"
        insert = f"INSERT INTO {markers} AS m (collection, user_id, state, claimed_at) {rows} "
        if self.reclaim_after is None:
            return insert + f"ON CONFLICT (collection, user_id) DO NOTHING RETURNING {returning}"
        stale = f"{SERVER_NOW} - {float(self.reclaim_after)!r}"
        return insert + (
            "ON CONFLICT (collection, user_id) DO UPDATE SET claimed_at = excluded.claimed_at "
            f"WHERE m.state = 'pending' AND m.claimed_at < {stale} RETURNING {returning}"
        )

    def lookup(self, user_id: str) -> MarkerState | None:
        row = self.database.run(
            self._lookup, self._lookup_params(user_id), what="read a marker", fetch="one"
        )
        return MarkerState(row[0]) if row else None

    def lookup_in(self, conn: t.Any, user_id: str) -> MarkerState | None:
        """:meth:`lookup` on the app's own connection (see ``track_claims(connection=)``)."""
        row = execute(conn, self._lookup, self._lookup_params(user_id)).fetchone()
        return MarkerState(row[0]) if row else None

    def _lookup_params(self, user_id: str) -> tuple[str, str, str, str]:
        return (self.collection, user_id, self.collection, self.erased(user_id))

    def erased(self, user_id: str) -> str:
        """The id ``user_id``'s marker has once erased (see :meth:`forget`)."""
        return erased_user_id(self.collection, user_id)

    def claim(self, user_id: str) -> bool:
        row = self.database.run(
            self._claim,
            {"collection": self.collection, "user_id": user_id, "erased": self.erased(user_id)},
            what="claim a marker",
            fetch="one",
        )
        return row is not None

    def confirm(self, user_id: str) -> None:
        self.confirm_many([user_id], role=REQUEST)

    def confirm_many(self, user_ids: t.Iterable[str], *, role: str = WORKER) -> None:
        """Confirm many users in one statement (the sender, after a delivered batch)."""
        users = list(user_ids)
        if users:
            self.database.run(
                self._confirm, (self.collection, users), what="confirm markers", role=role
            )

    def release(self, user_id: str) -> None:
        self.database.run(self._release, (self.collection, user_id), what="release a marker")

    def known(self, user_ids: t.Sequence[str]) -> set[str]:
        """The users among ``user_ids`` that have a marker (any state, erased ones too):
        one indexed read. For bulk tools (``migrate``'s ledger), not the login path."""
        names = {user_id: user_id for user_id in user_ids}
        names.update((self.erased(user_id), user_id) for user_id in user_ids)
        rows = self.database.run(
            f"SELECT user_id FROM {self.database.table('markers')} "
            "WHERE collection = %s AND user_id = ANY(%s)",
            (self.collection, list(names)),
            what="read markers",
            role=WORKER,
            fetch="all",
        )
        return {names[name] for (name,) in rows}

    def mark(self, user_ids: t.Sequence[str]) -> set[str]:
        """Create confirmed markers where none exist, in one statement; return the users
        actually marked (a marker that exists, pending or confirmed, is left alone)."""
        rows = self.database.run(
            f"INSERT INTO {self.database.table('markers')} "
            "(collection, user_id, state, claimed_at, confirmed_at) "
            f"SELECT %s, u, 'confirmed', {SERVER_NOW}, {SERVER_NOW} FROM unnest(%s::text[]) u "
            "ON CONFLICT (collection, user_id) DO NOTHING RETURNING user_id",
            (self.collection, list(dict.fromkeys(user_ids))),
            what="mark users",
            role=WORKER,
            fetch="all",
        )
        return {user_id for (user_id,) in rows}

    def forget(self, user_id: str) -> bool:
        """Erasure: the marker stays, confirmed, under :meth:`erased` instead of the id.

        One statement; with no marker yet (a signup still in a spool, or none) the erased
        one is created, so that signup's claim loses and it is never sent. Returns whether
        a marker held the raw id.
        """
        markers = self.database.table("markers")
        row = self.database.run(
            f"WITH gone AS (DELETE FROM {markers} WHERE collection = %(c)s AND user_id = %(u)s "
            "RETURNING 1) "
            f"INSERT INTO {markers} AS m (collection, user_id, state, claimed_at, confirmed_at) "
            f"VALUES (%(c)s, %(e)s, 'confirmed', {SERVER_NOW}, {SERVER_NOW}) "
            "ON CONFLICT (collection, user_id) DO UPDATE SET state = 'confirmed', "
            "confirmed_at = coalesce(m.confirmed_at, excluded.confirmed_at) "
            "RETURNING (SELECT count(*) FROM gone)",
            {"c": self.collection, "u": user_id, "e": self.erased(user_id)},
            what="forget a user",
            role=WORKER,
            fetch="one",
        )
        return bool(row and row[0])

    def recent_user_ids(self, states: t.Sequence[str], *, limit: int) -> list[str]:
        """Up to ``limit`` user ids in one of ``states``, newest claim first (start-up load)."""
        rows = self.database.run(
            f"SELECT user_id FROM {self.database.table('markers')} WHERE collection = %s "
            "AND state = ANY(%s) ORDER BY claimed_at DESC LIMIT %s",
            (self.collection, list(states), limit),
            what="read the marker ledger",
            role=WORKER,
            fetch="all",
        )
        return [user_id for (user_id,) in rows]

    def counts(self) -> dict[str, int]:
        """Markers by state, for ``flask keen-signup status``."""
        rows = self.database.run(
            f"SELECT state, count(*) FROM {self.database.table('markers')} "
            "WHERE collection = %s GROUP BY state",
            (self.collection,),
            what="count markers",
            role=WORKER,
            fetch="all",
        )
        return {state: int(count) for state, count in rows}

    def close(self) -> None:
        if self.close_database:
            self.database.close()


def execute(conn: t.Any, query: str, params: t.Any) -> psycopg.Cursor[t.Any]:
    """Run ``query`` on an app's connection: psycopg 3, or SQLAlchemy's ``Connection``.

    For SQLAlchemy the statement goes to its DBAPI cursor unchanged
    (``exec_driver_sql``), which psycopg (``postgresql+psycopg://``) and psycopg2 both
    accept with ``%s`` / ``%(name)s`` placeholders.
    """
    if hasattr(conn, "exec_driver_sql"):
        return t.cast("psycopg.Cursor[t.Any]", conn.exec_driver_sql(query, params))
    return t.cast("psycopg.Cursor[t.Any]", conn.execute(query, params))


__all__ = ["PostgresStore"]
