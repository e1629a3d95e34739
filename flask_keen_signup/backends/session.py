"""``KEEN_SIGNUP_STORE = "session"``: the marker in the browser's session, per browser.

The event is queued in the SQLite outbox. The claim is made in the login request (the
session is reachable only there), so a spooled signup is only queued by the drain, and
the sender has no session to confirm in: it confirms in the file's ledger, as before.
"""

from __future__ import annotations

from .parts import Parts
from .parts import Wiring
from .sqlite import SQLiteMigrationLedger
from .sqlite import ledger_and_outbox


def build(wiring: Wiring) -> Parts:
    from ..stores.session import SessionStore

    store = SessionStore(wiring.settings.collection)
    ledger, outbox = ledger_and_outbox(wiring, request=False)
    _, request_outbox = ledger_and_outbox(wiring, request=True)
    return Parts(
        store=store,
        claimer=store,
        outbox=outbox,
        request_outbox=request_outbox,
        confirm_in=ledger,
        drain_claimer=None,
        migration_ledger=lambda: SQLiteMigrationLedger(ledger, outbox),
    )
