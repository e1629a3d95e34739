"""The background sender against the Keen emulator over real HTTP, with a real SQLite outbox.

Every test asserts the product's promise: each accepted event ends up in Keen exactly once
(or, if Keen calls it invalid, in the dead letters with Keen's reason). Backoff, circuit and
lease settings are shrunk through the constructor so the faults play out in moments.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import subprocess
import sys
import textwrap
import threading
import time
import typing as t

import pytest
from _paths import ROOT
from _waits import wait_until

from flask_keen_signup.database import Database
from flask_keen_signup.delivery import DeliveryHooks
from flask_keen_signup.delivery import OutboxRow
from flask_keen_signup.delivery import QueuedEvent
from flask_keen_signup.delivery.sender import Sender
from flask_keen_signup.delivery.sqlite_outbox import SQLiteOutbox
from flask_keen_signup.events import build_signup_event
from flask_keen_signup.events import uniqueness_token
from flask_keen_signup.exceptions import Auth0APIError
from flask_keen_signup.keen import MAX_EVENT_BYTES
from flask_keen_signup.keen import KeenClient
from flask_keen_signup.testing.keen import KeenEmulator

COLLECTION = "signups"
FAST = {
    "flush_interval": 0.02,
    "backoff_base": 0.01,
    "backoff_cap": 0.05,
    "circuit_cooldown": 0.05,
    "circuit_cap": 0.2,
    "lease_seconds": 30.0,
    "shutdown_timeout": 2.0,
    "handle_signals": False,
}


def signup(n: int, collection: str = COLLECTION, **extra: t.Any) -> QueuedEvent:
    user_id = f"auth0|user{n}"
    body = build_signup_event(
        {"sub": user_id, "name": f"User {n}"},
        collection=collection,
        ip="203.0.113.7",
        user_agent="pytest",
        now=dt.datetime(2026, 11, 26, 10, 0, tzinfo=dt.timezone.utc),
    )
    body.update(extra)
    return QueuedEvent(collection, user_id, uniqueness_token(collection, user_id), body)


def user_ids(emulator: KeenEmulator) -> list[str]:
    return [e["userId"] for e in emulator.events(COLLECTION)]


@pytest.fixture
def emulator() -> t.Iterator[KeenEmulator]:
    with KeenEmulator() as emu:
        yield emu


@pytest.fixture
def outbox(tmp_path: t.Any) -> t.Iterator[SQLiteOutbox]:
    box = SQLiteOutbox(Database(str(tmp_path / "keen_signup.sqlite3")))
    yield box
    box.close()


class Factory:
    def __init__(self, emulator: KeenEmulator, outbox: SQLiteOutbox) -> None:
        self.emulator = emulator
        self.outbox = outbox
        self.senders: list[Sender] = []

    def client(self, read_timeout: float = 5.0) -> KeenClient:
        emu = self.emulator
        return KeenClient(
            emu.project_id, emu.write_key, api_url=emu.url, timeout=(2.0, read_timeout)
        )

    def __call__(self, read_timeout: float = 5.0, **overrides: t.Any) -> Sender:
        options = {**FAST, **overrides}
        sender = Sender(self.outbox, self.client(read_timeout), **options)
        self.senders.append(sender)
        return sender

    def enqueue(self, count: int, start: int = 0) -> list[str]:
        ids = []
        for n in range(start, start + count):
            self.outbox.enqueue(signup(n))
            ids.append(f"auth0|user{n}")
        return ids


@pytest.fixture
def make(emulator: KeenEmulator, outbox: SQLiteOutbox) -> t.Iterator[Factory]:
    factory = Factory(emulator, outbox)
    yield factory
    emulator.clear_faults()
    for sender in factory.senders:
        sender.stop(5)
        sender.client.close()  # no unclosed sockets left for the GC to warn about


def delivered_all(make: Factory, expected: list[str]) -> bool:
    return make.outbox.pending_count() == 0 and len(user_ids(make.emulator)) >= len(expected)


def assert_exactly_once(emulator: KeenEmulator, expected: list[str]) -> None:
    got = user_ids(emulator)
    assert sorted(got) == sorted(expected)
    tokens = [e["keen"]["uniqueness_token"] for e in emulator.events(COLLECTION)]
    assert len(set(tokens)) == len(tokens)


# --------------------------------------------------------------------------- happy path


def test_delivers_every_event_exactly_once_in_batches(make: Factory) -> None:
    expected = make.enqueue(50)
    sender = make(collection_batch_size=7)
    sender.start()
    assert wait_until(lambda: delivered_all(make, expected))
    assert_exactly_once(make.emulator, expected)
    batches = [r for r in make.emulator.request_log if r.path.endswith("/events")]
    assert all(len(r.json()[COLLECTION]) <= 7 for r in batches)
    stats = make.outbox.stats()
    assert (stats.delivered, stats.pending, stats.dead, stats.resends) == (50, 0, 0, 0)


def test_start_is_idempotent_and_thread_safe(make: Factory) -> None:
    sender = make()
    before = set(threading.enumerate())  # other tests' senders may share the name
    starters = [threading.Thread(target=sender.start) for _ in range(8)]
    for thread in starters:
        thread.start()
    for thread in starters:
        thread.join()
    sender.start()
    started = [th for th in threading.enumerate() if th not in before]
    assert [th.name for th in started].count(sender.name) == 1
    expected = make.enqueue(3)
    sender.wake()
    assert wait_until(lambda: delivered_all(make, expected))


def test_events_left_by_a_previous_run_go_out_at_start(make: Factory) -> None:
    expected = make.enqueue(5)
    make().start()  # no wake(), no request: start alone is enough
    assert wait_until(lambda: delivered_all(make, expected))
    assert_exactly_once(make.emulator, expected)


# --------------------------------------------------------------------------- whole-request faults


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_retried_until_delivered(make: Factory, status: int) -> None:
    expected = make.enqueue(20)
    make.emulator.fail_next(3, status)
    make().start()
    assert wait_until(lambda: delivered_all(make, expected))
    assert_exactly_once(make.emulator, expected)
    statuses = [r.status for r in make.emulator.request_log]
    assert statuses.count(status) == 3
    assert make.outbox.stats().dead == 0


def test_html_error_page_is_retried(make: Factory) -> None:
    expected = make.enqueue(5)
    make.emulator.fail_next(2, 502, html=True)
    make().start()
    assert wait_until(lambda: delivered_all(make, expected))
    assert_exactly_once(make.emulator, expected)


def test_429_honours_retry_after(make: Factory) -> None:
    expected = make.enqueue(10)
    make.emulator.fail_next(1, 429, retry_after=1)
    make().start()
    assert wait_until(lambda: delivered_all(make, expected))
    assert_exactly_once(make.emulator, expected)
    log = make.emulator.request_log
    assert log[0].status == 429
    # The backoff base is 10 ms, so only Retry-After explains waiting a second.
    assert log[1].time - log[0].time >= 0.9


def test_timeouts_are_retried_and_the_duplicate_is_absorbed(make: Factory) -> None:
    expected = make.enqueue(10)
    # The first answer comes after the client gave up; Keen stored the batch anyway.
    make.emulator.add_latency(1.5, count=1)
    make(read_timeout=0.3).start()
    assert wait_until(lambda: delivered_all(make, expected))
    assert wait_until(lambda: make.emulator.duplicates_rejected >= 1, 5)
    assert_exactly_once(make.emulator, expected)


def test_connection_resets_are_retried(make: Factory) -> None:
    expected = make.enqueue(10)
    make.emulator.reset_next(2)
    make().start()
    assert wait_until(lambda: delivered_all(make, expected))
    assert_exactly_once(make.emulator, expected)
    assert [r.status for r in make.emulator.request_log][:2] == [0, 0]


def test_down_then_up(make: Factory) -> None:
    make.emulator.set_down(True)
    expected = make.enqueue(30)
    sender = make()
    sender.start()
    assert wait_until(lambda: len(make.emulator.request_log) >= 3)
    assert make.emulator.events() == []
    make.emulator.set_down(False)
    expected += make.enqueue(10, start=30)
    sender.wake()
    assert wait_until(lambda: delivered_all(make, expected))
    assert_exactly_once(make.emulator, expected)


def test_circuit_opens_during_an_outage_and_recovers(
    make: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="flask_keen_signup")
    make.emulator.set_down(True)
    expected = make.enqueue(200)
    sender = make(
        collection_batch_size=10,
        circuit_threshold=3,
        circuit_cooldown=0.5,
        circuit_cap=1.0,
        probe_size=2,
    )
    sender.start()
    assert wait_until(lambda: sender.status().circuit != "closed", 10)
    time.sleep(1.5)  # an outage window: without a circuit this would be ~100 requests
    during = len(make.emulator.request_log)
    assert during <= 12
    status = sender.status()
    assert status.circuit in ("open", "half-open")
    assert status.outbox.pending == 200
    assert "No answer from Keen" in (status.last_error or "")
    openings = [r for r in caplog.records if "pausing deliveries" in r.getMessage()]
    assert 1 <= len(openings) <= during  # per opening, never per event
    # Probes are small.
    make.emulator.set_down(False)
    assert wait_until(lambda: delivered_all(make, expected))
    assert_exactly_once(make.emulator, expected)
    assert sender.status().circuit == "closed"
    # No key, no event body in the logs.
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert make.emulator.write_key not in text
    assert "auth0|user" not in text


def test_non_retryable_whole_request_errors_back_off_not_die(make: Factory) -> None:
    expected = make.enqueue(5)
    make.emulator.fail_next(2, 401)
    make().start()
    assert wait_until(lambda: delivered_all(make, expected))
    assert_exactly_once(make.emulator, expected)


# --------------------------------------------------------------------------- per-event results


def test_partial_batch_failure_dead_letters_only_invalid_events(make: Factory) -> None:
    expected = make.enqueue(3)
    bad = signup(100, **{"bad.name": 1})  # the body is serialised when the event is made
    make.outbox.enqueue(bad)
    expected += make.enqueue(3, start=3)
    make().start()
    assert wait_until(lambda: make.outbox.pending_count() == 0)
    assert_exactly_once(make.emulator, expected)
    (dead,) = make.outbox.dead_letters()
    assert dead.user_id == "auth0|user100"
    assert dead.error_code == "InvalidPropertyNameError"
    assert dead.reason.startswith("InvalidPropertyNameError")
    assert dead.attempts == 1
    # One request: the good ones were not held back or resent.
    assert len(make.emulator.request_log) == 1


def test_an_event_failing_retryably_inside_a_batch_is_retried_alone(make: Factory) -> None:
    """Keen answers the batch 200 but one event fails with a name worth retrying: only that
    event is retried (after backoff), the others are delivered once."""
    expected = make.enqueue(5)
    make.emulator.fail_events(lambda event: event["userId"] == "auth0|user2", count=2)
    make().start()
    assert wait_until(lambda: delivered_all(make, expected))
    assert_exactly_once(make.emulator, expected)
    assert make.outbox.stats().dead == 0
    sent = [
        [event["userId"] for event in request.json()["signups"]]
        for request in make.emulator.request_log
    ]
    assert sent[0] == [f"auth0|user{n}" for n in range(5)]
    assert sent[1:] == [["auth0|user2"], ["auth0|user2"]], "twice refused, then accepted"


def test_dead_letter_from_a_400_is_replayed_after_the_fix(make: Factory) -> None:
    expected = make.enqueue(1)
    make.emulator.fail_next(1, 400)
    sender = make()
    sender.start()
    assert wait_until(lambda: make.outbox.stats().dead == 1)
    (dead,) = make.outbox.dead_letters()
    assert dead.error_code == "BadRequestError"
    assert make.emulator.events() == []
    assert make.outbox.retry_dead() == 1
    sender.wake()
    assert wait_until(lambda: delivered_all(make, expected))
    assert_exactly_once(make.emulator, expected)
    assert make.outbox.dead_letters() == []


def test_a_whole_batch_400_is_bisected_to_isolate_the_poison(make: Factory) -> None:
    expected = make.enqueue(8)
    make.emulator.fail_next(1, 400)  # the first request only
    make().start()
    assert wait_until(lambda: delivered_all(make, expected))
    assert_exactly_once(make.emulator, expected)
    assert make.outbox.stats().dead == 0


def test_413_splits_the_batch_in_halves(make: Factory) -> None:
    expected = make.enqueue(8)
    make.emulator.fail_next(2, 413)
    make().start()
    assert wait_until(lambda: delivered_all(make, expected))
    assert_exactly_once(make.emulator, expected)
    sizes = [len(r.json()[COLLECTION]) for r in make.emulator.request_log]
    assert sizes[:3] == [8, 4, 2]


def test_a_lone_event_refused_with_413_is_dead(make: Factory) -> None:
    make.enqueue(1)
    make.emulator.fail_next(1, 413)
    make().start()
    assert wait_until(lambda: make.outbox.stats().dead == 1)
    (dead,) = make.outbox.dead_letters()
    assert "too large" in dead.reason


def test_oversize_event_is_dead_without_being_sent(make: Factory) -> None:
    expected = make.enqueue(2)
    make.outbox.enqueue(signup(99, padding=["x" * 9000] * 101))
    make().start()
    assert wait_until(lambda: make.outbox.pending_count() == 0)
    assert_exactly_once(make.emulator, expected)
    (dead,) = make.outbox.dead_letters()
    assert str(MAX_EVENT_BYTES) in dead.reason
    assert all(len(r.body) < MAX_EVENT_BYTES for r in make.emulator.request_log)


def test_max_batch_bytes_caps_every_request(make: Factory) -> None:
    expected = make.enqueue(30)
    make(max_batch_bytes=2000).start()
    assert wait_until(lambda: delivered_all(make, expected))
    assert_exactly_once(make.emulator, expected)
    log = make.emulator.request_log
    assert len(log) > 1
    assert all(len(r.body) <= 2000 for r in log)


def test_retry_for_then_dead_never_by_attempts_alone(make: Factory) -> None:
    """KEEN_SIGNUP_MAX_ATTEMPTS no longer dead-letters a retryable failure (issue 16): the
    rows outlive many more attempts than it allows, and die once RETRY_FOR has elapsed."""
    make.emulator.set_down(True)
    make.enqueue(3)
    sender = make(max_attempts=3, circuit_threshold=1000, retry_for=3600.0)
    sender.start()
    assert wait_until(lambda: _attempts(make) >= 5)
    sender.stop(5)
    assert make.outbox.stats().dead == 0
    assert make.outbox.pending_count() == 3
    short = make(max_attempts=3, circuit_threshold=1000, retry_for=0.3)
    short.start()
    assert wait_until(lambda: make.outbox.stats().dead == 3)
    dead = make.outbox.dead_letters()
    assert all(d.reason.startswith("gave up after failing for 0.0 h (") for d in dead)
    assert all(d.attempts > 3 for d in dead)
    make.emulator.set_down(False)
    assert make.outbox.retry_dead() == 3
    short.wake()
    assert wait_until(lambda: len(user_ids(make.emulator)) == 3)


def _attempts(make: Factory) -> int:
    with make.outbox.database.reading() as conn:
        return int(conn.execute("SELECT MIN(attempts) FROM keen_signup_outbox").fetchone()[0])


# --------------------------------------------------------------------------- flush


def test_flush_without_a_thread_delivers_everything(make: Factory) -> None:
    expected = make.enqueue(25)
    sender = make(collection_batch_size=10)
    assert sender.flush(30) == 0
    assert_exactly_once(make.emulator, expected)
    assert not sender.running


def test_flush_ignores_backoff(make: Factory) -> None:
    expected = make.enqueue(5)
    make.emulator.fail_next(1, 503)
    sender = make(backoff_base=60.0, backoff_cap=60.0)
    assert sender.flush(10) == 5  # stops at the first whole-request failure
    assert sender.flush(10) == 0  # the next flush does not wait out the minute
    assert_exactly_once(make.emulator, expected)


def test_flush_returns_leftovers_and_never_hangs_while_keen_is_down(make: Factory) -> None:
    make.enqueue(20)
    make.emulator.add_latency(20.0)  # a black hole: answers after the read timeout
    sender = make(read_timeout=10.0)
    sender.start()
    started = time.monotonic()
    left = sender.flush(0.5)
    assert time.monotonic() - started < 5.0  # 0.5 s asked; generous for a loaded machine
    assert left == 20
    make.emulator.clear_faults()


def test_flush_while_down_by_reset(make: Factory) -> None:
    make.emulator.set_down(True)
    make.enqueue(5)
    sender = make()
    sender.start()
    assert sender.flush(2.0) == 5
    make.emulator.set_down(False)
    assert sender.flush(10.0) == 0
    assert len(user_ids(make.emulator)) == 5


# --------------------------------------------------------------------------- notify and hooks


def test_notify_payloads(make: Factory) -> None:
    seen: list[tuple[str, dict[str, t.Any]]] = []

    def notify(kind: str, payload: dict[str, t.Any]) -> None:
        seen.append((kind, payload))
        raise RuntimeError("a broken subscriber")  # logged and swallowed

    make.enqueue(1)
    bad = signup(7, **{"$bad": 1})
    make.outbox.enqueue(bad)
    make.emulator.fail_next(1, 503)
    make(notify=notify).start()
    assert wait_until(lambda: make.outbox.pending_count() == 0)
    kinds = [kind for kind, _ in seen]
    assert kinds.count("failed") == 2
    assert kinds.count("delivered") == 1
    assert kinds.count("dead") == 1
    failed = next(p for k, p in seen if k == "failed")
    assert failed["attempts"] == 1
    assert "503" in str(failed["error"])
    assert failed["event"]["userId"] in ("auth0|user0", "auth0|user7")
    delivered = next(p for k, p in seen if k == "delivered")
    enqueued_at = delivered.pop("enqueued_at")  # the row's enqueue time: the latency metric
    assert isinstance(enqueued_at, float) and 0 < time.time() - enqueued_at < 60
    assert delivered == {
        "user_id": "auth0|user0",
        "event": signup(0).body,
        "attempts": 2,
    }
    dead = next(p for k, p in seen if k == "dead")
    assert dead["user_id"] == "auth0|user7"
    assert dead["event"]["$bad"] == 1
    assert "InvalidPropertyNameError" in dead["reason"]


class SkipOdd(DeliveryHooks):
    def before_send(self, rows: t.Sequence[OutboxRow]) -> dict[int, str]:
        return {r.id: "already marked" for r in rows if int(r.user_id[10:]) % 2}


def test_before_send_skips_rows(make: Factory) -> None:
    make.enqueue(6)
    make(hooks=SkipOdd()).start()
    assert wait_until(lambda: make.outbox.pending_count() == 0)
    assert sorted(user_ids(make.emulator)) == ["auth0|user0", "auth0|user2", "auth0|user4"]
    stats = make.outbox.stats()
    assert (stats.delivered, stats.skipped) == (3, 3)


class FlakyConfirm(DeliveryHooks):
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[list[str]] = []

    def after_delivered(self, rows: t.Sequence[OutboxRow]) -> None:
        self.calls.append([r.user_id for r in rows])
        if self.failures > 0:
            self.failures -= 1
            raise Auth0APIError(429, "too_many_requests", "slow down", retryable=True)


def test_after_delivered_is_retried_durably_without_resending(make: Factory) -> None:
    expected = make.enqueue(4)
    hook = FlakyConfirm(failures=1000)
    first = make(hooks=hook)
    first.start()
    assert wait_until(lambda: len(hook.calls) >= 3)
    first.stop(5)
    assert_exactly_once(make.emulator, expected)
    requests_sent = len(make.emulator.request_log)
    assert make.outbox.pending_count() == 4  # still confirming, durably
    assert make.outbox.stats().delivered == 0
    # "Restart": a new sender (Auth0 is back) confirms without writing to Keen again.
    healthy = FlakyConfirm(failures=0)
    make(hooks=healthy).start()
    assert wait_until(lambda: make.outbox.pending_count() == 0)
    assert sorted(u for call in healthy.calls for u in call) == sorted(expected)
    assert len(make.emulator.request_log) == requests_sent
    assert make.outbox.stats().delivered == 4


def test_after_delivered_non_retryable_error_still_counts_as_delivered(make: Factory) -> None:
    class Gone(DeliveryHooks):
        def after_delivered(self, rows: t.Sequence[OutboxRow]) -> None:
            raise Auth0APIError(404, "inexistent_user", "gone", retryable=False)

    expected = make.enqueue(2)
    make(hooks=Gone()).start()
    assert wait_until(lambda: make.outbox.pending_count() == 0)
    assert_exactly_once(make.emulator, expected)
    assert make.outbox.stats().delivered == 2


# --------------------------------------------------------------------------- fork

FORK_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    sys.path.insert(0, {root!r})
    from flask_keen_signup.database import Database
    from flask_keen_signup.delivery import QueuedEvent
    from flask_keen_signup.delivery.sender import Sender
    from flask_keen_signup.delivery.sqlite_outbox import SQLiteOutbox
    from flask_keen_signup.events import uniqueness_token
    from flask_keen_signup.keen import KeenClient

    def event(uid):
        tok = uniqueness_token("signups", uid)
        body = {{"userId": uid, "keen": {{"uniqueness_token": tok}}}}
        return QueuedEvent("signups", uid, tok, body)

    box = SQLiteOutbox(Database({db!r}))
    client = KeenClient("demo-project", "demo-write-key", api_url={url!r}, timeout=(2, 5))
    sender = Sender(box, client, flush_interval=0.05, backoff_base=0.01, handle_signals=False)
    sender.start()
    box.enqueue(event("parent|before-fork"))
    sender.wake()
    deadline = time.monotonic() + 20
    while box.pending_count() and time.monotonic() < deadline:
        time.sleep(0.02)
    parent_owner = sender.owner
    pid = os.fork()
    if pid == 0:
        # The child: its sender was restarted by the at-fork hook; only enqueue + wake.
        ok = sender.running and sender.owner != parent_owner
        for n in range(20):
            box.enqueue(event(f"child|{{n}}"))
        sender.wake()
        deadline = time.monotonic() + 20
        while box.pending_count() and time.monotonic() < deadline:
            time.sleep(0.02)
        os._exit(0 if ok and box.pending_count() == 0 else 3)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({{"child": os.waitstatus_to_exitcode(status)}}))
    sender.stop(5)
    """
)


