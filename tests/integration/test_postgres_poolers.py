"""The ``postgres`` store and outbox through PgBouncer, as most hosted PostgreSQL is reached.

A real PgBouncer (Debian's ``pgbouncer``; ``tests/_postgres.py``) in front of the tests'
own server, in ``transaction`` mode (a server connection serves another client between
two transactions) and in ``session`` mode, 4 server connections each. The store and
outbox contract tests also run through both (``test_stores.py``, ``test_outbox.py``);
many hosts, a ``kill -9`` and a restart through the pooler are in
``tests/system/test_postgres_hosts.py``. Here: what breaks behind a pooler and nowhere
else: prepared statements, session state (``statement_timeout``, advisory locks),
``LISTEN``, and a login's round trips.
"""

from __future__ import annotations

import logging
import threading
import time
import typing as t

import pytest
from _flow import login
from _flow import quickstart_app
from _postgres import PASSWORD
from _postgres import PgBouncer
from _postgres import RoundTrips
from _postgres import fresh_schema
from _postgres import store_errors
from _waits import wait_until

from flask_keen_signup import signup_state
from flask_keen_signup.delivery import QueuedEvent
from flask_keen_signup.events import uniqueness_token
from flask_keen_signup.exceptions import ConfigurationError
from flask_keen_signup.exceptions import StoreError
from flask_keen_signup.stores import MarkerState
from flask_keen_signup.testing import Auth0Emulator
from flask_keen_signup.testing import KeenEmulator

MODES = ["transaction", "session"]


def signup(n: int) -> QueuedEvent:
    user_id = f"auth0|user{n}"
    token = uniqueness_token("signups", user_id)
    return QueuedEvent("signups", user_id, token, {"userId": user_id})


@pytest.fixture(params=MODES)
def bouncer(request: pytest.FixtureRequest) -> t.Any:
    return request.getfixturevalue(f"pgbouncer_{request.param}")


@pytest.fixture
def keen() -> t.Iterator[KeenEmulator]:
    with KeenEmulator() as emulator:
        yield emulator


@pytest.fixture
def auth0() -> t.Iterator[Auth0Emulator]:
    with Auth0Emulator() as emulator:
        yield emulator


def databases(url: str, schema: str, count: int, timeout: float = 5.0) -> list[t.Any]:
    from flask_keen_signup.postgres import PostgresDatabase

    return [PostgresDatabase(url, schema=schema, timeout=timeout) for _ in range(count)]


def test_many_clients_repeating_statements_through_a_transaction_pooler(
    pgbouncer_transaction: t.Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 17: psycopg prepares a statement run 5 times on a connection; behind a
    transaction pooler another client's connection then meets ``_pg3_0`` on the same
    server connection (``DuplicatePreparedStatement``) or misses it. Three "processes",
    each with its own pools, 8 threads, the login path's statements 30 times each."""
    from flask_keen_signup.delivery.postgres_outbox import PostgresOutbox
    from flask_keen_signup.stores.postgres import PostgresStore

    caplog.set_level(logging.DEBUG)
    schema = fresh_schema()
    hosts = databases(pgbouncer_transaction.url, schema, 3)
    errors: list[BaseException] = []
    try:

        def logins(k: int) -> None:
            database = hosts[k % 3]
            store, box = PostgresStore(database, "signups"), PostgresOutbox(database)
            try:
                for n in range(30):
                    user = 1000 * k + n
                    store.lookup(f"auth0|user{user}")
                    assert box.claim_and_enqueue(store, f"auth0|user{user}", signup(user))
                    box.claim_due(5, now=time.time(), lease_seconds=60, owner=f"h{k}")
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=logins, args=(k,)) for k in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert errors == []
        assert hosts[0].run(
            f"SELECT count(*) FROM {hosts[0].table('outbox')}", what="count", fetch="one"
        ) == (240,)
        assert store_errors(caplog.records, pgbouncer_transaction.port) == []
    finally:
        for database in hosts:
            database.close()


def test_statement_timeout_lives_in_each_transaction_not_in_the_session(
    pgbouncer_transaction: t.Any,
) -> None:
    """No startup ``options`` (PgBouncer refuses them) and no ``SET``: the budget is a
    ``SET LOCAL`` in each statement's transaction, so the server connections the pooler
    hands to other clients carry nothing of ours."""
    import psycopg

    (database,) = databases(pgbouncer_transaction.url, fresh_schema(), 1, timeout=0.25)
    try:
        show = "SELECT current_setting('statement_timeout')"
        assert database.run(show, what="show", fetch="one") == ("250ms",)
        assert database.run(show, what="show", role="worker", fetch="one") == ("30s",)
        with pytest.raises(StoreError, match="statement timeout"):
            database.run("SELECT pg_sleep(5)", what="sleep", fetch="one")
        assert database.run("SELECT 1", what="after", fetch="one") == (1,)
        # Another client of the pooler, on whichever of its 4 server connections: defaults.
        with psycopg.connect(pgbouncer_transaction.url, autocommit=True) as other:
            seen = {
                other.execute(show, prepare=False).fetchone()[0]  # type: ignore[index]
                for _ in range(20)
            }
        assert seen == {"0"}
    finally:
        database.close()


