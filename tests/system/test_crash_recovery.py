"""kill -9 at every interesting point of enqueue and delivery; a restart delivers exactly once.

Each run starts a subprocess that claims users in the ledger and enqueues their events in one
transaction (as the extension does) while its sender delivers them to the Keen emulator.
An env var makes the process SIGKILL *itself* at a named point the N-th time it is reached,
so every run is deterministic. Then a fresh process runs a sender to completion, and:

* every event committed to SQLite is in the emulator exactly once (the invalid one is a
  dead letter instead);
* the ledger and the outbox agree (claim and enqueue commit together or not at all);
* nothing is left pending.

The crash points wrap the real outbox and client (subclasses in the subprocess script): the
code under test is the real code, only interrupted.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import typing as t

import _paths
import pytest

from flask_keen_signup.testing.keen import KeenEmulator

pytestmark = pytest.mark.slow

ROOT = _paths.ROOT
EVENTS = 30
INVALID = 5  # this user's event carries an invalid property name: a dead letter

SCRIPT = textwrap.dedent(
    """
    import collections, json, os, signal, sys, time
    sys.path.insert(0, {root!r})
    from flask_keen_signup.database import Database
    from flask_keen_signup.delivery import QueuedEvent
    from flask_keen_signup.delivery.sender import Sender
    from flask_keen_signup.delivery.sqlite_outbox import SQLiteOutbox
    from flask_keen_signup.events import uniqueness_token
    from flask_keen_signup.keen import KeenClient
    from flask_keen_signup.stores.sqlite import SQLiteStore

    mode, path, url = sys.argv[1], sys.argv[2], sys.argv[3]
    point, _, nth = os.environ.get("CRASH_AT", "").partition(":")
    seen = collections.Counter()

    def maybe_crash(name):
        if name == point:
            seen[name] += 1
            if seen[name] == int(nth):
                os.kill(os.getpid(), signal.SIGKILL)

    class CrashingOutbox(SQLiteOutbox):
        def claim_due(self, *args, **kwargs):
            rows = super().claim_due(*args, **kwargs)
            if rows:
                maybe_crash("after_claim")
            return rows

        def mark_delivered(self, ids, **kwargs):
            maybe_crash("before_mark_delivered")
            super().mark_delivered(ids, **kwargs)
            maybe_crash("after_mark_delivered")

        def mark_retry_many(self, items, **kwargs):
            maybe_crash("before_mark_retry")
            super().mark_retry_many(items, **kwargs)
            maybe_crash("after_mark_retry")

        def mark_dead_many(self, items, **kwargs):
            maybe_crash("before_mark_dead")
            super().mark_dead_many(items, **kwargs)
            maybe_crash("after_mark_dead")

    class CrashingClient(KeenClient):
        def add_events(self, batch, *, body=None):
            maybe_crash("before_send")
            result = super().add_events(batch, body=body)
            maybe_crash("after_send")
            return result

    db = Database(path)
    ledger = SQLiteStore(db, "signups")
    outbox = CrashingOutbox(db)
    client = CrashingClient("demo-project", "demo-write-key", api_url=url, timeout=(2, 5))
    sender = Sender(
        outbox, client, collection_batch_size=4, flush_interval=0.02, backoff_base=0.01,
        backoff_cap=0.05, circuit_cooldown=0.05, circuit_cap=0.1, handle_signals=False,
    )
    sender.start()
    if mode == "crash":
        for n in range({events}):
            uid = f"auth0|user{{n}}"
            tok = uniqueness_token("signups", uid)
            body = {{"userId": uid, "keen": {{"uniqueness_token": tok}}}}
            if n == {invalid}:
                body["bad.name"] = True
            with db.transaction() as conn:
                if ledger.claim_in(conn, uid):
                    outbox.enqueue_in(conn, QueuedEvent("signups", uid, tok, body))
                    maybe_crash("enqueue_before_commit")
            maybe_crash("enqueue_after_commit")
            sender.wake()
            time.sleep(0.002)
    deadline = time.monotonic() + 30
    while outbox.pending_count() and time.monotonic() < deadline:
        sender.flush(5)
    sender.stop(5)
    stats = outbox.stats()
    print(json.dumps({{"pending": stats.pending, "resends": stats.resends}}))
    """
)

#: (crash point, N-th time it is reached, faults to inject before the crashing run)
RUNS: list[tuple[str, int, dict[str, t.Any]]] = [
    ("enqueue_before_commit", 1, {}),
    ("enqueue_before_commit", 17, {}),
    ("enqueue_after_commit", 1, {}),
    ("enqueue_after_commit", 23, {}),
    ("after_claim", 1, {}),
    ("after_claim", 3, {}),
    ("before_send", 1, {}),
    ("before_send", 3, {}),
    ("after_send", 1, {}),
    ("after_send", 2, {}),
    ("after_send", 4, {}),
    ("before_mark_delivered", 1, {}),
    ("before_mark_delivered", 3, {}),
    ("after_mark_delivered", 1, {}),
    ("after_mark_delivered", 3, {}),
    ("before_mark_retry", 1, {"fail": 2}),
    ("after_mark_retry", 1, {"fail": 2}),
    ("after_mark_retry", 2, {"reset": 3}),
    ("before_mark_dead", 1, {}),
    ("after_mark_dead", 1, {}),
    ("after_send", 1, {"latency": 0.05}),
    ("after_claim", 2, {"latency": 0.05}),
    ("enqueue_after_commit", 11, {"latency": 0.05}),
    ("before_mark_delivered", 2, {"fail": 1}),
]


def committed(path: str) -> tuple[list[str], list[str], list[str]]:
    """(user ids in the outbox, user ids in the dead letters, ledger markers) on disk."""
    conn = sqlite3.connect(path)
    try:
        # (A dead-lettered newest row leaves a blank placeholder keeping its id: no user.)
        outbox = [
            r[0] for r in conn.execute("SELECT user_id FROM keen_signup_outbox WHERE user_id != ''")
        ]
        dead = [r[0] for r in conn.execute("SELECT user_id FROM keen_signup_dead_letters")]
        markers = [r[0] for r in conn.execute("SELECT user_id FROM keen_signup_markers")]
    finally:
        conn.close()
    return outbox, dead, markers


@pytest.mark.parametrize(("point", "nth", "faults"), RUNS, ids=[f"{p}:{n}" for p, n, _ in RUNS])
def test_kill_9_then_restart_delivers_exactly_once(
    tmp_path: t.Any, point: str, nth: int, faults: dict[str, t.Any]
) -> None:
    script = tmp_path / "worker.py"
    script.write_text(SCRIPT.format(root=ROOT, events=EVENTS, invalid=INVALID))
    path = str(tmp_path / "keen_signup.sqlite3")
    with KeenEmulator(request_log_limit=None) as emulator:
        if "fail" in faults:
            emulator.fail_next(faults["fail"], 503)
        if "reset" in faults:
            emulator.reset_next(faults["reset"])
        if "latency" in faults:
            emulator.add_latency(faults["latency"])
        crashed = subprocess.run(
            [sys.executable, str(script), "crash", path, emulator.url],
            capture_output=True,
            text=True,
            timeout=90,
            env={**os.environ, "CRASH_AT": f"{point}:{nth}"},
        )
        assert crashed.returncode == -signal.SIGKILL, (crashed.returncode, crashed.stderr)
        crash_log = list(emulator.request_log)
        before, _, markers_before = committed(path)
        # Claim and enqueue commit together: a marker without its event would be a lost
        # signup, an event without its marker a second report at the next login.
        assert sorted(markers_before) == sorted(before + committed(path)[1])

        emulator.clear_faults()
        recovered = subprocess.run(
            [sys.executable, str(script), "recover", path, emulator.url],
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert recovered.returncode == 0, recovered.stderr
        result = json.loads(recovered.stdout.strip().splitlines()[-1])
        assert result["pending"] == 0

        in_outbox, dead, markers = committed(path)
        everything = sorted(in_outbox + dead)
        assert everything == sorted(markers)
        assert len(set(everything)) == len(everything)
        invalid = f"auth0|user{INVALID}"
        expected = sorted(uid for uid in everything if uid != invalid)
        got = [e["userId"] for e in emulator.events("signups")]
        assert sorted(got) == expected  # each committed event exactly once
        assert dead == ([invalid] if invalid in everything else [])
        if point == "after_send":
            # Keen had the batch, we had no record: it was sent again, and the resend was
            # counted by us and, for every event Keen had accepted, absorbed by Keen's
            # uniqueness token. (A batch of only the invalid event leaves nothing to absorb:
            # Keen refuses it again, and it ends in the dead letters.)
            assert result["resends"] >= 1
            last_batch = [r for r in crash_log if r.method == "POST"][-1].json() or {}
            accepted = [e for e in last_batch.get("signups", []) if "bad.name" not in e]
            if accepted:
                assert emulator.duplicates_rejected >= 1
