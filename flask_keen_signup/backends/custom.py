"""``KEEN_SIGNUP_STORE`` set to a :class:`~flask_keen_signup.stores.MarkerStore` instance.

The app's own store claims; the event is queued in the SQLite outbox. The two are not one
place, so a login claims, queues, and releases the claim if queueing fails.
"""

from __future__ import annotations

import typing as t

from .parts import Parts
from .parts import Wiring
from .sqlite import apart

if t.TYPE_CHECKING:  # pragma: no cover
    from ..stores import MarkerStore


def build_for_instance(store: MarkerStore, wiring: Wiring) -> Parts:
    # A store of the app's own may offer what the SQLite ledger does (its newest users).
    recent = getattr(store, "recent_user_ids", None)
    return apart(
        store,
        wiring,
        recent_user_ids=(
            (lambda states, limit: list(recent(states, limit=limit))) if callable(recent) else None
        ),
    )
