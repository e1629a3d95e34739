"""A circuit breaker for whole-request failures, so a down Keen is not hammered.

*Closed*: send normally. After ``threshold`` consecutive whole-request failures (5xx, 429,
timeouts, resets) it *opens*: nothing is sent for a cool-down that doubles with each
consecutive opening (with jitter, capped, and never shorter than Keen's ``Retry-After``).
Then it is *half-open*: one small probe batch goes out; success closes it, failure opens it
again for longer. Per-event failures inside a 200 answer are not Keen being down and do not
count. Events keep being accepted into the durable outbox the whole time.

Not thread-safe by itself: only the sender thread (or a flush it runs) touches it.
"""

from __future__ import annotations

import random
import time

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"


class CircuitBreaker:
    """:param threshold: consecutive failures that open the circuit.
    :param cooldown: the first cool-down, in seconds; doubles per consecutive opening.
    :param cap: the longest cool-down (before ``Retry-After``), in seconds.
    """

    def __init__(
        self,
        *,
        threshold: int = 3,
        cooldown: float = 5.0,
        cap: float = 300.0,
        rng: random.Random | None = None,
    ) -> None:
        if threshold < 1 or cooldown <= 0 or cap < cooldown:
            raise ValueError("circuit needs threshold >= 1 and 0 < cooldown <= cap")
        self.threshold = threshold
        self.cooldown = cooldown
        self.cap = cap
        self._rng = rng or random.Random()
        self._failures = 0
        self._openings = 0
        self._open_until: float | None = None
        #: Wall-clock time the circuit first opened in this run of failures, else None.
        self.opened_at: float | None = None

    def state(self) -> str:
        """``closed``, ``open`` (cooling down) or ``half-open`` (next send is a probe)."""
        if self._open_until is None:
            return CLOSED
        if time.monotonic() < self._open_until:
            return OPEN
        return HALF_OPEN

    def remaining(self) -> float:
        """Seconds left in the cool-down (0 when not open)."""
        if self._open_until is None:
            return 0.0
        return max(0.0, self._open_until - time.monotonic())

    def record_success(self) -> bool:
        """Keen answered 2xx. Returns whether this closed an open or half-open circuit."""
        was_open = self._open_until is not None
        self._failures = 0
        self._openings = 0
        self._open_until = None
        self.opened_at = None
        return was_open

    def record_failure(self, retry_after: float | None = None) -> float | None:
        """A whole request failed. Returns the cool-down if this opened the circuit."""
        self._failures += 1
        if self._open_until is None and self._failures < self.threshold:
            return None
        ceiling = min(self.cap, self.cooldown * 2.0 ** min(self._openings, 32))
        self._openings += 1
        cooldown = self._rng.uniform(ceiling / 2, ceiling)  # jittered, never near zero
        if retry_after is not None and retry_after > cooldown:
            cooldown = retry_after
        self._open_until = time.monotonic() + cooldown
        if self.opened_at is None:
            self.opened_at = time.time()
        return cooldown
