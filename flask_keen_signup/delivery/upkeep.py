"""The sender's chores between batches: spooled signups and the retention of bodies.

Neither is delivery, and neither may stop it: each runs at the start of a round (and of
a flush, for the spool), logs what goes wrong, and leaves the next round to try again.

* **The spool.** When the marker store did not answer a login within its budget, the
  signup waited in a local spool (:mod:`flask_keen_signup.spool`); ``drain`` decides those
  on the sender thread (claim, then enqueue if won).
* **Retention.** A delivered event's body is personal data (name, IP, user agent); past
  ``KEEN_SIGNUP_RETENTION`` seconds it is dropped, at most once per ``check_interval``
  (one cheap read when there is nothing to drop).
"""

from __future__ import annotations

import dataclasses
import logging
import time
import typing as t

from .._text import printable
from . import Outbox

logger = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False)
class Upkeep:
    """:param outbox: where delivered bodies are dropped.
    :param drain: decides spooled signups; ``None``: no spool.
    :param retention: seconds a delivered body is kept; ``None``: forever.
    :param check_interval: seconds between two retention passes.
    :param name: the sender's name, for log lines.
    """

    outbox: Outbox
    drain: t.Callable[[], int] | None
    retention: float | None
    check_interval: float
    name: str
    _next_check: float = 0.0

    def drain_spool(self) -> None:
        """Decide spooled signups (the store failed a login's budget); never raises."""
        if self.drain is None:
            return
        try:
            self.drain()
        except Exception as exc:  # noqa: BLE001 - the store still fails: next round
            logger.debug("%s: the spool is not drained yet: %s", self.name, exc)

    def drop_old_bodies(self) -> None:
        """Drop delivered bodies older than ``retention``, if a pass is due; never raises."""
        retention = self.retention
        if retention is None:
            return
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + self.check_interval
        try:
            dropped = self.outbox.drop_delivered_bodies(retention)
        except Exception as exc:  # noqa: BLE001 - retried at the next pass
            logger.warning(
                "flask-keen-signup: could not drop delivered bodies past retention: %s",
                printable(str(exc), limit=300),
            )
            return
        if dropped:
            logger.info(
                "flask-keen-signup: dropped the body of %d delivered event(s) older than "
                "KEEN_SIGNUP_RETENTION (%gs)",
                dropped,
                retention,
            )
