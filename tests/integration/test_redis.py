"""The Redis store and outbox against a real ``redis-server`` started by these tests.

The same contract tests as the SQLite and memory backends run here unchanged: the test
functions of ``test_stores.py`` and ``test_outbox.py`` that take the ``store`` / ``outbox``
fixture are re-exported below, so pytest collects them in this module, where those fixture
names resolve to the Redis backends. New contract tests written there run here too.

Then what only a shared server can promise: hosts (separate processes with their own
clients) racing for one user or for due rows, a lost container whose leases expire, the
atomic claim-and-enqueue, the unchanged :class:`Sender` delivering through Keen faults,
and the outbox surviving a ``kill -9`` of Redis itself with AOF on.

``redis-server`` is needed: without it these tests skip locally and fail when ``CI=true``.
"""

from __future__ import annotations

import inspect
import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
import typing as t
import uuid

import pytest
from _paths import sibling
from _waits import wait_until

from flask_keen_signup.delivery import QueuedEvent
from flask_keen_signup.events import uniqueness_token
from flask_keen_signup.exceptions import MissingDependencyError
from flask_keen_signup.exceptions import StoreError
from flask_keen_signup.stores import MarkerState

try:
    import redis

    from flask_keen_signup.stores.redis import RedisStore
    from flask_keen_signup.stores.redis import connect
except (ImportError, MissingDependencyError):  # checked by the redis_url fixture
    redis = None  # type: ignore[assignment]

try:
    from flask_keen_signup.delivery.redis_outbox import RedisOutbox
except (ImportError, MissingDependencyError):
    RedisOutbox = None  # type: ignore[assignment,misc]


outbox_contract = sibling("test_outbox", __file__)
store_contract = sibling("test_stores", __file__)

LEASE = 1000.0
from _redis import RedisServer  # noqa: E402
from _redis import _free_port  # noqa: E402
from _redis import _unavailable  # noqa: E402,F401


@pytest.fixture(params=["server", "cluster"])
def redis_url(request: pytest.FixtureRequest) -> str:
    """Every test that takes it runs twice: on one server and on a 3-master Redis Cluster."""
    if request.param == "cluster":
        return str(request.getfixturevalue("redis_cluster").url)
    return str(request.getfixturevalue("redis_server").url)


@pytest.fixture
def client(redis_url: str) -> t.Iterator[redis.Redis]:
    conn = connect(redis_url)
    yield conn
    conn.close()


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A fresh key prefix per test: tests share one server but never each other's keys.
    On a cluster it is a hash tag, as a cluster deployment's must be."""
    name = f"test:{uuid.uuid4().hex[:12]}"
    cluster = "redis_url" in request.fixturenames and request.getfixturevalue(
        "redis_url"
    ).startswith("redis+cluster://")
    return f"{{{name}}}" if cluster else name


def decoded_client(redis_url: str) -> t.Any:
    """A client that decodes responses (``str``, not ``bytes``), for either deployment."""
    if redis_url.startswith("redis+cluster://"):
        first = redis_url.split("://", 1)[1].split(",", 1)[0]
        return redis.cluster.RedisCluster.from_url(f"redis://{first}/0", decode_responses=True)
    return redis.Redis.from_url(redis_url, decode_responses=True)


# --------------------------------------------------------------------------- contracts


@pytest.fixture
def store(client: redis.Redis, prefix: str) -> RedisStore:
    return RedisStore(client, "signups", prefix=prefix)


@pytest.fixture
def outbox(client: redis.Redis, prefix: str) -> t.Iterator[RedisOutbox]:
    if RedisOutbox is None:
        pytest.fail("flask_keen_signup.delivery.redis_outbox cannot be imported")
    box = RedisOutbox(client, prefix=prefix)
    yield box
    box.close()


def _contract_tests(module: t.Any, fixture: str) -> dict[str, t.Callable[..., t.Any]]:
    """The module's test functions that take ``fixture``: the backend-neutral contract."""
    return {
        name: function
        for name, function in vars(module).items()
        if name.startswith("test_")
        and inspect.isfunction(function)
        and fixture in inspect.signature(function).parameters
    }


for _name, _function in _contract_tests(store_contract, "store").items():
    globals()[f"test_store_contract_{_name[len('test_') :]}"] = _function
