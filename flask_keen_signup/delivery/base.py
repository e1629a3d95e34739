"""The outbox's value types and interfaces: :class:`QueuedEvent`, :class:`OutboxRow`,
:class:`Outbox`, :class:`DeliveryHooks` and the row states.

Re-exported by :mod:`flask_keen_signup.delivery` (see its docstring for the row life
cycle); a module of its own so that the outbox implementations, the in-memory one
included, import it without importing the package (no cycle).
"""


from __future__ import annotations

import dataclasses
import json
import time
import typing as t
from abc import ABC
from abc import abstractmethod

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
class OutboxRow:
    """A row handed to the sender by :meth:`Outbox.claim_due`.

    The body is kept as the JSON text stored at enqueue (``body_json``) so the sender can
    build a request without re-encoding; :attr:`body` parses it on demand.

    :param attempts: how many times the row has been claimed for its current stage,
        counting this claim (a claim is an attempt even if the process dies before the
        answer is recorded, so a row that crashes its sender cannot loop forever).
    :param state: ``pending`` (to send) or ``confirming`` (already in Keen; only the
        ``after_delivered`` hook is left to run).
    :param first_failed_at: wall-clock time of the row's first retryable failure, or
        ``None`` if it has not failed yet. ``KEEN_SIGNUP_RETRY_FOR`` is counted from here:
        a retryable failure becomes a dead letter by elapsed time, never by attempts.
    """

    id: int
    collection: str
    user_id: str
    uniqueness_token: str
    body_json: str
    attempts: int
    created_at: float
    next_attempt_at: float
    last_error: str | None
    state: str = PENDING
    first_failed_at: float | None = None

    @property
    def body(self) -> dict[str, t.Any]:
        """The event as a dict (parsed from :attr:`body_json`)."""
        value: dict[str, t.Any] = json.loads(self.body_json)
        return value


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """An event that cannot be delivered without a human: see :meth:`Outbox.retry_dead`."""

    id: int
    collection: str
    user_id: str
    uniqueness_token: str
    body_json: str
    attempts: int
    created_at: float
    reason: str
    error_code: str | None
    died_at: float

    @property
    def body(self) -> dict[str, t.Any]:
        value: dict[str, t.Any] = json.loads(self.body_json)
        return value


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


