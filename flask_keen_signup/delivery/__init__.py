"""Delivery: a durable outbox of signup events, and the background sender that drains it.

The request path only ever *enqueues* (one local INSERT, in the same transaction as the
marker claim); a single daemon thread per process sends due rows to Keen's batch endpoint
and records each row's own outcome. The outbox is the source of truth: an event leaves it
only once Keen has answered for it (delivered), or when it can never succeed (dead letter).

This package re-exports the small value types and the :class:`DeliveryHooks` interface
(``base.py``) and the :class:`Outbox` interface (``outbox.py``: its public methods are
written once there, over each backend's few storage primitives). Backends:
:class:`~.sqlite_outbox.SQLiteOutbox` (the default, shared by all worker processes of a
host; tables and statements in ``sqlite_schema.py``), :class:`~.memory.MemoryOutbox` (the
same on a private in-memory database: tests, fakes), ``postgres_outbox.py`` (the request
path in ``postgres_enqueue.py``) and ``redis_outbox.py``. The sender is
:class:`~.sender.Sender`.

Row life cycle::

    enqueue -> pending --claim--> (leased) --Keen 2xx for this row--> delivered
                  ^                  |   \\--retryable--> pending (next_attempt_at later)
                  |                  |    \\--permanent, or failing past RETRY_FOR--> dead letter
                  |                  \\--skipped by a hook--> skipped
                  +-- retry_dead ----------------------------------------------/
    delivered, but after_delivered() failed retryably -> confirming -> (hook retried) -> delivered

A lease is the claim's ``next_attempt_at`` moved ``lease_seconds`` into the future with
``lease_owner`` set: no other claimer sees the row until the lease expires, so several
processes sharing one file never send a row concurrently, and a row whose owner died is
claimable again once its lease runs out.
"""

from __future__ import annotations

from .base import CONFIRMING as CONFIRMING
from .base import DELIVERED as DELIVERED
from .base import OPEN_STATES as OPEN_STATES
from .base import PENDING as PENDING
from .base import SKIPPED as SKIPPED
from .base import DeadLetter as DeadLetter
from .base import DeliveryHooks as DeliveryHooks
from .base import ErasedRows as ErasedRows
from .base import OutboxRow as OutboxRow
from .base import OutboxStats as OutboxStats
from .base import QueuedEvent as QueuedEvent
from .base import dumps_body as dumps_body
from .memory import MemoryOutbox as MemoryOutbox
from .outbox import Outbox as Outbox

__all__ = [
    "CONFIRMING",
    "DELIVERED",
    "DeadLetter",
    "DeliveryHooks",
    "ErasedRows",
    "MemoryOutbox",
    "OPEN_STATES",
    "Outbox",
    "OutboxRow",
    "OutboxStats",
    "PENDING",
    "QueuedEvent",
    "SKIPPED",
    "dumps_body",
]
