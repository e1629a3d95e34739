"""The background sender: drains the outbox into Keen's batch endpoint.

One daemon thread per process. Each round it leases a batch of due rows, builds one batch
request per collection (capped by count and bytes, from the JSON stored at enqueue), sends
it, and records **each row's own result**: delivered rows are done, retryable ones back off,
permanent ones become dead letters with Keen's error name. A whole request that fails
(5xx, 429, timeout, reset) backs off every row of it, honouring ``Retry-After``, and feeds a
circuit breaker that stops the sender from hammering a down Keen. Only one batch of rows
is ever in memory, so a long outage grows the outbox, not the process.

:class:`Sender` is a facade over parts with one job each, split along sentry-python's
worker/transport seam:

* :mod:`.worker`: the thread (start, wake, flush requests, stop, fork, lazy restart);
* :mod:`.batching`: pure functions from rows to requests (collections, size caps, halves);
* :mod:`.transport`: posts a leased batch and hands each answer on;
* :mod:`.outcomes`: what an answer means (backoff, circuit, dead letters, hooks, notify);
* :mod:`.leases`: the lease owner, claims, renewal while sending, orphans of dead processes;
* :mod:`.upkeep`: the chores of a round: spooled signups, retention of delivered bodies;
* :mod:`.shutdown`: exit, SIGTERM and fork for every sender of the process.

What stays here is the order of one round (upkeep, claim, maybe prefetch the next batch,
deliver), a flush, and the public surface. The request path never waits for any of
this: it enqueues and calls :meth:`Sender.wake` (an ``Event.set``).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
import typing as t

from ..exceptions import StoreError
from ..keen import MAX_REQUEST_BYTES
from ..keen import KeenClient
from . import DeliveryHooks
from . import Outbox
from . import OutboxRow
from . import OutboxStats
from . import shutdown
from ._backoff import Backoff
from ._circuit import CLOSED
from ._circuit import HALF_OPEN
from ._circuit import OPEN
from ._circuit import CircuitBreaker
from .leases import Leases
from .leases import Prefetch
from .outcomes import Notify
from .outcomes import Outcomes
from .outcomes import RequestFailed
from .outcomes import StoreEpisode
from .transport import Transport
from .upkeep import Upkeep
from .worker import FlushRequest
from .worker import Worker

__all__ = ["DEFAULT_MAX_BATCH_BYTES", "Notify", "Sender", "SenderStatus", "Tuning"]

logger = logging.getLogger(__name__)

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
    """The sender's numbers, checked once (see :class:`Sender` for each one's meaning)."""

    batch_size: int = 500
    flush_interval: float = 0.5
    max_attempts: int = 30
    shutdown_timeout: float = 5.0
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
        if self.flush_interval <= 0:
            raise ValueError("flush_interval must be positive")
        if not 0 < self.max_batch_bytes <= MAX_REQUEST_BYTES:
            raise ValueError(f"max_batch_bytes must be in (0, {MAX_REQUEST_BYTES}]")
        # Bounded by the batch size and the interval: clamp rather than refuse.
        object.__setattr__(self, "probe_size", max(1, min(self.probe_size, self.batch_size)))
        object.__setattr__(self, "linger", max(0.0, min(self.linger, self.flush_interval)))


@dataclasses.dataclass(frozen=True)
class SenderStatus:
    """What ``flask keen-signup status`` shows.

    :param circuit: ``closed``, ``open`` or ``half-open``.
    :param circuit_until: wall-clock time the open circuit will half-open, or ``None``.
    :param last_error: the last delivery error this process saw, else the outbox's.
    :param circuit_since: wall-clock time the circuit first opened in the current run of
        failures (it stays set while open and half-open), or ``None`` when closed.
    """

    running: bool
    outbox: OutboxStats
    circuit: str
    circuit_until: float | None
    last_error: str | None
    circuit_since: float | None = None

    @property
    def resends(self) -> int:
        return self.outbox.resends

    def as_dict(self) -> dict[str, t.Any]:
        data = dataclasses.asdict(self)
        data["resends"] = self.resends
        return data


class Sender:
    """Deliver an :class:`~flask_keen_signup.delivery.Outbox` to Keen in the background.

    :param outbox: where events wait.
    :param client: the Keen write client.
    :param collection_batch_size: rows per claim and at most per request.
    :param flush_interval: seconds between looks at the outbox when not woken.
    :param max_attempts: attempts before a retryable failure becomes a dead letter.
    :param shutdown_timeout: seconds exit and SIGTERM may spend flushing.
    :param max_batch_bytes: cap on one request body (below Keen's ``MAX_REQUEST_BYTES``).
    :param hooks: :class:`~flask_keen_signup.delivery.DeliveryHooks` of the marker store.
    :param notify: ``notify(kind, payload)`` for ``delivered``, ``failed`` and ``dead``,
        called on the sender thread; its exceptions are logged and swallowed.
    :param name: the thread's name (and the prefix of its helpers' names, in logs too).
    :param backoff_base: first retry ceiling in seconds (full jitter, doubling).
    :param backoff_cap: longest retry ceiling in seconds.
    :param lease_seconds: how long a claim hides rows from other processes; longer than
        one batch can take (timeouts, 413 splits). A crashed process's leases are also
        expired early when its pid is gone (same host).
    :param circuit_threshold: consecutive whole-request failures that open the circuit.
    :param circuit_cooldown: first open period in seconds; doubles per re-opening.
    :param circuit_cap: longest open period in seconds (``Retry-After`` may extend it).
    :param probe_size: rows sent by a half-open circuit's probe.
    :param handle_signals: install the SIGTERM handler at :meth:`start` (main thread only).
    :param rng: a :class:`random.Random` for the jitter (seeded in tests).
    :param linger: after an enqueue wakes the thread, wait this long (at most
        ``flush_interval``) for more signups before claiming: fewer, bigger batches, and
        fewer write transactions competing with the login requests' own.
    :param drain: decides the signups the login path spooled (see
        :mod:`flask_keen_signup.spool`); called each round, its errors are retried.
    :param retention: seconds a delivered event's body (personal data) is kept
        (``KEEN_SIGNUP_RETENTION``); at most every ``retention_check_interval`` seconds the
        thread drops older ones (:meth:`Outbox.drop_delivered_bodies`). ``None``: never.
    """

    def __init__(
        self,
        outbox: Outbox,
        client: KeenClient,
        *,
        collection_batch_size: int = 500,
        flush_interval: float = 0.5,
        max_attempts: int = 30,
        shutdown_timeout: float = 5.0,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        hooks: DeliveryHooks | None = None,
        notify: Notify | None = None,
        name: str = "flask-keen-signup-sender",
        backoff_base: float = 1.0,
        backoff_cap: float = 300.0,
        lease_seconds: float = 120.0,
        circuit_threshold: int = 3,
        circuit_cooldown: float = 5.0,
        circuit_cap: float = 60.0,
        probe_size: int = DEFAULT_PROBE_SIZE,
        handle_signals: bool = True,
        rng: random.Random | None = None,
        linger: float = DEFAULT_LINGER,
        drain: t.Callable[[], int] | None = None,
        retention: float | None = None,
        retention_check_interval: float = RETENTION_CHECK_INTERVAL,
    ) -> None:
        self.tuning = Tuning(
            batch_size=collection_batch_size,
            flush_interval=flush_interval,
            max_attempts=max_attempts,
            shutdown_timeout=shutdown_timeout,
            max_batch_bytes=max_batch_bytes,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            lease_seconds=lease_seconds,
            circuit_threshold=circuit_threshold,
            circuit_cooldown=circuit_cooldown,
            circuit_cap=circuit_cap,
            probe_size=probe_size,
            linger=linger,
            retention=retention,
            retention_check_interval=retention_check_interval,
        )
        self.outbox = outbox
        self.client = client
        self._hooks = hooks
        self._notify = notify
        self.name = name
        self.handle_signals = handle_signals
        self.upkeep = Upkeep(
            outbox,
            drain=drain,
            retention=retention,
            check_interval=retention_check_interval,
            name=name,
        )
        self._rng = rng or random.Random()
        self._backoff = Backoff(backoff_base, backoff_cap, self._rng)
        self.leases = Leases(
            outbox, lease_seconds=lease_seconds, live_owners=shutdown.live_owners, name=name
        )
        self.worker = Worker(name, self, flush_interval=flush_interval, linger=self.tuning.linger)
        self._store = StoreEpisode(name)
        self._shut_down = False
        self._shutdown_lock = threading.Lock()
        self._new_process_state()

    def _new_process_state(self) -> None:
        """What a round keeps between rounds; fresh in each process."""
        tuning = self.tuning
        circuit = CircuitBreaker(
            threshold=tuning.circuit_threshold,
            cooldown=tuning.circuit_cooldown,
            cap=tuning.circuit_cap,
            rng=self._rng,
        )
        self.outcomes = Outcomes(
            self.outbox,
            max_attempts=tuning.max_attempts,
            backoff=self._backoff,
            circuit=circuit,
            hooks=self._hooks,
            notify=self._notify,
            name=self.name,
        )
        self.transport = Transport(
            self.client,
            self.outcomes,
            self.leases,
            batch_size=tuning.batch_size,
            max_batch_bytes=tuning.max_batch_bytes,
            name=self.name,
        )
        self._prefetch: Prefetch | None = None

    def __repr__(self) -> str:
        return f"<Sender {self.name!r} {self.outbox!r} running={self.running}>"

    # ------------------------------------------------------------ the tuning, as before

    @property
    def batch_size(self) -> int:
        return self.tuning.batch_size

    @property
    def flush_interval(self) -> float:
        return self.tuning.flush_interval

    @property
    def max_attempts(self) -> int:
        return self.tuning.max_attempts

    @property
    def shutdown_timeout(self) -> float:
        return self.tuning.shutdown_timeout

    @property
    def max_batch_bytes(self) -> int:
        return self.tuning.max_batch_bytes

    @property
    def lease_seconds(self) -> float:
        return self.tuning.lease_seconds

    @property
    def probe_size(self) -> int:
        return self.tuning.probe_size

    @property
    def linger(self) -> float:
        return self.tuning.linger

    @property
    def retention(self) -> float | None:
        return self.tuning.retention

    @property
    def hooks(self) -> DeliveryHooks | None:
        """The marker store's hooks; may be replaced while the sender runs."""
        return self._hooks

    @hooks.setter
    def hooks(self, hooks: DeliveryHooks | None) -> None:
        self._hooks = self.outcomes.hooks = hooks

    @property
    def notify(self) -> Notify | None:
        """Called on the sender thread for every outcome; may be replaced."""
        return self._notify

    @notify.setter
    def notify(self, notify: Notify | None) -> None:
        self._notify = self.outcomes.notify = notify

    @property
    def drain(self) -> t.Callable[[], int] | None:
        """Decides the signups the login path spooled (:mod:`flask_keen_signup.spool`)."""
        return self.upkeep.drain

    @drain.setter
    def drain(self, drain: t.Callable[[], int] | None) -> None:
        self.upkeep.drain = drain

    @property
    def owner(self) -> str:
        """This process's lease owner, ``host/pid/nonce`` (new in a forked child)."""
        return self.leases.owner

    # ------------------------------------------------------------ control

    @property
    def running(self) -> bool:
        return self.worker.running

    def start(self) -> None:
        """Start the background thread (idempotent, thread-safe).

        Called at ``init_app`` so that events left by a previous run go out without waiting
        for a request. Also registers the exit, SIGTERM and fork hooks.
        """
        if self.worker.forked():  # a child the at-fork hook missed: nothing of ours here
            self._reset_after_fork()
        self._shut_down = False
        # Registered first: from its first claim, its leases must count as a live owner's.
        shutdown.register(self, signals=self.handle_signals)
        if shutdown.threads_on_hold():  # started later here, or in each forked worker
            self.worker.defer()
            return
        self.worker.start()

    def wake(self) -> None:
        """Nudge the thread: an event was just enqueued.

        Cheap: a pid check, a flag read, and an ``Event.set`` only if the thread is not
        already nudged. In a process forked without Python's at-fork hooks, the first
        wake restarts the thread a running sender had in the parent (as sentry does).
        """
        if self.worker.forked():
            self.after_fork_in_child()
        self.worker.wake()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread, waiting up to ``timeout`` seconds for the batch in flight.

        Rows the thread claimed but had not started sending are released. A batch still in
        flight after ``timeout`` keeps its lease; it is retried after the lease runs out (or
        at once by the next process, if this one has exited).
        """
        if self.worker.forked():  # the thread is the parent's: never join it here
            self._reset_after_fork()
        self.worker.stop(timeout)

    def shutdown(self, timeout: float | None = None) -> int:
        """Flush within ``timeout`` (default ``shutdown_timeout``), then stop; idempotent.

        :returns: events left in the outbox (they go out on the next run).
        """
        with self._shutdown_lock:
            if self._shut_down:
                return 0
            self._shut_down = True
        timeout = self.shutdown_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        left = self.flush(timeout)
        self.stop(max(0.0, deadline - time.monotonic()))
        if not self.running:  # a batch still on the wire keeps its leases a live owner's
            shutdown.unregister(self)
        return left

    def flush(self, timeout: float | None = None) -> int:
        """Try every pending row once, now, ignoring backoff and the circuit breaker.

        Stops at the first whole-request failure (Keen is down: no point trying the rest),
        and never waits past ``timeout``. Used by ``flask keen-signup flush`` and at
        shutdown.

        :returns: how many events are still pending.
        """
        if self.worker.forked():
            self.after_fork_in_child()
        request = FlushRequest(None if timeout is None else time.monotonic() + timeout)
        if not self.worker.request_flush(request):
            # No thread here: run the flush on a one-shot thread we can stop waiting for.
            helper = threading.Thread(
                target=self.flush_now, args=(request,), name=f"{self.name}-flush", daemon=True
            )
            helper.start()
        request.done.wait(timeout)
        try:
            return self.outbox.pending_count()
        except Exception:  # noqa: BLE001 - a status read must not break shutdown
            logger.exception("flask-keen-signup: could not count pending events")
            return -1

    def status(self) -> SenderStatus:
        """Outbox counters plus this process's circuit state and last error."""
        stats = self.outbox.stats()
        circuit = self.outcomes.circuit
        state = circuit.state()
        until = None
        if state == OPEN:
            until = time.time() + circuit.remaining()
        return SenderStatus(
            running=self.running,
            outbox=stats,
            circuit=state,
            circuit_until=until,
            last_error=self.outcomes.last_error or stats.last_error,
            circuit_since=circuit.opened_at,
        )

    def after_fork_in_child(self) -> None:
        """Rebuild the per-process state in a forked child; restart if it ran in the parent.

        Called by :mod:`.shutdown`'s at-fork hook, and by the first :meth:`wake` or
        :meth:`flush` in a process whose pid changed without it. Idempotent in a process.
        """
        worker = self.worker
        if not worker.forked():
            if worker.wanted and not worker.stopping and not worker.running:
                self.start()  # deferred here (see shutdown.threads_on_hold)
            return
        was_running = worker.wanted and not worker.stopping
        self._reset_after_fork()
        if was_running:
            self.start()

    def _reset_after_fork(self) -> None:
        self._shutdown_lock = threading.Lock()  # the parent's may have been held
        self.worker.reset()
        self.leases.reset()
        self._new_process_state()
        reset = getattr(self.client, "reset_after_fork", None)
        if callable(reset):  # pooled sockets must not be shared with the parent
            reset()

    # ------------------------------------------------------------ the worker's job

    def paused(self) -> bool:
        """The circuit is open: only a flush or a stop should end the worker's wait."""
        return self.outcomes.circuit.state() == OPEN

    def step(self) -> float:
        """One round (on the worker thread); the seconds to wait before the next."""
        try:
            wait = self._round()
            self._store.check(self.outbox)
        except StoreError as exc:  # the outbox itself is in trouble: one line per episode
            self._store.failing(exc, self.flush_interval)
            wait = self.flush_interval
        return wait

    def finish(self) -> None:
        """The worker is stopping: give back the rows prefetched for the next round."""
        self._release_prefetch()

    def flush_now(self, request: FlushRequest) -> None:
        """Run a flush on the calling thread; sets ``request.done`` whatever happens."""
        try:
            self._release_prefetch()  # leased by us: a flush must be able to claim them
            self.leases.expire_orphans(force=True)
            self.upkeep.drain_spool()
            while request.deadline is None or time.monotonic() < request.deadline:
                rows = self.leases.claim(self.batch_size, request.since)
                if not rows:
                    break
                try:
                    self.transport.deliver(rows, deadline=request.deadline)
                except RequestFailed:
                    break
        except Exception:  # noqa: BLE001
            logger.exception("%s: error during flush", self.name)
        finally:
            request.done.set()

    # ------------------------------------------------------------ one round

    def _round(self) -> float:
        self.leases.expire_orphans()
        self.upkeep.drain_spool()
        self.upkeep.drop_old_bodies()
        outcomes = self.outcomes
        state = outcomes.circuit.state()
        if state == OPEN:
            return outcomes.circuit.remaining() or 0.01
        limit = self.probe_size if state == HALF_OPEN else self.batch_size
        rows = self._take_prefetch()
        if rows is None:
            rows = self.leases.claim(limit, outcomes.catch_up_since)
        if not rows:
            outcomes.catch_up_since = None
            return self.flush_interval
        full = len(rows) >= limit
        if state == CLOSED and full:
            # A full batch: more is probably due. Lease the next batch on a helper thread
            # while this one is on the wire (SQLite and sockets both release the GIL).
            self._prefetch = self.leases.prefetch(limit, outcomes.catch_up_since)
        try:
            self.transport.deliver(rows, stopping=lambda: self.worker.stopping)
        except RequestFailed:
            self._release_prefetch()
        # After a partial batch, gather for ``linger`` before the next round: under a
        # steady trickle of signups, going again at once would send a batch of two or
        # three events per round, and each round's write transactions compete with the
        # login requests for SQLite's write lock (and with their thread for the GIL).
        return 0.0 if full else self.linger

    def _take_prefetch(self) -> list[OutboxRow] | None:
        prefetch, self._prefetch = self._prefetch, None
        return None if prefetch is None else prefetch.result()

    def _release_prefetch(self) -> None:
        rows = self._take_prefetch()
        if rows:
            self.leases.release(rows)
