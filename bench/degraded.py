"""Benchmark: the login path while the store is in trouble, and draining the spool.

Run: ``.venv/bin/python bench/degraded.py [--quick]``

Issue 10 / DESIGN guarantee 3: store work in a login has a budget,
``KEEN_SIGNUP_STORE_TIMEOUT`` (default 0.1 s); past it the signup goes to the local spool.
This measures, in one run on one machine:

1. **login path, store free** (reference): ``signup.track_claims`` for a new user inside a
   request context (the tracker, the SQLite claim-and-enqueue), p50 and p99;
2. **login path, write lock held by another process** (a subprocess in ``BEGIN
   IMMEDIATE``): the same call for new users, and for returning users this process has not
   seen: p50 and p99 against the budget (before issue 10: 10 s, SQLite's busy timeout, then
   the signup was lost);
3. **what the spool adds**: ``Spool.append`` alone (one ``write(2)``; and with ``fsync``,
   the ``KEEN_SIGNUP_SQLITE_SYNCHRONOUS = "full"`` policy), p50 and p99;
4. **the file check** every SQLite use now passes (``Database._check_file``, at most one
   ``os.stat`` per 0.5 s), per call;
5. **drain time for 10,000 spooled signups** (10 % of them returning users): the sender's
   ``SpoolDrainer`` with the SQLite ledger and outbox, and with Redis when ``redis-server``
   is installed.

Bounded (under a minute; ``--quick`` about 10 s); exits 0 whenever it ran.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import typing as t

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from flask import Flask  # noqa: E402

from flask_keen_signup import KeenSignup  # noqa: E402
from flask_keen_signup import signup_state  # noqa: E402
from flask_keen_signup.backends.sqlite import claim_and_enqueue_many  # noqa: E402
from flask_keen_signup.database import Database  # noqa: E402
from flask_keen_signup.delivery import QueuedEvent  # noqa: E402
from flask_keen_signup.delivery.sqlite_outbox import SQLiteOutbox  # noqa: E402
from flask_keen_signup.events import uniqueness_token  # noqa: E402
from flask_keen_signup.exceptions import StoreError  # noqa: E402
from flask_keen_signup.spool import Spool  # noqa: E402
from flask_keen_signup.spool_drain import SpoolDrainer  # noqa: E402
from flask_keen_signup.stores.sqlite import SQLiteStore  # noqa: E402

LOCK_HOLDER = textwrap.dedent(
    """
    import sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
    conn.execute("BEGIN IMMEDIATE")
    print("locked", flush=True)
    sys.stdin.read()
    conn.execute("COMMIT")
    """
)


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return statistics.median(ordered), p99


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def us(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} µs"


def make_app(directory: str) -> tuple[Flask, KeenSignup]:
    app = Flask(__name__)
    app.config.update(
        KEEN_PROJECT_ID="bench",
        KEEN_WRITE_KEY="bench",
        KEEN_API_URL="http://127.0.0.1:9",  # nothing listens: the sender just backs off
        KEEN_SIGNUP_DATABASE=os.path.join(directory, "keen_signup.sqlite3"),
        KEEN_SIGNUP_PROPAGATE_ERRORS=True,
    )
    return app, KeenSignup(app)


def time_logins(app: Flask, signup: KeenSignup, subs: t.Iterable[str]) -> list[float]:
    samples = []
    for sub in subs:
        claims = {"sub": sub, "name": "Bench User"}
        with app.test_request_context("/callback", environ_base={"REMOTE_ADDR": "203.0.113.7"}):
            started = time.perf_counter()
            signup.track_claims(claims)
            samples.append(time.perf_counter() - started)
    return samples


class WriteLock:
    def __init__(self, path: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LOCK_HOLDER, path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "locked"

    def release(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        self.proc.wait(10)
        self.proc.stdout.close()


def event(n: int) -> QueuedEvent:
    sub = f"auth0|spooled{n:06d}"
    token = uniqueness_token("signups", sub)
    body = {
        "userId": sub,
        "name": "Bench User",
        "ip": "203.0.113.7",
        "connection": "auth0",
        "user_agent": "Mozilla/5.0 (X11; Linux x86_64) bench",
        "keen": {"timestamp": "2026-12-01T00:00:00.000Z", "uniqueness_token": token},
    }
    return QueuedEvent("signups", sub, token, body)


def bench_login_path(quick: bool) -> None:
    free_n, locked_n = (100, 15) if quick else (400, 40)
    with tempfile.TemporaryDirectory() as directory:
        app, signup = make_app(directory)
        state = signup_state(app)
        state.sender.stop(5)  # the request path alone: no sender competing for the lock
        time_logins(app, signup, [f"auth0|warm{n}" for n in range(20)])
        free = time_logins(app, signup, [f"auth0|free{n}" for n in range(free_n)])
        lock = WriteLock(state.settings.database)
        try:
            new = time_logins(app, signup, [f"auth0|locked{n}" for n in range(locked_n)])
            # Users the ledger knows but this process does not remember yet.
            state.tracker.known._users.clear()
            returning = time_logins(app, signup, [f"auth0|free{n}" for n in range(locked_n)])
        finally:
            lock.release()
        spooled = state.spool.depth()
        budget = state.settings.store_timeout
    p50, p99 = percentiles(free)
    print(f"login path, store free (new user, n={free_n}):        p50 {us(p50)}, p99 {us(p99)}")
    for label, samples in (("new user", new), ("returning user", returning)):
        p50, p99 = percentiles(samples)
        verdict = "within" if p99 <= budget * 1.5 else "OVER"
        print(
            f"login path, write lock held ({label}, n={len(samples)}): p50 {ms(p50)}, "
            f"p99 {ms(p99)}; budget {ms(budget)} -> p99 {verdict} 1.5x the budget"
        )
    print(f"  spooled meanwhile: {spooled} (expected {2 * locked_n})")


def bench_spool_append(quick: bool) -> None:
    n = 500 if quick else 3000
    cause = StoreError("bench")
    with tempfile.TemporaryDirectory() as directory:
        for fsync in (False, True):
            spool = Spool(os.path.join(directory, f"spool-{fsync}"), "signups", fsync=fsync)
            events = [event(i) for i in range(n if not fsync else n // 10)]
            samples = []
            for queued in events:
                started = time.perf_counter()
                spool.append(queued, cause)
                samples.append(time.perf_counter() - started)
            spool.close()
            p50, p99 = percentiles(samples)
            label = "fsync per record" if fsync else "write(2) only   "
            print(f"spool append, {label} (n={len(samples)}): p50 {us(p50)}, p99 {us(p99)}")


def bench_file_check() -> None:
    with tempfile.TemporaryDirectory() as directory:
        database = Database(os.path.join(directory, "db.sqlite3"))
        with database.reading() as conn:
            conn.execute("SELECT 1")
        n = 200_000
        started = time.perf_counter()
        for _ in range(n):
            database._check_file()
        per_call = (time.perf_counter() - started) / n
        started = time.perf_counter()
        for _ in range(2000):
            os.stat(database.path)
        per_stat = (time.perf_counter() - started) / 2000
    print(
        f"file check per SQLite use: {us(per_call)} (one os.stat, {us(per_stat)}, "
        "at most every 0.5 s per Database)"
    )


def fill(spool: Spool, count: int) -> None:
    cause = StoreError("bench")
    for n in range(count):
        spool.append(event(n), cause)
    for n in range(count // 10):  # returning users: a second candidate for known users
        spool.append(event(n), cause)


def bench_drain_sqlite(count: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        database = Database(os.path.join(directory, "keen_signup.sqlite3"))
        ledger, outbox = SQLiteStore(database, "signups"), SQLiteOutbox(database)
        spool = Spool(os.path.join(directory, "keen_signup.sqlite3.spool"), "signups")
        fill(spool, count)
        total = spool.depth()
        drainer = SpoolDrainer(
            spool, ledger, outbox, claim_and_enqueue_many=claim_and_enqueue_many(ledger, outbox)
        )
        started = time.perf_counter()
        queued = drainer()
        seconds = time.perf_counter() - started
        assert queued == count and outbox.pending_count() == count and spool.depth() == 0
    print(
        f"drain, SQLite: {total:,} spooled ({count:,} new, {total - count:,} returning) "
        f"decided in {seconds:.2f} s ({total / seconds:,.0f}/s)"
    )


def bench_drain_redis(count: int) -> None:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.access(binary, os.X_OK):
        print("drain, Redis: skipped (redis-server not installed)")
        return
    from flask_keen_signup.delivery.redis_outbox import RedisOutbox
    from flask_keen_signup.stores.redis import RedisStore
    from flask_keen_signup.stores.redis import connect

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as directory:
        server = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", directory],
            stdout=subprocess.DEVNULL,
        )
        try:
            client = connect(f"redis://127.0.0.1:{port}/0")
            for _ in range(200):
                try:
                    client.ping()
                    break
                except Exception:  # noqa: BLE001
                    time.sleep(0.02)
            store, outbox = RedisStore(client, "signups"), RedisOutbox(client)
            spool = Spool(os.path.join(directory, "spool"), "signups")
            fill(spool, count)
            total = spool.depth()
            started = time.perf_counter()
            queued = SpoolDrainer(
                spool,
                store,
                outbox,
                claim_and_enqueue_many=lambda events: outbox.claim_and_enqueue_many(store, events),
            )()
            seconds = time.perf_counter() - started
            assert queued == count and spool.depth() == 0
            client.close()
        finally:
            server.kill()
            server.wait(10)
    print(
        f"drain, Redis:  {total:,} spooled ({count:,} new, {total - count:,} returning) "
        f"decided in {seconds:.2f} s ({total / seconds:,.0f}/s)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (about 10 s)")
    args = parser.parse_args(argv)
    count = 2_000 if args.quick else 10_000
    bench_login_path(args.quick)
    bench_spool_append(args.quick)
    bench_file_check()
    bench_drain_sqlite(count)
    bench_drain_redis(count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
