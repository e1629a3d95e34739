"""Benchmark: the ``postgres`` store beside ``sqlite``, in the same run.

Run: ``.venv/bin/python bench/postgres.py [--quick] [--url postgresql://…]``

1. **The login callback's store work**: ``signup.track_claims(claims)`` inside a request
   context (what ``@signup.track`` calls once it found the token), for
   - a *new user* (the claim and the event: one SQLite transaction, or one PostgreSQL
     statement),
   - a *returning user this process knows* (the in-memory set: no query at all),
   - a *returning user this process has not seen* (one indexed read),
   on apps built alike but for ``KEEN_SIGNUP_STORE`` and how PostgreSQL is reached: directly,
   or through PgBouncer in ``transaction`` mode (issue 17: how most hosted PostgreSQL is
   reached). Iterations alternate between the apps (ABAB) so that machine noise hits all
   alike; each app's sender runs and delivers to a Keen emulator, as in production. The
   round trips of a new user are counted on the wire (a counting proxy), direct and
   through PgBouncer.
2. **Delivery with two senders on one database**: N events queued in one PostgreSQL
   outbox, drained by one sender, then (a fresh outbox) by two senders on their own pools,
   as two hosts would; events per second until Keen has them all, each checked once.

Without ``--url`` it starts a private PostgreSQL (initdb + pg_ctl in a temporary
directory, as the tests do; ``fsync`` on, ``synchronous_commit`` on: every commit waits
for its WAL flush) on 127.0.0.1, and a private PgBouncer (``pool_mode = transaction``,
``default_pool_size = 4``) in front of it; with ``--url``, ``--pgbouncer-url`` adds yours.
SQLite runs with its defaults (WAL, ``synchronous=NORMAL``: a commit does not fsync).
Bounded (about a minute; ``--quick`` a few seconds); exits 0 whenever it ran.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid

from flask import Flask

from flask_keen_signup import KeenSignup
from flask_keen_signup import signup_state

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))  # tests/_postgres.py

from callback import PROJECT_ID  # noqa: E402 - bench/callback.py, beside this script
from callback import WRITE_KEY  # noqa: E402
from callback import keen_in_subprocess  # noqa: E402


def make_app(store: str, keen_url: str, directory: str, pg_url: str) -> tuple[Flask, KeenSignup]:
    app = Flask(f"bench-{store}")
    app.config.update(
        KEEN_PROJECT_ID=PROJECT_ID,
        KEEN_WRITE_KEY=WRITE_KEY,
        KEEN_API_URL=keen_url,
        KEEN_SIGNUP_STORE=store,
        KEEN_SIGNUP_DATABASE=os.path.join(directory, f"{store}.sqlite3"),
        KEEN_SIGNUP_DATABASE_URL=pg_url,
        KEEN_SIGNUP_DATABASE_SCHEMA=f"bench_{uuid.uuid4().hex[:8]}",
        KEEN_SIGNUP_STORE_TIMEOUT=2.0,  # the bench measures cost, not the budget
    )
    return app, KeenSignup(app)


def timed_track(app: Flask, ext: KeenSignup, sub: str) -> float:
    claims = {"sub": sub, "name": "Ada Lovelace", "email": "ada@example.com"}
    with app.test_request_context(
        "/callback", environ_base={"REMOTE_ADDR": "203.0.113.7"}, headers={"User-Agent": "b"}
    ):
        started = time.perf_counter_ns()
        ext.track_claims(claims)
        return (time.perf_counter_ns() - started) / 1000


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[int(len(ordered) * 0.9) - 1] if len(ordered) >= 10 else ordered[-1]
    return f"median {statistics.median(samples):8.1f} µs   p90 {p90:8.1f} µs"


def round_trip_reference(pg_url: str, n: int) -> None:
    """The machine's floor: ``SELECT 1`` on one dedicated connection, in a tight loop."""
    import psycopg

    with psycopg.connect(pg_url, autocommit=True, prepare_threshold=None) as conn:
        samples, wrapped = [], []
        for _ in range(n):
            started = time.perf_counter_ns()
            conn.execute("SELECT 1").fetchone()
            samples.append((time.perf_counter_ns() - started) / 1000)
            started = time.perf_counter_ns()
            with conn.pipeline():  # how the package sends each statement (issue 17)
                conn.execute("BEGIN")
                conn.execute("SET LOCAL statement_timeout = 100")
                cursor = conn.execute("SELECT 1")
                conn.execute("COMMIT")
            cursor.fetchone()
            wrapped.append((time.perf_counter_ns() - started) / 1000)
    print(f"   reference: one round trip (SELECT 1)  {summary(samples)}")
    print(f"   the same in BEGIN; SET LOCAL; COMMIT  {summary(wrapped)}")


def round_trips(label: str, pg_url: str) -> None:
    """A new user's round trips, counted on the wire by a proxy in front of ``pg_url``."""
    from _postgres import RoundTrips
    from psycopg.conninfo import conninfo_to_dict

    from flask_keen_signup.delivery import QueuedEvent
    from flask_keen_signup.delivery.postgres_outbox import PostgresOutbox
    from flask_keen_signup.postgres import PostgresDatabase
    from flask_keen_signup.stores.postgres import PostgresStore

    params = conninfo_to_dict(pg_url)
    proxy = RoundTrips(int(params.get("port") or 5432))
    database = PostgresDatabase(
        proxy.url(pg_url), schema=f"bench_{uuid.uuid4().hex[:8]}", timeout=2.0
    )
    try:
        store, box = PostgresStore(database, "signups"), PostgresOutbox(database)
        store.lookup("auth0|warm")
        proxy.reset()
        store.lookup("auth0|counted")  # the marker read
        box.claim_and_enqueue(
            store, "auth0|counted", QueuedEvent("signups", "auth0|counted", "t" * 64, {})
        )
        print(f"   round trips of a new user, {label:<14} {proxy.reset()}")
    finally:
        database.close()
        proxy.close()


