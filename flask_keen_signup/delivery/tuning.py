"""The sender's numbers (:class:`Tuning`, checked once) and what ``status`` shows of it
(:class:`SenderStatus`); :class:`~.sender.Sender` takes the one and returns the other."""

from __future__ import annotations

import dataclasses
import math
import random
import typing as t

from ..config import DEFAULT_BATCH_SIZE
from ..config import DEFAULT_FLUSH_INTERVAL
from ..config import DEFAULT_MAX_ATTEMPTS
from ..config import DEFAULT_RETRY_FOR
from ..config import DEFAULT_SHUTDOWN_TIMEOUT
from ..keen import MAX_REQUEST_BYTES
from . import OutboxStats
from ._circuit import CircuitBreaker

#: Default cap on a request body: half of Keen's 10 MB, leaving room for a proxy's limits.
DEFAULT_MAX_BATCH_BYTES = 5_000_000
#: Rows sent by the probe of a half-open circuit.
DEFAULT_PROBE_SIZE = 10
#: Seconds the thread waits after an enqueue woke it, to gather a batch (see ``linger``).
DEFAULT_LINGER = 0.1
#: Seconds between two retention passes (dropping delivered bodies, see ``retention``).
RETENTION_CHECK_INTERVAL = 60.0


@dataclasses.dataclass(frozen=True)
class Tuning:
    """The sender's numbers, checked once; each default is written once, here or in
    :mod:`flask_keen_signup.config` for those an app sets (``KEEN_SIGNUP_*``).

    * ``batch_size``: rows per claim and at most per request (``collection_batch_size``);
    * ``flush_interval``: seconds between looks at the outbox when not woken;
    * ``max_attempts``: attempts of the ``after_delivered`` hook for an event Keen already
      has (then it is marked delivered without it); it dead-letters nothing;
    * ``retry_for``: seconds a retryable failure (Keen down, 5xx, 429, a proxy's page, a bad
      key) is retried, from the row's first failure, before the row becomes a dead letter.
      Never a number of attempts: a flush, however often asked for, cannot use it up;
    * ``shutdown_timeout``: seconds exit and SIGTERM may spend flushing;
    * ``max_batch_bytes``: cap on one request body (below Keen's ``MAX_REQUEST_BYTES``);
    * ``backoff_base``, ``backoff_cap``: first and longest retry ceiling (full jitter);
    * ``lease_seconds``: how long a claim hides rows from other processes; longer than one
      batch can take. A crashed process's leases expire early when its pid is gone;
    * ``circuit_threshold``: consecutive whole-request failures that open the circuit;
      ``circuit_cooldown``: first open period, doubling per re-opening, up to
      ``circuit_cap`` (``Retry-After`` may extend it); ``probe_size``: rows of the probe;
    * ``linger``: after a wake, wait this long (at most ``flush_interval``) for more
      signups: fewer, bigger batches and fewer write transactions beside the logins';
    * ``retention``: seconds a delivered body (personal data) is kept, checked at most every
      ``retention_check_interval`` seconds (:meth:`Outbox.drop_delivered_bodies`).
    """

    batch_size: int = DEFAULT_BATCH_SIZE
    flush_interval: float = DEFAULT_FLUSH_INTERVAL
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    retry_for: float = DEFAULT_RETRY_FOR
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES
    backoff_base: float = 1.0
    backoff_cap: float = 300.0
    lease_seconds: float = 120.0
    circuit_threshold: int = 3
    circuit_cooldown: float = 5.0
    circuit_cap: float = 60.0
    probe_size: int = DEFAULT_PROBE_SIZE
    linger: float = DEFAULT_LINGER
    retention: float | None = None
    retention_check_interval: float = RETENTION_CHECK_INTERVAL

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("collection_batch_size must be at least 1")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 <= self.retry_for < math.inf:
            raise ValueError("retry_for must be a finite number of seconds, at least 0")
        if self.flush_interval <= 0:
            raise ValueError("flush_interval must be positive")
        if not 0 < self.max_batch_bytes <= MAX_REQUEST_BYTES:
            raise ValueError(f"max_batch_bytes must be in (0, {MAX_REQUEST_BYTES}]")
        # Bounded by the batch size and the interval: clamp rather than refuse.
        object.__setattr__(self, "probe_size", max(1, min(self.probe_size, self.batch_size)))
        object.__setattr__(self, "linger", max(0.0, min(self.linger, self.flush_interval)))

    def circuit(self, rng: random.Random) -> CircuitBreaker:
        """A new breaker with these numbers (each process has its own)."""
        return CircuitBreaker(
            threshold=self.circuit_threshold,
            cooldown=self.circuit_cooldown,
            cap=self.circuit_cap,
            rng=rng,
        )


@dataclasses.dataclass(frozen=True)
class SenderStatus:
    """What ``flask keen-signup status`` shows.

    :param circuit: ``closed``, ``open`` or ``half-open``.
    :param circuit_until: wall-clock time the open circuit will half-open, or ``None``.
    :param last_error: the last delivery error this process saw, else the outbox's.
    :param circuit_since: wall-clock time the circuit first opened in the current run of
        failures (it stays set while open and half-open), or ``None`` when closed.
    :param round_errors: consecutive rounds (and flushes) of this process's sender that
        ended in an unexpected error; 0 once one completes. Never silent: ``last_error``
        names it and the health verdict is not ``ok`` while it is above 0.
    """

    running: bool
    outbox: OutboxStats
    circuit: str
    circuit_until: float | None
    last_error: str | None
    circuit_since: float | None = None
    round_errors: int = 0

    @property
    def resends(self) -> int:
        return self.outbox.resends

    def as_dict(self) -> dict[str, t.Any]:
        data = dataclasses.asdict(self)
        data["resends"] = self.resends
        return data

