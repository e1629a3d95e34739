"""A custom backend for tests/integration/test_backends.py: one module, one registry entry.

Markers and outbox live in this process's memory (:class:`MemoryStore`,
:class:`MemoryOutbox`), claimed and queued together under one lock: the shape a real
backend has when its store and outbox share one place (one transaction, one script).
"""

from __future__ import annotations

import threading
import typing as t

from flask_keen_signup.backends import Parts
from flask_keen_signup.backends import Wiring
from flask_keen_signup.delivery import QueuedEvent
from flask_keen_signup.delivery.memory import MemoryOutbox
from flask_keen_signup.stores import MemoryStore

#: The user ids this backend's atomic step claimed (the test checks it was used).
CLAIMED: list[str] = []


class RememberedMemoryStore(MemoryStore):
    """Markers in memory, shared by every thread of the process and never taken back."""

    remembered = True


def build(wiring: Wiring) -> Parts:
    store = RememberedMemoryStore(reclaim_after=wiring.reclaim_after)
    outbox = MemoryOutbox(keep_delivered=wiring.settings.keep_delivered)
    lock = threading.Lock()

    def claim_and_enqueue(user_id: str, queued: QueuedEvent) -> bool:
        with lock:
            if not store.claim(user_id):
                return False
            outbox.enqueue(queued)
            CLAIMED.append(user_id)
            return True

    def claim_and_enqueue_many(events: t.Sequence[QueuedEvent]) -> list[bool]:
        return [claim_and_enqueue(event.user_id, event) for event in events]

    return Parts(
        store=store,
        claimer=store,
        outbox=outbox,
        request_outbox=outbox,
        confirm_in=store,
        drain_claimer=store,
        claim_and_enqueue=claim_and_enqueue,
        claim_and_enqueue_many=claim_and_enqueue_many,
        uses_database=False,
    )
