"""Turning leased outbox rows into Keen batch requests: pure functions, no I/O.

The sender claims rows; these functions decide what goes into which request. They read
no clock, touch no outbox and start no thread, so every rule here is tested directly
(``tests/unit/test_batching.py``):

* an event whose stored JSON is over Keen's per-event limit cannot be sent at all
  (:func:`encode_rows` sets it apart, to become a dead letter);
* one request carries one collection (:func:`group_by_collection`), at most
  ``max_events`` events and at most ``max_bytes`` bytes of body (:func:`plan_requests`);
* a request Keen refuses as a whole (413, or a 400 for the batch) is retried as two
  halves (:func:`halves`) until the one poison event is isolated.
"""

from __future__ import annotations

import typing as t

from ..keen import MAX_EVENT_BYTES
from ..keen import assemble_batch
from ..keen import split_by_size
from . import OutboxRow

#: A row with its event encoded as sent (the UTF-8 of the JSON stored at enqueue).
Item = tuple[OutboxRow, bytes]


def encode_rows(
    rows: t.Iterable[OutboxRow], *, max_event_bytes: int = MAX_EVENT_BYTES
) -> tuple[list[Item], list[tuple[OutboxRow, int]]]:
    """Encode each row's body; set apart the ones over ``max_event_bytes``.

    :returns: ``(sendable, too_big)``: the encoded rows in order, and ``(row, size)`` for
        each row Keen would refuse whatever the batch.
    """
    sendable: list[Item] = []
    too_big: list[tuple[OutboxRow, int]] = []
    for row in rows:
        data = row.body_json.encode("utf-8")
        if len(data) > max_event_bytes:
            too_big.append((row, len(data)))
        else:
            sendable.append((row, data))
    return sendable, too_big


def too_big_reason(size: int, max_event_bytes: int = MAX_EVENT_BYTES) -> str:
    """The dead-letter reason of an event of ``size`` bytes over the per-event limit."""
    return f"event is {size} bytes, over Keen's limit of {max_event_bytes} bytes"


def group_by_collection(items: t.Iterable[Item]) -> dict[str, list[Item]]:
    """Items per collection, collections in order of first appearance, rows in order."""
    groups: dict[str, list[Item]] = {}
    for item in items:
        groups.setdefault(item[0].collection, []).append(item)
    return groups


def plan_requests(items: t.Iterable[Item], *, max_bytes: int, max_events: int) -> list[list[Item]]:
    """Split ``items`` into requests: one collection each, within both caps.

    A lone event bigger than ``max_bytes`` (but within Keen's per-event limit) still gets
    a request of its own: Keen may take it, and a 413 dead-letters it then.
    """
    requests: list[list[Item]] = []
    for group in group_by_collection(items).values():
        spans = split_by_size([data for _, data in group], max_bytes, max_events=max_events)
        requests.extend(group[span.start : span.stop] for span in spans)
    return requests


def halves(chunk: t.Sequence[Item]) -> tuple[list[Item], list[Item]]:
    """The two halves of a refused request (the first is the smaller when odd)."""
    middle = len(chunk) // 2
    return list(chunk[:middle]), list(chunk[middle:])


def request_body(chunk: t.Sequence[Item]) -> tuple[str, bytes]:
    """The collection and the batch body of a request planned by :func:`plan_requests`.

    The body is assembled from the stored JSON, not re-encoded: what Keen receives is
    byte for byte what was enqueued.
    """
    if not chunk:
        raise ValueError("an empty request")
    collection = chunk[0][0].collection
    if any(row.collection != collection for row, _ in chunk):
        raise ValueError("a request carries one collection")
    return collection, assemble_batch({collection: [data for _, data in chunk]})
