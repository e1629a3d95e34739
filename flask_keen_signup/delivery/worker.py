"""The sender's thread: start, wake, flush requests, stop, fork; nothing about Keen.

Modelled on sentry-python's ``BackgroundWorker``: the worker owns one daemon thread and
the events that steer it, and knows nothing of what a round does. It runs a
:class:`Job` (the sender) round after round:

* ``step()`` does one round and says how long to wait before the next;
* :meth:`Worker.wake` (every enqueue, so it must stay cheap) ends that wait early, and
  then the worker lingers a moment so a burst goes out as one batch;
* while the job is ``paused()`` (an open circuit) only a flush or a stop ends the wait,
  so the wakes of an outage do not spin the thread;
* :meth:`Worker.request_flush` hands a :class:`FlushRequest` to the thread.

The thread belongs to the process that started it. A forked child has none: the at-fork
hook of :mod:`.shutdown` restarts it at once (so a preloaded app's workers deliver what
the master left without waiting for a request), and, as in sentry, the first use in a
process whose pid changed without that hook (a server that forks from C) starts it too,
via :meth:`Worker.forked`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
import time
import typing as t

logger = logging.getLogger(__name__)

def seconds(timeout: float | None) -> float | None:
    """A flush or shutdown timeout: ``None`` for no deadline (``None``, ``inf``, or past
    what ``threading`` can wait for), 0 for NaN and negative values."""
    if timeout is None:
        return None
    timeout = float(timeout)
    if math.isnan(timeout) or timeout <= 0:
        return 0.0
    if timeout >= threading.TIMEOUT_MAX:  # inf too
        return None
    return timeout


@dataclasses.dataclass
class FlushRequest:
    """A flush handed to the thread: try every row due or backed off since ``since``.

    :param deadline: ``time.monotonic()`` value to give up at, or ``None``.
    """

    deadline: float | None
    #: ``time`` looked up at each call: a test's fake clock (tests/_clock.py) reaches it.
    since: float = dataclasses.field(default_factory=lambda: time.time())
    done: threading.Event = dataclasses.field(default_factory=threading.Event)


class Job(t.Protocol):
    """What the worker runs; all four are called on the worker thread only."""

    def step(self) -> float:
        """One round; returns the seconds to wait before the next (0: go again now)."""

    def flush_now(self, request: FlushRequest) -> None:
        """Run a flush; sets ``request.done`` whatever happens."""

    def paused(self) -> bool:
        """Whether wakes should be ignored while waiting (only flush and stop count)."""

    def finish(self) -> None:
        """The thread is stopping: give back what it holds."""


class Worker:
    """One daemon thread per process running ``job``.

    :param name: the thread's name.
    :param job: what each round does.
    :param linger: after a wake, wait this long for more (at most ``flush_interval``).
    """

    def __init__(self, name: str, job: Job, *, linger: float) -> None:
        self.name = name
        self.linger = linger
        self._job = job
        self.reset()

    def reset(self) -> None:
        """Fresh state for this process: no thread, new locks and events (after a fork)."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        #: Set only by stop() and flush requests: what a paused wait listens to.
        self._control = threading.Event()
        self._flushes: list[FlushRequest] = []
        self._thread: threading.Thread | None = None
        #: Stop was asked: the loop ends after its current round.
        self.stopping = False
        #: Started and not stopped since: a new process should run it too.
        self.wanted = False

    def forked(self) -> bool:
        """Whether this process is not the one whose thread state this is."""
        return self._pid != os.getpid()

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive() and self._pid == os.getpid()

    def start(self) -> bool:
        """Start the thread unless it runs; returns whether this call started it."""
        with self._lock:
            if self.running:
                return False
            self.stopping = False
            self.wanted = True
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
            return True

    def defer(self) -> None:
        """Want the thread without starting it now (see ``shutdown.threads_on_hold``)."""
        with self._lock:
            self.stopping = False
            self.wanted = True

    def wake(self) -> None:
        """End the current wait: cheap, a flag read and at most one ``Event.set``."""
        if not self._wake.is_set():
            self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        """Ask the loop to end and wait up to ``timeout`` for the round in flight."""
        with self._lock:
            self.stopping = True
            self.wanted = False
            thread = self._thread
        self._control.set()
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def request_flush(self, request: FlushRequest) -> bool:
        """Hand ``request`` to the thread; False if no thread runs here to take it."""
        with self._lock:
            if not self.running or self.stopping:
                return False
            self._flushes.append(request)
        self._control.set()
        self._wake.set()
        return True

    def flush(self, timeout: float | None) -> None:
        """Hand a flush to the thread (or, with none here, to a one-shot helper thread we
        can stop waiting for) and wait for it at most ``timeout`` (:func:`seconds`)."""
        timeout = seconds(timeout)
        request = FlushRequest(None if timeout is None else time.monotonic() + timeout)
        if not self.request_flush(request):
            name = f"{self.name}-flush"
            helper = threading.Thread(
                target=self._job.flush_now, args=(request,), name=name, daemon=True
            )
            helper.start()
        deadline = request.deadline
        request.done.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))

    # ------------------------------------------------------------ the loop

    def _run(self) -> None:
        logger.debug("%s started", self.name)
        job = self._job
        while not self.stopping:
            # Neither raises: a round's or a flush's errors are the job's to report.
            self._control.clear()
            request = self._next_flush()
            if request is not None:
                job.flush_now(request)
                continue
            self._wake.clear()
            wait = job.step()
            if wait > 0 and not self.stopping:
                if job.paused():
                    self._control.wait(wait)  # new events can wait for the cool-down
                elif self._wake.wait(wait) and self.linger > 0:
                    # Woken by an enqueue: let a few more signups arrive so they go out in
                    # one batch, and the login requests meet the sender's write
                    # transactions less often. A flush or a stop ends the wait at once.
                    self._control.wait(self.linger)
        try:
            job.finish()
        except Exception:  # noqa: BLE001 - the rows' lease will expire instead
            logger.exception("%s: could not give back what it held", self.name)
        # Anyone still waiting for a flush is released (they read the pending count).
        with self._lock:
            requests, self._flushes = self._flushes, []
        for request in requests:
            request.done.set()
        logger.debug("%s stopped", self.name)

    def _next_flush(self) -> FlushRequest | None:
        with self._lock:
            return self._flushes.pop(0) if self._flushes else None