def callback_costs(keen_url: str, pg_url: str, n: int, bouncer_url: str | None) -> None:
    directory = tempfile.mkdtemp(prefix="keen-bench-")
    # The same PostgreSQL with commits that do not wait for their WAL flush: what the
    # fsync of each commit costs (and what it buys: see docs/postgres.md).
    lax = pg_url + ("&" if "?" in pg_url else "?") + "options=-c%20synchronous_commit%3Doff"
    apps = {
        "sqlite": make_app("sqlite", keen_url, directory, pg_url),
        "postgres": make_app("postgres", keen_url, directory, pg_url),
        "pg sc=off": make_app("postgres", keen_url, directory, lax),
    }
    if bouncer_url:
        apps["PgBouncer tx"] = make_app("postgres", keen_url, directory, bouncer_url)
    for app, ext in apps.values():  # warm: schema, pools, prepared statements
        for i in range(20):
            timed_track(app, ext, f"auth0|warm-{i}")
    results: dict[tuple[str, str], list[float]] = {}
    for i in range(n):
        for store, (app, ext) in apps.items():
            results.setdefault((store, "new user"), []).append(
                timed_track(app, ext, f"auth0|new-{store}-{i}")
            )
    for i in range(n):
        for store, (app, ext) in apps.items():
            results.setdefault((store, "returning, known"), []).append(
                timed_track(app, ext, f"auth0|new-{store}-{i}")
            )
    for app, _ in apps.values():  # a fresh process's memory: the store answers
        tracker = signup_state(app).tracker
        tracker.known = type(tracker.known)()
    for i in range(n):
        for store, (app, ext) in apps.items():
            results.setdefault((store, "returning, unseen"), []).append(
                timed_track(app, ext, f"auth0|new-{store}-{i}")
            )
    print(f"\n1. track_claims() in a request context, {n} iterations per case (ABAB)")
    round_trip_reference(pg_url, n)
    for case in ("new user", "returning, known", "returning, unseen"):
        for store in apps:
            print(f"   {case:<18} {store:<12} {summary(results[(store, case)])}")
    for app, _ in apps.values():
        state = signup_state(app)
        deadline = time.monotonic() + 30
        while state.outbox.pending_count() and time.monotonic() < deadline:
            time.sleep(0.05)
        state.sender.shutdown(5)
    pg_state = signup_state(apps["postgres"][0])
    print(f"   (postgres: {pg_state.outbox.stats().delivered} events delivered meanwhile)")
    round_trips("direct", pg_url)
    if bouncer_url:
        round_trips("PgBouncer (tx)", bouncer_url)


def deliver(keen_url: str, pg_url: str, n: int, senders: int) -> float:
    from flask_keen_signup.delivery import QueuedEvent
    from flask_keen_signup.delivery.postgres_outbox import PostgresOutbox
    from flask_keen_signup.delivery.sender import Sender
    from flask_keen_signup.events import uniqueness_token
    from flask_keen_signup.keen import KeenClient
    from flask_keen_signup.postgres import PostgresDatabase

    schema = f"bench_{uuid.uuid4().hex[:8]}"
    databases = [PostgresDatabase(pg_url, schema=schema, timeout=5) for _ in range(senders)]
    boxes = [PostgresOutbox(database) for database in databases]
    collection = f"bench{uuid.uuid4().hex[:6]}"
    for i in range(n):
        user = f"auth0|d{i}"
        token = uniqueness_token(collection, user)
        body = {"userId": user, "keen": {"uniqueness_token": token}}
        boxes[0].enqueue(QueuedEvent(collection, user, token, body))
    workers = [
        Sender(
            box,
            KeenClient(PROJECT_ID, WRITE_KEY, api_url=keen_url, timeout=(3.05, 30)),
            collection_batch_size=100,
            flush_interval=0.05,
            handle_signals=False,
        )
        for box in boxes
    ]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + 120
    while boxes[0].stats().delivered < n and time.monotonic() < deadline:
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    stats = boxes[0].stats()
    for worker in workers:
        worker.shutdown(5)
    for database in databases:
        database.close()
    note = "" if stats.delivered == n else f" (only {stats.delivered} delivered)"
    print(
        f"   {senders} sender(s): {n} events in {elapsed:.2f} s = {n / elapsed:,.0f} events/s, "
        f"resends {stats.resends}, dead {stats.dead}{note}"
    )
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a few seconds)")
    parser.add_argument("--url", help="an existing PostgreSQL (default: a private one)")
    parser.add_argument(
        "--pgbouncer-url", help="with --url: a PgBouncer in transaction mode in front of it"
    )
    args = parser.parse_args(argv)
    n = 100 if args.quick else 600
    events = 1000 if args.quick else 5000
    server = bouncer = None
    url, bouncer_url = args.url, args.pgbouncer_url
    if url is None:
        from _postgres import PgBouncer
        from _postgres import PostgresServer

        server = PostgresServer(fsync=True).start()
        url = server.url
        bouncer = PgBouncer(server, "transaction", pool_size=4).start()
        bouncer_url = bouncer.url
    try:
        with keen_in_subprocess() as keen_url:
            callback_costs(keen_url, url, n, bouncer_url)
            print(f"\n2. delivery from one PostgreSQL outbox to the Keen emulator, {events} events")
            one = deliver(keen_url, url, events, 1)
            two = deliver(keen_url, url, events, 2)
            print(f"   two senders / one sender, time: {two / one:.2f}")
    finally:
        if bouncer is not None:
            bouncer.remove()
        if server is not None:
            server.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
