"""The outbox's value types: :class:`QueuedEvent`, :class:`OutboxRow` and the others,
the row states, and the :class:`DeliveryHooks` interface (:class:`.outbox.Outbox` is
beside it).

Re-exported by :mod:`flask_keen_signup.delivery` (see its docstring for the row life
cycle); a module of its own so that the outbox implementations, the in-memory one
included, import it without importing the package (no cycle).
"""


from __future__ import annotations

import dataclasses
import json
import typing as t
from abc import ABC

#: Row states in the outbox table.
PENDING = "pending"
CONFIRMING = "confirming"
DELIVERED = "delivered"
SKIPPED = "skipped"
#: States that still need work from the sender.
OPEN_STATES = (PENDING, CONFIRMING)


#: One encoder for every body (``json.dumps`` with options builds a new one per call).
_BODY_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
#: CPython's C encoder, made once: ``JSONEncoder.encode`` makes one per call, which is a
#: third of the cost for a signup-sized body (this runs in every new user's login). No
#: circular-reference check: bodies are JSON data, and a cycle still fails (RecursionError).
_c_encoder = (
    None
    if json.encoder.c_make_encoder is None  # type: ignore[attr-defined]
    else json.encoder.c_make_encoder(  # type: ignore[attr-defined]
        None,  # markers: no circular check
        _BODY_ENCODER.default,
        json.encoder.encode_basestring,  # ensure_ascii=False
        None,  # indent
        ":",
        ",",
        False,  # sort_keys
        False,  # skipkeys
        False,  # allow_nan
    )
)


def dumps_body(body: t.Mapping[str, t.Any]) -> str:
    """Compact JSON for a Keen event body: serialised once, at enqueue, and sent as is."""
    if _c_encoder is not None and type(body) is dict:
        return "".join(_c_encoder(body, 0))
    return _BODY_ENCODER.encode(body)


@dataclasses.dataclass(frozen=True)
class QueuedEvent:
    """A signup event to enqueue.

    :param body: the Keen event, already carrying ``keen.uniqueness_token`` (see
        :func:`flask_keen_signup.events.build_signup_event`).

    ``body_json``, the body as compact JSON, is computed here, when the event is created:
    before any outbox takes its write lock, and so that a body that is not JSON fails
    before anything is written.
    """

    collection: str
    user_id: str
    uniqueness_token: str
    body: t.Mapping[str, t.Any]
    body_json: str = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "body_json", dumps_body(self.body))


@dataclasses.dataclass(frozen=True)
class _StoredEvent:
    """What an outbox row and a dead letter both hold: the event as stored at enqueue.

    The body is kept as the JSON text stored at enqueue (``body_json``) so the sender can
    build a request without re-encoding; :attr:`body` parses it on demand.
    """

    id: int
    collection: str
    user_id: str
    uniqueness_token: str
    body_json: str
    attempts: int
    created_at: float

    @property
    def body(self) -> dict[str, t.Any]:
        """The event as a dict (parsed from :attr:`body_json`)."""
        value: dict[str, t.Any] = json.loads(self.body_json)
        return value


@dataclasses.dataclass(frozen=True)
class OutboxRow(_StoredEvent):
    """A row handed to the sender by :meth:`Outbox.claim_due`.

    :param attempts: how many times the row has been claimed for its current stage,
        counting this claim (a claim is an attempt even if the process dies before the
        answer is recorded, so a row that crashes its sender cannot loop forever).
    :param state: ``pending`` (to send) or ``confirming`` (already in Keen; only the
        ``after_delivered`` hook is left to run).
    :param first_failed_at: wall-clock time of the row's first retryable failure, or
        ``None`` if it has not failed yet. ``KEEN_SIGNUP_RETRY_FOR`` is counted from here:
        a retryable failure becomes a dead letter by elapsed time, never by attempts.
    """

    next_attempt_at: float
    last_error: str | None
    state: str = PENDING
    first_failed_at: float | None = None


@dataclasses.dataclass(frozen=True)
class DeadLetter(_StoredEvent):
    """An event that cannot be delivered without a human: see :meth:`Outbox.retry_dead`."""

    reason: str
    error_code: str | None
    died_at: float


@dataclasses.dataclass(frozen=True)
class OutboxStats:
    """A snapshot for ``flask keen-signup status`` and health checks.

    :param pending: rows still to send or confirm (includes ``due`` and ``in_flight``).
    :param due: pending rows whose time has come (or whose lease expired).
    :param in_flight: rows leased by a live claim right now.
    :param delivered: events delivered through this outbox since it was created
        (a counter: it survives :meth:`Outbox.prune_delivered`).
    :param skipped: events a hook decided not to send (already reported, too old).
    :param dead: rows in the dead-letter table.
    :param oldest_pending_age: age in seconds of the oldest pending row, or ``None``.
    :param last_error: the most recent delivery error recorded, or ``None``.
    :param resends: claims of a row whose previous claim ended with no recorded outcome
        (its lease expired: the owner died or hung). Each is a probable duplicate on the
        wire, absorbed by Keen's ``keen.uniqueness_token``.
    """

    pending: int
    due: int
    in_flight: int
    delivered: int
    skipped: int
    dead: int
    oldest_pending_age: float | None
    last_error: str | None
    resends: int


@dataclasses.dataclass(frozen=True)
class ErasedRows:
    """What :meth:`Outbox.forget_user` did.

    :param skipped: rows that were still to be sent: now skipped, never sent.
    :param erased: finished rows whose body was dropped and user id hashed.
    :param dead_letters: dead letters deleted.
    """

    skipped: int = 0
    erased: int = 0
    dead_letters: int = 0

    @property
    def total(self) -> int:
        return self.skipped + self.erased + self.dead_letters


class DeliveryHooks(ABC):  # noqa: B024 - every hook is optional
    """Callbacks a marker store can plug into the sender. Both run on the sender thread.

    The default implementations do nothing, so a subclass overrides only what it needs.
    """

    def before_send(self, rows: list[OutboxRow]) -> dict[int, str]:
        """Return ``{row id: reason}`` for rows that must *not* be sent.

        Those rows are marked skipped (done, never sent). Used e.g. by the auth0 store to
        skip users already marked in ``app_metadata``, or created before
        ``KEEN_SIGNUP_SINCE``. Raising a retryable :class:`~..exceptions.RemoteError`
        postpones the whole batch with a backoff.

        ``rows`` is the sender's own list: the hook may replace a row in it by a revised
        copy (same id, e.g. ``keen.timestamp`` set to the creation time it just looked
        up); the list as the hook leaves it is what is sent.
        """
        return {}

    def after_delivered(self, rows: t.Sequence[OutboxRow]) -> None:
        """Keen accepted ``rows``: record it elsewhere (e.g. confirm ``app_metadata``).

        Raising a retryable :class:`~..exceptions.RemoteError` keeps the rows durably in the
        *confirming* state; the hook is retried later with a backoff and Keen is not
        written again. Must be idempotent: after a crash it may run twice.
        """
        return None
