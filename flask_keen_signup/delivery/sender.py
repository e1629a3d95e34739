"""The background sender: drains the outbox into Keen's batch endpoint.

One daemon thread per process. Each round it leases a batch of due rows, builds one batch
request per collection (capped by count and bytes, from the JSON stored at enqueue), sends
it, and records **each row's own result**: delivered rows are done, retryable ones back off,
permanent ones become dead letters with Keen's error name. A whole request that fails
(5xx, 429, timeout, reset) backs off every row of it, honouring ``Retry-After``, and feeds a
circuit breaker that stops the sender from hammering a down Keen. A 413 splits the batch
in halves (a lone oversize event is dead). Only one batch of rows is ever in memory, so a
long outage grows the SQLite file, not the process.

The request path never waits for any of this: it enqueues and calls :meth:`Sender.wake`
(an ``Event.set``). Exit, SIGTERM and fork are handled in :mod:`.shutdown`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import socket
import threading
import time
import types
import typing as t
import uuid
import weakref

from .._text import printable
from ..exceptions import KeenAPIError
from ..exceptions import KeenError
from ..exceptions import KeenRequestTooLargeError
from ..exceptions import RemoteError
from ..exceptions import StoreError
from ..keen import MAX_EVENT_BYTES
from ..keen import MAX_REQUEST_BYTES
from ..keen import KeenClient
from ..keen import Outcome
from ..keen import assemble_batch
from ..keen import split_by_size
from . import CONFIRMING
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

logger = logging.getLogger(__name__)

#: Default cap on a request body: half of Keen's 10 MB, leaving room for a proxy's limits.
DEFAULT_MAX_BATCH_BYTES = 5_000_000
#: Rows sent by the probe of a half-open circuit.
DEFAULT_PROBE_SIZE = 10
#: Seconds the thread waits after an enqueue woke it, to gather a batch (see ``linger``).
DEFAULT_LINGER = 0.1
#: Seconds between two retention passes (dropping delivered bodies, see ``retention``).
RETENTION_CHECK_INTERVAL = 60.0

_EMPTY: t.Mapping[str, t.Any] = types.MappingProxyType({})
_HOSTNAME = socket.gethostname()

Notify = t.Callable[[str, dict[str, t.Any]], None]


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


class _Flush:
    """A flush request handed to the sender thread."""

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline
        self.since = time.time()
        self.done = threading.Event()


class _Prefetch:
    """A claim running on a short-lived daemon thread while the previous batch is sent.

    A plain daemon thread rather than an executor: executor workers are joined before
    ``atexit`` runs, and the exit-time flush must still be able to claim.
    """

    def __init__(
        self,
        claim: t.Callable[[int, float | None], list[OutboxRow]],
        limit: int,
        since: float | None,
    ) -> None:
        self._rows: list[OutboxRow] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run,
            args=(claim, limit, since),
            name="flask-keen-signup-prefetch",
            daemon=True,
        )
        self._thread.start()

    def _run(
        self,
        claim: t.Callable[[int, float | None], list[OutboxRow]],
        limit: int,
        since: float | None,
    ) -> None:
        try:
            self._rows = claim(limit, since)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the sender thread
            self._error = exc

    def result(self) -> list[OutboxRow]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._rows


class _LeaseKeeper:
    """Renews the sender's leases while a batch is on the wire (a daemon thread per batch).

    A lease hides claimed rows from other processes and hosts for ``lease_seconds``. A
    request slower than that (a slow proxy, Keen answering after minutes, 413 splits)
    would let another sender claim and resend the same rows; so every third of the lease
    the leases of every row this sender still holds are extended.
    """

    def __init__(self, sender: Sender) -> None:
        self._sender = sender
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"{sender.name}-leases", daemon=True
        )

    def __enter__(self) -> _LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()

    def _run(self) -> None:
        sender = self._sender
        interval = sender.lease_seconds / 3
        while not self._stop.wait(interval):
            ids = sender._held_rows()
            if not ids:
                continue
            try:
                sender.outbox.renew_leases(
                    ids, owner=sender.owner, now=time.time(), lease_seconds=sender.lease_seconds
                )
            except Exception:  # noqa: BLE001 - the lease may run out; Keen dedupes a resend
                logger.warning("%s: could not renew leases", sender.name, exc_info=True)


class _RequestFailed(Exception):
    """A whole request failed retryably: stop this round."""


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
        if collection_batch_size < 1:
            raise ValueError("collection_batch_size must be at least 1")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if flush_interval <= 0:
            raise ValueError("flush_interval must be positive")
        if not 0 < max_batch_bytes <= MAX_REQUEST_BYTES:
            raise ValueError(f"max_batch_bytes must be in (0, {MAX_REQUEST_BYTES}]")
        self.outbox = outbox
        self.client = client
        self.batch_size = collection_batch_size
        self.flush_interval = flush_interval
        self.max_attempts = max_attempts
        self.shutdown_timeout = shutdown_timeout
        self.max_batch_bytes = max_batch_bytes
        self.hooks = hooks
        self.notify = notify
        self.name = name
        self.lease_seconds = lease_seconds
        self.probe_size = max(1, min(probe_size, collection_batch_size))
        self.handle_signals = handle_signals
        self.linger = max(0.0, min(linger, flush_interval))
        #: Decides the signups the login path spooled (see :mod:`flask_keen_signup.spool`).
        self.drain = drain
        self.retention = retention
        self.retention_check_interval = retention_check_interval
        self._next_retention_check = 0.0
        #: The current store-failure episode (its error), if any: see _store_failing().
        self._store_error: str | None = None
        self._store_error_since = 0.0
        self._rng = rng or random.Random()
        self._backoff = Backoff(backoff_base, backoff_cap, self._rng)
        self._circuit_args = (circuit_threshold, circuit_cooldown, circuit_cap)
        self._has_after = hooks is not None and (
            type(hooks).after_delivered is not DeliveryHooks.after_delivered
        )
        self._has_before = hooks is not None and (
            type(hooks).before_send is not DeliveryHooks.before_send
        )
        self._init_process_state()
        self._started_in_parent = False

    def _init_process_state(self) -> None:
        """Everything that must be fresh in each process (called again after a fork)."""
        self._pid = os.getpid()
        self._nonce = uuid.uuid4().hex[:12]
        self.owner = f"{_HOSTNAME}/{self._pid}/{self._nonce}"
        self._lock = threading.Lock()
        self._wake = threading.Event()
        #: Set only by stop() and flush(): what an open circuit's wait listens to, so the
        #: wake() of every enqueue during an outage does not spin the thread.
        self._control = threading.Event()
        self._flushes: list[_Flush] = []
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._shut_down = False
        threshold, cooldown, cap = self._circuit_args
        self._circuit = CircuitBreaker(
            threshold=threshold, cooldown=cooldown, cap=cap, rng=self._rng
        )
        self._catch_up_since: float | None = None
        self._prefetch: _Prefetch | None = None
        self._last_error: str | None = None
        self._next_orphan_check = 0.0
        #: Rows claimed and not yet finished, whose leases _LeaseKeeper renews.
        self._held: set[int] = set()
        self._held_lock = threading.Lock()
        _all_senders.add(self)

    def __repr__(self) -> str:
        return f"<Sender {self.name!r} {self.outbox!r} running={self.running}>"

    # ----------------------------------------------------------------------- control

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive() and self._pid == os.getpid()

    def start(self) -> None:
        """Start the background thread (idempotent, thread-safe).

        Called at ``init_app`` so that events left by a previous run go out without waiting
        for a request. Also registers the exit, SIGTERM and fork hooks.
        """
        if self._pid != os.getpid():  # forked without our hook (should not happen)
            self._init_process_state()
        with self._lock:
            if self.running:
                return
            self._stopping = False
            self._shut_down = False
            self._started_in_parent = True
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        shutdown.register(self, signals=self.handle_signals)

    def wake(self) -> None:
        """Nudge the thread: an event was just enqueued.

        Cheap: a flag read, and an ``Event.set`` only if the thread is not already nudged.
        """
        if not self._wake.is_set():
            self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread, waiting up to ``timeout`` seconds for the batch in flight.

        Rows the thread claimed but had not started sending are released. A batch still in
        flight after ``timeout`` keeps its lease; it is retried after the lease runs out (or
        at once by the next process, if this one has exited).
        """
        with self._lock:
            self._stopping = True
            self._started_in_parent = False
            thread = self._thread
        self._control.set()
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def shutdown(self, timeout: float | None = None) -> int:
        """Flush within ``timeout`` (default ``shutdown_timeout``), then stop; idempotent.

        :returns: events left in the outbox (they go out on the next run).
        """
        with self._lock:
            if self._shut_down:
                return 0
            self._shut_down = True
        timeout = self.shutdown_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        left = self.flush(timeout)
        self.stop(max(0.0, deadline - time.monotonic()))
        shutdown.unregister(self)
        return left

    def flush(self, timeout: float | None = None) -> int:
        """Try every pending row once, now, ignoring backoff and the circuit breaker.

        Stops at the first whole-request failure (Keen is down: no point trying the rest),
        and never waits past ``timeout``. Used by ``flask keen-signup flush`` and at
        shutdown.

        :returns: how many events are still pending.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        request = _Flush(deadline)
        with self._lock:
            delegate = self.running and not self._stopping
            if delegate:
                self._flushes.append(request)
        if delegate:
            self._control.set()
            self._wake.set()
        else:  # no thread here: run the flush on a one-shot thread we can stop waiting for
            helper = threading.Thread(
                target=self._run_flush, args=(request,), name=f"{self.name}-flush", daemon=True
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
        state = self._circuit.state()
        until = None
        if state == OPEN:
            until = time.time() + self._circuit.remaining()
        return SenderStatus(
            running=self.running,
            outbox=stats,
            circuit=state,
            circuit_until=until,
            last_error=self._last_error or stats.last_error,
            circuit_since=self._circuit.opened_at,
        )

    def _after_fork_in_child(self) -> None:
        was_running = self._started_in_parent and not self._stopping
        self._init_process_state()
        _reset_client_after_fork(self.client)
        if was_running:
            self.start()

    # ----------------------------------------------------------------------- the loop

    def _run(self) -> None:
        logger.debug("%s started (owner %s)", self.name, self.owner)
        while not self._stopping:
            try:
                self._control.clear()
                request = self._next_flush()
                if request is not None:
                    self._run_flush(request)
                    continue
                self._wake.clear()
                wait = self._step()
                self._store_answers()
            except StoreError as exc:  # the outbox itself is in trouble: one line per episode
                self._store_failing(exc)
                wait = self.flush_interval
            except Exception:  # noqa: BLE001 - the sender must never die
                logger.exception("%s: unexpected error; retrying shortly", self.name)
                wait = self.flush_interval
            if wait > 0 and not self._stopping:
                if self._circuit.state() == OPEN:
                    self._control.wait(wait)  # new events can wait for the cool-down
                elif self._wake.wait(wait) and self.linger > 0:
                    # Woken by an enqueue: let a few more signups arrive so they go out in
                    # one batch, and the login requests meet the sender's write
                    # transactions less often. A flush or a stop ends the wait at once.
                    self._control.wait(self.linger)
        try:
            self._release_prefetch()
        except Exception:  # noqa: BLE001 - the rows' lease will expire instead
            logger.exception("%s: could not release prefetched rows", self.name)
        # Anyone still waiting for a flush is released (they read the pending count).
        with self._lock:
            requests, self._flushes = self._flushes, []
        for request in requests:
            request.done.set()
        logger.debug("%s stopped", self.name)

    def _store_failing(self, exc: StoreError) -> None:
        """Log the first failure of an episode loudly, the repeats at debug level only."""
        error = printable(str(exc), limit=500)
        if self._store_error is None:
            logger.error(
                "flask-keen-signup: the outbox cannot be used (%s); deliveries are paused, "
                "retrying every %gs. Queued events are not lost; see "
                "`flask keen-signup status`.",
                error,
                self.flush_interval,
            )
            self._store_error_since = time.monotonic()
        else:
            logger.debug("%s: the outbox still cannot be used: %s", self.name, error)
        self._store_error = error

    def _store_answers(self) -> None:
        """End an episode, once the outbox really answers (a round may not have used it:
        an open circuit)."""
        if self._store_error is not None:
            self.outbox.pending_count()  # raises StoreError while it still fails
            logger.warning(
                "flask-keen-signup: the outbox works again after %.0fs; deliveries resume",
                time.monotonic() - self._store_error_since,
            )
            self._store_error = None

    def _next_flush(self) -> _Flush | None:
        with self._lock:
            return self._flushes.pop(0) if self._flushes else None

    def _step(self) -> float:
        """One round. Returns how long to wait before the next (0: go again now)."""
        self._maybe_expire_orphans()
        self._drain_spool()
        self._maybe_drop_bodies()
        state = self._circuit.state()
        if state == OPEN:
            return self._circuit.remaining() or 0.01
        limit = self.probe_size if state == HALF_OPEN else self.batch_size
        rows = self._take_prefetch()
        if rows is None:
            rows = self._claim(limit, self._catch_up_since)
        if not rows:
            self._catch_up_since = None
            return self.flush_interval
        full = len(rows) >= limit
        if state == CLOSED and full:
            # A full batch: more is probably due. Lease the next batch on a helper thread
            # while this one is on the wire (SQLite and sockets both release the GIL).
            self._prefetch = _Prefetch(self._claim, limit, self._catch_up_since)
        try:
            self._process(rows)
        except _RequestFailed:
            self._release_prefetch()
        # After a partial batch, gather for ``linger`` before the next round: under a
        # steady trickle of signups, going again at once would send a batch of two or
        # three events per round, and each round's write transactions compete with the
        # login requests for SQLite's write lock (and with their thread for the GIL).
        return 0.0 if full else self.linger

    def _claim(self, limit: int, flush_since: float | None) -> list[OutboxRow]:
        rows = self.outbox.claim_due(
            limit,
            now=time.time(),
            lease_seconds=self.lease_seconds,
            owner=self.owner,
            flush_since=flush_since,
        )
        self._hold(rows)
        return rows

    def _hold(self, rows: t.Sequence[OutboxRow]) -> None:
        if rows:
            with self._held_lock:
                self._held.update(row.id for row in rows)

    def _held_rows(self) -> list[int]:
        with self._held_lock:
            return list(self._held)

    def _drain_spool(self) -> None:
        """Decide spooled signups (the store failed a login's budget); never raises."""
        if self.drain is None:
            return
        try:
            self.drain()
        except Exception as exc:  # noqa: BLE001 - the store still fails: next round
            logger.debug("%s: the spool is not drained yet: %s", self.name, exc)

    def _take_prefetch(self) -> list[OutboxRow] | None:
        prefetch, self._prefetch = self._prefetch, None
        return None if prefetch is None else prefetch.result()

    def _release_prefetch(self) -> None:
        rows = self._take_prefetch()
        if rows:
            with self._held_lock:
                self._held.difference_update(row.id for row in rows)
            self.outbox.release([row.id for row in rows])

    def _run_flush(self, request: _Flush) -> None:
        try:
            self._release_prefetch()  # leased by us: a flush must be able to claim them
            self._maybe_expire_orphans(force=True)
            self._drain_spool()
            while True:
                if request.deadline is not None and time.monotonic() >= request.deadline:
                    break
                rows = self._claim(self.batch_size, request.since)
                if not rows:
                    break
                try:
                    self._process(rows, deadline=request.deadline, flushing=True)
                except _RequestFailed:
                    break
        except Exception:  # noqa: BLE001
            logger.exception("%s: error during flush", self.name)
        finally:
            request.done.set()

    def _maybe_drop_bodies(self) -> None:
        """Retention: drop delivered bodies older than ``retention``, at most once per
        ``retention_check_interval`` (one cheap read when there is nothing to drop)."""
        if self.retention is None:
            return
        now = time.monotonic()
        if now < self._next_retention_check:
            return
        self._next_retention_check = now + self.retention_check_interval
        try:
            dropped = self.outbox.drop_delivered_bodies(self.retention)
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
                self.retention,
            )

    def _maybe_expire_orphans(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if now < self._next_orphan_check and not force:
            return
        self._next_orphan_check = now + min(30.0, self.lease_seconds / 4)
        count = self.outbox.expire_leases(_is_orphan)
        if count:
            logger.info("%s: took over %d event(s) leased by a dead process", self.name, count)

    # ----------------------------------------------------------------------- a batch

    def _process(
        self, rows: list[OutboxRow], *, deadline: float | None = None, flushing: bool = False
    ) -> None:
        """Send ``rows`` (already leased) and record each one's outcome."""
        try:
            with _LeaseKeeper(self):
                self._process_leased(rows, deadline=deadline, flushing=flushing)
        finally:
            with self._held_lock:
                self._held.difference_update(row.id for row in rows)

    def _process_leased(
        self, rows: list[OutboxRow], *, deadline: float | None, flushing: bool
    ) -> None:
        confirming = [r for r in rows if r.state == CONFIRMING]
        if confirming:
            self._confirm(confirming)
        sendable = [r for r in rows if r.state != CONFIRMING]
        if not sendable:
            return
        if self._has_before:
            sendable = self._apply_before_send(sendable)
        encoded: list[tuple[OutboxRow, bytes]] = []
        too_big: list[tuple[OutboxRow, int]] = []
        for row in sendable:
            data = row.body_json.encode("utf-8")
            if len(data) > MAX_EVENT_BYTES:
                too_big.append((row, len(data)))
            else:
                encoded.append((row, data))
        if too_big:
            self._dead(
                [
                    (
                        row,
                        f"event is {size} bytes, over Keen's limit of {MAX_EVENT_BYTES} bytes",
                        "EventTooLarge",
                    )
                    for row, size in too_big
                ]
            )
        chunks: list[list[tuple[OutboxRow, bytes]]] = []
        by_collection: dict[str, list[tuple[OutboxRow, bytes]]] = {}
        for item in encoded:
            by_collection.setdefault(item[0].collection, []).append(item)
        for items in by_collection.values():
            for span in split_by_size(
                [data for _, data in items], self.max_batch_bytes, max_events=self.batch_size
            ):
                chunks.append(items[span.start : span.stop])
        for index, chunk in enumerate(chunks):
            late = deadline is not None and time.monotonic() >= deadline
            if late or (self._stopping and not flushing):
                self.outbox.release([row.id for chunk in chunks[index:] for row, _ in chunk])
                return
            try:
                self._send(chunk)
            except _RequestFailed:
                rest = [row for later in chunks[index + 1 :] for row, _ in later]
                self._retry_all(rest, "not sent: an earlier request of the batch failed", None)
                raise

    def _send(self, chunk: list[tuple[OutboxRow, bytes]]) -> None:
        """One request for one collection's chunk; splits it on 413 and on a whole-batch 400."""
        collection = chunk[0][0].collection
        rows = [row for row, _ in chunk]
        body = assemble_batch({collection: [data for _, data in chunk]})
        try:
            result = self.client.add_events({collection: [_EMPTY] * len(chunk)}, body=body)
        except KeenRequestTooLargeError as exc:
            if len(chunk) == 1:
                self._dead([(rows[0], f"Keen refused the event as too large: {exc}", "413")])
                return
            logger.debug("%s: 413 for %d events; splitting", self.name, len(chunk))
            self._send(chunk[: len(chunk) // 2])
            self._send(chunk[len(chunk) // 2 :])
            return
        except KeenAPIError as exc:
            if exc.retryable:
                self._request_failed(rows, exc)
            if exc.status_code == 400:
                # Keen refused the request as a whole: isolate the poison event(s).
                if len(chunk) == 1:
                    self._dead([(rows[0], str(exc), exc.error_code)])
                    return
                self._send(chunk[: len(chunk) // 2])
                self._send(chunk[len(chunk) // 2 :])
                return
            # 401/402/403/404...: the project, key or account, not the events. Nothing
            # gets through until someone fixes it; keep the events and back off.
            self._request_failed(rows, exc)
        except KeenError as exc:  # connection refused/reset, timeouts
            self._request_failed(rows, exc)
        self._request_succeeded()
        delivered: list[OutboxRow] = []
        retry: list[tuple[OutboxRow, str, KeenError]] = []
        dead: list[tuple[OutboxRow, str, str | None]] = []
        for row, item in zip(rows, result.results.get(collection, []), strict=False):
            if item.outcome is Outcome.DELIVERED:
                delivered.append(row)
                continue
            what = ": ".join(p for p in (item.error_name, item.description) if p) or "no reason"
            if item.outcome is Outcome.PERMANENT:
                dead.append((row, what, item.error_name))
            else:
                retry.append((row, what, KeenError(what, retryable=True)))
        if len(result.results.get(collection, [])) < len(rows):  # defensive: never guess
            for row in rows[len(result.results.get(collection, [])) :]:
                what = "no result for this event in Keen's answer"
                retry.append((row, what, KeenError(what, retryable=True)))
        if dead:
            self._dead(dead)
        if retry:
            self._retry_rows(retry)
        if delivered:
            self._delivered(delivered)
        logger.debug(
            "%s: batch of %d: %d delivered, %d retry, %d dead",
            self.name,
            len(rows),
            len(delivered),
            len(retry),
            len(dead),
        )

    # ----------------------------------------------------------------------- outcomes

    def _request_failed(self, rows: list[OutboxRow], exc: RemoteError) -> t.NoReturn:
        """A whole request failed: back off its rows, feed the circuit, end the round."""
        error = printable(str(exc), limit=500)
        self._last_error = error
        self._retry_all(rows, error, exc)
        cooldown = self._circuit.record_failure(exc.retry_after)
        if cooldown is not None:
            try:
                waiting = self.outbox.pending_count()
            except Exception:  # noqa: BLE001
                waiting = -1
            logger.warning(
                "flask-keen-signup: Keen is failing (%s); pausing deliveries for %.1fs "
                "(%d event(s) safe in the outbox)",
                error,
                cooldown,
                waiting,
            )
        raise _RequestFailed

    def _request_succeeded(self) -> None:
        if self._circuit.record_success():
            logger.info("flask-keen-signup: Keen answers again; resuming deliveries")
            # Rows that backed off during the outage need not wait out their backoff.
            self._catch_up_since = time.time()

    def _retry_all(self, rows: t.Sequence[OutboxRow], error: str, exc: RemoteError | None) -> None:
        if rows:
            failure = exc if isinstance(exc, KeenError) else KeenError(error, retryable=True)
            self._retry_rows(
                [(row, error, failure) for row in rows],
                retry_after=None if exc is None else exc.retry_after,
            )

    def _retry_rows(
        self,
        items: t.Sequence[tuple[OutboxRow, str, RemoteError]],
        *,
        retry_after: float | None = None,
    ) -> None:
        now = time.time()
        again: list[tuple[int, float, str]] = []
        dead: list[tuple[OutboxRow, str, str | None]] = []
        for row, error, _ in items:
            if row.attempts >= self.max_attempts:
                dead.append((row, f"gave up after {row.attempts} attempts: {error}", None))
            else:
                delay = self._backoff.delay(row.attempts, retry_after)
                again.append((row.id, now + delay, error))
        self.outbox.mark_retry_many(again)
        if dead:
            self._dead(dead)
        if self.notify is not None:
            dead_ids = {row.id for row, _, _ in dead}
            for row, _, exc in items:
                if row.id not in dead_ids:
                    self._notify(
                        "failed",
                        user_id=row.user_id,
                        event=row.body,
                        error=exc,
                        attempts=row.attempts,
                    )

    def _dead(self, items: t.Sequence[tuple[OutboxRow, str, str | None]]) -> None:
        self.outbox.mark_dead_many([(row.id, reason, code) for row, reason, code in items])
        codes = sorted({code or "gave up" for _, _, code in items})
        logger.warning(
            "flask-keen-signup: %d event(s) moved to dead letters (%s); "
            "see `flask keen-signup status`, replay with `retry-dead`",
            len(items),
            ", ".join(printable(code, limit=60) for code in codes),
        )
        for row, reason, _ in items:
            logger.debug("dead letter %d: %s", row.id, printable(reason, limit=500))
            if self.notify is not None:
                self._notify("dead", user_id=row.user_id, event=row.body, reason=reason)

    def _delivered(self, rows: list[OutboxRow]) -> None:
        if self._has_after:
            self._confirm(rows)
        else:
            self.outbox.mark_delivered([row.id for row in rows])
        if self.notify is not None:
            for row in rows:
                self._notify(
                    "delivered",
                    user_id=row.user_id,
                    event=row.body,
                    attempts=row.attempts,
                    enqueued_at=row.created_at,
                )

    def _confirm(self, rows: list[OutboxRow]) -> None:
        """Run ``after_delivered`` for rows Keen has; keep them *confirming* if it fails."""
        assert self.hooks is not None
        try:
            self.hooks.after_delivered(rows)
        except Exception as exc:  # noqa: BLE001 - hook errors are retried or logged
            if isinstance(exc, RemoteError) and not exc.retryable:
                keep, give_up = [], rows
            else:
                give_up = [
                    r for r in rows if r.state == CONFIRMING and r.attempts >= self.max_attempts
                ]
                keep = [r for r in rows if r not in give_up]
            if keep:
                retry_after = exc.retry_after if isinstance(exc, RemoteError) else None
                attempt = max(r.attempts if r.state == CONFIRMING else 1 for r in keep)
                delay = self._backoff.delay(attempt, retry_after)
                self.outbox.mark_confirming(
                    [r.id for r in keep],
                    next_attempt_at=time.time() + delay,
                    error=f"after_delivered failed: {exc}",
                )
                logger.info(
                    "flask-keen-signup: confirming %d delivered event(s) failed (%s); "
                    "retrying in %.1fs without re-sending to Keen",
                    len(keep),
                    type(exc).__name__,
                    delay,
                )
            if give_up:
                # Keen has these events (that is the guarantee); the hook cannot succeed.
                # Re-sending them later could duplicate past Keen's 31-day token window.
                logger.warning(
                    "flask-keen-signup: giving up confirming %d delivered event(s): %s",
                    len(give_up),
                    type(exc).__name__,
                )
                self.outbox.mark_delivered([r.id for r in give_up])
            return
        self.outbox.mark_delivered([row.id for row in rows])

    def _apply_before_send(self, rows: list[OutboxRow]) -> list[OutboxRow]:
        assert self.hooks is not None
        try:
            skips = self.hooks.before_send(rows)
        except Exception as exc:  # noqa: BLE001
            if isinstance(exc, RemoteError) and not exc.retryable:
                logger.warning("flask-keen-signup: before_send failed: %s", type(exc).__name__)
            else:
                logger.info("flask-keen-signup: before_send failed; backing off")
            self._retry_all(rows, f"before_send failed: {exc}", None)
            raise _RequestFailed from None
        ids = {row.id for row in rows}
        skips = {row_id: reason for row_id, reason in skips.items() if row_id in ids}
        if skips:
            self.outbox.mark_skipped(skips)
            logger.debug("%s: skipped %d event(s) by hook", self.name, len(skips))
        return [row for row in rows if row.id not in skips]

    def _notify(self, kind: str, **payload: t.Any) -> None:
        assert self.notify is not None
        try:
            self.notify(kind, payload)
        except Exception:  # noqa: BLE001 - a broken subscriber must not break delivery
            logger.exception("flask-keen-signup: notify(%r) raised; ignored", kind)


# ---------------------------------------------------------------------- process helpers

#: Every sender of this process, weakly (for telling our own dead leases from live ones).
_all_senders: weakref.WeakSet[Sender] = weakref.WeakSet()


def _is_orphan(owner: str) -> bool:
    """Whether a lease owner (``host/pid/nonce``) is certainly dead. Same host only."""
    parts = owner.rsplit("/", 2)
    if len(parts) != 3:
        return False
    host, pid_text, nonce = parts
    if host != _HOSTNAME:
        return False
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    if pid == os.getpid():
        return nonce not in {s._nonce for s in list(_all_senders) if s.running}
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:  # a killed child not yet reaped by its parent is a zombie: dead for us
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def _reset_client_after_fork(client: t.Any) -> None:
    """Give the child its own HTTP connections: pooled sockets must not be shared."""
    reset = getattr(client, "reset_after_fork", None)
    if callable(reset):
        reset()
