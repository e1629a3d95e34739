"""Deciding spooled signups on the sender thread: claim the marker, queue the event if won.

The login path spooled a *candidate* (:mod:`flask_keen_signup.spool`) because the store did
not answer in time; whether it is a signup is decided here, with the sender's own store
objects (their long timeouts: the sender may wait, a login may not). The same atomic step
as a login: one SQLite transaction claims and enqueues, one Redis script (one PostgreSQL
statement) does both; any
other pair claims, then enqueues, and releases the claim if the enqueue fails. A claim
that is lost means the user is known already (a returning user, or the same signup
queued meanwhile by a later login or another process): the candidate is dropped.
"""

from __future__ import annotations

import logging
import time
import typing as t

from .delivery import Outbox
from .delivery import QueuedEvent
from .spool import Decide
from .spool import Spool
from .stores import MarkerStore

logger = logging.getLogger(__name__)

Notify = t.Callable[[str, dict[str, t.Any]], None]


def decider(claimer: MarkerStore | None, outbox: Outbox) -> Decide:
    """The claim-then-enqueue step for ``claimer`` and ``outbox`` (see the module doc).

    ``claimer`` is ``None`` for the per-browser session store: its claim was made in the
    login request already, so a spooled event is only queued.
    """
    from .delivery.sqlite_outbox import SQLiteOutbox
    from .stores.sqlite import SQLiteStore

    if claimer is None:

        def enqueue_only(events: t.Sequence[QueuedEvent]) -> list[bool]:
            for event in events:
                outbox.enqueue(event)
            return [True] * len(events)

        return enqueue_only
    if (
        isinstance(claimer, SQLiteStore)
        and isinstance(outbox, SQLiteOutbox)
        and claimer.database is outbox.database
    ):
        ledger, sqlite_outbox = claimer, outbox

        def in_one_transaction(events: t.Sequence[QueuedEvent]) -> list[bool]:
            now = time.time()
            won: list[bool] = []
            with ledger.database.transaction() as conn:
                for event in events:
                    claimed = ledger.claim_in(conn, event.user_id, now=now)
                    if claimed:
                        sqlite_outbox.enqueue_in(conn, event, now=now)
                    won.append(claimed)
            return won

        return in_one_transaction
    if type(claimer).__name__ == "RedisStore" and type(outbox).__name__ == "RedisOutbox":
        from .delivery.redis_outbox import RedisOutbox
        from .stores.redis import RedisStore

        redis_store = t.cast(RedisStore, claimer)
        redis_outbox = t.cast(RedisOutbox, outbox)

        def in_scripts(events: t.Sequence[QueuedEvent]) -> list[bool]:
            return redis_outbox.claim_and_enqueue_many(redis_store, events)

        return in_scripts

    if type(claimer).__name__ == "PostgresStore" and type(outbox).__name__ == "PostgresOutbox":
        from .delivery.postgres_outbox import PostgresOutbox
        from .stores.postgres import PostgresStore

        pg_store = t.cast(PostgresStore, claimer)
        pg_outbox = t.cast(PostgresOutbox, outbox)

        def in_one_statement(events: t.Sequence[QueuedEvent]) -> list[bool]:
            return pg_outbox.claim_and_enqueue_many(pg_store, events)

        return in_one_statement

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
    ) -> None:
        self.spool = spool
        self.notify = notify
        self._decide = decider(claimer, outbox)

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