def test_hosts_starting_together_through_a_transaction_pooler_create_the_schema_once(
    pgbouncer_transaction: t.Any,
) -> None:
    """The schema is created under ``pg_advisory_xact_lock``: a session lock would stay
    with a server connection the pooler gives to someone else."""
    from flask_keen_signup.postgres_schema import SCHEMA_VERSION
    from flask_keen_signup.stores.postgres import PostgresStore

    schema = fresh_schema()
    hosts = databases(pgbouncer_transaction.url, schema, 6)
    errors: list[BaseException] = []
    try:

        def start(database: t.Any) -> None:
            try:
                database.ensure_schema("worker")
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(d,)) for d in hosts]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        assert hosts[0].schema_version() == SCHEMA_VERSION
        rows = hosts[0].run(
            f"SELECT version FROM {hosts[0].table('schema_version')} ORDER BY version",
            what="read",
            fetch="all",
        )
        assert [v for (v,) in rows] == list(range(1, SCHEMA_VERSION + 1))
        assert PostgresStore(hosts[1], "signups").claim("auth0|first")
    finally:
        for database in hosts:
            database.close()


def test_a_new_user_costs_two_round_trips_through_the_pooler(bouncer: t.Any) -> None:
    """Counted on the wire (a proxy in front of PgBouncer): the marker read, then the
    claim-and-enqueue, each sent with its ``BEGIN; SET LOCAL …; COMMIT`` in one pipeline.
    A returning user the ledger knows: the read only."""
    from flask_keen_signup.delivery.postgres_outbox import PostgresOutbox
    from flask_keen_signup.stores.postgres import PostgresStore

    proxy = RoundTrips(bouncer.port)
    (database,) = databases(proxy.url(bouncer.url), fresh_schema(), 1)
    try:
        store, box = PostgresStore(database, "signups"), PostgresOutbox(database)
        store.lookup("auth0|warm")  # the pool is open, the schema is there
        proxy.reset()
        assert store.lookup("auth0|new") is None
        assert box.claim_and_enqueue(store, "auth0|new", signup(1))
        assert proxy.reset() == 2
        assert store.lookup("auth0|new") is MarkerState.PENDING
        assert proxy.reset() == 1
    finally:
        database.close()
        proxy.close()


def _app(
    auth0: Auth0Emulator, keen: KeenEmulator, url: str, tmp_path: t.Any, **config: t.Any
) -> t.Any:
    app, _ = quickstart_app(
        auth0,
        keen,
        str(tmp_path / "unused.sqlite3"),
        KEEN_SIGNUP_STORE="postgres",
        KEEN_SIGNUP_DATABASE_URL=url,
        KEEN_SIGNUP_DATABASE_SCHEMA=fresh_schema(),
        KEEN_SIGNUP_STORE_TIMEOUT=5.0,
        **config,
    )
    return app


def _close(app: t.Any) -> None:
    state = signup_state(app)
    if state.sender is not None:
        state.sender.stop(5)
    state.outbox.close()
    state.store.close()


