"""The sender's thread (:mod:`flask_keen_signup.delivery.worker`) and its lazy restart.

The worker is driven with a recording job: no outbox, no HTTP. Every wait is bounded and
no test measures speed; they assert *what* ends a wait, not how fast.

The last test forks a process the way a server written in C does (``fork()`` from libc,
so Python's at-fork hooks never run) and shows the sender's pid check starting the
child's own thread on first use, as sentry-python's ``BackgroundWorker`` does.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import typing as t

import _paths
import pytest

from flask_keen_signup.delivery.worker import FlushRequest
from flask_keen_signup.delivery.worker import Worker
from flask_keen_signup.testing.keen import KeenEmulator

ROOT = _paths.ROOT
LONG = 60.0  # a wait no test should sit out: only a wake, flush or stop may end it


class Job:
    """Records what the worker asks; each round waits ``LONG`` unless told otherwise."""

    def __init__(self) -> None:
        self.steps = 0
        self.stepped = threading.Condition()
        self.flushed: list[FlushRequest] = []
        self.finished = threading.Event()
        self.is_paused = False

    def step(self) -> float:
        with self.stepped:
            self.steps += 1
            self.stepped.notify_all()
        return LONG

    def flush_now(self, request: FlushRequest) -> None:
        self.flushed.append(request)
        request.done.set()

    def paused(self) -> bool:
        return self.is_paused

    def finish(self) -> None:
        self.finished.set()

    def wait_for_steps(self, count: int) -> bool:
        with self.stepped:
            return self.stepped.wait_for(lambda: self.steps >= count, timeout=10)


@pytest.fixture
def job() -> Job:
    return Job()


@pytest.fixture
def worker(job: Job) -> t.Iterator[Worker]:
    w = Worker("test-worker", job, linger=0.0)
    yield w
    w.stop(timeout=10)


def test_wake_ends_the_wait_and_runs_another_round(worker: Worker, job: Job) -> None:
    assert worker.start() is True
    assert worker.start() is False  # idempotent
    assert job.wait_for_steps(1)
    worker.wake()
    assert job.wait_for_steps(2)


def test_while_paused_a_wake_does_not_spin_but_a_flush_is_served(
    worker: Worker, job: Job
) -> None:
    job.is_paused = True
    worker.start()
    assert job.wait_for_steps(1)
    for _ in range(5):
        worker.wake()
    request = FlushRequest(deadline=None)
    assert worker.request_flush(request)
    assert request.done.wait(10)
    assert job.flushed == [request]
    assert job.wait_for_steps(2)  # the flush ended the wait; the round after it ran
    assert job.steps == 2  # five wakes, no extra rounds


def test_stop_ends_the_loop_finishes_the_job_and_refuses_flushes(
    worker: Worker, job: Job
) -> None:
    worker.start()
    assert job.wait_for_steps(1)
    worker.stop(timeout=10)
    assert not worker.running
    assert job.finished.is_set()
    assert worker.wanted is False
    assert worker.request_flush(FlushRequest(deadline=None)) is False


def test_reset_forgets_the_thread(worker: Worker, job: Job) -> None:
    worker.start()
    assert job.wait_for_steps(1)
    assert not worker.forked()
    worker.reset()  # what a forked child does: the old thread is not ours any more
    assert not worker.running and not worker.wanted
    assert worker.start() is True
    assert job.wait_for_steps(2)


FORK_SCRIPT = textwrap.dedent(
    """
    import ctypes, json, os, sys, time
    sys.path.insert(0, {root!r})
    from flask_keen_signup.delivery import QueuedEvent
    from flask_keen_signup.delivery.memory import MemoryOutbox
    from flask_keen_signup.delivery.sender import Sender
    from flask_keen_signup.keen import KeenClient

    url = sys.argv[1]
    box = MemoryOutbox()
    client = KeenClient("demo-project", "demo-write-key", api_url=url, timeout=(2, 10))
    # A long interval: after its first round the parent's thread sleeps, holding nothing.
    sender = Sender(box, client, flush_interval=30.0, handle_signals=False)
    sender.start()
    time.sleep(0.5)
    pid = ctypes.PyDLL(None).fork()  # libc's fork: Python's at-fork hooks do not run
    if pid:
        os._exit(0)  # the parent and its thread are gone; the child is on its own
    before = sender.running  # the parent's thread object, not a thread of this process
    box.enqueue(QueuedEvent("signups", "auth0|child", "tok-child", {{"userId": "auth0|child"}}))
    sender.wake()  # first use in the child: the pid check starts its own thread
    deadline = time.monotonic() + 30
    while box.pending_count() and time.monotonic() < deadline:
        time.sleep(0.05)
    print(json.dumps({{
        "running_before_wake": before,
        "running": sender.running,
        "pending": box.pending_count(),
        "owner_pid": sender.owner.split("/")[1],
        "pid": os.getpid(),
    }}), flush=True)
    sender.stop(timeout=5)
    os._exit(0)
    """
)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="forks through libc by name")
def test_a_child_forked_without_python_hooks_starts_its_own_thread_on_first_use(
    tmp_path: t.Any,
) -> None:
    import json

    script = tmp_path / "fork_app.py"
    script.write_text(FORK_SCRIPT.format(root=ROOT))
    with KeenEmulator() as keen:
        done = subprocess.run(
            [sys.executable, str(script), keen.url],
            capture_output=True,
            text=True,
            timeout=90,
        )
        events = keen.events("signups")
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, done.stdout + done.stderr
    report = json.loads(lines[-1])
    assert report["running_before_wake"] is False  # the pid check sees the fork
    assert report["running"] is True
    assert report["pending"] == 0
    assert report["owner_pid"] == str(report["pid"])  # a lease owner of its own
    assert [e["userId"] for e in events] == ["auth0|child"]
