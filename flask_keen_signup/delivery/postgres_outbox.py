"""The ``postgres`` outbox: one durable queue in the app's own PostgreSQL, for many hosts.

Tables (in ``KEEN_SIGNUP_DATABASE_SCHEMA``; see :func:`flask_keen_signup.postgres.schema_sql`):
``outbox`` (one row per event), ``dead_letters`` and ``outbox_meta`` (counters and the last
error). Every operation is one statement (data-modifying CTEs), so each is atomic without
an explicit transaction, and a login's claim-and-enqueue is one round trip.

Senders on many hosts. A claim picks due rows with ``SELECT … FOR UPDATE SKIP LOCKED``
and leases them in the same statement (``lease_owner``, ``next_attempt_at`` moved
``lease_seconds`` ahead): two senders never block each other nor get the same row, and
the lease (not the row lock, which ends with the statement) hides a row from other hosts
while it is on the wire. A host that dies keeps its leases until they run out; then any
other host claims the rows again (counted in ``resends``; Keen's uniqueness token absorbs
the probable duplicate). Lease times are the senders' wall clocks (the
:class:`~flask_keen_signup.delivery.Outbox` contract): keep hosts on NTP, well within the
lease (120 s by default).

Waking. Every enqueue also runs ``pg_notify`` on the schema's channel; NOTIFY is
transactional, so inside the app's own transaction it fires at commit, and never for a
rollback. Each process's sender listens on ``KEEN_SIGNUP_DATABASE_LISTEN_URL`` when given,
else polls (:meth:`PostgresOutbox.wake_on_notify`, :mod:`flask_keen_signup.postgres_wake`),
and still looks every ``KEEN_SIGNUP_FLUSH_INTERVAL``: NOTIFY is best effort.
"""

from __future__ import annotations

import time
import typing as t

from ..postgres import PostgresDatabase
from ..postgres_wake import Listener
from ..postgres_wake import Poller
from ..postgres_wake import Waker
from . import DeadLetter
from . import ErasedRows
from . import Outbox
from . import OutboxRow
from .postgres_enqueue import PostgresEnqueue

_OPEN = "state IN ('pending', 'confirming')"
_DEAD = (
    "id, collection, user_id, uniqueness_token, body, attempts, created_at, reason, "
    "error_code, died_at"
)


