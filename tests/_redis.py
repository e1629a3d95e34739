"""A private ``redis-server`` for the tests: started on 127.0.0.1 on a free port, killed at
the end. ``redis_server`` is a session fixture (registered in conftest.py), and so is
``redis_cluster``: three cluster-enabled servers joined into a Redis Cluster. Without
``redis-server`` (``redis-cli`` for the cluster) or the ``redis`` package the Redis tests
skip locally and fail when ``CI=true``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import typing as t

import pytest

try:
    import redis
except ImportError:  # checked when a server is asked for
    redis = None  # type: ignore[assignment]

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


def _redis_cli_binary() -> str:
    """``redis-cli`` (Debian's redis-tools, a dependency of redis-server) beside the server."""
    server = _redis_server_binary()
    binary = shutil.which("redis-cli") or os.path.join(os.path.dirname(server), "redis-cli")
    if not os.access(binary, os.X_OK):
        _unavailable("redis-cli is not installed; apt-get install redis-tools")
    return binary


class RedisClusterNodes:
    """Three private ``redis-server --cluster-enabled yes`` masters on 127.0.0.1, joined by
    ``redis-cli --cluster create`` (no replicas), killed at the end.

    Each node's cluster bus gets its own free port (``--cluster-port``): the default, port
    + 10000, may be taken or beyond 65535 for the high ports the kernel hands out.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.nodes: list[RedisServer] = []

    @property
    def url(self) -> str:
        """The ``redis+cluster://`` URL of all three nodes (``KEEN_SIGNUP_REDIS_URL``)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes) + "/0"

    def start(self) -> RedisClusterNodes:
        cli = _redis_cli_binary()
        try:
            self._start(cli)
        except BaseException:  # no node left running, whatever failed (or skipped)
            self.kill()
            raise
        return self

    def _start(self, cli: str) -> None:
        for index in range(3):
            directory = os.path.join(self.directory, f"node{index}")
            os.makedirs(directory, exist_ok=True)
            node = RedisServer(
                directory,
                "--appendonly",
                "no",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "5000",
                "--cluster-port",
                str(_free_port()),
            )
            self.nodes.append(node.start())
        create = subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if create.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {create.stdout}{create.stderr}")
        self._wait_until_ok()

    def _wait_until_ok(self) -> None:
        """Every node says ``cluster_state:ok`` and knows all three masters."""
        deadline = time.monotonic() + 30
        clients = [redis.Redis(host="127.0.0.1", port=n.port, socket_timeout=1) for n in self.nodes]
        try:
            while time.monotonic() < deadline:
                infos = [c.cluster("info") for c in clients]
                if all(
                    i.get("cluster_state") == "ok" and int(i.get("cluster_known_nodes", 0)) == 3
                    for i in infos
                ):
                    return
                time.sleep(0.1)
        finally:
            for client in clients:
                client.close()
        raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")

    def node_for(self, key: str) -> RedisServer:
        """The master that serves ``key``'s hash slot."""
        client = redis.Redis(host="127.0.0.1", port=self.nodes[0].port, socket_timeout=5)
        try:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, (_host, port, *_rest), *_replicas in client.execute_command(
                "CLUSTER", "SLOTS"
            ):
                if start <= slot <= end:
                    return next(n for n in self.nodes if n.port == int(port))
        finally:
            client.close()
        raise LookupError(f"no node serves slot {slot}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        for node in self.nodes:
            node.kill(sig)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[RedisClusterNodes]:
    """One 3-master cluster for the session: each test uses its own hash-tagged prefix."""
    cluster = RedisClusterNodes(str(tmp_path_factory.mktemp("redis-cluster"))).start()
    yield cluster
    cluster.kill(signal.SIGTERM)
