"""This process's psycopg pools of one PostgreSQL database, by role, opened lazily.

Two small pools per process: ``request`` (login requests: waiting for a connection is
bounded by ``KEEN_SIGNUP_STORE_TIMEOUT``) and ``worker`` (the sender, the CLI, the
start-up load of known users: generous timeouts). Every connection, pooled or the
``LISTEN`` one (:mod:`.postgres_wake`), is opened with :func:`connect_options`: no
server-side prepared statements (``prepare_threshold=None``) and no startup ``options``,
which a transaction pooler (PgBouncer) refuses or would not keep per client.

Fork safety (gunicorn ``--preload``). A pooled connection must never be used by two
processes: its socket would carry two conversations. Every pool belongs to the pid that
opened it; a child (detected by pid and by an at-fork hook) forgets the parent's pools
*without closing them* (closing would send a Terminate message on the parent's socket;
psycopg itself never finishes a connection from another pid) and opens its own.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import typing as t
import weakref

from psycopg_pool import ConnectionPool

from . import lifecycle
from .exceptions import StoreError
from .postgres_deadlines import deadlines

REQUEST = "request"
WORKER = "worker"
#: Connections per process: login requests, and the sender/CLI.
POOL_SIZES = {REQUEST: 4, WORKER: 2}
#: libpq counts ``connect_timeout`` in whole seconds and treats anything below 2 as 2.
#: Pool workers connect off the request path, so this bounds their attempts, not a login.
CONNECT_TIMEOUT = 3
#: How long the sender or the CLI waits for a ``worker`` connection, in seconds: short, so
#: that an exit flush with PostgreSQL down stays near ``KEEN_SIGNUP_SHUTDOWN_TIMEOUT``.
WORKER_POOL_WAIT = 3.0
#: A pool that could not give a connection in time is replaced, at most this often (s).
REFRESH_AFTER = 1.0


def connect_options(name: str) -> dict[str, t.Any]:
    """psycopg connection arguments for a connection of ours named ``name`` (the URL's own
    options, e.g. ``?options=-c%20search_path%3Dapp``, are the URL's: none of ours)."""
    return {
        "autocommit": True,
        "prepare_threshold": None,  # no server-side prepared statements: poolers
        "connect_timeout": CONNECT_TIMEOUT,
        "application_name": f"flask-keen-signup {name}",
    }


class Pools:
    """The pools of one database in this process (see the module doc).

    :param conninfo: libpq's connection string (never logged).
    :param timeout: how long a ``request`` waits for a connection, in seconds.
    """

    def __init__(self, conninfo: str, timeout: float) -> None:
        self._conninfo = conninfo
        self.timeout = timeout
        self.closed = False
        self.reset()
        _all.add(self)

    def reset(self) -> None:
        """Forget this process's pools without closing them (see the module doc)."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._pools: dict[str, ConnectionPool[t.Any]] = {}
        self._opened_at: dict[str, float] = {}

    def get(self, role: str) -> ConnectionPool[t.Any]:
        """This process's pool for ``role``, opened lazily."""
        if self._pid != os.getpid():
            self.reset()
        pool = self._pools.get(role)
        if pool is not None:
            return pool
        if self.closed:
            raise StoreError("the PostgreSQL store is closed")
        with self._lock:
            pool = self._pools.get(role)
            if pool is None:
                pool = ConnectionPool(
                    self._conninfo,
                    min_size=1,
                    max_size=POOL_SIZES[role],
                    open=False,
                    timeout=self._wait(role),
                    name=f"keen-signup-{role}-{os.getpid()}",
                    kwargs=connect_options(role),
                )
                pool.open(wait=False)
                self._pools[role] = pool
                self._opened_at[role] = time.monotonic()
        return pool

    def _wait(self, role: str) -> float:
        return self.timeout if role == REQUEST else max(WORKER_POOL_WAIT, self.timeout)

    def refresh(self, role: str) -> None:
        """Replace a pool that timed out by a new one, at most once per ``REFRESH_AFTER`` s.

        psycopg's pool retries a failed connection with an exponential backoff that grows
        to minutes during a long outage, so after PostgreSQL comes back logins could keep
        failing for that long. A fresh pool connects at once; the old one is closed a little
        later on a helper thread (never on the request's time).
        """
        if self._pid != os.getpid():
            return
        with self._lock:
            opened = self._opened_at.get(role, 0.0)
            if time.monotonic() - opened < REFRESH_AFTER or self.closed:
                return
            old = self._pools.pop(role, None)
            self._opened_at[role] = time.monotonic()
        if old is not None:
            # Later, so that threads already waiting on it time out instead of failing.
            closer = threading.Timer(self._wait(WORKER) + 1.0, old.close, kwargs={"timeout": 1.0})
            closer.daemon = True
            closer.start()

    def close(self) -> None:
        """Close this process's pools. Idempotent."""
        self.closed = True
        if self._pid != os.getpid():
            self.reset()
            return
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            with contextlib.suppress(Exception):
                pool.close(timeout=1.0)


_all: weakref.WeakSet[Pools] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    deadlines.reset()
    pid = os.getpid()
    for pools in list(_all):
        if pools._pid != pid:
            pools.reset()


lifecycle.register("postgres", after_in_child=_after_fork_in_child)

