"""Redis frozen (SIGSTOP) under two app processes: logins go on, everything delivered once.

Once with one redis-server, once with a Redis Cluster whose node serving the app's keys
is frozen (the login path's cluster client makes one attempt per call: no retries and
slot-map refreshes for seconds while the node does not answer).

Two app servers (``tests/mp_app.py`` under werkzeug, ``KEEN_SIGNUP_STORE=redis``, one
SQLite directory each: two "hosts") share a private ``redis-server``. The test freezes it
with SIGSTOP, drives new users' and returning users' logins through both apps, checks
that each callback came back (at once, not after redis-py's 2 s socket timeout per call)
with the signups kept in each app's spool, then SIGCONT: every signup is in the Keen
emulator exactly once and the returning users were not sent again.

``redis-server`` is needed: without it this skips locally and fails when ``CI=true``.
"""

from __future__ import annotations

import collections
import os
import signal
import time
import types
import typing as t
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from _paths import sibling
from _redis import RedisClusterNodes
from _redis import RedisServer

from flask_keen_signup.testing import Auth0Emulator
from flask_keen_signup.testing import KeenEmulator

pytestmark = pytest.mark.slow


mp = sibling("test_multiprocess", __file__)

LOGIN_BOUND = 2.0


@pytest.fixture(params=["server", "cluster"])
def frozen_redis(request: pytest.FixtureRequest, tmp_path: t.Any) -> t.Iterator[t.Any]:
    """A private server, or a private 3-master Redis Cluster: this test freezes it (the
    cluster's node that serves the app's keys), which must not touch the other tests'."""
    directory = tmp_path / "redis"
    directory.mkdir()
    if request.param == "server":
        server = RedisServer(str(directory), "--appendonly", "no").start()
        frozen = types.SimpleNamespace(url=server.url, process=server.process, env={})
        stop = server.kill
    else:
        cluster = RedisClusterNodes(str(directory)).start()
        prefix = "{keen_signup}"
        node = cluster.node_for(prefix)
        env = {"KEEN_SIGNUP_REDIS_PREFIX": prefix}
        frozen = types.SimpleNamespace(url=cluster.url, process=node.process, env=env)
        stop = cluster.kill
    try:
        yield frozen
    finally:
        if frozen.process is not None and frozen.process.poll() is None:
            frozen.process.send_signal(signal.SIGCONT)
        stop()


@pytest.fixture
def keen() -> t.Iterator[KeenEmulator]:
    with KeenEmulator(request_log_limit=None) as emulator:
        yield emulator


def keen_counts(keen: KeenEmulator) -> collections.Counter[str]:
    return collections.Counter(e["userId"] for e in keen.events("signups"))


def timed_sign_up(base: str, email: str) -> tuple[int, float]:
    started = time.monotonic()
    status, _, _ = mp.sign_up(base, email)
    return status, time.monotonic() - started


def test_redis_frozen_under_two_app_processes_then_everything_delivered_once(
    tmp_path: t.Any,
    keen_signup_auth0: Auth0Emulator,
    keen: KeenEmulator,
    frozen_redis: t.Any,
) -> None:
    auth0 = keen_signup_auth0
    mp.install_app(tmp_path)
    servers = []
    for host in ("a", "b"):
        database = str(tmp_path / host / "keen_signup.sqlite3")
        env = mp.app_env(
            auth0,
            keen,
            database,
            KEEN_SIGNUP_STORE="redis",
            KEEN_SIGNUP_REDIS_URL=frozen_redis.url,
            **frozen_redis.env,
        )
        servers.append(mp.werkzeug(tmp_path, env, str(tmp_path / f"{host}.log")))
    with mp.stopped_at_exit(servers[0]) as a, mp.stopped_at_exit(servers[1]) as b:
        a.wait_ready()
        b.wait_ready()
        # Users who signed up on one host before the freeze log in again on the other.
        assert mp.sign_up(a.url, "old-a@example.com")[0] == 302
        assert mp.sign_up(b.url, "old-b@example.com")[0] == 302
        mp.wait_for(lambda: len(keen_counts(keen)) == 2, 20, "the first signups in Keen")

        assert frozen_redis.process is not None
        frozen_redis.process.send_signal(signal.SIGSTOP)
        try:
            logins = [(a.url, f"new-a{n}@example.com") for n in range(3)]
            logins += [(b.url, f"new-b{n}@example.com") for n in range(3)]
            logins += [(b.url, "old-a@example.com"), (a.url, "old-b@example.com")]
            with ThreadPoolExecutor(max_workers=4) as pool:
                results = list(pool.map(lambda job: timed_sign_up(*job), logins))
            assert [status for status, _ in results] == [302] * len(logins)
            durations = [seconds for _, seconds in results]
            assert max(durations) < LOGIN_BOUND, durations
            spooled = 0
            for host in ("a", "b"):
                spool = tmp_path / host / "keen_signup.sqlite3.spool"
                for name in os.listdir(spool):
                    spooled += (spool / name).read_bytes().count(b"\n")
            assert spooled == len(logins)
            assert len(keen_counts(keen)) == 2
        finally:
            frozen_redis.process.send_signal(signal.SIGCONT)

        ids = {u["email"]: u["user_id"] for u in auth0.users()}
        mp.wait_for(lambda: len(keen_counts(keen)) == 8, 60, "every signup in Keen", a)

        def drained() -> bool:
            healths = [requests.get(s.url + "/healthz", timeout=10).json() for s in (a, b)]
            return all(h["spooled"] == 0 and h["pending"] == 0 for h in healths)

        mp.wait_for(drained, 30, "empty spools and outbox", a)
        time.sleep(0.3)
        counts = keen_counts(keen)
        assert set(counts) == set(ids.values()) and set(counts.values()) == {1}
        for email in ("old-a@example.com", "old-b@example.com"):
            assert mp.token_sends(keen, ids[email]) == 1, f"{email} was sent again"
        logs = "".join(mp.tail(s.log, 400) for s in (a, b))
        assert logs.count("did not answer within the login's budget") == 2  # one per host
        assert logs.count("answers again after") == 2
