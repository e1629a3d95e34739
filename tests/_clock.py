"""A fake clock for the sender's modules: hours of an outage in a test's seconds.

Only the named modules see it (their module-level ``time`` is replaced with this object),
so the Keen emulator, sockets and SQLite keep real time. ``time()`` is wall-clock
seconds (the outbox's times), ``monotonic()`` the circuit's and deadlines' clock; both
move together, only when the test calls :meth:`FakeClock.advance` (or ``sleep``).
"""

from __future__ import annotations

import time as _time
import typing as t

import pytest

#: Every module of the delivery path that reads the clock.
SENDER_MODULES = (
    "flask_keen_signup.delivery.sender",
    "flask_keen_signup.delivery.outcomes",
    "flask_keen_signup.delivery.leases",
    "flask_keen_signup.delivery.transport",
    "flask_keen_signup.delivery.worker",
    "flask_keen_signup.delivery._circuit",
    "flask_keen_signup.delivery.upkeep",
)


class FakeClock:
    def __init__(self, start: float | None = None) -> None:
        self.now = _time.time() if start is None else start
        self._mono = 1_000_000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self._mono

    def perf_counter(self) -> float:
        return self._mono

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self._mono += seconds

    def __getattr__(self, name: str) -> t.Any:  # anything else: the real module's
        return getattr(_time, name)

    def install(
        self, monkeypatch: pytest.MonkeyPatch, modules: t.Iterable[str] = SENDER_MODULES
    ) -> FakeClock:
        for module in modules:
            monkeypatch.setattr(f"{module}.time", self)
        return self
