"""``KEEN_SIGNUP_STORE = "sqlite"`` (the default): markers and outbox in one SQLite file.

The claim and the queued event are written in one transaction, so a signup can be
neither lost nor queued twice. The helpers here also serve the ``session``, ``auth0`` and
custom backends, whose outbox (and, for ``auth0``, local ledger) is this same file.
"""

from __future__ import annotations

import json
import sqlite3
import time
import typing as t

from ..exceptions import StoreError
from .parts import ClaimAndEnqueue
from .parts import ClaimAndEnqueueMany
from .parts import Parts
from .parts import RecentUserIds
from .parts import Wiring

if t.TYPE_CHECKING:  # pragma: no cover
    from ..delivery import QueuedEvent
    from ..delivery.sqlite_outbox import SQLiteOutbox
    from ..stores import MarkerStore
    from ..stores.sqlite import SQLiteStore


def ledger_and_outbox(wiring: Wiring, *, request: bool) -> tuple[SQLiteStore, SQLiteOutbox]:
    """The SQLite ledger and outbox on the sender's file view, or the login path's."""
    from ..delivery.sqlite_outbox import SQLiteOutbox
    from ..stores.sqlite import SQLiteStore

    settings = wiring.settings
    database = wiring.request_database if request else wiring.database
    return (
        SQLiteStore(database, settings.collection, reclaim_after=wiring.reclaim_after),
        SQLiteOutbox(database, keep_delivered=settings.keep_delivered),
    )


def claim_and_enqueue(ledger: SQLiteStore, outbox: SQLiteOutbox) -> ClaimAndEnqueue:
    """Claim and queue in one transaction of the file they share."""

    def in_one_transaction(user_id: str, queued: QueuedEvent) -> bool:
        now = time.time()
        with ledger.database.transaction() as conn:
            if not ledger.claim_in(conn, user_id, now=now):
                return False
            outbox.enqueue_in(conn, queued, now=now)
        return True

    return in_one_transaction


def claim_and_enqueue_many(ledger: SQLiteStore, outbox: SQLiteOutbox) -> ClaimAndEnqueueMany:
    """The spool's drain: a batch of candidates decided in one transaction."""

    def in_one_transaction(events: t.Sequence[QueuedEvent]) -> list[bool]:
        now = time.time()
        won: list[bool] = []
        with ledger.database.transaction() as conn:
            for event in events:
                claimed = ledger.claim_in(conn, event.user_id, now=now)
                if claimed:
                    outbox.enqueue_in(conn, event, now=now)
                won.append(claimed)
        return won

    return in_one_transaction


class SQLiteMigrationLedger:
    """``flask keen-signup migrate``'s marks in the file's ledger and outbox, one
    transaction per chunk (for ``session`` and custom stores the file's ledger only records
    who was migrated; for ``auth0`` it fronts ``app_metadata`` on this host)."""

    def __init__(self, ledger: SQLiteStore, outbox: SQLiteOutbox) -> None:
        self.ledger = ledger
        self.outbox = outbox

    def known(self, user_ids: t.Sequence[str]) -> set[str]:
        from ..stores import erased_user_id

        collection = self.ledger.collection
        # An erased user's marker is kept under a hash of the id (``forget``): known too.
        names = {user_id: user_id for user_id in user_ids}
        names.update((erased_user_id(collection, user_id), user_id) for user_id in user_ids)
        try:
            with self.ledger.database.reading() as conn:
                rows = conn.execute(
                    "SELECT user_id FROM keen_signup_markers WHERE collection = ? "
                    "AND user_id IN (SELECT value FROM json_each(?))",
                    (collection, json.dumps(list(names))),
                ).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the marker ledger: {exc}") from exc
        return {names[name] for (name,) in rows}

    def mark(self, user_ids: t.Sequence[str]) -> set[str]:
        return self._write(user_ids, (), "the marker ledger")

    def report(self, events: t.Sequence[QueuedEvent]) -> int:
        user_ids = [event.user_id for event in events]
        return len(self._write(user_ids, events, "the marker ledger and outbox"))

    def _write(
        self, user_ids: t.Sequence[str], events: t.Sequence[QueuedEvent], what: str
    ) -> set[str]:
        """Confirmed markers for ``user_ids`` where none exist, and the events of the users
        marked queued, in one transaction; the users marked."""
        now = time.time()
        try:
            with self.ledger.database.transaction() as conn:
                rows = conn.execute(
                    "INSERT INTO keen_signup_markers (collection, user_id, state, claimed_at, "
                    "confirmed_at) SELECT ?, value, 'confirmed', ?, ? FROM json_each(?) "
                    "WHERE true ON CONFLICT (collection, user_id) DO NOTHING RETURNING user_id",
                    (self.ledger.collection, now, now, json.dumps(list(user_ids))),
                )
                marked = {user_id for (user_id,) in rows}
                for event in events:
                    if event.user_id in marked:
                        self.outbox.enqueue_in(conn, event, now=now)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write {what}: {exc}") from exc
        return marked


def build(wiring: Wiring) -> Parts:
    ledger, outbox = ledger_and_outbox(wiring, request=False)
    request_ledger, request_outbox = ledger_and_outbox(wiring, request=True)
    return Parts(
        store=ledger,
        claimer=request_ledger,
        outbox=outbox,
        request_outbox=request_outbox,
        confirm_in=ledger,
        drain_claimer=ledger,
        claim_and_enqueue=claim_and_enqueue(request_ledger, request_outbox),
        claim_and_enqueue_many=claim_and_enqueue_many(ledger, outbox),
        recent_user_ids=lambda states, limit: request_ledger.recent_user_ids(states, limit=limit),
        migration_ledger=lambda: SQLiteMigrationLedger(ledger, outbox),
    )


def apart(
    store: MarkerStore,
    wiring: Wiring,
    *,
    in_request_only: bool = False,
    recent_user_ids: RecentUserIds | None = None,
) -> Parts:
    """The parts of a store that claims apart from the file whose outbox it uses (a store
    instance, ``session``): claim, queue, and release the claim if queueing failed.

    :param in_request_only: the store is reachable only in the login request (the
        per-browser session): the file's ledger confirms, and the drain only queues.
    """
    ledger, outbox = ledger_and_outbox(wiring, request=False)
    _, request_outbox = ledger_and_outbox(wiring, request=True)
    return Parts(
        store=store,
        claimer=store,
        outbox=outbox,
        request_outbox=request_outbox,
        confirm_in=ledger if in_request_only else store,
        drain_claimer=None if in_request_only else store,
        recent_user_ids=recent_user_ids,
        migration_ledger=lambda: SQLiteMigrationLedger(ledger, outbox),
    )
