"""A private PostgreSQL server for the tests: initdb + pg_ctl in a temporary directory.

Never touches a system cluster: its own data directory under the temp dir, 127.0.0.1 on a
free port, no Unix socket. PostgreSQL refuses to run as root, so as root the server runs
as the ``postgres`` system user (created by Debian's ``postgresql`` package, which
``scripts/install-test-deps.sh`` installs when missing) through ``runuser``.

Without the binaries the tests that need it skip locally and FAIL when ``CI=true``.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import typing as t
import uuid

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
USER = "keen"
#: Distinctive, so a leak into a log or an error is easy to spot.
PASSWORD = "pg-SECRET-3f9a1c"
RUN_AS = "postgres"


def unavailable(reason: str) -> t.NoReturn:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: the suite must run the PostgreSQL tests)")
    pytest.skip(reason)


def bin_dir() -> str:
    """``$PG_BIN``, the directory of ``pg_ctl`` on PATH, or the newest Debian install."""
    candidates = [os.environ.get("PG_BIN", "")]
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(os.path.dirname(on_path))
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit() else 0,
    )
    candidates += reversed(versions)
    for directory in candidates:
        if directory and all(
            os.access(os.path.join(directory, name), os.X_OK) for name in ("initdb", "pg_ctl")
        ):
            return directory
    unavailable(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql, "
        "or set PG_BIN"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """initdb'd once; :meth:`start` / :meth:`stop` keep the data and the port."""

    def __init__(self, fsync: bool = False) -> None:
        self.bin = bin_dir()
        try:
            import psycopg  # noqa: F401
            import psycopg_pool  # noqa: F401
        except ImportError:
            unavailable("psycopg 3 is not installed: pip install 'psycopg[binary,pool]'")
        self.as_root = os.geteuid() == 0
        if self.as_root:
            try:
                self.account = pwd.getpwnam(RUN_AS)
            except KeyError:
                unavailable(f"running as root and there is no {RUN_AS!r} user to run PostgreSQL")
        self.directory = tempfile.mkdtemp(prefix="keen-signup-pg-")
        self.data = os.path.join(self.directory, "data")
        self.log = os.path.join(self.directory, "server.log")
        self.port = free_port()
        self.fsync = fsync
        if self.as_root:
            os.chown(self.directory, self.account.pw_uid, self.account.pw_gid)
        pwfile = os.path.join(self.directory, "pw")
        with open(pwfile, "w") as f:
            f.write(PASSWORD + "\n")
        if self.as_root:
            os.chown(pwfile, self.account.pw_uid, self.account.pw_gid)
        self._run(
            "initdb",
            "-D",
            self.data,
            "-U",
            USER,
            "--auth=scram-sha-256",
            f"--pwfile={pwfile}",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        )
        os.unlink(pwfile)

    def _run(self, tool: str, *args: str, timeout: float = 120) -> None:
        command = [os.path.join(self.bin, tool), *args]
        if self.as_root:
            command = ["runuser", "-u", RUN_AS, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed: {result.stderr.strip() or result.stdout.strip()}")

    @property
    def url(self) -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/postgres"

    def start(self) -> PostgresServer:
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories='' "
            f"-c max_connections=300 -c fsync={'on' if self.fsync else 'off'} "
            # Lets a test count the statements a login sends (tests/integration/test_postgres.py).
            "-c shared_preload_libraries=pg_stat_statements"
        )
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def remove(self) -> None:
        try:
            self.stop("immediate")
        except (RuntimeError, subprocess.SubprocessError):
            pass
        shutil.rmtree(self.directory, ignore_errors=True)


def fresh_schema() -> str:
    """A schema name of its own per test: tests share one server, never their tables."""
    return f"t_{uuid.uuid4().hex[:12]}"
