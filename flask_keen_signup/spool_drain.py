"""Deciding spooled signups on the sender thread: claim the marker, queue the event if won.

The login path spooled a *candidate* (:mod:`flask_keen_signup.spool`) because the store did
not answer in time; whether it is a signup is decided here, with the sender's own store
objects (their long timeouts: the sender may wait, a login may not). The same atomic step
as a login, given by the backend (:attr:`.backends.Parts.claim_and_enqueue_many`): one
SQLite transaction claims and enqueues, one Redis script (one PostgreSQL statement) does
both; any other pair claims, then enqueues, and releases the claim if the enqueue fails. A claim
that is lost means the user is known already (a returning user, or the same signup
queued meanwhile by a later login or another process): the candidate is dropped.
"""

from __future__ import annotations

import logging
import typing as t

from .delivery import Outbox
from .delivery import QueuedEvent
from .spool import Decide
from .spool import Spool
from .stores import MarkerStore

if t.TYPE_CHECKING:  # pragma: no cover
    from .backends import ClaimAndEnqueueMany
    from .delivery.outcomes import Notify

logger = logging.getLogger(__name__)


def decider(
    claimer: MarkerStore | None,
    outbox: Outbox,
    claim_and_enqueue_many: ClaimAndEnqueueMany | None = None,
) -> Decide:
    """The claim-then-enqueue step for ``claimer`` and ``outbox`` (see the module doc).

    ``claimer`` is ``None`` for the per-browser session store: its claim was made in the
    login request already, so a spooled event is only queued. ``claim_and_enqueue_many``
    is the backend's atomic step when the two live in one place
    (:attr:`.backends.Parts.claim_and_enqueue_many`); without it each candidate is
    claimed, then queued, and the claim released if queueing fails.
    """
    if claimer is None:

        def enqueue_only(events: t.Sequence[QueuedEvent]) -> list[bool]:
            for event in events:
                outbox.enqueue(event)
            return [True] * len(events)

        return enqueue_only
    if claim_and_enqueue_many is not None:
        return claim_and_enqueue_many

    def claim_then_enqueue(events: t.Sequence[QueuedEvent]) -> list[bool]:
        won: list[bool] = []
        for event in events:
            if not claimer.claim(event.user_id):
                won.append(False)
                continue
            try:
                outbox.enqueue(event)
            except BaseException:
                claimer.release(event.user_id)
                raise
            won.append(True)
        return won

    return claim_then_enqueue


class SpoolDrainer:
    """``drainer()`` on each sender round: decide what the spool holds, if anything.

    :param notify: ``recorded`` fires (on the sender thread) for each candidate whose claim
        was won: only then is it known to be a signup.
    """

    def __init__(
        self,
        spool: Spool,
        claimer: MarkerStore | None,
        outbox: Outbox,
        notify: Notify | None = None,
        *,
        claim_and_enqueue_many: ClaimAndEnqueueMany | None = None,
    ) -> None:
        self.spool = spool
        self.notify = notify
        self._decide = decider(claimer, outbox, claim_and_enqueue_many)

    def _decide_and_notify(self, events: t.Sequence[QueuedEvent]) -> t.Sequence[bool]:
        won = self._decide(events)
        if self.notify is not None:
            for event, claimed in zip(events, won, strict=True):
                if claimed:
                    try:
                        self.notify(
                            "recorded", {"user_id": event.user_id, "event": dict(event.body)}
                        )
                    except Exception:  # noqa: BLE001 - a broken receiver must not stop this
                        logger.exception("flask-keen-signup: a recorded receiver raised")
        return won

    def __call__(self) -> int:
        """Decide the spool; returns how many candidates were queued."""
        report = self.spool.drain(self._decide_and_notify)
        return 0 if report is None else report.queued


__all__ = ["SpoolDrainer", "decider"]