class PostgresOutbox(PostgresEnqueue, Outbox):
    """The outbox tables in ``database`` (see the module doc).

    :param keep_delivered: keep delivered and skipped rows (with their body) until
        :meth:`prune_delivered`; ``False`` deletes each as soon as it is done (the
        counters are kept either way).
    """

    def __init__(self, database: PostgresDatabase, *, keep_delivered: bool = True) -> None:
        super().__init__(database)
        self.keep_delivered = keep_delivered
        self._listener: Waker | None = None
        #: Without a listen URL: poll this often for due events (``None``: the sender's own
        #: polling is fast enough). Set by the backend from ``KEEN_SIGNUP_FLUSH_INTERVAL``.
        self.poll_interval: float | None = None

    def __repr__(self) -> str:
        return f"<PostgresOutbox {self.database!r}>"

    # -- waking -----------------------------------------------------------------------

    def wake_on_notify(self, callback: t.Callable[[], None]) -> None:
        """Call ``callback`` (the sender's ``wake``) whenever any host enqueues: through
        ``LISTEN`` on the database's listen URL, else by polling every
        :attr:`poll_interval` (if set), else never (the sender polls often enough).

        The thread starts at the next :meth:`claim_due` of each process (so a forked
        worker's restarted sender starts its own).
        """
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
        if self.database.listen_conninfo is not None:
            self._listener = Listener(self.database, callback)
        elif self.poll_interval is not None:
            self._listener = Poller(self.due_now, callback, self.poll_interval)

    def due_now(self) -> bool:
        """Whether an event waits to be claimed now: one probe of the ``outbox_due`` index."""
        row = self._fetch(
            f"SELECT EXISTS (SELECT 1 FROM {self._outbox} WHERE {_OPEN} "
            "AND next_attempt_at <= %s)",
            (time.time(),),
            "poll the outbox",
            "one",
        )
        return bool(row and row[0])

    # -- sender -----------------------------------------------------------------------

    def _lease_due(
        self, limit: int, now: float, until: float, owner: str, flush_since: float | None
    ) -> list[OutboxRow]:
        if self._listener is not None:
            self._listener.ensure_running()
        if flush_since is None:
            which = "next_attempt_at <= %(now)s ORDER BY next_attempt_at, id"
        else:
            which = (
                "(next_attempt_at <= %(now)s OR (lease_owner IS NULL AND "
                "(last_attempt_at IS NULL OR last_attempt_at < %(since)s))) ORDER BY id"
            )
        records = self._fetch(
            f"""
WITH picked AS (
    SELECT id, (lease_owner IS NOT NULL AND state = 'pending') AS reclaimed
    FROM {self._outbox} WHERE {_OPEN} AND {which}
    LIMIT %(limit)s FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE {self._outbox} o
    SET attempts = o.attempts + 1, last_attempt_at = %(now)s,
        next_attempt_at = %(until)s, lease_owner = %(owner)s
    FROM picked WHERE o.id = picked.id
    RETURNING o.id, o.collection, o.user_id, o.uniqueness_token, o.body, o.attempts,
              o.created_at, o.next_attempt_at, o.last_error, o.state, o.first_failed_at,
              picked.reclaimed
), bump AS (
    UPDATE {self._meta} SET count = count + (SELECT count(*) FROM claimed WHERE reclaimed)
    WHERE key = 'resends' AND EXISTS (SELECT 1 FROM claimed WHERE reclaimed)
)
SELECT * FROM claimed""",
            {"now": now, "until": until, "owner": owner, "limit": limit, "since": flush_since},
            "claim from the outbox",
        )
        return [OutboxRow(*record[:11]) for record in records]

    def _set_done(self, state: str, ids: list[int], reasons: list[str] | None, now: float) -> None:
        if self.keep_delivered:
            note = "" if reasons is None else ", last_error = 'skipped: ' || r.reason"
            change = (
                f"UPDATE {self._outbox} o SET state = %(state)s, lease_owner = NULL, "
                f"done_at = %(now)s{note} FROM unnest(%(ids)s::bigint[], %(reasons)s::text[]) "
                f"AS r(id, reason) WHERE o.id = r.id AND o.{_OPEN} RETURNING 1"
            )
        else:
            change = (
                f"DELETE FROM {self._outbox} WHERE id = ANY(%(ids)s) AND {_OPEN} RETURNING 1"
            )
        self._run(
            f"WITH done AS ({change}) UPDATE {self._meta} "
            "SET count = count + (SELECT count(*) FROM done) WHERE key = %(state)s",
            {"state": state, "now": now, "ids": ids, "reasons": reasons or [""] * len(ids)},
            f"mark rows {state}",
        )

    def _with_last_error(self, change: str) -> str:
        return (
            f"WITH changed AS ({change}) "
            f"UPDATE {self._meta} SET note = %(error)s WHERE key = 'last_error'"
        )

    def _set_confirming(self, ids: list[int], next_attempt_at: float, error: str) -> None:
        self._run(
            self._with_last_error(
                f"UPDATE {self._outbox} SET state = 'confirming', attempts = 0, "
                "lease_owner = NULL, next_attempt_at = %(at)s, last_error = %(error)s "
                f"WHERE id = ANY(%(ids)s) AND {_OPEN} RETURNING 1"
            ),
            {"ids": ids, "at": next_attempt_at, "error": error},
            "mark rows confirming",
        )

    def _set_retry(self, items: list[tuple[int, float, str]], now: float) -> None:
        ids, ats, errors = (list(column) for column in zip(*items, strict=True))
        self._run(
            self._with_last_error(
                f"UPDATE {self._outbox} o SET lease_owner = NULL, next_attempt_at = r.at, "
                "last_error = r.error, first_failed_at = coalesce(o.first_failed_at, %(now)s) "
                "FROM unnest(%(ids)s::bigint[], %(ats)s::double precision[], "
                "%(errors)s::text[]) AS r(id, at, error) "
                f"WHERE o.id = r.id AND o.{_OPEN} RETURNING 1"
            ),
            {"ids": ids, "ats": ats, "errors": errors, "error": errors[-1], "now": now},
            "reschedule rows",
        )

    def _to_dead(self, items: list[tuple[int, str, str | None]], now: float) -> None:
        ids, reasons, codes = (list(column) for column in zip(*items, strict=True))
        self._run(
            f"""
WITH items AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(reasons)s::text[], %(codes)s::text[])
        AS i(id, reason, code)
), gone AS (
    DELETE FROM {self._outbox} o USING items i WHERE o.id = i.id AND o.{_OPEN}
    RETURNING o.id, o.collection, o.user_id, o.uniqueness_token, o.body, o.attempts,
              o.created_at, i.reason, i.code
), dead AS (
    INSERT INTO {self._dead} ({_DEAD})
    SELECT id, collection, user_id, uniqueness_token, body, attempts, created_at, reason,
           code, %(now)s FROM gone
)
UPDATE {self._meta} SET note = %(error)s WHERE key = 'last_error'""",
            {"ids": ids, "reasons": reasons, "codes": codes, "now": now, "error": reasons[-1]},
            "move rows to the dead letters",
        )

    def _unlease(self, ids: list[int], now: float) -> None:
        self._run(
            f"UPDATE {self._outbox} SET lease_owner = NULL, next_attempt_at = %s, "
            f"attempts = greatest(0, attempts - 1) WHERE id = ANY(%s) AND {_OPEN} "
            "AND lease_owner IS NOT NULL",
            (now, ids),
            "release rows",
        )

    def _extend_leases(self, ids: list[int], owner: str, until: float) -> int:
        return self._run(
            f"UPDATE {self._outbox} SET next_attempt_at = %s "
            f"WHERE id = ANY(%s) AND lease_owner = %s AND {_OPEN}",
            (until, ids, owner),
            "renew leases",
        )

    def _lease_owners(self) -> list[str]:
        owners = self._fetch(
            f"SELECT DISTINCT lease_owner FROM {self._outbox} "
            f"WHERE {_OPEN} AND lease_owner IS NOT NULL",
            None,
            "read lease owners",
        )
        return [owner for (owner,) in owners]

    def _expire_owners(self, owners: list[str]) -> int:
        return self._run(
            f"UPDATE {self._outbox} SET next_attempt_at = least(next_attempt_at, 0) "
            f"WHERE lease_owner = ANY(%s) AND {_OPEN}",
            (owners,),
            "expire leases",
        )

    def _empty_bodies(self, cutoff: float) -> int:
        # The partial index outbox_bodies (schema version 2) holds only finished rows that
        # still have a body: the periodic pass is one index probe when nothing is due.
        return self._run(
            f"UPDATE {self._outbox} SET body = '' WHERE state IN ('delivered', 'skipped') "
            "AND body <> '' AND done_at < %s",
            (cutoff,),
            "drop delivered bodies",
        )

    def _erase_user(self, collection: str, user_id: str, erased_id: str, now: float) -> ErasedRows:
        """Erasure in one statement."""
        row = self._fetch(
            f"""
WITH skipped AS (
    UPDATE {self._outbox} SET state = 'skipped', lease_owner = NULL, done_at = %(now)s,
        last_error = 'skipped: erased on request', user_id = %(erased)s, body = ''
    WHERE collection = %(c)s AND user_id = %(u)s AND {_OPEN} RETURNING 1
), erased AS (
    UPDATE {self._outbox} SET user_id = %(erased)s, body = ''
    WHERE collection = %(c)s AND user_id = %(u)s AND NOT {_OPEN} RETURNING 1
), dead AS (
    DELETE FROM {self._dead} WHERE collection = %(c)s AND user_id = %(u)s RETURNING 1
), counted AS (
    UPDATE {self._meta} SET count = count + (SELECT count(*) FROM skipped)
    WHERE key = 'skipped'
), cleared AS (
    UPDATE {self._meta} SET note = NULL WHERE key = 'last_error'
)
SELECT (SELECT count(*) FROM skipped), (SELECT count(*) FROM erased),
       (SELECT count(*) FROM dead)""",
            {"c": collection, "u": user_id, "erased": erased_id, "now": now},
            "forget a user",
            "one",
        )
        skipped, erased, dead = (int(n) for n in row)
        return ErasedRows(skipped=skipped, erased=erased, dead_letters=dead)

    # -- status and maintenance -------------------------------------------------------

    def pending_count(self) -> int:
        row = self._fetch(
            f"SELECT count(*) FROM {self._outbox} WHERE {_OPEN}",
            None,
            "count the outbox",
            "one",
        )
        return int(row[0])

    def _counts(self, now: float) -> t.Sequence[t.Any]:
        meta = f"(SELECT {{}} FROM {self._meta} WHERE key = '{{}}')".format
        row: t.Sequence[t.Any] = self._fetch(
            f"""
SELECT count(*), count(*) FILTER (WHERE next_attempt_at <= %(now)s),
       count(*) FILTER (WHERE lease_owner IS NOT NULL AND next_attempt_at > %(now)s),
       min(created_at), (SELECT count(*) FROM {self._dead}),
       {meta("count", "delivered")}, {meta("count", "skipped")},
       {meta("count", "resends")}, {meta("note", "last_error")}
FROM {self._outbox} WHERE {_OPEN}""",
            {"now": now},
            "read outbox stats",
            "one",
        )
        return row

    def _read_dead(self, limit: int) -> list[DeadLetter]:
        rows = self._fetch(
            f"SELECT {_DEAD} FROM {self._dead} ORDER BY died_at, id LIMIT %s",
            (limit,),
            "read dead letters",
        )
        return [DeadLetter(*row) for row in rows]

    def _replay_dead(self, ids: list[int] | None, now: float) -> int:
        row = self._fetch(
            f"""
WITH moved AS (
    DELETE FROM {self._dead} WHERE %(all)s OR id = ANY(%(ids)s) RETURNING *
), queued AS (
    INSERT INTO {self._outbox} (id, collection, user_id, uniqueness_token, body, state,
                                attempts, created_at, next_attempt_at, last_error)
    SELECT id, collection, user_id, uniqueness_token, body, 'pending', 0, created_at,
           %(now)s, reason FROM moved
    RETURNING id
)
SELECT count(*), {self._notify} FROM queued""",
            {"all": ids is None, "ids": ids or [], "now": now},
            "retry dead letters",
            "one",
        )
        return int(row[0])

    def _delete_done(self, cutoff: float) -> int:
        return self._run(
            f"DELETE FROM {self._outbox} WHERE state IN ('delivered', 'skipped') "
            "AND done_at < %s",
            (cutoff,),
            "prune the outbox",
        )

    def close(self) -> None:
        if self._listener is not None:
            self._listener.stop()

