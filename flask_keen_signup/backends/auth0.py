"""``KEEN_SIGNUP_STORE = "auth0"``: the marker in the user's ``app_metadata``.

The Management API is a remote store with no atomic claim, so the local SQLite ledger
claims (in one transaction with the queued event, as for ``sqlite``) and the remote
marker is checked before sending and set after delivery (:mod:`~flask_keen_signup.hooks`;
in sync mode, by the tracker in the request).
"""

from __future__ import annotations

from .parts import Parts
from .parts import Wiring
from .sqlite import claim_and_enqueue
from .sqlite import claim_and_enqueue_many
from .sqlite import ledger_and_outbox
from .sqlite import migration_ledger


def build(wiring: Wiring) -> Parts:
    from ..auth0 import management_client_for
    from ..stores.auth0 import Auth0Store

    settings = wiring.settings
    # In sync mode the Management API is called in the login request: keep its retry
    # budget small so a rate-limited tenant slows a login by seconds, not half a minute.
    in_request = settings.delivery == "sync"
    management = management_client_for(
        settings,
        max_retries=1 if in_request else 3,
        max_retry_wait=1.0 if in_request else 10.0,
    )
    store = Auth0Store(management, settings.marker)
    ledger, outbox = ledger_and_outbox(wiring, request=False)
    request_ledger, request_outbox = ledger_and_outbox(wiring, request=True)
    return Parts(
        store=store,
        claimer=request_ledger,
        outbox=outbox,
        request_outbox=request_outbox,
        confirm_in=ledger,
        drain_claimer=ledger,
        remote=store,
        claim_and_enqueue=claim_and_enqueue(request_ledger, request_outbox),
        claim_and_enqueue_many=claim_and_enqueue_many(ledger, outbox),
        recent_user_ids=lambda states, limit: request_ledger.recent_user_ids(states, limit=limit),
        migration_ledger=migration_ledger(wiring, outbox),
    )