def test_logins_through_each_pooler_report_each_user_once_and_log_nothing(
    bouncer: t.Any,
    auth0: Auth0Emulator,
    keen: KeenEmulator,
    tmp_path: t.Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    app = _app(auth0, keen, bouncer.url, tmp_path)
    state = signup_state(app)
    try:
        emails = [f"user{n}@example.com" for n in range(12)]
        for email in emails * 2:  # new, then returning
            assert login(app.test_client(), auth0, email).status_code == 302
        state.tracker.known = type(state.tracker.known)()  # a new process's memory
        assert login(app.test_client(), auth0, emails[0]).status_code == 302
        assert wait_until(lambda: state.outbox.stats().delivered == 12, 30)
        time.sleep(0.3)
        users = sorted(e["userId"] for e in keen.events("signups"))
        assert users == sorted(u["user_id"] for u in auth0.users())
        assert state.spool.stats()[0] == 0, "nothing fell back to the spool"
        assert store_errors(caplog.records, bouncer.port) == []
    finally:
        _close(app)


def test_without_a_listen_url_polling_delivers_within_a_second(
    pgbouncer_transaction: t.Any, auth0: Auth0Emulator, keen: KeenEmulator, tmp_path: t.Any
) -> None:
    """The sender looks only once a minute here; LISTEN is not used (no listen URL, and
    through a transaction pooler it would hear nothing): the outbox's poll (one indexed
    read every 0.5 s) wakes it. Measured loosely (2 s) so a busy machine does not fail it;
    a minute's wait is what it rules out."""
    app = _app(auth0, keen, pgbouncer_transaction.url, tmp_path, KEEN_SIGNUP_FLUSH_INTERVAL=60)
    state = signup_state(app)
    try:
        assert login(app.test_client(), auth0, "warm@example.com").status_code == 302
        assert wait_until(lambda: len(keen.events("signups")) == 1, 10)
        listener = state.outbox._listener
        assert type(listener).__name__ == "Poller"
        started = time.monotonic()
        assert login(app.test_client(), auth0, "polled@example.com").status_code == 302
        assert wait_until(lambda: len(keen.events("signups")) == 2, 10)
        assert time.monotonic() - started < 2.0
    finally:
        _close(app)


def test_listen_url_wakes_the_sender_behind_a_transaction_pooler(
    pgbouncer_transaction: t.Any,
    postgres_url: str,
    auth0: Auth0Emulator,
    keen: KeenEmulator,
    tmp_path: t.Any,
) -> None:
    """Statements through the pooler, ``LISTEN`` on the direct URL: the commit's NOTIFY
    (sent through the pooler) reaches the sender that polls once a minute."""
    app = _app(
        auth0,
        keen,
        pgbouncer_transaction.url,
        tmp_path,
        KEEN_SIGNUP_FLUSH_INTERVAL=60,
        KEEN_SIGNUP_DATABASE_LISTEN_URL=postgres_url,
    )
    state = signup_state(app)
    try:
        state.outbox.pending_count()
        state.sender.wake()
        listener = state.outbox._listener
        assert type(listener).__name__ == "Listener"
        assert wait_until(lambda: listener.connected.is_set(), 30)
        assert login(app.test_client(), auth0, "woken@example.com").status_code == 302
        assert wait_until(lambda: len(keen.events("signups")) == 1, 20)
    finally:
        _close(app)


def test_a_bad_listen_url_fails_at_init_app_without_the_password(
    auth0: Auth0Emulator, tmp_path: t.Any
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        quickstart_app(
            auth0,
            None,
            str(tmp_path / "unused.sqlite3"),
            KEEN_SIGNUP_STORE="postgres",
            KEEN_SIGNUP_DATABASE_URL="postgresql://h/db",
            KEEN_SIGNUP_DATABASE_LISTEN_URL=f"mysql://u:{PASSWORD}@h/db",
        )
    message = str(caught.value)
    assert "KEEN_SIGNUP_DATABASE_LISTEN_URL" in message
    assert "postgresql://" in message
    assert PASSWORD not in message


def test_the_listen_url_is_never_shown(postgres_url: str) -> None:
    from flask import Flask

    from flask_keen_signup.config import load_settings

    app = Flask(__name__)
    app.config.update(
        KEEN_PROJECT_ID="p",
        KEEN_WRITE_KEY="w",
        KEEN_SIGNUP_STORE="postgres",
        KEEN_SIGNUP_DATABASE_URL=postgres_url,
        KEEN_SIGNUP_DATABASE_LISTEN_URL=f" {postgres_url} ",
    )
    settings = load_settings(app)
    assert settings.database_listen_url == postgres_url
    assert PASSWORD not in repr(settings)


def test_a_pooler_with_no_server_to_give_does_not_hold_a_login(postgres_server: t.Any) -> None:
    """PgBouncer queues a client while all its server connections are taken (or its server
    is down) until ``query_wait_timeout`` (120 s), and neither ``statement_timeout`` nor a
    cancel request reaches such a client. Here its only server connection is held by
    another client's open transaction: the login's read gives up within its budget
    (closing that connection), and the next one works once the server is free again."""
    import psycopg

    from flask_keen_signup.stores.postgres import PostgresStore

    bouncer = PgBouncer(postgres_server, "transaction", pool_size=1).start()
    (database,) = databases(bouncer.url, fresh_schema(), 1, timeout=0.2)
    try:
        store = PostgresStore(database, "signups")
        assert store.lookup("auth0|warm") is None
        with psycopg.connect(bouncer.url) as hog:
            hog.execute("SELECT 1")  # in a transaction: the one server connection is taken
            started = time.monotonic()
            with pytest.raises(StoreError, match="no answer from") as caught:
                store.lookup("auth0|queued")
            assert time.monotonic() - started < 5
            assert PASSWORD not in str(caught.value)
        assert store.lookup("auth0|queued") is None
    finally:
        database.close()
        bouncer.remove()
