"""Applying Keen's answers to the outbox: the transport half of the sender.

Given rows and what happened to them, this module records it: delivered rows are done
(after the store's ``after_delivered`` hook), retryable ones back off with full jitter
and never sooner than ``Retry-After``, rows failing for longer than ``retry_for`` (from
their first failure; never by a count of attempts) and permanent failures become dead
letters with Keen's error name, whole-request failures feed the circuit
breaker, and each outcome is notified (signals, metrics) on the sender thread.

It knows nothing of threads or batching: the worker (:mod:`.worker`) decides *when* a
round runs, :mod:`.batching` decides *what* goes into a request, and this decides what
an answer *means* for each row. :func:`read_results` is pure; :class:`Outcomes` writes
to the outbox and can be driven with the in-memory outbox, without a thread.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import typing as t

from .._text import printable
from ..exceptions import KeenError
from ..exceptions import RemoteError
from ..exceptions import StoreError
from ..keen import EventResult
from ..keen import Outcome
from . import CONFIRMING
from . import DeliveryHooks
from . import Outbox
from . import OutboxRow
from ._backoff import Backoff
from ._circuit import CircuitBreaker

logger = logging.getLogger(__name__)

#: ``notify(kind, payload)``: what happened to a signup (``recorded``, ``delivered``,
#: ``failed``, ``dead``...); the extension turns these into blinker signals. The one
#: definition: the tracker, the spool drainer and the sender all take one.
Notify = t.Callable[[str, dict[str, t.Any]], None]

#: The reason recorded when Keen's answer has no result for an event.
NO_RESULT = "no result for this event in Keen's answer"


class RequestFailed(Exception):
    """A whole request failed retryably (or a hook did): the round ends here."""


@dataclasses.dataclass(frozen=True)
class Verdicts:
    """What one batch answer means for each of its rows.

    :param delivered: rows Keen has.
    :param retry: ``(row, reason)`` for rows to try again.
    :param dead: ``(row, reason, Keen's error name)`` for rows Keen will never take.
    """

    delivered: list[OutboxRow]
    retry: list[tuple[OutboxRow, str]]
    dead: list[tuple[OutboxRow, str, str | None]]


def read_results(rows: t.Sequence[OutboxRow], results: t.Sequence[EventResult]) -> Verdicts:
    """Pair each row with its per-event result, in order.

    Results pair with rows by position only, so an answer with a different count (a short
    one, or a long one) pairs nothing: every row is retried, none is guessed delivered.
    """
    delivered: list[OutboxRow] = []
    retry: list[tuple[OutboxRow, str]] = []
    dead: list[tuple[OutboxRow, str, str | None]] = []
    if len(results) != len(rows):
        return Verdicts([], [(row, NO_RESULT) for row in rows], [])
    for row, item in zip(rows, results, strict=False):
        if item.outcome is Outcome.DELIVERED:
            delivered.append(row)
            continue
        what = ": ".join(p for p in (item.error_name, item.description) if p) or "no reason"
        if item.outcome is Outcome.PERMANENT:
            dead.append((row, what, item.error_name))
        else:
            retry.append((row, what))
    return Verdicts(delivered, retry, dead)


def _overrides(hooks: DeliveryHooks | None, name: str) -> bool:
    """Whether ``hooks`` overrides the hook ``name``: the default ones are not even called."""
    return hooks is not None and getattr(type(hooks), name) is not getattr(DeliveryHooks, name)


@dataclasses.dataclass(eq=False)
class Outcomes:
    """Records outcomes in the outbox; owns the backoff and the circuit breaker.

    Used from the sender thread only (or a flush it runs), like the circuit.

    :param outbox: where the rows are.
    :param max_attempts: attempts of the ``after_delivered`` hook for rows Keen already has
        (confirming); it dead-letters nothing.
    :param retry_for: seconds a retryable failure is retried, from the row's first failure,
        before the row becomes a dead letter.
    :param backoff: the per-row retry delays.
    :param circuit: the breaker fed by whole-request failures.
    :param hooks: the marker store's :class:`~flask_keen_signup.delivery.DeliveryHooks`;
        replaceable (the next batch uses the new ones).
    :param notify: called for every outcome; its exceptions are logged and swallowed.
    :param name: the sender's name, for log lines.
    """

    outbox: Outbox
    _: dataclasses.KW_ONLY
    max_attempts: int
    backoff: Backoff
    circuit: CircuitBreaker
    retry_for: float = 3 * 24 * 3600.0
    hooks: DeliveryHooks | None = None
    notify: Notify | None = None
    name: str = "flask-keen-signup-sender"
    #: The last delivery error seen by this process (for ``status``).
    last_error: str | None = dataclasses.field(default=None, init=False)
    #: Set when an open circuit closes: rows that backed off during the outage are
    #: claimed at once instead of waiting out their backoff.
    catch_up_since: float | None = dataclasses.field(default=None, init=False)

    # ------------------------------------------------------------ whole requests

    def request_failed(self, rows: t.Sequence[OutboxRow], exc: RemoteError) -> t.NoReturn:
        """A whole request failed: back off its rows, feed the circuit, end the round."""
        error = printable(str(exc), limit=500)
        self.last_error = error
        self.retry_all(rows, error, exc)
        cooldown = self.circuit.record_failure(exc.retry_after)
        if cooldown is not None:
            try:
                waiting = self.outbox.pending_count()
            except Exception:  # noqa: BLE001
                waiting = -1
            logger.warning(
                "flask-keen-signup: Keen is failing (%s); pausing deliveries for %.1fs "
                "(%d event(s) safe in the outbox)",
                error,
                cooldown,
                waiting,
            )
        raise RequestFailed

    def request_succeeded(self) -> None:
        """Keen answered: close the circuit (and catch up) if it was open."""
        if self.circuit.record_success():
            logger.info("flask-keen-signup: Keen answers again; resuming deliveries")
            self.catch_up_since = time.time()

    # ------------------------------------------------------------ per row

    def apply(self, verdicts: Verdicts) -> None:
        """Record a batch answer read by :func:`read_results`."""
        if verdicts.dead:
            self.dead(verdicts.dead)
        if verdicts.retry:
            self.retry(
                [(row, what, KeenError(what, retryable=True)) for row, what in verdicts.retry]
            )
        if verdicts.delivered:
            self.delivered(verdicts.delivered)

    def retry_all(
        self, rows: t.Sequence[OutboxRow], error: str, exc: RemoteError | None
    ) -> None:
        """Back off every row of ``rows`` for the same ``error``."""
        if rows:
            failure = exc if isinstance(exc, KeenError) else KeenError(error, retryable=True)
            self.retry(
                [(row, error, failure) for row in rows],
                retry_after=None if exc is None else exc.retry_after,
            )

    def retry(
        self,
        items: t.Sequence[tuple[OutboxRow, str, RemoteError]],
        *,
        retry_after: float | None = None,
    ) -> None:
        """Schedule each row's next attempt; a row failing for ``retry_for`` dies.

        Time, not attempts: the budget is counted from the row's ``first_failed_at`` (set
        by the outbox at its first retry), so nothing that asks for attempts faster (a
        flush loop, many processes) can turn a transient failure into a dead letter.
        """
        now = time.time()
        again: list[tuple[int, float, str]] = []
        dead: list[tuple[OutboxRow, str, str | None]] = []
        for row, error, _ in items:
            first = row.first_failed_at
            if first is not None and now - first >= self.retry_for:
                hours = (now - first) / 3600
                why = f"gave up after failing for {hours:.1f} h ({row.attempts} attempts): {error}"
                dead.append((row, why, None))
            else:
                delay = self.backoff.delay(row.attempts, retry_after)
                again.append((row.id, now + delay, error))
        self.outbox.mark_retry_many(again, now=now)
        if dead:
            self.dead(dead)
        dead_ids = {row.id for row, _, _ in dead}
        for row, _, exc in items:
            if row.id not in dead_ids:
                self._notify(
                    "failed", user_id=row.user_id, event=row.body, error=exc, attempts=row.attempts
                )

    def dead(self, items: t.Sequence[tuple[OutboxRow, str, str | None]]) -> None:
        """Move rows to dead letters: ``(row, reason, Keen's error name or None)``."""
        self.outbox.mark_dead_many(
            [(row.id, reason, code) for row, reason, code in items], now=time.time()
        )
        codes = sorted({code or "gave up" for _, _, code in items})
        logger.warning(
            "flask-keen-signup: %d event(s) moved to dead letters (%s); "
            "see `flask keen-signup status`, replay with `retry-dead`",
            len(items),
            ", ".join(printable(code, limit=60) for code in codes),
        )
        for row, reason, _ in items:
            logger.debug("dead letter %d: %s", row.id, printable(reason, limit=500))
            self._notify("dead", user_id=row.user_id, event=row.body, reason=reason)

    def delivered(self, rows: list[OutboxRow]) -> None:
        """Keen has these rows: confirm them with the store (if it cares), then done."""
        if _overrides(self.hooks, "after_delivered"):
            self.confirm(rows)
        else:
            self.outbox.mark_delivered([row.id for row in rows])
        for row in rows:
            self._notify(
                "delivered",
                user_id=row.user_id,
                event=row.body,
                attempts=row.attempts,
                enqueued_at=row.created_at,
            )

    # ------------------------------------------------------------ the store's hooks

    def confirm(self, rows: list[OutboxRow]) -> None:
        """Run ``after_delivered`` for rows Keen has; keep them *confirming* if it fails."""
        assert self.hooks is not None
        try:
            self.hooks.after_delivered(rows)
        except Exception as exc:  # noqa: BLE001 - hook errors are retried or logged
            if isinstance(exc, RemoteError) and not exc.retryable:
                keep, give_up = [], rows
            else:
                give_up = [
                    r for r in rows if r.state == CONFIRMING and r.attempts >= self.max_attempts
                ]
                keep = [r for r in rows if r not in give_up]
            if keep:
                retry_after = exc.retry_after if isinstance(exc, RemoteError) else None
                attempt = max(r.attempts if r.state == CONFIRMING else 1 for r in keep)
                delay = self.backoff.delay(attempt, retry_after)
                self.outbox.mark_confirming(
                    [r.id for r in keep],
                    next_attempt_at=time.time() + delay,
                    error=f"after_delivered failed: {exc}",
                )
                logger.info(
                    "flask-keen-signup: confirming %d delivered event(s) failed (%s); "
                    "retrying in %.1fs without re-sending to Keen",
                    len(keep),
                    type(exc).__name__,
                    delay,
                )
            if give_up:
                # Keen has these events (that is the guarantee); the hook cannot succeed.
                # Re-sending them later could duplicate past Keen's 31-day token window.
                logger.warning(
                    "flask-keen-signup: giving up confirming %d delivered event(s): %s",
                    len(give_up),
                    type(exc).__name__,
                )
                self.outbox.mark_delivered([r.id for r in give_up])
            return
        self.outbox.mark_delivered([row.id for row in rows])

    def before_send(self, rows: list[OutboxRow]) -> list[OutboxRow]:
        """Run ``before_send``; mark the rows it skips; return the rest.

        :raises RequestFailed: the hook failed (the rows back off).
        """
        if not _overrides(self.hooks, "before_send"):
            return rows
        assert self.hooks is not None
        rows = list(rows)  # the hook may revise rows in this list (DeliveryHooks.before_send)
        try:
            skips = self.hooks.before_send(rows)
        except Exception as exc:  # noqa: BLE001
            if isinstance(exc, RemoteError) and not exc.retryable:
                logger.warning("flask-keen-signup: before_send failed: %s", type(exc).__name__)
            else:
                logger.info("flask-keen-signup: before_send failed; backing off")
            self.retry_all(rows, f"before_send failed: {exc}", None)
            raise RequestFailed from None
        ids = {row.id for row in rows}
        skips = {row_id: reason for row_id, reason in skips.items() if row_id in ids}
        if skips:
            self.outbox.mark_skipped(skips)
            logger.debug("%s: skipped %d event(s) by hook", self.name, len(skips))
        return [row for row in rows if row.id not in skips]

    def _notify(self, kind: str, **payload: t.Any) -> None:
        if self.notify is None:
            return
        try:
            self.notify(kind, payload)
        except Exception:  # noqa: BLE001 - a broken subscriber must not break delivery
            logger.exception("flask-keen-signup: notify(%r) raised; ignored", kind)


class StoreEpisode:
    """One loud log line when the outbox itself fails, one when it answers again.

    Between the two, repeats go to debug level: a broken database must not write a
    traceback every flush interval.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        #: The current episode's error, or ``None`` while the outbox answers.
        self.error: str | None = None
        self._since = 0.0

    def failing(self, exc: StoreError, retry_every: float) -> None:
        error = printable(str(exc), limit=500)
        if self.error is None:
            logger.error(
                "flask-keen-signup: the outbox cannot be used (%s); deliveries are paused, "
                "retrying every %gs. Queued events are not lost; see "
                "`flask keen-signup status`.",
                error,
                retry_every,
            )
            self._since = time.monotonic()
        else:
            logger.debug("%s: the outbox still cannot be used: %s", self.name, error)
        self.error = error

    def check(self, outbox: Outbox) -> None:
        """End an episode once the outbox really answers (a round may not have used it).

        :raises StoreError: it still fails.
        """
        if self.error is not None:
            outbox.pending_count()
            logger.warning(
                "flask-keen-signup: the outbox works again after %.0fs; deliveries resume",
                time.monotonic() - self._since,
            )
            self.error = None