class Outbox(ABC):
    """Durable queue of events with leases. Implementations must be thread-safe.

    Every method that takes ``now`` uses wall-clock seconds (``time.time()``), because
    several processes share one outbox and must agree on time.

    The public methods are written once, here: they read the clock when ``now`` is not
    given, do nothing for an empty batch, compute lease times and cut-offs, pick orphans
    and assemble the value types. A backend implements :meth:`enqueue`,
    :meth:`pending_count` and the storage primitives (the ``_`` methods below the public
    ones), each one atomic step of its store on normalised arguments.
    """

    @abstractmethod
    def enqueue(self, event: QueuedEvent, *, now: float | None = None) -> int:
        """Store ``event`` as due now; return its row id (the login path: no layer)."""

    def claim_due(
        self,
        limit: int,
        *,
        now: float,
        lease_seconds: float,
        owner: str,
        flush_since: float | None = None,
    ) -> list[OutboxRow]:
        """Lease up to ``limit`` due rows to ``owner`` for ``lease_seconds``; oldest first.

        Each claimed row's ``attempts`` grows by one. A row leased by someone else is not
        returned until its lease expires. The rows come back in id order.

        :param flush_since: also claim rows waiting out a backoff, but only those not
            attempted since this instant (so a flush tries each row once and ends).
        """
        if limit < 1:
            return []
        rows = self._lease_due(limit, now, now + lease_seconds, owner, flush_since)
        rows.sort(key=lambda row: row.id)
        return rows

    def mark_delivered(self, ids: t.Collection[int], *, now: float | None = None) -> None:
        """Keen accepted these rows: they are done."""
        if ids:
            self._set_done(DELIVERED, [int(i) for i in ids], None, _clock(now))

    def mark_skipped(self, reasons: t.Mapping[int, str], *, now: float | None = None) -> None:
        """A hook decided these rows must not be sent (``{id: reason}``): they are done."""
        if reasons:
            ids = [int(i) for i in reasons]
            self._set_done(SKIPPED, ids, list(reasons.values()), _clock(now))

    def mark_confirming(
        self, ids: t.Collection[int], *, next_attempt_at: float, error: str
    ) -> None:
        """Keen has these rows, but the ``after_delivered`` hook must be retried later.

        Attempts restart from zero: confirming has its own budget.
        """
        if ids:
            self._set_confirming([int(i) for i in ids], next_attempt_at, error)

    def mark_retry(
        self, id: int, *, next_attempt_at: float, error: str, now: float | None = None
    ) -> None:
        """Drop the lease and make the row due again at ``next_attempt_at``.

        The row's ``first_failed_at`` is set to ``now`` unless it failed before (it is
        only cleared when a dead letter is replayed: :meth:`retry_dead`).
        """
        self.mark_retry_many([(id, next_attempt_at, error)], now=now)

    def mark_retry_many(
        self, items: t.Sequence[tuple[int, float, str]], *, now: float | None = None
    ) -> None:
        """:meth:`mark_retry` for ``(id, next_attempt_at, error)`` items, atomically."""
        if items:
            self._set_retry([(int(i), float(at), error) for i, at, error in items], _clock(now))

    def mark_dead(
        self, id: int, *, reason: str, error_code: str | None, now: float | None = None
    ) -> None:
        """Move the row to the dead-letter table."""
        self.mark_dead_many([(id, reason, error_code)], now=now)

    def mark_dead_many(
        self, items: t.Sequence[tuple[int, str, str | None]], *, now: float | None = None
    ) -> None:
        """:meth:`mark_dead` for ``(id, reason, error_code)`` items, atomically."""
        if items:
            self._to_dead([(int(i), reason, code) for i, reason, code in items], _clock(now))

    def release(self, ids: t.Collection[int], *, now: float | None = None) -> None:
        """Give back leased rows that were not sent (shutdown): due now, attempt undone."""
        if ids:
            self._unlease([int(i) for i in ids], _clock(now))

    def renew_leases(
        self, ids: t.Collection[int], *, owner: str, now: float, lease_seconds: float
    ) -> int:
        """Extend ``owner``'s leases on ``ids`` to ``now + lease_seconds``; return how many.

        The sender calls it while a batch is on the wire, so a request slower than the
        lease does not let another process claim (and resend) the same rows. Rows that
        are done, or leased by someone else by now, are left alone.
        """
        if not ids:
            return 0
        return self._extend_leases(sorted(int(i) for i in ids), owner, now + lease_seconds)

    def expire_leases(self, is_orphan: t.Callable[[str], bool]) -> int:
        """Expire every lease whose owner ``is_orphan`` says is dead; return how many rows.

        Lets a restarted process pick up what a killed one had leased without waiting for
        the leases to run out.
        """
        orphans = [owner for owner in self._lease_owners() if is_orphan(owner)]
        return self._expire_owners(orphans) if orphans else 0

    @abstractmethod
    def pending_count(self) -> int:
        """Rows still to send or confirm."""

    def stats(self, now: float | None = None) -> OutboxStats:
        """Counts for status pages (see :class:`OutboxStats`)."""
        now = _clock(now)
        pending, due, in_flight, oldest, dead, delivered, skipped, resends, error = (
            self._counts(now)
        )
        return OutboxStats(
            pending=int(pending),
            due=int(due),
            in_flight=int(in_flight),
            delivered=int(delivered or 0),
            skipped=int(skipped or 0),
            dead=int(dead),
            oldest_pending_age=None if oldest is None else max(0.0, now - float(oldest)),
            last_error=error,
            resends=int(resends or 0),
        )

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The oldest dead letters first."""
        return self._read_dead(limit) if limit > 0 else []

    def retry_dead(self, ids: t.Collection[int] | None = None, *, now: float | None = None) -> int:
        """Move dead letters (all, or ``ids``) back to pending with attempts reset."""
        chosen = None if ids is None else [int(i) for i in ids]
        return 0 if chosen == [] else self._replay_dead(chosen, _clock(now))

    def prune_delivered(self, older_than_seconds: float, *, now: float | None = None) -> int:
        """Delete delivered and skipped rows finished more than ``older_than_seconds`` ago."""
        return self._delete_done(_clock(now) - older_than_seconds)

    def drop_delivered_bodies(
        self, older_than_seconds: float, *, now: float | None = None
    ) -> int:
        """Retention: erase the body (personal data) of delivered and skipped rows finished
        more than ``older_than_seconds`` ago, keeping their id, collection, user id, state
        and times. Pending, confirming and dead rows are never touched. Cheap when there is
        nothing to drop (the sender calls it periodically). Returns how many bodies went.
        """
        return self._empty_bodies(_clock(now) - older_than_seconds)

    def forget_user(
        self, collection: str, user_id: str, *, erased_id: str, now: float | None = None
    ) -> ErasedRows:
        """Erasure: remove ``user_id``'s personal data from the outbox and dead letters.

        Rows still to send are *skipped* (never sent), finished rows keep only their id,
        state and times with ``user_id`` replaced by ``erased_id`` (a hash) and no body,
        dead letters are deleted, and so is the last error (it may quote the event).

        :raises NotImplementedError: the backend cannot erase (the CLI says so).
        """
        return self._erase_user(collection, user_id, erased_id, _clock(now))

    def close(self) -> None:
        """Release resources (this thread's connection). Optional."""
        return None

    # -- storage primitives: one atomic step each, on normalised arguments ------------
    # (Not abstract while a backend still overrides the public methods instead.)

    def _lease_due(
        self, limit: int, now: float, until: float, owner: str, flush_since: float | None
    ) -> list[OutboxRow]:
        """Lease up to ``limit`` (>= 1) due rows to ``owner`` until ``until``: each row's
        attempts + 1, ``last_attempt_at = now``; a pending row still leased counts as a
        resend. With ``flush_since``, also unleased rows not attempted since then."""
        raise NotImplementedError

    def _set_done(self, state: str, ids: list[int], reasons: list[str] | None, now: float) -> None:
        """Open rows of ``ids`` become ``state`` (delivered, or skipped with
        ``"skipped: " + reason``) at ``now``; count them; delete them without
        ``keep_delivered``."""
        raise NotImplementedError

    def _set_confirming(self, ids: list[int], next_attempt_at: float, error: str) -> None:
        """Open rows of ``ids``: confirming, attempts 0, unleased; ``error`` is the last."""
        raise NotImplementedError

    def _set_retry(self, items: list[tuple[int, float, str]], now: float) -> None:
        """Open rows: unleased, due at their time, their error, ``first_failed_at`` set to
        ``now`` if unset; the last item's error is the outbox's last error."""
        raise NotImplementedError

    def _to_dead(self, items: list[tuple[int, str, str | None]], now: float) -> None:
        """Open rows move to the dead letters (reason, code, died at ``now``); the last
        item's reason is the outbox's last error."""
        raise NotImplementedError

    def _unlease(self, ids: list[int], now: float) -> None:
        """Open leased rows of ``ids``: unleased, due at ``now``, attempts - 1 (not < 0)."""
        raise NotImplementedError

    def _extend_leases(self, ids: list[int], owner: str, until: float) -> int:
        """Open rows of ``ids`` leased by ``owner``: lease until ``until``; how many."""
        raise NotImplementedError

    def _lease_owners(self) -> t.Iterable[str]:
        """The distinct owners of the open rows' leases."""
        raise NotImplementedError

    def _expire_owners(self, owners: list[str]) -> int:
        """Open rows leased by ``owners``: due now (``next_attempt_at <= 0``); how many."""
        raise NotImplementedError

    def _counts(self, now: float) -> t.Sequence[t.Any]:
        """``(pending, due, in_flight, oldest created_at, dead, delivered, skipped,
        resends, last error)`` (see :class:`OutboxStats`)."""
        raise NotImplementedError

    def _read_dead(self, limit: int) -> list[DeadLetter]:
        """Up to ``limit`` (>= 1) dead letters, by ``(died_at, id)``."""
        raise NotImplementedError

    def _replay_dead(self, ids: list[int] | None, now: float) -> int:
        """Dead letters (``None``: all) back to pending, due at ``now``, attempts 0,
        their reason as last error; how many."""
        raise NotImplementedError

    def _delete_done(self, cutoff: float) -> int:
        """Delete delivered and skipped rows done before ``cutoff``; how many."""
        raise NotImplementedError

    def _empty_bodies(self, cutoff: float) -> int:
        """Empty the body of delivered and skipped rows done before ``cutoff``; how many.

        The default deletes those rows outright (:meth:`_delete_done`): stricter, and right
        for a backend that does not implement this.
        """
        return self._delete_done(cutoff)

    def _erase_user(self, collection: str, user_id: str, erased_id: str, now: float) -> ErasedRows:
        """See :meth:`forget_user`."""
        raise NotImplementedError(f"{type(self).__name__} cannot forget a user")


def _clock(now: float | None) -> float:
    return time.time() if now is None else now


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
