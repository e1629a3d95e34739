"""Many hosts on one PostgreSQL: real processes, real senders, a real server.

* hosts draining one outbox never lease the same row (``FOR UPDATE SKIP LOCKED``);
* a host killed with ``kill -9`` while its events are leased: once the leases run out
  another host delivers them, each once in Keen;
* two hosts' senders deliver everything exactly once through Keen faults;
* NOTIFY wakes another process's sender at once (its polling slowed to a minute);
* the same new user on two app processes at once: one event;
* ``gunicorn --preload`` with 2 workers: no pooled connection crosses the fork;
* PostgreSQL stopped and started during logins: no callback breaks, every failure is loud,
  and what was recorded is delivered once.

The same new user on two processes, the ``kill -9`` and the restart also run through
PgBouncer in ``transaction`` and in ``session`` mode (issue 17), with no store or outbox
error logged when nothing is wrong. Uses the session's private server and PgBouncers
(``tests/conftest.py``), or its own for the restart.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import typing as t
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from _postgres import PgBouncer
from _postgres import PostgresServer
from _postgres import fresh_schema
from _postgres import store_errors
from test_multiprocess import Browser
from test_multiprocess import app_env
from test_multiprocess import gunicorn
from test_multiprocess import install_app
from test_multiprocess import require_gunicorn
from test_multiprocess import sign_up
from test_multiprocess import stopped_at_exit
from test_multiprocess import token_sends
from test_multiprocess import wait_for
from test_multiprocess import werkzeug

from flask_keen_signup import signals
from flask_keen_signup import signup_state
from flask_keen_signup.delivery import QueuedEvent
from flask_keen_signup.events import uniqueness_token
from flask_keen_signup.testing import Auth0Emulator
from flask_keen_signup.testing import KeenEmulator

pytestmark = pytest.mark.slow

FAST = {
    "flush_interval": 0.05,
    "backoff_base": 0.01,
    "backoff_cap": 0.05,
    "circuit_cooldown": 0.05,
    "circuit_cap": 0.2,
    "lease_seconds": 30.0,
    "shutdown_timeout": 2.0,
    "handle_signals": False,
}


def signup(n: int) -> QueuedEvent:
    user_id = f"auth0|user{n}"
    token = uniqueness_token("signups", user_id)
    body = {"userId": user_id, "name": f"Ünïcode {n}", "keen": {"uniqueness_token": token}}
    return QueuedEvent("signups", user_id, token, body)


def parts(
    url: str, schema: str, listen_url: str | None = None
) -> tuple[t.Any, t.Any, t.Any]:
    from flask_keen_signup.delivery.postgres_outbox import PostgresOutbox
    from flask_keen_signup.postgres import PostgresDatabase
    from flask_keen_signup.stores.postgres import PostgresStore

    database = PostgresDatabase(url, schema=schema, timeout=5, listen_url=listen_url)
    return database, PostgresStore(database, "signups"), PostgresOutbox(database)


def keen_client(keen: KeenEmulator) -> t.Any:
    from flask_keen_signup.keen import KeenClient

    return KeenClient(keen.project_id, keen.write_key, api_url=keen.url, timeout=(2.0, 60.0))


#: How the app reaches PostgreSQL: directly, or through PgBouncer in either mode.
VIA = ["direct", "pgbouncer-transaction", "pgbouncer-session"]


@pytest.fixture(params=VIA)
def via_url(request: pytest.FixtureRequest, postgres_url: str) -> str:
    if request.param == "direct":
        return postgres_url
    return str(request.getfixturevalue(request.param.replace("-", "_")).url)


@pytest.fixture
def auth0() -> t.Iterator[Auth0Emulator]:
    with Auth0Emulator() as emulator:
        yield emulator


@pytest.fixture
def keen() -> t.Iterator[KeenEmulator]:
    with KeenEmulator(request_log_limit=None) as emulator:
        yield emulator


def keen_counts(keen: KeenEmulator) -> collections.Counter[str]:
    return collections.Counter(e["userId"] for e in keen.events("signups"))


HOST = textwrap.dedent(
    """
    import json, os, sys, time
    url, schema, go, mode = sys.argv[1:5]
    rest = sys.argv[5:]
    from flask_keen_signup.delivery import postgres_outbox, sender as sender_module
    from flask_keen_signup.postgres import PostgresDatabase
    database = PostgresDatabase(url, schema=schema, timeout=5)
    box = postgres_outbox.PostgresOutbox(database)
    box.pending_count()  # pools open, schema checked: every host starts warm
    while not os.path.exists(go):
        time.sleep(0.002)
    if mode == "drain":
        got, deadline = [], time.monotonic() + 60
        while time.monotonic() < deadline:
            rows = box.claim_due(5, now=time.time(), lease_seconds=300, owner=rest[0])
            if not rows:
                break
            got.extend(r.id for r in rows)
            box.mark_delivered([r.id for r in rows])
        print(json.dumps(got))
    elif mode == "send":
        # A sender on "another host": its leases can only run out, never be seen dead.
        sender_module._HOSTNAME = "host-a"
        from flask_keen_signup.keen import KeenClient
        keen_url, project, key, lease = rest
        client = KeenClient(project, key, api_url=keen_url, timeout=(2.0, 120.0))
        sender = sender_module.Sender(
            box, client, collection_batch_size=5, lease_seconds=float(lease),
            flush_interval=0.05, handle_signals=False,
        )
        sender.start()
        print("started", flush=True)
        time.sleep(600)  # killed by the test
    """
)


def host(url: str, schema: str, go: t.Any, *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", HOST, url, schema, str(go), *argv],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )


# --------------------------------------------------------------------------- the outbox


def test_hosts_draining_one_outbox_never_claim_the_same_row(
    postgres_url: str, tmp_path: t.Any
) -> None:
    schema = fresh_schema()
    database, _, box = parts(postgres_url, schema)
    try:
        total = 600
        for n in range(total):
            box.enqueue(signup(n))
        go = tmp_path / "go"
        procs = [host(postgres_url, schema, go, "drain", f"host{i}") for i in range(3)]
        go.touch()
        results = []
        for proc in procs:
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0
            results.append(json.loads(out))
        everything = [i for ids in results for i in ids]
        assert len(everything) == total
        assert len(set(everything)) == total
        stats = box.stats()
        assert (stats.delivered, stats.pending, stats.resends) == (total, 0, 0)
    finally:
        database.close()


def test_a_host_killed_with_leased_events_is_taken_over_once_its_leases_expire(
    via_url: str, keen: KeenEmulator, tmp_path: t.Any, caplog: pytest.LogCaptureFixture
) -> None:
    from flask_keen_signup.delivery.sender import Sender

    caplog.set_level(logging.WARNING)
    postgres_url = via_url
    schema = fresh_schema()
    database, _, box = parts(postgres_url, schema)
    go = tmp_path / "go"
    go.touch()
    local: Sender | None = None
    keen.add_latency(120.0)  # host A's requests hang: its rows stay leased
    proc = host(postgres_url, schema, go, "send", keen.url, keen.project_id, keen.write_key, "4")
    try:
        for n in range(10):
            box.enqueue(signup(n))
        assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
        wait_for(lambda: box.stats().in_flight == 10, 30, "host A to lease all 10 events")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        keen.clear_faults()
        # Host B: another sender on its own pools. Nothing is due until the leases expire.
        _, _, box_b = parts(postgres_url, schema)
        local = Sender(box_b, keen_client(keen), collection_batch_size=5, **FAST)
        local.start()
        wait_for(lambda: box.stats().delivered == 10, 60, "host B to deliver the 10 events")
        counts = keen_counts(keen)
        assert counts == {f"auth0|user{n}": 1 for n in range(10)}
        stats = box.stats()
        assert stats.resends == 10, "each taken-over row counts as a probable resend"
        assert (stats.pending, stats.dead) == (0, 0)
        assert store_errors(caplog.records, port_of(postgres_url)) == []
    finally:
        keen.clear_faults()
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
        if local is not None:
            local.stop(5)
        database.close()


def test_two_hosts_senders_deliver_every_event_exactly_once_through_faults(
    postgres_url: str, keen: KeenEmulator
) -> None:
    from flask_keen_signup.delivery.sender import Sender

    schema = fresh_schema()
    hosts = [parts(postgres_url, schema) for _ in range(2)]
    senders: list[Sender] = []
    try:
        keen.set_down(True)
        for n in range(40):  # logins on both hosts, each signup claimed exactly once
            _, store, box = hosts[n % 2]
            assert box.claim_and_enqueue(store, f"auth0|user{n}", signup(n))
            assert not hosts[(n + 1) % 2][2].claim_and_enqueue(
                hosts[(n + 1) % 2][1], f"auth0|user{n}", signup(n)
            )
        for _, _, box in hosts:
            senders.append(Sender(box, keen_client(keen), collection_batch_size=7, **FAST))
        for sender in senders:
            sender.start()
        wait_for(lambda: len(keen.request_log) >= 3, 30, "attempts while Keen is down")
        assert keen.events() == []
        assert hosts[0][2].pending_count() == 40, "nothing is lost while Keen is down"
        keen.set_down(False)
        keen.fail_next(2, 503)
        wait_for(lambda: hosts[0][2].stats().delivered == 40, 60, "40 deliveries")
        counts = keen_counts(keen)
        assert counts == {f"auth0|user{n}": 1 for n in range(40)}
        assert {token_sends(keen, f"auth0|user{n}") >= 1 for n in range(40)} == {True}
        stats = hosts[1][2].stats()
        assert (stats.delivered, stats.dead, stats.pending) == (40, 0, 0)
    finally:
        keen.clear_faults()
        for sender in senders:
            sender.stop(5)
        for database, _, _ in hosts:
            database.close()


def test_notify_wakes_another_processes_sender_at_once(
    postgres_url: str, keen: KeenEmulator
) -> None:
    """The sender polls once a minute here: only the NOTIFY of the enqueue can wake it."""
    from flask_keen_signup.delivery.sender import Sender

    schema = fresh_schema()
    database, _, box = parts(postgres_url, schema, listen_url=postgres_url)
    other, _, other_box = parts(postgres_url, schema)
    slow = {**FAST, "flush_interval": 60.0}
    sender = Sender(box, keen_client(keen), **slow)
    box.wake_on_notify(sender.wake)
    try:
        sender.start()
        assert box._listener is not None
        wait_for(lambda: box._listener.connected.is_set(), 30, "the LISTEN connection")
        time.sleep(0.3)
        other_box.enqueue(signup(1))  # another host's login
        wait_for(lambda: keen_counts(keen) == {"auth0|user1": 1}, 15, "a woken delivery")
    finally:
        sender.stop(5)
        box.close()
        database.close()
        other.close()


# --------------------------------------------------------------------------- app processes


def pg_env(
    auth0: Auth0Emulator, keen: KeenEmulator, url: str, schema: str, tmp_path: t.Any
) -> dict[str, str]:
    return app_env(
        auth0,
        keen,
        str(tmp_path / "unused.sqlite3"),
        KEEN_SIGNUP_STORE="postgres",
        KEEN_SIGNUP_DATABASE_URL=url,
        KEEN_SIGNUP_DATABASE_SCHEMA=schema,
        KEEN_SIGNUP_STORE_TIMEOUT="3",
    )


def test_the_same_new_user_on_two_app_processes_at_once_is_one_event(
    via_url: str, auth0: Auth0Emulator, keen: KeenEmulator, tmp_path: t.Any
) -> None:
    postgres_url = via_url
    install_app(tmp_path)
    schema = fresh_schema()
    env = pg_env(auth0, keen, postgres_url, schema, tmp_path)
    servers = [werkzeug(tmp_path, env, str(tmp_path / f"app{i}.log")) for i in range(2)]
    database, store, box = parts(postgres_url, schema)
    try:
        for server in servers:
            server.wait_ready()
        browsers = [Browser(servers[i % 2].url) for i in range(6)]
        try:
            for browser in browsers:
                browser.authorize("same@example.com", name="Same")
            barrier = threading.Barrier(len(browsers))

            def call_back(browser: Browser) -> requests.Response:
                barrier.wait(timeout=30)
                return browser.call_back()

            with ThreadPoolExecutor(max_workers=len(browsers)) as pool:
                responses = list(pool.map(call_back, browsers))
        finally:
            for browser in browsers:
                browser.close()
        assert [r.status_code for r in responses] == [302] * len(browsers)
        assert len({r.headers["X-Worker-Pid"] for r in responses}) == 2
        user_id = auth0.users()[0]["user_id"]
        wait_for(lambda: box.stats().delivered == 1, 30, "the one event delivered")
        time.sleep(0.5)
        assert keen_counts(keen) == {user_id: 1}
        assert token_sends(keen, user_id) == 1, "the event went over the wire once"
        assert box.stats().delivered == 1
    finally:
        for server in servers:
            server.kill()
        database.close()
    for i in range(2):  # the apps log WARNING and above to their stderr
        with open(tmp_path / f"app{i}.log", encoding="utf-8", errors="replace") as f:
            log = f.read()
        for sign in ("PostgreSQL", "Traceback", "psycopg", "spool"):
            assert sign not in log, log[-3000:]


def test_gunicorn_preload_two_workers_share_postgres_without_sharing_connections(
    postgres_url: str, auth0: Auth0Emulator, keen: KeenEmulator, tmp_path: t.Any
) -> None:
    require_gunicorn()
    install_app(tmp_path)
    schema = fresh_schema()
    env = pg_env(auth0, keen, postgres_url, schema, tmp_path)
    database, _, box = parts(postgres_url, schema)
    emails = [f"user{n}@example.com" for n in range(16)]
    try:
        with stopped_at_exit(gunicorn(tmp_path, env, workers=2)) as server:
            master = server.proc.pid
            server.wait_ready()
            with ThreadPoolExecutor(max_workers=8) as pool:
                results = list(pool.map(lambda email: sign_up(server.url, email), emails))
            assert [(status, location) for status, location, _ in results] == [(302, "/")] * 16
            pids = {pid for _, _, pid in results}
            assert master not in pids
            assert len(pids) == 2, f"both workers should have served logins: {pids}"
            wait_for(lambda: box.stats().delivered == 16, 30, "16 deliveries")
            # Each process talks to PostgreSQL over its own connections.
            with database.pool("worker").connection() as conn:
                rows = conn.execute(
                    "SELECT DISTINCT application_name, client_port FROM pg_stat_activity "
                    "WHERE application_name LIKE 'flask-keen-signup%%'"
                ).fetchall()
            assert rows, "the app's connections are visible"
            assert server.terminate(30) == 0, server.why()
        with open(tmp_path / "gunicorn.log", encoding="utf-8", errors="replace") as f:
            log = f.read()
        assert "not recorded" not in log, log[-3000:]
        assert "Traceback" not in log, log[-3000:]
        ids = {u["email"]: u["user_id"] for u in auth0.users()}
        assert keen_counts(keen) == {ids[email]: 1 for email in emails}
    finally:
        database.close()


# --------------------------------------------------------------------------- outage


def port_of(url: str) -> int:
    from psycopg.conninfo import conninfo_to_dict

    return int(conninfo_to_dict(url)["port"])


def delivered(state: t.Any) -> int:
    """The outbox's delivered count, or -1 while the store still fails: PgBouncer answers
    "server login has been failing" for ``server_login_retry`` after PostgreSQL is back."""
    from flask_keen_signup.exceptions import StoreError

    try:
        return int(state.outbox.stats().delivered)
    except StoreError:
        return -1


@pytest.mark.parametrize("via", VIA)
def test_postgres_stopped_and_started_during_logins(
    via: str,
    auth0: Auth0Emulator,
    keen: KeenEmulator,
    tmp_path: t.Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No callback breaks while PostgreSQL is down: each login goes on within the budget
    and its candidate signup waits in the local spool; once PostgreSQL is back the sender
    decides the spool (one statement claims and queues) and every signup, before, during
    and after the outage, reaches Keen exactly once. A returning user this process knows
    costs no query at all, so not even a spooled candidate.

    Through PgBouncer, which stays up: it keeps a client whose server is gone waiting
    (``query_wait_timeout``, 120 s); the login's deadline closes that connection instead."""
    from _flow import login
    from _flow import quickstart_app

    server = PostgresServer().start()
    bouncer = None
    failed: list[str] = []
    app = None
    try:
        url = server.url
        if via != "direct":
            bouncer = PgBouncer(server, via.split("-")[1]).start()
            url = bouncer.url
        app, _ = quickstart_app(
            auth0,
            keen,
            str(tmp_path / "app.sqlite3"),
            KEEN_SIGNUP_STORE="postgres",
            KEEN_SIGNUP_DATABASE_URL=url,
            KEEN_SIGNUP_DATABASE_SCHEMA=fresh_schema(),
            KEEN_SIGNUP_STORE_TIMEOUT=1.0,
            KEEN_SIGNUP_PROPAGATE_ERRORS=False,
        )
        state = signup_state(app)

        def on_failed(sender: t.Any, user_id: str, **extra: t.Any) -> None:
            failed.append(user_id)

        signals.signup_failed.connect(on_failed, app)
        caplog.set_level(logging.WARNING)
        statuses: list[int] = []

        def logins(prefix: str, count: int) -> None:
            for n in range(count):
                response = login(app.test_client(), auth0, f"{prefix}{n}@example.com")
                statuses.append(response.status_code)

        logins("before", 3)
        wait_for(lambda: state.outbox.stats().delivered == 3, 30, "3 deliveries")
        healthy = store_errors(caplog.records, port_of(url))
        assert healthy == [], "a healthy run logs no store or outbox error"
        server.stop("fast")
        started = time.monotonic()
        logins("during", 4)
        during = time.monotonic() - started
        logins("before", 1)  # known to this process: no query, nothing spooled
        assert state.spool.stats()[0] == 4, "the 4 new users wait in the spool"
        server.start()
        restarted = time.monotonic()
        logins("after", 3)
        assert statuses == [302] * 11, "no callback breaks"
        wait_for(lambda: delivered(state) == 10, 60, "10 deliveries")
        recovered = time.monotonic() - restarted
        ids = {u["email"]: u["user_id"] for u in auth0.users()}
        time.sleep(0.3)
        groups = (("before", 3), ("during", 4), ("after", 3))
        everyone = {ids[f"{p}{n}@example.com"] for p, c in groups for n in range(c)}
        assert keen_counts(keen) == dict.fromkeys(everyone, 1)
        assert state.spool.stats()[0] == 0
        assert failed == []
        assert during < 20, f"4 logins took {during:.1f} s while PostgreSQL was down"
        print(f"\n4 logins while PostgreSQL was down took {during:.2f}s in all; ", end="")
        print(f"all 10 signups delivered {recovered:.2f}s after the restart")
    finally:
        if app is not None:
            signup_state(app).sender.stop(5)
            signup_state(app).outbox.close()
        if bouncer is not None:
            bouncer.remove()
        server.remove()
