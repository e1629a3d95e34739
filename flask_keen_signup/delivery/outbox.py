"""The :class:`Outbox` interface, with what every backend has in common written once.

Re-exported by :mod:`flask_keen_signup.delivery`. The public methods (what the sender,
the CLI and the tests call) are concrete here; a backend implements :meth:`Outbox.enqueue`,
:meth:`Outbox.pending_count` and the storage primitives, the ``_`` methods at the end.
"""

from __future__ import annotations

import time
import typing as t
from abc import ABC
from abc import abstractmethod

from .base import DELIVERED
from .base import SKIPPED
from .base import DeadLetter
from .base import ErasedRows
from .base import OutboxRow
from .base import OutboxStats
from .base import QueuedEvent


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
        pending, due, in_flight, oldest, dead, delivered, skipped, resends, error = self._counts(
            now
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

    def drop_delivered_bodies(self, older_than_seconds: float, *, now: float | None = None) -> int:
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
        """Open rows of ``ids`` leased by ``owner``: lease until ``until``; how many.

        The default renews nothing (an outbox without leases).
        """
        return 0

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

        The default deletes those rows outright (:meth:`prune_delivered`): stricter, and
        right for a backend that does not implement this.
        """
        return self.prune_delivered(0.0, now=cutoff)

    def _erase_user(self, collection: str, user_id: str, erased_id: str, now: float) -> ErasedRows:
        """See :meth:`forget_user`."""
        raise NotImplementedError(f"{type(self).__name__} cannot forget a user")


def _clock(now: float | None) -> float:
    return time.time() if now is None else now
