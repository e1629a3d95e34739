"""Deciding spooled signups on the sender thread: claim the marker, queue the event if won.

The login path spooled a *candidate* (:mod:`flask_keen_signup.spool`) because the store did
not answer in time; whether it is a signup is decided here, with the sender's own store
objects (their long timeouts: the sender may wait, a login may not). The step is the
backend's :attr:`.backends.Parts.claim_and_enqueue_many`, the one a login uses too: one
SQLite transaction, one Redis script, one PostgreSQL statement, or
:func:`~.backends.parts.claim_then_enqueue` for a claimer and an outbox that live apart. A
claim that is lost means the user is known already (a returning user, or the same signup
queued meanwhile by a later login or another process): the candidate is dropped.
"""

from __future__ import annotations

import functools
import logging
import typing as t

from .backends.parts import claim_then_enqueue
from .delivery import Outbox
from .delivery import QueuedEvent
from .spool import Spool
from .stores import MarkerStore

if t.TYPE_CHECKING:  # pragma: no cover
    from .backends.parts import ClaimAndEnqueueMany
    from .delivery.outcomes import Notify

logger = logging.getLogger(__name__)


class SpoolDrainer:
    """``drainer()`` on each sender round: decide what the spool holds, if anything.

    :param claimer: the sender's claimer, ``None`` when the login request claimed already
        (the per-browser session): used only without ``claim_and_enqueue_many``.
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
        self._decide = claim_and_enqueue_many or functools.partial(
            claim_then_enqueue, claimer, outbox
        )

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


__all__ = ["SpoolDrainer"]
