"""A private PostgreSQL server for the tests: initdb + pg_ctl in a temporary directory.

Never touches a system cluster: its own data directory under the temp dir, 127.0.0.1 on a
free port, no Unix socket. PostgreSQL refuses to run as root, so as root the server runs
as the ``postgres`` system user (created by Debian's ``postgresql`` package, which
``scripts/install-test-deps.sh`` installs when missing) through ``runuser``.

Without the binaries the tests that need it skip locally and FAIL when ``CI=true``.
"""

from __future__ import annotations

import glob
import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import typing as t
import uuid

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
USER = "keen"
#: Distinctive, so a leak into a log or an error is easy to spot.
PASSWORD = "pg-SECRET-3f9a1c"
RUN_AS = "postgres"
#: How the contract tests reach PostgreSQL, and the fixture (tests/conftest.py) of each.
POSTGRES_VARIANTS = {
    "postgres": "postgres_database",
    "pgbouncer-transaction": "pgbouncer_transaction_database",
    "pgbouncer-session": "pgbouncer_session_database",
}


#: The one warning a healthy first start on an empty ledger gives (not a store error).
FIRST_DEPLOY = "no user is marked as signed up yet"


def store_errors(records: t.Iterable[logging.LogRecord], port: int | None = None) -> list[str]:
    """The warnings and errors of the package and of psycopg (its pool logs its own)
    among ``records`` (``caplog.records``): none in a healthy run (issue 17).

    With ``port``, psycopg's messages about another port are left out: an earlier test's
    pool, pointed at a server that is gone, may still be retrying in the background.
    """

    def ours(message: str) -> bool:
        return port is None or "port " not in message or f"port {port} " in message

    return [
        f"{r.name}: {r.getMessage()}"
        for r in records
        if r.levelno >= logging.WARNING
        and r.name.startswith(("flask_keen_signup", "psycopg"))
        and FIRST_DEPLOY not in r.getMessage()
        and (r.name.startswith("flask_keen_signup") or ours(r.getMessage()))
    ]


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


def pgbouncer_binary() -> str:
    """``$PGBOUNCER``, or ``pgbouncer`` on PATH (Debian puts it in /usr/sbin)."""
    for candidate in (os.environ.get("PGBOUNCER", ""), shutil.which("pgbouncer") or ""):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    if os.access("/usr/sbin/pgbouncer", os.X_OK):
        return "/usr/sbin/pgbouncer"
    unavailable("pgbouncer not found: apt-get install pgbouncer, or set PGBOUNCER")


class PgBouncer:
    """A private PgBouncer in front of ``server``: ``mode`` is ``transaction`` or ``session``.

    Configured as most hosted poolers are: ``pool_size`` server connections per database
    and user, SCRAM towards the clients and the server, no ``ignore_startup_parameters``
    (a startup ``options`` is refused, as by PgBouncer 1.18). ``pool_size`` is 4 in
    transaction mode (as in issue 17). In session mode each client connection keeps its
    server connection as long as it lives (a process of the app holds up to 7, see
    docs/postgres.md), so 4 would starve the tests' several "hosts": 30 there.
    PgBouncer refuses to run as root: as root it runs as ``postgres``, like the server.
    Restarts with the same port (:meth:`start` after :meth:`stop`).
    """

    def __init__(self, server: PostgresServer, mode: str, pool_size: int | None = None) -> None:
        if mode not in ("transaction", "session"):
            raise ValueError(mode)
        if pool_size is None:
            pool_size = 4 if mode == "transaction" else 30
        self.binary = pgbouncer_binary()
        self.server = server
        self.mode = mode
        self.port = free_port()
        self.directory = tempfile.mkdtemp(prefix=f"keen-signup-pgbouncer-{mode}-")
        self.log = os.path.join(self.directory, "pgbouncer.log")
        self.proc: subprocess.Popen[bytes] | None = None
        users = os.path.join(self.directory, "users.txt")
        with open(users, "w") as f:
            f.write(f'"{USER}" "{PASSWORD}"\n')
        config = os.path.join(self.directory, "pgbouncer.ini")
        with open(config, "w") as f:
            f.write(
                "[databases]\n"
                f"* = host=127.0.0.1 port={server.port}\n"
                "[pgbouncer]\n"
                f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
                f"auth_type = scram-sha-256\nauth_file = {users}\n"
                f"pool_mode = {mode}\ndefault_pool_size = {pool_size}\n"
                "max_client_conn = 1000\n"
                # Retry a failed server login soon (a test restarts PostgreSQL).
                "server_login_retry = 1\n"
                f"logfile = {self.log}\npidfile = {os.path.join(self.directory, 'pid')}\n"
            )
        self.config = config
        if server.as_root:
            for path in (self.directory, users, config):
                os.chown(path, server.account.pw_uid, server.account.pw_gid)
            os.chmod(users, 0o600)

    @property
    def url(self) -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/postgres"

    def start(self) -> PgBouncer:
        kwargs: dict[str, t.Any] = {}
        if self.server.as_root:
            kwargs = {"user": self.server.account.pw_uid, "group": self.server.account.pw_gid}
        self.proc = subprocess.Popen(
            [self.binary, self.config],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **kwargs,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited: {self.log_text()[-2000:]}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"pgbouncer did not listen in time: {self.log_text()[-2000:]}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()  # SIGTERM: immediate shutdown
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def log_text(self) -> str:
        try:
            with open(self.log, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class RoundTrips:
    """A TCP proxy on 127.0.0.1 that counts round trips between clients and ``port``.

    A round trip is counted each time a client sends after the server last answered it
    (or for its first message): a pipeline of several statements answered together is
    one, a statement waiting for the answer to the previous one is another. Reset with
    :meth:`reset`; read :attr:`count`. For tests and ``bench/postgres.py``.
    """

    def __init__(self, port: int) -> None:
        import threading

        self.target = port
        self.count = 0
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, url: str) -> str:
        return url.replace(f"@127.0.0.1:{self.target}/", f"@127.0.0.1:{self.port}/")

    def reset(self) -> int:
        with self._lock:
            count, self.count = self.count, 0
        return count

    def _accept(self) -> None:
        import threading

        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            answered = [True]
            threading.Thread(
                target=self._pipe, args=(client, upstream, answered, True), daemon=True
            ).start()
            threading.Thread(
                target=self._pipe, args=(upstream, client, answered, False), daemon=True
            ).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, answered: list[bool], up: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self._lock:
                    if up and answered[0]:
                        self.count += 1
                    answered[0] = not up
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            src.close()  # the other direction's thread closes ``dst``

    def close(self) -> None:
        self._closed = True
        self._listener.close()
