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
import math
import random
import threading
import time
import typing as t

from ..config import DEFAULT_BATCH_SIZE
from ..config import DEFAULT_FLUSH_INTERVAL
from ..config import DEFAULT_MAX_ATTEMPTS
from ..config import DEFAULT_RETRY_FOR
from ..config import DEFAULT_SHUTDOWN_TIMEOUT
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
#: A flush with no deadline (``timeout=None`` or ``inf``) still waits at most this long at
#: once (``Event.wait`` cannot take ``inf``); it loops until the flush is done.
_LONGEST_WAIT = 3600.0


@dataclasses.dataclass(frozen=True)
class Tuning:
    """The sender's numbers, checked once (see :class:`Sender` for each one's meaning).

    Each default is written once: here, or in :mod:`flask_keen_signup.config` for those
    an app sets (``KEEN_SIGNUP_*``); :class:`Sender`'s keyword arguments default to these.
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


class Sender:
    """Deliver an :class:`~flask_keen_signup.delivery.Outbox` to Keen in the background.

    :param outbox: where events wait.
    :param client: the Keen write client.
    :param collection_batch_size: rows per claim and at most per request.
    :param flush_interval: seconds between looks at the outbox when not woken.
    :param max_attempts: attempts of the ``after_delivered`` hook for an event Keen already
        has (then it is marked delivered without it). It no longer dead-letters anything:
        see ``retry_for``.
    :param retry_for: seconds a retryable failure (Keen down, 5xx, 429, a proxy's page, a
        bad key) is retried, counted from the row's first failure, before the row becomes
        a dead letter (``KEEN_SIGNUP_RETRY_FOR``). Never a number of attempts: a flush,
        however often it is asked for, cannot use it up faster.
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
        hooks: DeliveryHooks | None = None,
        notify: Notify | None = None,
        name: str = "flask-keen-signup-sender",
        handle_signals: bool = True,
        rng: random.Random | None = None,
        drain: t.Callable[[], int] | None = None,
        collection_batch_size: int = Tuning.batch_size,
        **numbers: t.Any,
    ) -> None:
        #: The numbers, checked once; ``numbers`` are :class:`Tuning`'s other fields.
        self.tuning = Tuning(batch_size=collection_batch_size, **numbers)
        tuning = self.tuning
        self.outbox = outbox
        self.client = client
        self.name = name
        self.handle_signals = handle_signals
        self.upkeep = Upkeep(
            outbox,
            drain=drain,
            retention=tuning.retention,
            check_interval=tuning.retention_check_interval,
            name=name,
        )
        self._rng = rng or random.Random()
        self.leases = Leases(
            outbox, lease_seconds=tuning.lease_seconds, live_owners=shutdown.live_owners, name=name
        )
        self.worker = Worker(name, self, flush_interval=tuning.flush_interval, linger=tuning.linger)
        self._store = StoreEpisode(name)
        #: Consecutive rounds that ended in an unexpected error (see SenderStatus).
        self.round_errors = 0
        self._shut_down = False
        self._shutdown_lock = threading.Lock()
        self.outcomes = Outcomes(
            outbox,
            max_attempts=tuning.max_attempts,
            retry_for=tuning.retry_for,
            backoff=Backoff(tuning.backoff_base, tuning.backoff_cap, self._rng),
            circuit=self._new_circuit(),
            hooks=hooks,
            notify=notify,
            name=name,
        )
        self.transport = Transport(
            client,
            self.outcomes,
            self.leases,
            batch_size=tuning.batch_size,
            max_batch_bytes=tuning.max_batch_bytes,
            name=name,
        )
        self._prefetch: Prefetch | None = None

    def _new_circuit(self) -> CircuitBreaker:
        tuning = self.tuning
        return CircuitBreaker(
            threshold=tuning.circuit_threshold,
            cooldown=tuning.circuit_cooldown,
            cap=tuning.circuit_cap,
            rng=self._rng,
        )

    def __repr__(self) -> str:
        return f"<Sender {self.name!r} {self.outbox!r} running={self.running}>"

    @property
    def shutdown_timeout(self) -> float:
        """Seconds exit and SIGTERM may spend flushing (read by :mod:`.shutdown`)."""
        return self.tuning.shutdown_timeout

    @property
    def hooks(self) -> DeliveryHooks | None:
        """The marker store's hooks; may be replaced while the sender runs."""
        return self.outcomes.hooks

    @hooks.setter
    def hooks(self, hooks: DeliveryHooks | None) -> None:
        self.outcomes.hooks = hooks

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
        timeout = _seconds(self.tuning.shutdown_timeout if timeout is None else timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        left = self.flush(timeout)
        self.stop(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if not self.running:  # a batch still on the wire keeps its leases a live owner's
            shutdown.unregister(self)
        return left

    def flush(self, timeout: float | None = None) -> int:
        """Send what may be sent now, paced like the sender; never waits past ``timeout``.

        Used by ``flask keen-signup flush``, :meth:`KeenSignup.flush` and at shutdown. A
        flush does *not* bypass the backoff or the circuit breaker (issue 16: a CLI asking
        once a second used to spend every retry of a 3-hour outage in seconds):

        * while the circuit is open (Keen kept failing), nothing is sent;
        * due rows are sent; when none is due but rows wait out a backoff, a probe of the
          oldest (``probe_size`` rows) goes out, and only once Keen answered a request of
          this flush do the other backed-off rows follow, each once;
        * every whole-request failure feeds the circuit and ends the flush.

        So however often a flush is asked for, Keen sees at most what the circuit allows,
        and a row becomes a dead letter only after ``retry_for`` seconds of failures.

        :param timeout: seconds. ``None``, ``inf`` or more than a thread can wait for
            (``threading.TIMEOUT_MAX``): no deadline, the flush ends when nothing more may
            be sent now. NaN and negative values mean 0.
        :returns: how many events are still pending (``-1``: they could not be counted).
        """
        if self.worker.forked():
            self.after_fork_in_child()
        timeout = _seconds(timeout)
        request = FlushRequest(None if timeout is None else time.monotonic() + timeout)
        if not self.worker.request_flush(request):
            # No thread here: run the flush on a one-shot thread we can stop waiting for.
            helper = threading.Thread(
                target=self.flush_now, args=(request,), name=f"{self.name}-flush", daemon=True
            )
            helper.start()
        deadline = request.deadline
        while not request.done.is_set():
            left = _LONGEST_WAIT if deadline is None else deadline - time.monotonic()
            if left <= 0:
                break
            request.done.wait(min(left, _LONGEST_WAIT))
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
            round_errors=self.round_errors,
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
        # What a round keeps between rounds is this process's own.
        self.outcomes.circuit = self._new_circuit()
        self.outcomes.last_error = self.outcomes.catch_up_since = None
        self._prefetch = None
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
            self._store.failing(exc, self.tuning.flush_interval)
            wait = self.tuning.flush_interval
        except Exception as exc:  # noqa: BLE001 - the thread must go on, and say so
            self._round_failed(exc, "round")
            wait = self.tuning.flush_interval
        else:
            self.round_errors = 0
        return wait

    def _round_failed(self, exc: Exception, what: str) -> None:
        """A round or a flush ended in an unexpected error: counted, named in
        ``last_error`` (type only: its text may quote a key), logged once per episode."""
        self.round_errors += 1
        self.outcomes.last_error = f"a delivery {what} failed: {type(exc).__name__}"
        if self.round_errors == 1:
            logger.error(
                "%s: a delivery %s failed (%s); retrying every %gs, see `flask keen-signup "
                "status`",
                self.name,
                what,
                type(exc).__name__,
                self.tuning.flush_interval,
                exc_info=True,
            )
        else:
            logger.debug("%s: delivery %s failed again", self.name, what, exc_info=True)

    def finish(self) -> None:
        """The worker is stopping: give back the rows prefetched for the next round."""
        self._release_prefetch()

    def flush_now(self, request: FlushRequest) -> None:
        """Run a flush on the calling thread; sets ``request.done`` whatever happens.

        Paced by the circuit and the backoff (see :meth:`flush`).
        """
        try:
            self._release_prefetch()  # leased by us: a flush must be able to claim them
            self.leases.expire_orphans(force=True)
            self.upkeep.drain_spool()
            circuit = self.outcomes.circuit
            answered = False  # Keen answered a request of this flush: backed-off rows may go
            while request.deadline is None or time.monotonic() < request.deadline:
                state = circuit.state()
                if state == OPEN:
                    break
                limit = self.tuning.probe_size if state == HALF_OPEN else self.tuning.batch_size
                rows = self.leases.claim(limit, request.since if answered else None)
                if not rows and not answered:
                    # Nothing due, rows backing off: probe with the oldest few.
                    rows = self.leases.claim(self.tuning.probe_size, request.since)
                if not rows:
                    break
                try:
                    self.transport.deliver(rows, deadline=request.deadline)
                except RequestFailed:
                    break
                answered = True
        except StoreError as exc:
            self._store.failing(exc, self.tuning.flush_interval)
        except Exception as exc:  # noqa: BLE001
            self._round_failed(exc, "flush")
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
        limit = self.tuning.probe_size if state == HALF_OPEN else self.tuning.batch_size
        rows = self._take_prefetch()
        if rows is None:
            rows = self.leases.claim(limit, outcomes.catch_up_since)
        if not rows:
            outcomes.catch_up_since = None
            return self.tuning.flush_interval
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
        return 0.0 if full else self.tuning.linger

    def next_due_in(self) -> float:
        """Seconds until this process may send again: the circuit's cool-down, else 0."""
        return self.outcomes.circuit.remaining()

    def _take_prefetch(self) -> list[OutboxRow] | None:
        prefetch, self._prefetch = self._prefetch, None
        return None if prefetch is None else prefetch.result()

    def _release_prefetch(self) -> None:
        rows = self._take_prefetch()
        if rows:
            self.leases.release(rows)


def _seconds(timeout: float | None) -> float | None:
    """A flush or shutdown timeout: ``None`` for no deadline (``None``, ``inf``, or past
    what ``threading`` can wait for), 0 for NaN and negative values."""
    if timeout is None:
        return None
    timeout = float(timeout)
    if math.isnan(timeout) or timeout <= 0:
        return 0.0
    if timeout >= threading.TIMEOUT_MAX or math.isinf(timeout):
        return None
    return timeout
