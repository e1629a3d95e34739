"""Retry delays: exponential backoff with full jitter, never shorter than ``Retry-After``.

Full jitter (a uniform draw between 0 and the exponential ceiling) spreads the retries of
many rows, and of many processes, over the whole window, so a recovering Keen is not hit
by a synchronised wave. The circuit breaker (:mod:`._circuit`) is what keeps a down Keen
from being hammered; this only spaces the retries of each row.
"""

from __future__ import annotations

import random


class Backoff:
    """Delays for attempt 1, 2, 3 ...: ``uniform(0, min(cap, base * 2 ** (attempt - 1)))``.

    :param base: the ceiling of the first retry's delay, in seconds.
    :param cap: the largest ceiling, in seconds.
    :param rng: a :class:`random.Random` (seeded in tests).
    """

    def __init__(self, base: float = 1.0, cap: float = 300.0, rng: random.Random | None = None):
        if base <= 0 or cap < base:
            raise ValueError("backoff needs 0 < base <= cap")
        self.base = base
        self.cap = cap
        self._rng = rng or random.Random()

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after ``attempt`` failed attempts, at least ``retry_after``."""
        exponent = min(max(attempt, 1) - 1, 64)  # 2 ** 64 is past any cap; avoids overflow
        delay = self._rng.uniform(0.0, min(self.cap, self.base * 2.0**exponent))
        return delay if retry_after is None else max(delay, retry_after)
