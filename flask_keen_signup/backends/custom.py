"""``KEEN_SIGNUP_STORE`` set to a :class:`~flask_keen_signup.stores.MarkerStore` instance.

The app's own store claims; the event is queued in the SQLite outbox. The two are not one
place, so a login claims, queues, and releases the claim if queueing fails.
"""

from __future__ import annotations

import typing as t

from .parts import Parts
from .parts import Wiring
from .sqlite import SQLiteMigrationLedger
from .sqlite import ledger_and_outbox

if t.TYPE_CHECKING:  # pragma: no cover
    from ..stores import MarkerStore


def build_for_instance(store: MarkerStore, wiring: Wiring) -> Parts:
    ledger, outbox = ledger_and_outbox(wiring, request=False)
    _, request_outbox = ledger_and_outbox(wiring, request=True)
    # A store of the app's own may offer what the SQLite ledger does (its newest users).
    recent = getattr(store, "recent_user_ids", None)
    return Parts(
        store=store,
        claimer=store,
        outbox=outbox,
        request_outbox=request_outbox,
        confirm_in=store,
        drain_claimer=store,
        recent_user_ids=(
            (lambda states, limit: list(recent(states, limit=limit))) if callable(recent) else None
        ),
        migration_ledger=lambda: SQLiteMigrationLedger(ledger, outbox),
    )