for _name, _function in _contract_tests(outbox_contract, "outbox").items():
    globals()[f"test_outbox_contract_{_name[len('test_') :]}"] = _function


def test_the_contract_tests_were_picked_up() -> None:
    names = [name for name in globals() if name.startswith("test_")]
    assert "test_store_contract_claim_confirm_release_contract" in names
    assert "test_outbox_contract_two_threads_never_claim_the_same_row" in names
    assert len([n for n in names if n.startswith("test_outbox_contract_")]) >= 12


# --------------------------------------------------------------------------- the store


def test_store_markers_are_per_collection_and_prefix(client: redis.Redis, prefix: str) -> None:
    assert RedisStore(client, "signups", prefix=prefix).claim("auth0|a")
    assert RedisStore(client, "other", prefix=prefix).claim("auth0|a")
    assert RedisStore(client, "signups", prefix=prefix + "2").claim("auth0|a")
    assert not RedisStore(client, "signups", prefix=prefix).claim("auth0|a")


def test_store_keys_hide_the_user_id(client: redis.Redis, store: RedisStore) -> None:
    store.claim("auth0|secret-person")
    store.confirm("google-oauth2|{tag}")
    keys = sorted(k.decode() for k in client.scan_iter(match=f"{store.prefix}:*"))
    assert keys == sorted([store.key("auth0|secret-person"), store.key("google-oauth2|{tag}")])
    for key in keys:
        assert key.startswith(f"{store.prefix}:marker:signups:")
        assert "secret" not in key and "{" not in key[len(store.prefix) :]
        assert len(key.rsplit(":", 1)[1]) == 32
    assert store.counts() == {"pending": 1, "confirmed": 1}


def test_store_stale_pending_claim_can_be_reclaimed(client: redis.Redis, prefix: str) -> None:
    store = RedisStore(client, "signups", prefix=prefix, reclaim_after=60)
    assert store.claim("auth0|a")
    assert not store.claim("auth0|a"), "a fresh pending claim is not stale"
    # A claim made two minutes ago (by the server's clock) by a request that died.
    (seconds, micros) = client.time()
    client.set(store.key("auth0|a"), f"pending:{seconds + micros / 1e6 - 120:.6f}")
    assert store.claim("auth0|a"), "a claim left by a dead request is reclaimed"
    assert not store.claim("auth0|a"), "and the new claim is fresh again"
    store.confirm("auth0|a")
    assert not store.claim("auth0|a"), "a confirmed marker is never reclaimed"


def test_store_confirm_many_confirms_a_batch(store: RedisStore) -> None:
    assert store.claim("auth0|a")
    store.confirm_many(["auth0|a", "auth0|b"])
    store.confirm_many([])
    assert store.lookup("auth0|a") is MarkerState.CONFIRMED
    assert store.lookup("auth0|b") is MarkerState.CONFIRMED
    assert store.lookup("auth0|c") is None


def test_store_without_reclaim_keeps_pending(client: redis.Redis, store: RedisStore) -> None:
    assert store.claim("auth0|a")
    client.set(store.key("auth0|a"), "pending:1000.0")
    assert not store.claim("auth0|a")
    assert store.lookup("auth0|a") is MarkerState.PENDING


def test_store_unknown_values_count_as_confirmed(client: redis.Redis, store: RedisStore) -> None:
    client.set(store.key("auth0|a"), "something else")
    assert store.lookup("auth0|a") is MarkerState.CONFIRMED
    assert not store.claim("auth0|a")
    store.release("auth0|a")
    assert client.get(store.key("auth0|a")) == b"something else"


def test_store_works_with_decoded_responses(redis_url: str, prefix: str) -> None:
    decoded = decoded_client(redis_url)
    try:
        store = RedisStore(decoded, "signups", prefix=prefix)
        assert store.claim("auth0|a")
        assert store.lookup("auth0|a") is MarkerState.PENDING
        store.confirm("auth0|a")
        assert store.lookup("auth0|a") is MarkerState.CONFIRMED
    finally:
        decoded.close()


