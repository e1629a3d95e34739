"""A private ``redis-server`` for the tests: started on 127.0.0.1 on a free port, killed at
the end. ``redis_server`` is a session fixture (registered in conftest.py). Without
``redis-server`` or the ``redis`` package the Redis tests skip locally and fail when
``CI=true``.
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


