"""Shared fixtures. The emulator fixtures come from the package's own pytest plugin."""

from __future__ import annotations

import typing as t

import pytest

pytest_plugins = ["pytester"]


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