def test_store_threads_with_their_own_clients_racing_one_wins(redis_url: str, prefix: str) -> None:
    """Eight "hosts" (one client each) claim the same user at the same instant."""
    clients = [connect(redis_url) for _ in range(8)]
    barrier = threading.Barrier(len(clients))
    wins: list[bool] = []

    def race(conn: redis.Redis) -> None:
        store = RedisStore(conn, "signups", prefix=prefix)
        barrier.wait()
        wins.append(store.claim("auth0|same"))

    threads = [threading.Thread(target=race, args=(conn,)) for conn in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for conn in clients:
        conn.close()
    assert sorted(wins) == [False] * 7 + [True]


# A "host": a separate process with its own client, started by the tests below. It waits
# for the go file so that all hosts start their race at the same instant.
HOST = textwrap.dedent(
    """
    import json, os, sys, time
    from flask_keen_signup.delivery import QueuedEvent
    from flask_keen_signup.delivery.redis_outbox import RedisOutbox
    from flask_keen_signup.stores.redis import RedisStore, connect

    url, prefix, go, mode, *rest = sys.argv[1:]
    client = connect(url)
    store = RedisStore(client, "signups", prefix=prefix)
    box = RedisOutbox(client, prefix=prefix)
    while not os.path.exists(go):
        time.sleep(0.002)
    if mode == "claim":
        print(json.dumps(store.claim("auth0|same")))
    elif mode == "claim_and_enqueue":
        body = {"userId": "auth0|same", "keen": {"uniqueness_token": "f" * 64}}
        event = QueuedEvent("signups", "auth0|same", "f" * 64, body)
        print(json.dumps(box.claim_and_enqueue(store, "auth0|same", event)))
    elif mode == "drain":
        got, deadline = [], time.monotonic() + 60
        while time.monotonic() < deadline:
            rows = box.claim_due(5, now=time.time(), lease_seconds=300, owner=rest[0])
            if not rows:
                break
            got.extend(r.id for r in rows)
            box.mark_delivered([r.id for r in rows])
        print(json.dumps(got))
    elif mode == "lease_and_die":
        now = time.time()
        rows = box.claim_due(int(rest[0]), now=now, lease_seconds=float(rest[1]), owner=rest[2])
        print(json.dumps({"now": now, "ids": [r.id for r in rows]}), flush=True)
        time.sleep(600)  # a hung or lost container: killed by the test, never releases
    """
)


def _hosts(redis_url: str, prefix: str, go: t.Any, *argvs: list[str]) -> list[t.Any]:
    """Run one host per argv at once; return what each printed (parsed JSON)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", HOST, redis_url, prefix, str(go), *argv],
            stdout=subprocess.PIPE,
            text=True,
        )
        for argv in argvs
    ]
    go.touch()
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        results.append(json.loads(out))
    return results


@pytest.mark.slow
def test_store_processes_racing_for_one_user_one_wins(
    redis_url: str, prefix: str, tmp_path: t.Any
) -> None:
    outcomes = _hosts(redis_url, prefix, tmp_path / "go", *(["claim"] for _ in range(4)))
    assert sorted(outcomes) == [False, False, False, True]


@pytest.mark.parametrize("scheme", ["redis", "redis+cluster"])
def test_store_errors_are_store_errors_and_do_not_hang(scheme: str) -> None:
    port = _free_port()  # nothing listens there
    conn = connect(f"{scheme}://127.0.0.1:{port}/0")  # a cluster client: built at first use
    store = RedisStore(conn, "signups", prefix="{test}")
    started = time.monotonic()
    with pytest.raises(StoreError, match="Redis"):
        store.claim("auth0|a")
    with pytest.raises(StoreError):
        store.lookup("auth0|a")
    assert time.monotonic() - started < 30  # bounded by the client timeouts
    conn.close()


# --------------------------------------------------------------------------- many hosts


def signup(n: int) -> QueuedEvent:
    user_id = f"auth0|user{n}"
    token = uniqueness_token("signups", user_id)
    body = {"userId": user_id, "name": f"Ünïcode {n}", "keen": {"uniqueness_token": token}}
    return QueuedEvent("signups", user_id, token, body)


@pytest.mark.slow
def test_hosts_draining_one_outbox_never_claim_the_same_row(
    redis_url: str, prefix: str, client: redis.Redis, tmp_path: t.Any
) -> None:
    box = RedisOutbox(client, prefix=prefix)
    total = 600
    for n in range(total):
        box.enqueue(signup(n))
    results = _hosts(redis_url, prefix, tmp_path / "go", *(["drain", f"host{i}"] for i in range(3)))
    everything = [i for ids in results for i in ids]
    assert len(everything) == total
    assert len(set(everything)) == total
    stats = box.stats()
    assert (stats.delivered, stats.pending, stats.resends) == (total, 0, 0)


def test_a_lost_containers_leases_expire_and_another_host_takes_over(
    redis_url: str, prefix: str, client: redis.Redis, tmp_path: t.Any
) -> None:
    box = RedisOutbox(client, prefix=prefix)
    for n in range(10):
        box.enqueue(signup(n))
    go = tmp_path / "go"
    go.touch()
    lease = 30.0
    argv = ["lease_and_die", "6", str(lease), "lost-host/1/abc"]
    with subprocess.Popen(
        [sys.executable, "-c", HOST, redis_url, prefix, str(go), *argv],
        stdout=subprocess.PIPE,
        text=True,
    ) as lost:
        try:
            assert lost.stdout is not None
            leased = json.loads(lost.stdout.readline())
        finally:
            lost.kill()  # the container is gone: no release, no outcome recorded
            lost.wait(30)
    assert len(leased["ids"]) == 6
    claimed_at = leased["now"]

    # While the lease runs, the other host sees only the rows nobody holds.
    other = box.claim_due(100, now=claimed_at + 1, lease_seconds=lease, owner="host-b")
    assert not {r.id for r in other} & set(leased["ids"])
    assert len(other) == 4
    box.mark_delivered([r.id for r in other])
    assert box.claim_due(100, now=claimed_at + lease - 1, lease_seconds=lease, owner="b") == []
    assert box.stats(now=claimed_at + 1).in_flight == 6

    # Once it has run out, the rows are claimed again: nothing was lost.
    again = box.claim_due(100, now=claimed_at + lease + 0.01, lease_seconds=lease, owner="b")
    assert sorted(r.id for r in again) == sorted(leased["ids"])
    assert all(r.attempts == 2 for r in again)
    assert box.stats().resends == 6
    box.mark_delivered([r.id for r in again])
    assert box.pending_count() == 0


def test_a_known_dead_owner_is_taken_over_without_waiting(client: redis.Redis, prefix: str) -> None:
    box = RedisOutbox(client, prefix=prefix)
    for n in range(4):
        box.enqueue(signup(n), now=100.0)
    box.claim_due(2, now=100.0, lease_seconds=1000, owner="dead")
    box.claim_due(2, now=100.0, lease_seconds=1000, owner="alive")
    assert box.expire_leases(lambda owner: owner == "dead") == 2
    rows = box.claim_due(10, now=101.0, lease_seconds=10, owner="new")
    assert [r.user_id for r in rows] == ["auth0|user0", "auth0|user1"]


# --------------------------------------------------------------------------- claim + enqueue


def test_claim_and_enqueue_claims_and_queues_once(client: redis.Redis, prefix: str) -> None:
    store = RedisStore(client, "signups", prefix=prefix)
    box = RedisOutbox(client, prefix=prefix)
    assert box.claim_and_enqueue(store, "auth0|user1", signup(1), now=100.0)
    assert store.lookup("auth0|user1") is MarkerState.PENDING
    assert not box.claim_and_enqueue(store, "auth0|user1", signup(1), now=101.0)
    (row,) = box.claim_due(10, now=200.0, lease_seconds=LEASE, owner="a")
    assert (row.user_id, row.created_at, row.body) == ("auth0|user1", 100.0, signup(1).body)
    box.mark_delivered([row.id])
    store.confirm("auth0|user1")
    assert not box.claim_and_enqueue(store, "auth0|user1", signup(1))
    assert box.pending_count() == 0


def test_claim_and_enqueue_writes_nothing_when_it_fails(client: redis.Redis, prefix: str) -> None:
    store = RedisStore(client, "signups", prefix=prefix)
    box = RedisOutbox(client, prefix=prefix)
    # A key the enqueue would fail on: the claim must not happen without the enqueue.
    client.set(f"{prefix}:outbox:open", "not a sorted set")
    with pytest.raises(StoreError, match="WRONGTYPE"):
        box.claim_and_enqueue(store, "auth0|user1", signup(1))
    assert store.lookup("auth0|user1") is None, "no marker without the queued event"
    assert client.get(f"{prefix}:outbox:seq") is None
    client.delete(f"{prefix}:outbox:open")
    assert box.claim_and_enqueue(store, "auth0|user1", signup(1))
    assert box.pending_count() == 1


def test_claim_and_enqueue_with_a_dead_redis_raises_store_error(prefix: str) -> None:
    conn = connect(f"redis://127.0.0.1:{_free_port()}/0")
    try:
        store = RedisStore(conn, "signups", prefix=prefix)
        with pytest.raises(StoreError):
            RedisOutbox(conn, prefix=prefix).claim_and_enqueue(store, "auth0|a", signup(1))
    finally:
        conn.close()


def test_claim_and_enqueue_reclaims_a_stale_pending_claim(client: redis.Redis, prefix: str) -> None:
    store = RedisStore(client, "signups", prefix=prefix, reclaim_after=60)
    box = RedisOutbox(client, prefix=prefix)
    assert box.claim_and_enqueue(store, "auth0|user1", signup(1))
    assert not box.claim_and_enqueue(store, "auth0|user1", signup(1))
    seconds, micros = client.time()
    client.set(store.key("auth0|user1"), f"pending:{seconds + micros / 1e6 - 120:.6f}")
    assert box.claim_and_enqueue(store, "auth0|user1", signup(1))
    assert box.pending_count() == 2  # same uniqueness token: Keen keeps one


def test_claim_and_enqueue_racing_threads_queue_one_event(redis_url: str, prefix: str) -> None:
    clients = [connect(redis_url) for _ in range(8)]
    barrier = threading.Barrier(len(clients))
    wins: list[bool] = []

    def race(conn: redis.Redis) -> None:
        store = RedisStore(conn, "signups", prefix=prefix)
        box = RedisOutbox(conn, prefix=prefix)
        barrier.wait()
        wins.append(box.claim_and_enqueue(store, "auth0|same", signup(7)))

    threads = [threading.Thread(target=race, args=(conn,)) for conn in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(wins) == [False] * 7 + [True]
    assert RedisOutbox(clients[0], prefix=prefix).pending_count() == 1
    for conn in clients:
        conn.close()


@pytest.mark.slow
def test_claim_and_enqueue_racing_hosts_queue_one_event(
    redis_url: str, prefix: str, client: redis.Redis, tmp_path: t.Any
) -> None:
    outcomes = _hosts(
        redis_url, prefix, tmp_path / "go", *(["claim_and_enqueue"] for _ in range(4))
    )
    assert sorted(outcomes) == [False, False, False, True]
    assert RedisOutbox(client, prefix=prefix).pending_count() == 1


# --------------------------------------------------------------------------- outbox details


def test_keep_delivered_false_deletes_rows_but_counts(client: redis.Redis, prefix: str) -> None:
    box = RedisOutbox(client, prefix=prefix, keep_delivered=False)
    row_id = box.enqueue(signup(1))
    box.enqueue(signup(2))
    rows = box.claim_due(10, now=time.time() + 1, lease_seconds=LEASE, owner="a")
    box.mark_delivered([rows[0].id])
    box.mark_skipped({rows[1].id: "already marked"})
    stats = box.stats()
    assert (stats.delivered, stats.skipped, stats.pending) == (1, 1, 0)
    assert client.exists(box.row_key(row_id)) == 0
    assert box.prune_delivered(0.0) == 0


def test_outbox_survives_a_new_client_and_decoded_responses(
    redis_url: str, prefix: str, client: redis.Redis
) -> None:
    RedisOutbox(client, prefix=prefix).enqueue(signup(1), now=100.0)
    decoded = decoded_client(redis_url)
    try:
        box = RedisOutbox(decoded, prefix=prefix)
        (row,) = box.claim_due(10, now=100.0, lease_seconds=LEASE, owner="a")
        assert row.body == signup(1).body
        box.mark_dead(row.id, reason="bad", error_code="InvalidEventError", now=101.0)
        (dead,) = box.dead_letters()
        assert (dead.error_code, dead.reason, dead.body) == ("InvalidEventError", "bad", row.body)
    finally:
        decoded.close()


def test_prune_and_retry_dead_work_in_slices(client: redis.Redis, prefix: str) -> None:
    from flask_keen_signup.delivery import redis_outbox

    box = RedisOutbox(client, prefix=prefix)
    total = redis_outbox.CHUNK * 2 + 5
    for n in range(total):
        box.enqueue(signup(n), now=100.0)
    rows = box.claim_due(total, now=100.0, lease_seconds=LEASE, owner="a")
    box.mark_dead_many([(r.id, "gave up", None) for r in rows], now=101.0)
    assert box.stats(now=102.0).dead == total
    assert box.retry_dead(now=200.0) == total
    rows = box.claim_due(total, now=200.0, lease_seconds=LEASE, owner="a")
    assert len(rows) == total and all(r.attempts == 1 for r in rows)
    box.mark_delivered([r.id for r in rows], now=300.0)
    assert box.prune_delivered(10.0, now=400.0) == total
    assert client.keys(f"{prefix}:outbox:row:*") == []


# --------------------------------------------------------------------------- the Sender

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


def test_two_hosts_senders_deliver_every_event_exactly_once_through_faults(
    redis_url: str, prefix: str
) -> None:
    """Two hosts (own client, outbox object and Sender each) drain one Redis outbox while
    Keen is down, then fails twice with 503: every signup lands in Keen exactly once."""
    from flask_keen_signup.delivery.sender import Sender
    from flask_keen_signup.keen import KeenClient
    from flask_keen_signup.testing import KeenEmulator

    clients = [connect(redis_url) for _ in range(2)]
    senders: list[Sender] = []
    with KeenEmulator() as emu:
        try:
            boxes = [RedisOutbox(conn, prefix=prefix) for conn in clients]
            store = RedisStore(clients[0], "signups", prefix=prefix)
            emu.set_down(True)
            expected = []
            for n in range(40):  # logins on both hosts, each signup claimed exactly once
                box = boxes[n % 2]
                assert box.claim_and_enqueue(store, f"auth0|user{n}", signup(n))
                assert not box.claim_and_enqueue(store, f"auth0|user{n}", signup(n))
                expected.append(f"auth0|user{n}")
            for box in boxes:
                keen = KeenClient(
                    emu.project_id, emu.write_key, api_url=emu.url, timeout=(2.0, 5.0)
                )
                senders.append(Sender(box, keen, collection_batch_size=7, **FAST))
            for sender in senders:
                sender.start()
            assert wait_until(lambda: len(emu.request_log) >= 3)
            assert emu.events() == []
            assert boxes[0].pending_count() == 40, "nothing is lost while Keen is down"
            emu.set_down(False)
            emu.fail_next(2, 503)
            for sender in senders:
                sender.wake()
            assert wait_until(
                lambda: boxes[0].pending_count() == 0 and len(emu.events("signups")) >= 40
            )
            got = [e["userId"] for e in emu.events("signups")]
            assert sorted(got) == sorted(expected)
            tokens = [e["keen"]["uniqueness_token"] for e in emu.events("signups")]
            assert len(set(tokens)) == len(tokens) == 40
            assert [r.status for r in emu.request_log].count(503) == 2
            stats = boxes[1].stats()
            assert (stats.delivered, stats.dead, stats.pending) == (40, 0, 0)
        finally:
            emu.clear_faults()
            for sender in senders:
                sender.stop(5)
            for conn in clients:
                conn.close()


# --------------------------------------------------------------------------- durability


@pytest.mark.slow
def test_with_aof_always_a_redis_kill_9_loses_no_queued_event(tmp_path: t.Any) -> None:
    """``appendfsync always``: every acknowledged write is on disk before the reply."""
    directory = str(tmp_path)
    options = ("--appendonly", "yes", "--appendfsync", "always")
    server = RedisServer(directory, *options).start()
    prefix = "durable"
    try:
        conn = connect(server.url)
        store = RedisStore(conn, "signups", prefix=prefix)
        box = RedisOutbox(conn, prefix=prefix)
        for n in range(20):
            assert box.claim_and_enqueue(store, f"auth0|user{n}", signup(n), now=100.0)
        leased = box.claim_due(5, now=100.0, lease_seconds=50, owner="host-a")
        conn.close()
        server.kill(signal.SIGKILL)
        port = server.port
        server = RedisServer(directory, *options)
        server.port = port  # same data directory, same address: a restarted container
        server.start()
        conn = connect(server.url)
        store = RedisStore(conn, "signups", prefix=prefix)
        box = RedisOutbox(conn, prefix=prefix)
        assert box.pending_count() == 20
        assert store.lookup("auth0|user3") is MarkerState.PENDING
        assert not box.claim_and_enqueue(store, "auth0|user3", signup(3))
        assert len(box.claim_due(100, now=101.0, lease_seconds=LEASE, owner="b")) == 15
        again = box.claim_due(100, now=151.0, lease_seconds=50, owner="b")
        assert sorted(r.id for r in again) == sorted(r.id for r in leased)
        conn.close()
    finally:
        server.kill()


# --------------------------------------------------------------------------- Redis Cluster


def test_a_cluster_client_needs_a_hash_tag_in_the_prefix() -> None:
    conn = connect("redis+cluster://127.0.0.1:9/0")  # never connects: refused before
    for prefix in ("keen_signup", "{}keen_signup", "{keen_signup", "keen}{"):
        with pytest.raises(ValueError, match="hash tag"):
            RedisStore(conn, "signups", prefix=prefix)
        with pytest.raises(ValueError, match="hash tag"):
            RedisOutbox(conn, prefix=prefix)
    RedisStore(conn, "signups", prefix="app:{keen_signup}")
    RedisOutbox(conn, prefix="{keen_signup}:app")
    plain = connect("redis://127.0.0.1:9/0")
    RedisStore(plain, "signups", prefix="keen_signup")  # one server: any prefix


def test_on_a_cluster_all_keys_share_the_prefix_slot(redis_cluster: t.Any, prefix: str) -> None:
    """Every key written by the store and by every outbox script is in the tag's slot, so
    a script never touches a key on another node (Redis would refuse it: CROSSSLOT)."""
    conn = connect(redis_cluster.url)
    try:
        tagged = "{" + prefix + "}"
        store = RedisStore(conn, "signups", prefix=tagged)
        box = RedisOutbox(conn, prefix=tagged)
        assert box.claim_and_enqueue(store, "auth0|user1", signup(1))
        assert box.claim_and_enqueue_many(store, [signup(2), signup(3)]) == [True, True]
        rows = box.claim_due(10, now=time.time(), lease_seconds=LEASE, owner="a")
        box.mark_delivered([rows[0].id])
        box.mark_dead_many([(rows[1].id, "bad", "400")])
        box.mark_retry_many([(rows[2].id, 0.0, "later")])
        box.retry_dead()
        store.confirm_many(["auth0|user1", "auth0|user2"])
        keys = [k.decode() for k in conn.scan_iter(match=f"{tagged}:*")]
        assert len(keys) > 8 and all(k.startswith(tagged) for k in keys)
        slots = {conn.keyslot(k) for k in keys}
        assert slots == {conn.keyslot(tagged)}
        nodes = {conn.get_node_from_key(k).name for k in keys}
        assert len(nodes) == 1
        assert store.counts() == {"pending": 1, "confirmed": 2}
        assert box.stats().delivered == 1
        again = box.claim_due(10, now=time.time(), lease_seconds=1, owner="b")
        assert [r.user_id for r in again] == ["auth0|user2", "auth0|user3"]
    finally:
        conn.close()


def test_a_cluster_url_lists_several_nodes_and_any_one_answering_is_enough(
    redis_cluster: t.Any, prefix: str
) -> None:
    nodes = [f"127.0.0.1:{n.port}" for n in redis_cluster.nodes]
    dead = f"127.0.0.1:{_free_port()}"
    conn = connect(f"redis+cluster://{dead},{nodes[2]}/0?socket_timeout=3")
    try:
        store = RedisStore(conn, "signups", prefix="{" + prefix + "}")
        assert store.claim("auth0|a") and not store.claim("auth0|a")
    finally:
        conn.close()


def test_a_cluster_login_budget_wins_over_the_urls_timeouts(redis_cluster: t.Any) -> None:
    url = redis_cluster.url.replace("/0", "/0?socket_timeout=9&socket_connect_timeout=9")
    sender = connect(url)
    login = connect(url, budget=0.25)
    try:
        for conn, timeout in ((sender, 9.0), (login, 0.25)):
            node = conn.get_default_node().redis_connection
            kwargs = node.connection_pool.connection_kwargs
            assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == timeout
    finally:
        sender.close()
        login.close()