@pytest.mark.slow
def test_a_forked_child_delivers_its_own_events(emulator: KeenEmulator, tmp_path: t.Any) -> None:
    root = ROOT
    script = tmp_path / "fork.py"
    script.write_text(
        FORK_SCRIPT.format(root=root, db=str(tmp_path / "fork.sqlite3"), url=emulator.url)
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"child": 0}
    got = sorted(e["userId"] for e in emulator.events("signups"))
    assert got == sorted(["parent|before-fork"] + [f"child|{n}" for n in range(20)])


# --------------------------------------------------------------------------- status


def test_status_as_dict(make: Factory) -> None:
    make.enqueue(2)
    sender = make()
    status = sender.status()
    assert status.running is False
    assert status.circuit == "closed"
    data = status.as_dict()
    assert data["outbox"]["pending"] == 2
    assert data["resends"] == 0
    json.dumps(data)


# --------------------------------------------------------------------------- never silent


def test_a_write_key_that_cannot_be_sent_is_an_outage_in_status_not_a_silent_loop(
    make: Factory,
) -> None:
    """Issue 16: with a non-latin-1 write key every round raised UnicodeEncodeError out of
    the transport: the rows stayed leased, ``last_error`` stayed None and health said ok.

    ``init_app`` and ``KeenClient`` now refuse such a key (tests/integration/test_secrets.py);
    this is the sender's own answer to a request that cannot be sent, whatever the cause,
    reached here by a key swapped in after the client's check."""
    from flask_keen_signup.health import HealthThresholds
    from flask_keen_signup.health import verdict

    make.enqueue(2)
    emu = make.emulator
    bad = KeenClient(emu.project_id, "a-good-key-for-now", api_url=emu.url, timeout=(2.0, 5.0))
    bad._auth._key = "clé-☃-secret"  # type: ignore[attr-defined]
    sender = Sender(make.outbox, bad, **FAST)
    make.senders.append(sender)
    sender.start()
    assert wait_until(lambda: sender.status().circuit != "closed")
    status = sender.status()
    assert "could not be sent (UnicodeEncodeError" in (status.last_error or "")
    assert "secret" not in (status.last_error or "") and "clé" not in (status.last_error or "")
    stats = make.outbox.stats()
    assert (stats.pending, stats.dead) == (2, 0)
    health = {**dataclasses.asdict(status.outbox), **status.as_dict()}
    result, reasons = verdict(health, HealthThresholds())
    assert result != "ok" and reasons
    assert emu.request_log == []  # nothing reached Keen, nothing was lost


