"""The background sender: drains the outbox into Keen's batch endpoint.

One daemon thread per process. Each round leases a batch of due rows, sends one batch
request per collection and records **each row's own result**; a whole request that fails
backs off its rows (honouring ``Retry-After``) and feeds a circuit breaker. Only one batch
of rows is ever in memory, so a long outage grows the outbox, not the process.

:class:`Sender` is a facade over parts with one job each (sentry-python's worker/transport
seam): :mod:`.worker` (the thread), :mod:`.batching` (rows to requests), :mod:`.transport`
(posts a batch), :mod:`.outcomes` (what an answer means), :mod:`.leases`, :mod:`.upkeep`
and :mod:`.shutdown`. What stays here is the order of one round (upkeep, claim, maybe
prefetch the next batch, deliver), a flush, and the public surface. The request path
never waits for any of it: it enqueues and calls :meth:`Sender.wake` (an ``Event.set``).
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
import typing as t

from .. import lifecycle
from ..exceptions import StoreError
from ..keen import KeenClient
from . import DeliveryHooks
from . import Outbox
from . import shutdown
from ._backoff import Backoff
from ._circuit import CLOSED
from ._circuit import HALF_OPEN
from ._circuit import OPEN
from .leases import Leases
from .outcomes import Notify
from .outcomes import Outcomes
from .outcomes import RequestFailed
from .outcomes import StoreEpisode
from .transport import Transport
from .tuning import SenderStatus
from .tuning import Tuning
from .upkeep import Upkeep
from .worker import FlushRequest
from .worker import Worker
from .worker import seconds

logger = logging.getLogger(__name__)

class Sender:
    """Deliver an :class:`~flask_keen_signup.delivery.Outbox` to Keen in the background.

    :param outbox: where events wait.
    :param client: the Keen write client.
    :param hooks: :class:`~flask_keen_signup.delivery.DeliveryHooks` of the marker store.
    :param notify: ``notify(kind, payload)`` for ``delivered``, ``failed`` and ``dead``,
        called on the sender thread; its exceptions are logged and swallowed.
    :param name: the thread's name (and the prefix of its helpers' names, in logs too).
    :param handle_signals: install the SIGTERM handler at :meth:`start` (main thread only).
    :param rng: a :class:`random.Random` for the jitter (seeded in tests).
    :param drain: decides the signups the login path spooled (see
        :mod:`flask_keen_signup.spool`); called each round, its errors are retried.
    :param collection_batch_size: rows per claim and at most per request.
    :param numbers: the other fields of :class:`Tuning` (``flush_interval``,
        ``retry_for``, ``lease_seconds``...), checked once into :attr:`tuning`.
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
        self.tuning = tuning = Tuning(batch_size=collection_batch_size, **numbers)
        self.outbox = outbox
        self.client = client
        self.name = name
        self.handle_signals = handle_signals
        self.upkeep = Upkeep(outbox, drain, tuning.retention, tuning.retention_check_interval, name)
        self._rng = rng or random.Random()
        self.leases = Leases(outbox, tuning.lease_seconds, name)
        self.worker = Worker(name, self, linger=tuning.linger)
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
            circuit=self.tuning.circuit(self._rng),
            hooks=hooks,
            notify=notify,
            name=name,
        )
        self.transport = Transport(client, self.outcomes, self.leases, tuning, name)

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
    def owner(self) -> str:
        """This process's lease owner, ``host/pid/nonce`` (new in a forked child)."""
        return self.leases.owner

    # ------------------------------------------------------------ control

    @property
    def running(self) -> bool:
        return self.worker.running

    def start(self) -> None:
        """Start the background thread (idempotent, thread-safe) and register the exit,
        SIGTERM and fork hooks; ``init_app`` calls it, so a previous run's events go out."""
        if self.worker.forked():  # a child the at-fork hook missed: nothing of ours here
            self._reset_after_fork()
        self._shut_down = False
        # Registered first: from its first claim, its leases must count as a live owner's.
        shutdown.register(self, signals=self.handle_signals)
        if lifecycle.threads_on_hold():  # started later here, or in each forked worker
            self.worker.defer()
            return
        self.worker.start()

    def wake(self) -> None:
        """Nudge the thread: an event was just enqueued. Cheap: a pid check, a flag read,
        at most an ``Event.set``. In a process forked without Python's at-fork hooks, the
        first wake restarts the thread the sender ran in the parent (as sentry does)."""
        if self.worker.forked():
            self.after_fork_in_child()
        self.worker.wake()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread, waiting up to ``timeout`` seconds for the batch in flight.

        Rows claimed but not yet sent are released. A batch still in flight after
        ``timeout`` keeps its lease: retried once it runs out (or its process is gone).
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
        timeout = seconds(self.tuning.shutdown_timeout if timeout is None else timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        left = self.flush(timeout)
        self.stop(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if not self.running:  # a batch still on the wire keeps its leases a live owner's
            shutdown.unregister(self)
        return left

    def flush(self, timeout: float | None = None) -> int:
        """Send what may be sent now, paced like the sender; never waits past ``timeout``.

        Used by ``flask keen-signup flush``, :meth:`KeenSignup.flush` and at shutdown. It
        does *not* bypass the backoff or the circuit (issue 16: a CLI asking once a second
        used to spend every retry of a 3-hour outage in seconds): nothing goes out while
        the circuit is open; due rows go; when none is due, a probe of the oldest
        backed-off rows, and only once Keen answered one request of this flush the other
        backed-off rows, each once; a whole-request failure ends it.

        :param timeout: seconds; ``None``, ``inf`` or past ``threading.TIMEOUT_MAX``: no
            deadline. NaN and negative values mean 0.
        :returns: how many events are still pending (``-1``: they could not be counted).
        """
        if self.worker.forked():
            self.after_fork_in_child()
        self.worker.flush(timeout)
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
        until = time.time() + circuit.remaining() if state == OPEN else None
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
        Called by the at-fork hook, or the first :meth:`wake` or :meth:`flush` of a process
        whose pid changed without it. Idempotent in a process."""
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
        self.outcomes.circuit = self.tuning.circuit(self._rng)
        self.outcomes.last_error = self.outcomes.catch_up_since = None
        self.client.reset_after_fork()  # pooled sockets must not be shared with the parent

    # ------------------------------------------------------------ the worker's job

    def paused(self) -> bool:
        """The circuit is open: only a flush or a stop should end the worker's wait."""
        return self.outcomes.circuit.state() == OPEN

    def step(self) -> float:
        """One round (on the worker thread); the seconds to wait before the next."""
        wait = self.tuning.flush_interval
        with self._reported("round"):
            after = self._round()
            self._store.check(self.outbox)
            wait, self.round_errors = after, 0
        return wait

    @contextlib.contextmanager
    def _reported(self, what: str) -> t.Iterator[None]:
        """A round or a flush that fails goes on, and says so: an unusable outbox in one
        line per episode (:class:`StoreEpisode`); anything else is counted in
        ``round_errors``, named in ``last_error`` (type only: its text may quote a key)
        and logged once per episode."""
        try:
            yield
        except StoreError as exc:
            self._store.failing(exc, self.tuning.flush_interval)
        except Exception as exc:  # noqa: BLE001 - the thread must go on
            self.round_errors += 1
            self.outcomes.last_error = f"a delivery {what} failed: {type(exc).__name__}"
            if self.round_errors > 1:
                logger.debug("%s: delivery %s failed again", self.name, what, exc_info=True)
                return
            logger.error(
                "%s: a delivery %s failed (%s); retrying every %gs, see `flask keen-signup "
                "status`",
                self.name,
                what,
                type(exc).__name__,
                self.tuning.flush_interval,
                exc_info=True,
            )

    def finish(self) -> None:
        """The worker is stopping: give back the rows prefetched for the next round."""
        self.leases.release_prefetched()

    def flush_now(self, request: FlushRequest) -> None:
        """Run a flush (paced: see :meth:`flush`) on the calling thread; sets
        ``request.done`` whatever happens."""
        try:
            with self._reported("flush"):
                self._flush(request)
        finally:
            request.done.set()

    def _flush(self, request: FlushRequest) -> None:
        self.leases.release_prefetched()  # leased by us: a flush must be able to claim them
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

    def _round(self) -> float:
        self.leases.expire_orphans()
        self.upkeep.drain_spool()
        self.upkeep.drop_old_bodies()
        outcomes = self.outcomes
        state = outcomes.circuit.state()
        if state == OPEN:
            return outcomes.circuit.remaining() or 0.01
        limit = self.tuning.probe_size if state == HALF_OPEN else self.tuning.batch_size
        rows = self.leases.take_prefetched()
        if rows is None:
            rows = self.leases.claim(limit, outcomes.catch_up_since)
        if not rows:
            outcomes.catch_up_since = None
            return self.tuning.flush_interval
        full = len(rows) >= limit
        if state == CLOSED and full:
            # A full batch: more is probably due. Lease the next batch on a helper thread
            # while this one is on the wire (SQLite and sockets both release the GIL).
            self.leases.prefetch(limit, outcomes.catch_up_since)
        try:
            self.transport.deliver(rows, stopping=lambda: self.worker.stopping)
        except RequestFailed:
            self.leases.release_prefetched()
        # After a partial batch, gather for ``linger`` before the next round: under a
        # steady trickle of signups, going again at once would send a batch of two or
        # three events per round, and each round's write transactions compete with the
        # login requests for SQLite's write lock (and with their thread for the GIL).
        return 0.0 if full else self.tuning.linger

    def next_due_in(self) -> float:
        """Seconds until this process may send again: the circuit's cool-down, else 0."""
        return self.outcomes.circuit.remaining()
