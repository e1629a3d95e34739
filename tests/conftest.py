"""Shared fixtures and the layout of the suite.

The tests are laid out by kind (``tests/unit``, ``tests/emulators``, ``tests/integration``,
``tests/system``); helpers shared across kinds live beside this file (``_flow.py``,
``_waits.py``, ``_redis.py``, ``_postgres.py``, ...) and this directory is on ``sys.path``,
so any test imports them by name. Everything under ``tests/system`` (several processes,
crashes, gunicorn, a browser) is marked ``slow``; ``make test-fast`` leaves it out.
The emulator fixtures come from the package's own pytest plugin.
"""

from __future__ import annotations

import os
import sys
import typing as t

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # the shared helpers, whatever directory a test lives in
    sys.path.insert(0, HERE)

from _redis import redis_cluster as redis_cluster  # noqa: E402 - a session fixture
from _redis import redis_server as redis_server  # noqa: E402 - a session fixture

pytest_plugins = ["pytester"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/system is ``slow``."""
    system = os.path.join(HERE, "system") + os.sep
    for item in items:
        if str(item.path).startswith(system):
            item.add_marker(pytest.mark.slow)


# -- PostgreSQL (issue 11): one private server per session, a schema per test ---------------


@pytest.fixture(scope="session")
def postgres_server() -> t.Iterator[t.Any]:
    """A private PostgreSQL (see ``tests/_postgres.py``): skips locally, fails in CI."""
    from _postgres import PostgresServer

    server = PostgresServer().start()
    yield server
    server.remove()


@pytest.fixture
def postgres_url(postgres_server: t.Any) -> str:
    return str(postgres_server.url)


@pytest.fixture
def postgres_database(postgres_url: str) -> t.Iterator[t.Any]:
    """A :class:`PostgresDatabase` on a fresh schema, generous timeouts, closed after."""
    from _postgres import fresh_schema

    from flask_keen_signup.postgres import PostgresDatabase

    database = PostgresDatabase(postgres_url, schema=fresh_schema(), timeout=5.0)
    yield database
    database.close()


# -- PgBouncer (issue 17): one per mode per session, in front of the private server ---------


def _pgbouncer(postgres_server: t.Any, mode: str) -> t.Iterator[t.Any]:
    from _postgres import PgBouncer

    bouncer = PgBouncer(postgres_server, mode).start()
    yield bouncer
    bouncer.remove()


@pytest.fixture(scope="session")
def pgbouncer_transaction(postgres_server: t.Any) -> t.Iterator[t.Any]:
    """PgBouncer in ``transaction`` mode, 4 server connections: skips locally, fails in CI."""
    yield from _pgbouncer(postgres_server, "transaction")


@pytest.fixture(scope="session")
def pgbouncer_session(postgres_server: t.Any) -> t.Iterator[t.Any]:
    """PgBouncer in ``session`` mode, 4 server connections: skips locally, fails in CI."""
    yield from _pgbouncer(postgres_server, "session")


def _database_via(url: str) -> t.Iterator[t.Any]:
    from _postgres import fresh_schema

    from flask_keen_signup.postgres import PostgresDatabase

    database = PostgresDatabase(url, schema=fresh_schema(), timeout=5.0)
    yield database
    database.close()


@pytest.fixture
def pgbouncer_transaction_database(pgbouncer_transaction: t.Any) -> t.Iterator[t.Any]:
    """``postgres_database``, through PgBouncer in ``transaction`` mode."""
    yield from _database_via(pgbouncer_transaction.url)


@pytest.fixture
def pgbouncer_session_database(pgbouncer_session: t.Any) -> t.Iterator[t.Any]:
    """``postgres_database``, through PgBouncer in ``session`` mode."""
    yield from _database_via(pgbouncer_session.url)
