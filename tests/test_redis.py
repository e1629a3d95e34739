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

import importlib
import importlib.util
import inspect
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import types
import typing as t
import uuid

import pytest

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


def _sibling(name: str) -> types.ModuleType:
    """Another test module of this directory (also under ``--import-mode=importlib``)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
        spec = importlib.util.spec_from_file_location(f"_keen_signup_{name}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


outbox_contract = _sibling("test_outbox")
store_contract = _sibling("test_stores")

IN_CI = os.environ.get("CI", "").lower() == "true"
STARTUP_TIMEOUT = 10.0


def _unavailable(reason: str) -> t.NoReturn:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: the suite must run the Redis tests)")
    pytest.skip(reason)


def _redis_server_binary() -> str:
    """``$REDIS_SERVER`` if set (a non-standard install), else ``redis-server`` on PATH."""
    binary: str | None = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
    if binary is None and os.path.exists("/usr/bin/redis-server"):
        binary = "/usr/bin/redis-server"
    if binary is None or not os.access(binary, os.X_OK):
        _unavailable(
            f"redis-server is not installed ({binary or 'not on PATH'}); "
            "apt-get install redis-server, or set REDIS_SERVER to its path"
        )
    if redis is None:
        _unavailable("the redis package is not installed (pip install 'redis>=5')")
    return binary


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A private ``redis-server`` on 127.0.0.1, killed at the end."""

    def __init__(self, directory: str, *extra: str) -> None:
        self.directory = directory
        self.extra = extra
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = _redis_server_binary()
        for _ in range(5):  # a free port may be taken between probing and binding
            self.port = self.port or _free_port()
            self.process = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    self.directory,
                    "--save",
                    "",
                    *self.extra,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if self._wait_for_ping():
                return self
            self.kill()
            self.port = 0
        raise RuntimeError("redis-server did not answer PING")

    def _wait_for_ping(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    return False
                try:
                    if client.ping():
                        return True
                except redis.RedisError:
                    time.sleep(0.02)
            return False
        finally:
            client.close()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(10)
        self.process = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[RedisServer]:
    """One server for the session, no persistence: each test uses its own key prefix."""
    directory = str(tmp_path_factory.mktemp("redis"))
    server = RedisServer(directory, "--appendonly", "no").start()
    yield server
    server.kill(signal.SIGTERM)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def client(redis_url: str) -> t.Iterator[redis.Redis]:
    conn = connect(redis_url)
    yield conn
    conn.close()


@pytest.fixture
def prefix() -> str:
    """A fresh key prefix per test: tests share one server but never each other's keys."""
    return f"test:{uuid.uuid4().hex[:12]}"


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
        assert "secret" not in key and "{" not in key
        assert key.startswith(f"{store.prefix}:marker:signups:")
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
    decoded = redis.Redis.from_url(redis_url, decode_responses=True)
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


def _claim_in_process(url: str, prefix: str, start: t.Any, results: t.Any) -> None:
    conn = connect(url)
    store = RedisStore(conn, "signups", prefix=prefix)
    start.wait()
    results.put(store.claim("auth0|same"))
    conn.close()


@pytest.mark.slow
def test_store_processes_racing_for_one_user_one_wins(redis_url: str, prefix: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    results = ctx.Queue()
    processes = [
        ctx.Process(target=_claim_in_process, args=(redis_url, prefix, start, results))
        for _ in range(4)
    ]
    for process in processes:
        process.start()
    start.set()
    outcomes = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(30)
    assert sorted(outcomes) == [False, False, False, True]


def test_store_errors_are_store_errors_and_do_not_hang(prefix: str) -> None:
    port = _free_port()  # nothing listens there
    conn = connect(f"redis://127.0.0.1:{port}/0")
    store = RedisStore(conn, "signups", prefix=prefix)
    started = time.monotonic()
    with pytest.raises(StoreError, match="Redis"):
        store.claim("auth0|a")
    with pytest.raises(StoreError):
        store.lookup("auth0|a")
    assert time.monotonic() - started < 30  # bounded by the client timeouts
    conn.close()


def test_missing_redis_package_raises_missing_dependency_error() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["redis"] = None  # as if the package were not installed
        from flask_keen_signup.exceptions import MissingDependencyError
        try:
            from flask_keen_signup.stores.redis import connect
        except MissingDependencyError as exc:
            print("MISSING:", exc)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "MISSING:" in out
    assert "pip install flask-keen-signup[redis]" in out