def test_a_round_that_keeps_failing_is_counted_named_and_judged(
    make: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    from flask_keen_signup.health import HealthThresholds
    from flask_keen_signup.health import verdict

    class Broken(SQLiteOutbox):
        broken = True

        def claim_due(self, *args: t.Any, **kwargs: t.Any) -> list[OutboxRow]:
            if self.broken:
                raise RuntimeError("a bug in a round")
            return super().claim_due(*args, **kwargs)

    outbox = Broken(make.outbox.database)
    expected = make.enqueue(1)
    sender = Sender(outbox, make.client(), **FAST)
    make.senders.append(sender)
    sender.start()
    assert wait_until(lambda: sender.status().round_errors >= 3)
    status = sender.status()
    assert status.last_error == "a delivery round failed: RuntimeError"
    health = {**dataclasses.asdict(status.outbox), **status.as_dict()}
    result, reasons = verdict(health, HealthThresholds())
    assert result == "degraded"
    assert any("round(s) failed: a delivery round failed: RuntimeError" in r for r in reasons)
    logged = [r for r in caplog.records if "a delivery round failed" in r.getMessage()]
    assert len(logged) == 1  # one ERROR per episode, not one per round
    outbox.broken = False
    assert wait_until(lambda: delivered_all(make, expected))
    assert sender.status().round_errors == 0


def test_a_200_listing_fewer_results_than_events_sends_them_all_again(make: Factory) -> None:
    """Issue 16: a 200 whose body listed 2 results for 4 events marked 4 delivered where
    Keen stored 2: the two results were paired with the first two events by guess."""
    expected = make.enqueue(4)
    short = {COLLECTION: [{"success": True}, {"success": True}]}
    make.emulator.fail_next(1, 200, body=json.dumps(short), content_type="application/json")
    make().start()
    assert wait_until(lambda: delivered_all(make, expected))
    assert_exactly_once(make.emulator, expected)  # all four are in Keen, once each
    assert make.outbox.stats().delivered == 4
