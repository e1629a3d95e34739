"""Keen batches: the wire encoding of events, the cut into requests that fit, and the
per-event results of Keen's answer to a batch.

The write client (:mod:`.keen`) sends what is encoded here and reads its answers with
:func:`batch_results`; the sender (``delivery/``) encodes once, measures and splits with
the same functions. Every name is public through :mod:`.keen`.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import typing as t

from ._http import excerpt

if t.TYPE_CHECKING:  # pragma: no cover
    import requests

logger = logging.getLogger("flask_keen_signup.keen")

#: Keen's cap on a batch request body, in bytes (413 above it). Third-party figure that
#: Keen's own docs do not contradict; the sender stays at or under it.
MAX_REQUEST_BYTES = 10_000_000
#: Bytes :func:`split_by_size` reserves for a one-collection batch envelope,
#: ``{"<collection>":[`` ... ``]}``: a valid collection name is at most 64 ASCII characters,
#: which JSON escapes to at most 6 bytes each.
BATCH_ENVELOPE_BYTES = 2 + (2 + 64 * 6) + 1 + 2

#: Per-event error names after which resending the *same* event can only fail again.
#:
#: The first three are the ones Keen's Java and iOS SDKs drop queued events for. The
#: others are also verdicts on the event's own content, so they are
#: deterministic too: ``NamespaceTypeError`` (``keen`` is not an object),
#: ``InvalidKeenNamespaceProperty`` (bad property inside ``keen``, e.g. a uniqueness token
#: over 64 characters), ``ListsOfNonPrimitivesNotAllowedError`` (arrays of objects under the
#: older rules), ``InvalidEventError`` (not a JSON object) and ``EventTooLargeError`` (the
#: emulator's name for an oversize event; Keen's own name is undocumented). Any other name,
#: including ones Keen may add later and ``InternalServerError``, is treated as retryable:
#: retrying an unknown error costs an attempt, dead-lettering it could cost the event.
#: Permanent failures are not lost either: the sender dead-letters them with the reason.
PERMANENT_EVENT_ERRORS: frozenset[str] = frozenset(
    {
        "InvalidCollectionNameError",
        "InvalidPropertyNameError",
        "InvalidPropertyValueError",
        "NamespaceTypeError",
        "InvalidKeenNamespaceProperty",
        "ListsOfNonPrimitivesNotAllowedError",
        "InvalidEventError",
        "EventTooLargeError",
    }
)

#: Error names that mean "this event's ``keen.uniqueness_token`` was already stored": the
#: event *is* in Keen (its first copy), so it counts as delivered. Keen's real answer to a
#: duplicate is undocumented (a plain success is the default guess); this is the name the
#: bundled emulator uses when configured to report duplicates as errors (409 for a single
#: write, a failed item in a batch). Retrying such an event could never succeed.
DUPLICATE_EVENT_ERRORS: frozenset[str] = frozenset({"DuplicateEventError"})


class Outcome(enum.Enum):
    """What became of one event of a batch."""

    #: Keen stored it (or, with a uniqueness token already seen, kept the first copy).
    DELIVERED = "delivered"
    #: Not stored, for a reason that may go away: send it again later.
    RETRYABLE = "retryable"
    #: Not stored, and the same event would be refused again: dead-letter it.
    PERMANENT = "permanent"


@dataclasses.dataclass(frozen=True)
class EventResult:
    """Keen's verdict on one event of a batch.

    :param outcome: delivered, retryable or permanent.
    :param error_name: Keen's ``error.name`` (e.g. ``InvalidPropertyNameError``), if any.
    :param description: Keen's ``error.description``, or why this client could not read a
        result for the event.
    """

    outcome: Outcome
    error_name: str | None = None
    description: str | None = None

    @property
    def delivered(self) -> bool:
        return self.outcome is Outcome.DELIVERED


_DELIVERED = EventResult(Outcome.DELIVERED)


@dataclasses.dataclass(frozen=True)
class BatchResult:
    """The per-event results of one batch request.

    :param results: for each collection of the request, one :class:`EventResult` per
        event, in the order the events were given.
    :param request_bytes: the size of the request body that was sent.
    """

    results: dict[str, list[EventResult]]
    request_bytes: int

    def __len__(self) -> int:
        return sum(len(items) for items in self.results.values())

    @property
    def delivered_count(self) -> int:
        return self.count(Outcome.DELIVERED)

    @property
    def all_delivered(self) -> bool:
        return all(r.delivered for items in self.results.values() for r in items)

    def count(self, outcome: Outcome) -> int:
        """How many events ended with ``outcome``."""
        return sum(r.outcome is outcome for items in self.results.values() for r in items)

    def indices(self, outcome: Outcome) -> dict[str, list[int]]:
        """Input positions of the events that ended with ``outcome``, per collection.

        Collections with none are left out, so ``result.indices(Outcome.RETRYABLE)`` is
        exactly what to send again.
        """
        found = {
            collection: [i for i, r in enumerate(items) if r.outcome is outcome]
            for collection, items in self.results.items()
        }
        return {collection: positions for collection, positions in found.items() if positions}

    @property
    def failed(self) -> list[tuple[str, int, EventResult]]:
        """``(collection, index, result)`` of every event that was not delivered."""
        return [
            (collection, i, r)
            for collection, items in self.results.items()
            for i, r in enumerate(items)
            if not r.delivered
        ]


# --------------------------------------------------------------------------- encoding


def encode_event(event: t.Mapping[str, t.Any]) -> bytes:
    """Encode one event the way it goes on the wire: compact UTF-8 JSON.

    The sender measures and stores these bytes, so sizes are exact and a batch can be
    assembled from them (:func:`assemble_batch`) without encoding twice.

    :raises ValueError: for NaN or infinite floats (not JSON; Keen would refuse the whole
        request) and for strings that are not valid Unicode (lone surrogates).
    :raises TypeError: for values JSON cannot represent.
    """
    text = json.dumps(event, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8")


def assemble_batch(encoded: t.Mapping[str, t.Sequence[bytes]]) -> bytes:
    """Build a batch body from events already encoded with :func:`encode_event`."""
    parts = [
        json.dumps(name, ensure_ascii=False).encode("utf-8") + b":[" + b",".join(events) + b"]"
        for name, events in encoded.items()
    ]
    return b"{" + b",".join(parts) + b"}"


def encode_batch(batch: t.Mapping[str, t.Sequence[t.Mapping[str, t.Any]]]) -> bytes:
    """Encode a batch body, ``{"collection": [event, ...], ...}``, compact UTF-8 JSON.

    :raises ValueError, TypeError: as :func:`encode_event`.
    """
    return assemble_batch(
        {collection: [encode_event(e) for e in events] for collection, events in batch.items()}
    )


def split_by_size(
    encoded_events: t.Sequence[bytes],
    max_bytes: int = MAX_REQUEST_BYTES,
    *,
    max_events: int | None = None,
) -> list[range]:
    """Cut a run of encoded events into consecutive chunks that each fit in one request.

    Each chunk, sent as a one-collection batch (``{"c":[e1,e2,...]}``), makes a body of at
    most ``max_bytes``: the events, one comma between each two, and
    :data:`BATCH_ENVELOPE_BYTES` for the rest. The sender uses it to cap batches before
    sending, and after a 413 with ``max_bytes=error.request_bytes // 2`` (Keen's real limit
    is then lower than assumed).

    An event that alone does not fit gets a chunk of its own: it cannot be sent at this
    size, and it must not hold up the others. A 413 on a one-event request is therefore
    final for that event.

    :param max_events: also cap the number of events per chunk (the batch size).
    :returns: index ranges into ``encoded_events``, in order, covering every index once.
    """
    if max_bytes <= 0:
        raise ValueError("max_bytes must be positive")
    if max_events is not None and max_events < 1:
        raise ValueError("max_events must be at least 1")
    budget = max_bytes - BATCH_ENVELOPE_BYTES
    chunks: list[range] = []
    start = 0
    size = 0
    for i, event in enumerate(encoded_events):
        cost = len(event) + (1 if i > start else 0)  # the comma before it
        full = max_events is not None and i - start >= max_events
        if i > start and (size + cost > budget or full):
            chunks.append(range(start, i))
            start, size, cost = i, 0, len(event)
        size += cost
    if start < len(encoded_events):
        chunks.append(range(start, len(encoded_events)))
    return chunks


def batch_results(
    batch: t.Mapping[str, t.Sequence[t.Mapping[str, t.Any]]],
    response: requests.Response,
    key: str,
) -> dict[str, list[EventResult]]:
    """Match a 2xx batch answer to the input, event by event, without ever guessing success.

    Where the answer does not say clearly what became of an event (not JSON, a collection
    missing, and for *every* event of a collection whose count of results differs from the
    events sent: results pair by position only) that event is :attr:`Outcome.RETRYABLE`,
    with a description saying why. ``key`` is masked in every text kept.
    """
    try:
        data: t.Any = json.loads(response.content.decode("utf-8"))
    except ValueError:
        data = None
    if not isinstance(data, dict):
        logger.debug("batch answer is not a JSON object: %s", excerpt(response.text, 120))
    results: dict[str, list[EventResult]] = {}
    for collection, events in batch.items():
        items = data.get(collection) if isinstance(data, dict) else None
        if not isinstance(data, dict):
            unclear = f"Keen answered {response.status_code} without a JSON object of results"
        elif not isinstance(items, list):
            unclear = "Keen's answer has no results for this collection"
        elif len(items) != len(events):
            logger.debug(
                "batch answer for %r has %d results for %d events",
                collection,
                len(items),
                len(events),
            )
            unclear = f"Keen's answer has {len(items)} results for {len(events)} events"
        else:
            results[collection] = [_event_result(item, key) for item in items]
            continue
        results[collection] = [EventResult(Outcome.RETRYABLE, description=unclear)] * len(events)
    return results


def _event_result(item: t.Any, key: str) -> EventResult:
    if not isinstance(item, dict) or not isinstance(item.get("success"), bool):
        return EventResult(
            Outcome.RETRYABLE, description="Keen's result for this event is not understood"
        )
    if item["success"]:
        return _DELIVERED
    error = item.get("error")
    if not isinstance(error, dict):
        error = {}
    name, description = error.get("name"), error.get("description")
    name = excerpt(name, 100, secrets=(key,)) if isinstance(name, str) else None
    description = excerpt(description, secrets=(key,)) if isinstance(description, str) else None
    if name in DUPLICATE_EVENT_ERRORS:
        return EventResult(
            Outcome.DELIVERED,
            error_name=name,
            description=description or "already stored: its uniqueness token was seen before",
        )
    if not name and not description:
        description = "Keen reported a failure without saying why"
    outcome = Outcome.PERMANENT if name in PERMANENT_EVENT_ERRORS else Outcome.RETRYABLE
    return EventResult(outcome, error_name=name, description=description)
