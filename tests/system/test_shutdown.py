"""Exit and SIGTERM, in real subprocesses: bounded flush, nothing dropped, nothing hung."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import typing as t

import _paths
import pytest
from _waits import wait_until

from flask_keen_signup.database import Database
from flask_keen_signup.delivery.sqlite_outbox import SQLiteOutbox
from flask_keen_signup.testing.keen import KeenEmulator

pytestmark = pytest.mark.slow

ROOT = _paths.ROOT

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    sys.path.insert(0, {root!r})
    from flask_keen_signup.database import Database
    from flask_keen_signup.delivery import QueuedEvent
    from flask_keen_signup.delivery.sender import Sender
    from flask_keen_signup.delivery.sqlite_outbox import SQLiteOutbox
    from flask_keen_signup.events import uniqueness_token
    from flask_keen_signup.keen import KeenClient

    mode, db, url, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    shutdown_timeout = float(os.environ.get("SHUTDOWN_TIMEOUT", "5"))

    if mode == "chain":
        def previous(signum, frame):
            open(db + ".previous-handler-ran", "w").close()
            sys.exit(0)
        signal.signal(signal.SIGTERM, previous)

    box = SQLiteOutbox(Database(db))
    client = KeenClient("demo-project", "demo-write-key", api_url=url, timeout=(2, 10))
    sender = Sender(
        box, client, flush_interval=0.05, backoff_base=0.05, backoff_cap=0.2,
        circuit_cooldown=0.2, circuit_cap=0.5, shutdown_timeout=shutdown_timeout,
    )
    if mode == "thread-start":
        starter = threading.Thread(target=sender.start)
        starter.start()
        starter.join()
    else:
        sender.start()
    for n in range(count):
        uid = f"auth0|user{{n}}"
        tok = uniqueness_token("signups", uid)
        body = {{"userId": uid, "keen": {{"uniqueness_token": tok}}}}
        box.enqueue(QueuedEvent("signups", uid, tok, body))
        sender.wake()
    print("ready", flush=True)
    if mode in ("exit", "thread-start"):
        sys.exit(0)  # no flush() call: atexit must do it
    if mode == "stopped":
        sender.stop(timeout=5)
        print("pending", box.pending_count(), flush=True)  # this thread's own connection
        sys.exit(0)  # atexit flushes on a helper thread, then counts on this one
    if mode == "deliver":
        left = sender.flush(60)
        print("left", left, flush=True)
        sys.exit(0)
    while True:  # "wait" and "chain": until SIGTERM
        time.sleep(0.1)
    """
)


@pytest.fixture
def emulator() -> t.Iterator[KeenEmulator]:
    with KeenEmulator(request_log_limit=None) as emu:
        yield emu


@pytest.fixture
def script(tmp_path: t.Any) -> str:
    path = tmp_path / "app.py"
    path.write_text(SCRIPT.format(root=ROOT))
    return str(path)


def run(
    script: str, mode: str, db: str, url: str, count: int, timeout: float = 90, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, script, mode, db, url, str(count)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
    )


def spawn(
    script: str, mode: str, db: str, url: str, count: int, **env: str
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, script, mode, db, url, str(count)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=30)  # also closes the pipes


def assert_exactly_once(emulator: KeenEmulator, count: int) -> None:
    got = [e["userId"] for e in emulator.events("signups")]
    assert sorted(got) == sorted(f"auth0|user{n}" for n in range(count))


@pytest.mark.parametrize("mode", ["exit", "thread-start"])
def test_normal_exit_delivers_everything_via_atexit(
    emulator: KeenEmulator, script: str, tmp_path: t.Any, mode: str
) -> None:
    db = str(tmp_path / "q.sqlite3")
    done = run(script, mode, db, emulator.url, 300)
    assert done.returncode == 0, done.stderr
    assert_exactly_once(emulator, 300)
    assert SQLiteOutbox(Database(db)).pending_count() == 0


def test_exit_with_the_sender_stopped_still_flushes_cleanly(
    emulator: KeenEmulator, script: str, tmp_path: t.Any
) -> None:
    """At exit the main thread counts as finished, yet it still runs the flush: the
    helper thread that sends must not close the main thread's connection under it."""
    db = str(tmp_path / "q.sqlite3")
    done = run(script, "stopped", db, emulator.url, 50)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert "closed database" not in done.stderr
    assert_exactly_once(emulator, 50)
    assert SQLiteOutbox(Database(db)).pending_count() == 0


def test_exit_while_keen_is_a_black_hole_is_bounded_and_keeps_events(
    emulator: KeenEmulator, script: str, tmp_path: t.Any
) -> None:
    db = str(tmp_path / "q.sqlite3")
    emulator.add_latency(60.0)
    started = time.monotonic()
    done = run(script, "exit", db, emulator.url, 40, SHUTDOWN_TIMEOUT="1")
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert elapsed < 1 + 15  # shutdown_timeout plus start-up, generous for a loaded machine
    assert SQLiteOutbox(Database(db)).pending_count() == 40
    emulator.clear_faults()


def test_sigterm_during_an_outage_exits_in_time_and_loses_nothing(
    emulator: KeenEmulator, script: str, tmp_path: t.Any
) -> None:
    db = str(tmp_path / "q.sqlite3")
    emulator.add_latency(60.0)  # Keen accepts connections and never answers
    proc = spawn(script, "wait", db, emulator.url, 50, SHUTDOWN_TIMEOUT="1")
    try:
        outbox = SQLiteOutbox(Database(db))
        assert wait_until(lambda: outbox.stats().in_flight > 0, 20)  # a batch in flight
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        elapsed = time.monotonic() - started
    finally:
        stop(proc)
    assert code == -signal.SIGTERM  # the default action, re-raised after the flush
    assert elapsed < 1 + 8
    assert SQLiteOutbox(Database(db)).pending_count() == 50

    emulator.clear_faults()  # Keen is back (the hung request may land now, too)
    done = run(script, "deliver", db, emulator.url, 0)
    assert done.returncode == 0, done.stderr
    assert "left 0" in done.stdout
    assert wait_until(lambda: len(emulator.events("signups")) >= 50, 10)
    time.sleep(0.2)
    assert_exactly_once(emulator, 50)


def test_sigterm_chains_to_the_previous_python_handler(
    emulator: KeenEmulator, script: str, tmp_path: t.Any
) -> None:
    db = str(tmp_path / "q.sqlite3")
    proc = spawn(script, "chain", db, emulator.url, 20)
    try:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    finally:
        stop(proc)
    assert code == 0
    assert os.path.exists(db + ".previous-handler-ran")
    assert_exactly_once(emulator, 20)  # flushed before chaining


def test_sigterm_when_healthy_flushes_first(
    emulator: KeenEmulator, script: str, tmp_path: t.Any
) -> None:
    db = str(tmp_path / "q.sqlite3")
    emulator.add_latency(0.2, count=2)  # slow enough that events are still queued
    proc = spawn(script, "wait", db, emulator.url, 100)
    try:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    finally:
        stop(proc)
    assert code == -signal.SIGTERM
    assert_exactly_once(emulator, 100)
    outbox = SQLiteOutbox(Database(db))
    assert outbox.pending_count() == 0
    assert json.dumps(outbox.stats().delivered) == "100"
