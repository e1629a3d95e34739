"""``KEEN_SIGNUP_STORE = "sqlite"`` (the default): markers and outbox in one SQLite file.

The claim and the queued event are written in one transaction, so a signup can be
neither lost nor queued twice. The helpers here also serve the ``session``, ``auth0`` and
custom backends, whose outbox (and, for ``auth0``, local ledger) is this same file.
"""

from __future__ import annotations

import time
import typing as t

from .parts import ClaimAndEnqueue
from .parts import ClaimAndEnqueueMany
from .parts import Parts
from .parts import Wiring

if t.TYPE_CHECKING:  # pragma: no cover
    from ..delivery import QueuedEvent
    from ..delivery.sqlite_outbox import SQLiteOutbox
    from ..migrate import MigrationLedger
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


def migration_ledger(wiring: Wiring, outbox: SQLiteOutbox) -> t.Callable[[], MigrationLedger]:
    """``flask keen-signup migrate`` records users in the file's ledger, beside ``outbox``."""

    def build() -> MigrationLedger:
        from ..migrate import SQLiteMigrationLedger
        from ..stores.sqlite import SQLiteStore

        return SQLiteMigrationLedger(
            SQLiteStore(wiring.database, wiring.settings.collection), outbox
        )

    return build


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
        migration_ledger=migration_ledger(wiring, outbox),
    )
