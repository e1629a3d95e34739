"""The ``postgres`` store and outbox against a real PostgreSQL started by the tests.

The shared contract tests of ``test_stores.py`` and ``test_outbox.py`` run over
``postgres`` through their parametrised fixtures. Here: what only this backend promises:
the claim-and-enqueue statement, configuration and secrets, the schema (versioned,
idempotent, shipped for DBAs), the extension end to end over the real login flow, and the
app's own transaction (psycopg 3 and SQLAlchemy). Many hosts are in
``test_postgres_hosts.py``.
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
from _postgres import free_port
from _postgres import fresh_schema
from _waits import wait_until

from flask_keen_signup import signals
from flask_keen_signup import signup_state
from flask_keen_signup.delivery import QueuedEvent
from flask_keen_signup.events import uniqueness_token
from flask_keen_signup.exceptions import ConfigurationError
from flask_keen_signup.exceptions import StoreError
from flask_keen_signup.stores import MarkerState
from flask_keen_signup.testing import Auth0Emulator
from flask_keen_signup.testing import KeenEmulator
from flask_keen_signup.tracker import TrackOutcome


def _pg() -> t.Any:
    import psycopg

    return psycopg


def signup(n: int, collection: str = "signups") -> QueuedEvent:
    user_id = f"auth0|user{n}"
    token = uniqueness_token(collection, user_id)
    body = {"userId": user_id, "name": f"Ünïcode {n}", "keen": {"uniqueness_token": token}}
    return QueuedEvent(collection, user_id, token, body)


@pytest.fixture
def parts(postgres_database: t.Any) -> tuple[t.Any, t.Any]:
    from flask_keen_signup.delivery.postgres_outbox import PostgresOutbox
    from flask_keen_signup.stores.postgres import PostgresStore

    return PostgresStore(postgres_database, "signups"), PostgresOutbox(postgres_database)


@pytest.fixture
def keen() -> t.Iterator[KeenEmulator]:
    with KeenEmulator() as emulator:
        yield emulator


@pytest.fixture
def auth0() -> t.Iterator[Auth0Emulator]:
    with Auth0Emulator() as emulator:
        yield emulator


def _all_text(exc: BaseException) -> str:
    """``exc`` and its whole chain (cause and context) as text."""
    seen, parts = set(), []
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts += [str(current), repr(current)]
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


# --------------------------------------------------------------------------- one statement


def test_claim_and_enqueue_claims_and_queues_once(parts: tuple[t.Any, t.Any]) -> None:
    store, box = parts
    assert box.claim_and_enqueue(store, "auth0|user1", signup(1))
    assert not box.claim_and_enqueue(store, "auth0|user1", signup(1))
    assert store.lookup("auth0|user1") is MarkerState.PENDING
    (row,) = box.claim_due(10, now=time.time() + 1, lease_seconds=60, owner="a")
    assert row.user_id == "auth0|user1"
    assert row.body == signup(1).body
    assert box.pending_count() == 1


def test_claim_and_enqueue_is_one_statement(parts: tuple[t.Any, t.Any]) -> None:
    """The claim and the event are one SQL statement: one round trip, all or nothing."""
    store, box = parts
    sql = box.claim_and_enqueue_sql(store)
    assert sql.count(";") == 0
    assert sql.startswith("WITH claimed AS (INSERT INTO")
    assert "ON CONFLICT (collection, user_id) DO NOTHING" in sql
    assert "FROM claimed" in sql


def test_a_confirmed_user_is_not_claimed_again(parts: tuple[t.Any, t.Any]) -> None:
    store, box = parts
    store.confirm("auth0|user2")
    assert not box.claim_and_enqueue(store, "auth0|user2", signup(2))
    assert box.pending_count() == 0


def test_racing_threads_queue_one_event(postgres_database: t.Any) -> None:
    from flask_keen_signup.delivery.postgres_outbox import PostgresOutbox
    from flask_keen_signup.stores.postgres import PostgresStore

    store = PostgresStore(postgres_database, "signups")
    box = PostgresOutbox(postgres_database)
    store.lookup("warm-up")
    barrier = threading.Barrier(8)
    wins: list[bool] = []

    def race() -> None:
        barrier.wait()
        wins.append(box.claim_and_enqueue(store, "auth0|same", signup(0)))

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(wins) == [False] * 7 + [True]
    assert box.pending_count() == 1


def test_stale_pending_claim_is_reclaimed_in_sync_mode(postgres_database: t.Any) -> None:
    from flask_keen_signup.stores.postgres import PostgresStore

    store = PostgresStore(postgres_database, "signups", reclaim_after=60)
    assert store.claim("auth0|a")
    assert not store.claim("auth0|a"), "a fresh pending claim is not stale"
    markers = postgres_database.table("markers")
    postgres_database.run(f"UPDATE {markers} SET claimed_at = claimed_at - 120", what="age")
    assert store.claim("auth0|a"), "a claim left by a dead request is reclaimed"
    store.confirm("auth0|a")
    postgres_database.run(f"UPDATE {markers} SET claimed_at = claimed_at - 120", what="age")
    assert not store.claim("auth0|a"), "a confirmed marker is never reclaimed"


def test_markers_are_per_collection_and_schema(postgres_url: str) -> None:
    from flask_keen_signup.postgres import PostgresDatabase
    from flask_keen_signup.stores.postgres import PostgresStore

    one = PostgresDatabase(postgres_url, schema=fresh_schema(), timeout=5)
    two = PostgresDatabase(postgres_url, schema=fresh_schema(), timeout=5)
    try:
        assert PostgresStore(one, "signups").claim("auth0|a")
        assert PostgresStore(one, "other").claim("auth0|a")
        assert PostgresStore(two, "signups").claim("auth0|a")
        assert PostgresStore(one, "signups").counts() == {"pending": 1}
    finally:
        one.close()
        two.close()


def test_confirm_many_and_recent_user_ids(parts: tuple[t.Any, t.Any]) -> None:
    store, _ = parts
    assert store.claim("auth0|pending")
    store.confirm_many(["auth0|c1", "auth0|c2"])
    assert store.counts() == {"pending": 1, "confirmed": 2}
    assert sorted(store.recent_user_ids(["confirmed"], limit=10)) == ["auth0|c1", "auth0|c2"]
    assert len(store.recent_user_ids(["confirmed", "pending"], limit=2)) == 2


# --------------------------------------------------------------------------- errors, secrets


def test_a_server_that_is_not_there_raises_store_error_quickly_without_the_password() -> None:
    from flask_keen_signup.postgres import PostgresDatabase
    from flask_keen_signup.stores.postgres import PostgresStore

    url = f"postgresql://keen:{PASSWORD}@127.0.0.1:{free_port()}/postgres"
    database = PostgresDatabase(url, schema=fresh_schema(), timeout=0.2)
    try:
        store = PostgresStore(database, "signups")
        started = time.monotonic()
        with pytest.raises(StoreError) as caught:
            store.claim("auth0|a")
        assert time.monotonic() - started < 5  # the request budget, plus scheduling slack
        assert "PostgreSQL" in str(caught.value)
        assert PASSWORD not in _all_text(caught.value)
        assert PASSWORD not in repr(database) and PASSWORD not in repr(store)
    finally:
        database.close()


def test_a_wrong_password_is_a_store_error_that_does_not_echo_it(postgres_server: t.Any) -> None:
    from flask_keen_signup.postgres import PostgresDatabase

    wrong = "wrong-SECRET-0b7e"
    url = f"postgresql://keen:{wrong}@127.0.0.1:{postgres_server.port}/postgres"
    database = PostgresDatabase(url, schema=fresh_schema(), timeout=3)
    try:
        with pytest.raises(StoreError) as caught:
            database.run("SELECT 1", what="probe", role="worker", fetch="one")
        assert wrong not in _all_text(caught.value)
    finally:
        database.close()


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"KEEN_SIGNUP_STORE": "postgres"}, "KEEN_SIGNUP_DATABASE_URL is required"),
        (
            {"KEEN_SIGNUP_STORE": "postgres", "KEEN_SIGNUP_DATABASE_URL": "mysql://u:p@h/db"},
            "must start with postgresql://",
        ),
        (
            {
                "KEEN_SIGNUP_STORE": "postgres",
                "KEEN_SIGNUP_DATABASE_URL": f"postgresql://u:{PASSWORD}@h/db?no_such_option=1",
            },
            "KEEN_SIGNUP_DATABASE_URL is not usable",
        ),
        (
            {
                "KEEN_SIGNUP_STORE": "postgres",
                "KEEN_SIGNUP_DATABASE_URL": "postgresql://h/db",
                "KEEN_SIGNUP_DATABASE_SCHEMA": "Robert'); DROP TABLE",
            },
            "KEEN_SIGNUP_DATABASE_SCHEMA must be a plain lower-case SQL identifier",
        ),
        (
            {
                "KEEN_SIGNUP_STORE": "postgres",
                "KEEN_SIGNUP_DATABASE_URL": "postgresql://h/db",
                "KEEN_SIGNUP_STORE_TIMEOUT": "0",
            },
            "KEEN_SIGNUP_STORE_TIMEOUT",
        ),
    ],
)
def test_bad_configuration_fails_at_init_app_without_the_password(
    config: dict[str, str], expected: str
) -> None:
    from flask import Flask

    from flask_keen_signup import KeenSignup

    app = Flask(__name__)
    app.config.update({"KEEN_PROJECT_ID": "p", "KEEN_WRITE_KEY": "w", **config})
    with pytest.raises(ConfigurationError) as caught:
        KeenSignup(app)
    assert expected in str(caught.value)
    assert PASSWORD not in _all_text(caught.value)


def test_settings_and_state_reprs_hide_the_url(postgres_url: str, tmp_path: t.Any) -> None:
    from flask import Flask

    from flask_keen_signup import KeenSignup

    app = Flask(__name__)
    app.config.update(
        KEEN_PROJECT_ID="p",
        KEEN_WRITE_KEY="w",
        KEEN_API_URL="http://127.0.0.1:9",
        KEEN_SIGNUP_STORE="postgres",
        KEEN_SIGNUP_DATABASE_URL=postgres_url,
        KEEN_SIGNUP_DATABASE_SCHEMA=fresh_schema(),
        KEEN_SIGNUP_DATABASE=str(tmp_path / "unused.sqlite3"),
        KEEN_SIGNUP_ENABLED=True,
    )
    KeenSignup(app)
    state = signup_state(app)
    try:
        assert PASSWORD not in repr(state)
        assert "PostgresStore" in repr(state.store)
    finally:
        _close(app)


# --------------------------------------------------------------------------- schema


def test_schema_is_created_on_first_use_versioned_and_idempotent(postgres_url: str) -> None:
    from flask_keen_signup.postgres import PostgresDatabase
    from flask_keen_signup.postgres_schema import SCHEMA_VERSION
    from flask_keen_signup.postgres_schema import schema_sql

    schema = fresh_schema()
    first = PostgresDatabase(postgres_url, schema=schema, timeout=5)
    try:
        assert first.schema_version() == 0
        first.ensure_schema()
        assert first.schema_version() == SCHEMA_VERSION
        # The shipped SQL runs again on the same database and changes nothing.
        with first.pool("worker").connection() as conn:
            conn.execute(schema_sql(schema))
            (count,) = conn.execute(f"SELECT count(*) FROM {schema}.schema_version").fetchone()
        assert count == SCHEMA_VERSION
    finally:
        first.close()


def test_hosts_starting_together_create_the_schema_once(postgres_url: str) -> None:
    from flask_keen_signup.postgres import PostgresDatabase

    schema = fresh_schema()
    databases = [PostgresDatabase(postgres_url, schema=schema, timeout=5) for _ in range(4)]
    barrier = threading.Barrier(len(databases))
    errors: list[BaseException] = []

    def start(database: t.Any) -> None:
        barrier.wait()
        try:
            database.ensure_schema("worker")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(d,)) for d in databases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert errors == []
        from flask_keen_signup.postgres_schema import SCHEMA_VERSION

        assert databases[0].schema_version() == SCHEMA_VERSION
    finally:
        for database in databases:
            database.close()


def test_an_older_schema_is_upgraded_with_only_the_missing_migrations(
    postgres_url: str,
) -> None:
    """A database left at version 1 (an earlier release) gets version 2 on first use;
    its rows stay."""
    from flask_keen_signup.postgres import PostgresDatabase
    from flask_keen_signup.postgres_schema import _BOOTSTRAP
    from flask_keen_signup.postgres_schema import MIGRATIONS
    from flask_keen_signup.postgres_schema import SCHEMA_VERSION
    from flask_keen_signup.stores.postgres import PostgresStore

    assert SCHEMA_VERSION >= 2
    schema = fresh_schema()
    with _pg().connect(postgres_url, autocommit=True) as conn:
        conn.execute(_BOOTSTRAP.format(s=schema))
        conn.execute(MIGRATIONS[0].format(s=schema))
        conn.execute(
            f"INSERT INTO {schema}.markers VALUES ('signups', 'auth0|old', 'confirmed', 1, 1)"
        )
    database = PostgresDatabase(postgres_url, schema=schema, timeout=5)
    try:
        assert database.schema_version() == 1
        store = PostgresStore(database, "signups")
        assert store.lookup("auth0|old") is MarkerState.CONFIRMED  # first use upgrades
        assert database.schema_version() == SCHEMA_VERSION
        indexes = database.run(
            "SELECT indexname FROM pg_indexes WHERE schemaname = %s",
            (schema,),
            what="indexes",
            fetch="all",
        )
        assert ("outbox_bodies",) in indexes
        columns = database.run(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = 'outbox'",
            (schema,),
            what="columns",
            fetch="all",
        )
        assert ("first_failed_at",) in columns  # version 3 (KEEN_SIGNUP_RETRY_FOR)
    finally:
        database.close()


def test_the_shipped_sql_creates_what_the_code_uses(postgres_url: str) -> None:
    """A DBA runs ``flask keen-signup schema`` output; the app, without CREATE, works."""
    from flask_keen_signup.delivery.postgres_outbox import PostgresOutbox
    from flask_keen_signup.postgres import PostgresDatabase
    from flask_keen_signup.postgres_schema import schema_sql
    from flask_keen_signup.stores.postgres import PostgresStore

    schema = fresh_schema()
    with _pg().connect(postgres_url, autocommit=True) as conn:
        conn.execute(schema_sql(schema))
    database = PostgresDatabase(postgres_url, schema=schema, timeout=5, create_schema=False)
    try:
        store, box = PostgresStore(database, "signups"), PostgresOutbox(database)
        assert box.claim_and_enqueue(store, "auth0|dba", signup(7))
        assert box.stats().pending == 1
    finally:
        database.close()


def test_cli_schema_prints_the_sql_for_the_configured_schema(tmp_path: t.Any) -> None:
    from flask import Flask

    from flask_keen_signup import KeenSignup

    app = Flask(__name__)
    app.config.update(
        KEEN_PROJECT_ID="p",
        KEEN_WRITE_KEY="w",
        KEEN_SIGNUP_ENABLED=False,
        KEEN_SIGNUP_DATABASE_SCHEMA="analytics",
        KEEN_SIGNUP_DATABASE=str(tmp_path / "x.sqlite3"),
    )
    KeenSignup(app)
    result = app.test_cli_runner().invoke(args=["keen-signup", "schema"])
    assert result.exit_code == 0, result.output
    assert "CREATE SCHEMA IF NOT EXISTS analytics;" in result.output
    assert "CREATE TABLE IF NOT EXISTS analytics.outbox" in result.output
    assert "INSERT INTO analytics.schema_version (version) VALUES (1)" in result.output


# --------------------------------------------------------------------------- the extension


def _pg_app(
    auth0: Auth0Emulator, keen: KeenEmulator, postgres_url: str, tmp_path: t.Any, **config: t.Any
) -> t.Any:
    settings: dict[str, t.Any] = {
        "KEEN_SIGNUP_STORE": "postgres",
        "KEEN_SIGNUP_DATABASE_URL": postgres_url,
        "KEEN_SIGNUP_DATABASE_SCHEMA": fresh_schema(),
        "KEEN_SIGNUP_STORE_TIMEOUT": 5.0,
        **config,
    }
    app, signup_ext = quickstart_app(auth0, keen, str(tmp_path / "unused.sqlite3"), **settings)
    return app, signup_ext


def _close(app: t.Any) -> None:
    state = signup_state(app)
    if state.sender is not None:
        state.sender.stop(5)
    state.outbox.close()  # the pools stay: the exit flush of every sender still reads them


def test_a_new_user_is_reported_once_and_a_returning_user_costs_no_event(
    auth0: Auth0Emulator, keen: KeenEmulator, postgres_url: str, tmp_path: t.Any
) -> None:
    app, _ = _pg_app(auth0, keen, postgres_url, tmp_path)
    state = signup_state(app)
    try:
        client = app.test_client()
        assert login(client, auth0, "ada@example.com", name="Ada").status_code == 302
        assert wait_until(lambda: len(keen.events("signups")) == 1)
        client = app.test_client()
        assert login(client, auth0, "ada@example.com").status_code == 302
        # A new process's memory: the ledger answers (one indexed read), no new event.
        state.tracker.known = type(state.tracker.known)()
        assert login(app.test_client(), auth0, "ada@example.com").status_code == 302
        assert wait_until(lambda: state.outbox.stats().delivered == 1)
        time.sleep(0.3)
        (event,) = keen.events("signups")
        assert event["name"] == "Ada"
        user_id = event["userId"]
        assert event["keen"]["uniqueness_token"] == uniqueness_token("signups", user_id)
        assert wait_until(lambda: state.store.lookup(user_id) is MarkerState.CONFIRMED)
    finally:
        _close(app)


def test_statements_per_login_new_one_known_none_unseen_one(
    auth0: Auth0Emulator, keen: KeenEmulator, postgres_url: str, tmp_path: t.Any
) -> None:
    """Counted by the server (pg_stat_statements): a new user's login sends the marker
    read and the one claim-and-enqueue statement; a returning user this process knows
    sends nothing; one it has not seen sends the read only."""
    app, signup_ext = _pg_app(auth0, keen, postgres_url, tmp_path)
    state = signup_state(app)
    schema = state.store.database.schema
    try:
        state.sender.stop(5)
        state.outbox.pending_count()  # the schema exists
        assert wait_until(
            lambda: not any(
                th.name == "flask-keen-signup-known-users" for th in threading.enumerate()
            )
        )
        with _pg().connect(postgres_url, autocommit=True) as admin:
            admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

            def sent(claims: dict[str, t.Any]) -> list[tuple[str, int]]:
                admin.execute("SELECT pg_stat_statements_reset()")
                assert _track_in(app, signup_ext, claims, None) is not None
                rows = admin.execute(
                    "SELECT query, calls FROM pg_stat_statements WHERE query LIKE %s",
                    (f"%{schema}.%",),
                ).fetchall()
                return [(query.split()[0], int(calls)) for query, calls in rows]

            new = sent({"sub": "auth0|counted"})
            assert sorted(new) == [("(SELECT", 1), ("WITH", 1)], new
            assert sent({"sub": "auth0|counted"}) == [], "a known user costs no statement"
            state.tracker.known = type(state.tracker.known)()
            assert sent({"sub": "auth0|counted"}) == [("(SELECT", 1)]
    finally:
        _close(app)


def test_status_retry_dead_and_dead_work_on_postgres(
    auth0: Auth0Emulator, keen: KeenEmulator, postgres_url: str, tmp_path: t.Any
) -> None:
    app, _ = _pg_app(auth0, keen, postgres_url, tmp_path)
    state = signup_state(app)
    try:
        state.sender.stop(5)
        event_id = state.outbox.enqueue(signup(1))
        (row,) = state.outbox.claim_due(5, now=time.time(), lease_seconds=60, owner="op")
        state.outbox.mark_dead(row.id, reason="InvalidPropertyNameError: x", error_code="Invalid")
        runner = app.test_cli_runner()
        status = runner.invoke(args=["keen-signup", "status"])
        assert status.exit_code == 0 and "dead:              1" in status.output, status.output
        dead = runner.invoke(args=["keen-signup", "dead"])
        assert f"{event_id}\tauth0|user1\tInvalid" in dead.output
        retried = runner.invoke(args=["keen-signup", "retry-dead"])
        assert "moved 1 dead letter(s)" in retried.output
        flushed = runner.invoke(args=["keen-signup", "flush", "--timeout", "20"])
        assert flushed.exit_code == 0, flushed.output
        assert [e["userId"] for e in keen.events("signups")] == ["auth0|user1"]
    finally:
        _close(app)


# --------------------------------------------------------------------------- app transaction


def _track_in(app: t.Any, signup_ext: t.Any, claims: dict[str, t.Any], conn: t.Any) -> t.Any:
    """``track_claims`` in a request context (``conn``: the app's connection, or None)."""
    with app.test_request_context("/callback"):
        return signup_ext.track_claims(claims, connection=conn)


def test_psycopg_transaction_rollback_leaves_no_signup_and_commit_sends_one(
    auth0: Auth0Emulator, keen: KeenEmulator, postgres_url: str, tmp_path: t.Any
) -> None:
    app, signup_ext = _pg_app(auth0, keen, postgres_url, tmp_path)
    state = signup_state(app)
    try:
        state.outbox.pending_count()  # the schema exists before the app's transaction
        with _pg().connect(postgres_url) as conn:  # not autocommit: one open transaction
            conn.execute("CREATE TEMP TABLE accounts (sub text)")
            conn.commit()
            conn.execute("INSERT INTO accounts VALUES ('auth0|rolled')")
            outcome = _track_in(app, signup_ext, {"sub": "auth0|rolled", "name": "R"}, conn)
            assert outcome is TrackOutcome.QUEUED
            conn.rollback()
            conn.execute("INSERT INTO accounts VALUES ('auth0|kept')")
            outcome = _track_in(app, signup_ext, {"sub": "auth0|kept", "name": "K"}, conn)
            assert outcome is TrackOutcome.QUEUED
            time.sleep(0.5)
            assert keen.events("signups") == [], "nothing is sent before the app commits"
            conn.commit()
        assert wait_until(lambda: len(keen.events("signups")) >= 1)
        time.sleep(0.3)
        assert [e["userId"] for e in keen.events("signups")] == ["auth0|kept"]
        assert state.store.lookup("auth0|rolled") is None, "the rollback took the signup"
        assert state.outbox.stats().delivered == 1
        # The rolled-back user is still new at their next login.
        with _pg().connect(postgres_url, autocommit=True) as conn:
            again = _track_in(app, signup_ext, {"sub": "auth0|rolled"}, conn)
        assert again is TrackOutcome.QUEUED
    finally:
        _close(app)


def test_since_with_a_named_created_at_claim_holds_inside_the_app_transaction(
    auth0: Auth0Emulator, keen: KeenEmulator, postgres_url: str, tmp_path: t.Any
) -> None:
    """``KEEN_SIGNUP_CREATED_AT_CLAIM`` is read on this path too (it once read only
    ``created_at``): a user created before ``SINCE`` is marked, not reported."""
    claim = "https://example.com/joined"  # a name the default lookup would not find
    app, signup_ext = _pg_app(
        auth0,
        keen,
        postgres_url,
        tmp_path,
        KEEN_SIGNUP_SINCE="2026-11-18T00:00:00Z",
        KEEN_SIGNUP_CREATED_AT_CLAIM=claim,
    )
    state = signup_state(app)
    try:
        state.outbox.pending_count()
        with _pg().connect(postgres_url) as conn:
            old = {"sub": "auth0|old-in-txn", claim: "2026-11-01T00:00:00Z"}
            new = {"sub": "auth0|new-in-txn", claim: "2026-11-20T00:00:00Z"}
            assert _track_in(app, signup_ext, old, conn) is TrackOutcome.MARKED_ONLY
            assert _track_in(app, signup_ext, new, conn) is TrackOutcome.QUEUED
            conn.commit()
        assert wait_until(lambda: len(keen.events("signups")) >= 1)
        time.sleep(0.3)
        assert [e["userId"] for e in keen.events("signups")] == ["auth0|new-in-txn"]
        assert state.store.lookup("auth0|old-in-txn") is MarkerState.CONFIRMED
    finally:
        _close(app)


def test_the_commit_wakes_the_sender_through_notify(
    auth0: Auth0Emulator, keen: KeenEmulator, postgres_url: str, tmp_path: t.Any
) -> None:
    """With polling slowed to a minute, only the NOTIFY sent at commit can wake it (LISTEN
    on ``KEEN_SIGNUP_DATABASE_LISTEN_URL``)."""
    app, signup_ext = _pg_app(
        auth0,
        keen,
        postgres_url,
        tmp_path,
        KEEN_SIGNUP_FLUSH_INTERVAL=60,
        KEEN_SIGNUP_DATABASE_LISTEN_URL=postgres_url,
    )
    state = signup_state(app)
    try:
        assert wait_until(lambda: state.outbox._listener.connected.is_set(), 30)
        with _pg().connect(postgres_url) as conn:
            _track_in(app, signup_ext, {"sub": "auth0|woken"}, conn)
            conn.commit()
        assert wait_until(lambda: len(keen.events("signups")) == 1, 20)
    finally:
        _close(app)


def test_sqlalchemy_session_connection_commits_and_rolls_back_with_the_app(
    auth0: Auth0Emulator, keen: KeenEmulator, postgres_url: str, tmp_path: t.Any
) -> None:
    import sqlalchemy  # in the test extra: missing, it is a failure, not a skip
    from sqlalchemy.orm import Session

    app, signup_ext = _pg_app(auth0, keen, postgres_url, tmp_path)
    state = signup_state(app)
    engine = sqlalchemy.create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        state.outbox.pending_count()
        with Session(engine) as session:  # what Flask-SQLAlchemy's db.session is
            session.execute(sqlalchemy.text("SELECT 1"))
            outcome = _track_in(app, signup_ext, {"sub": "auth0|sa-rolled"}, session.connection())
            assert outcome is TrackOutcome.QUEUED
            session.rollback()
            outcome = _track_in(app, signup_ext, {"sub": "auth0|sa-kept"}, session.connection())
            assert outcome is TrackOutcome.QUEUED
            session.commit()
        assert wait_until(lambda: len(keen.events("signups")) >= 1)
        time.sleep(0.3)
        assert [e["userId"] for e in keen.events("signups")] == ["auth0|sa-kept"]
        assert state.store.lookup("auth0|sa-rolled") is None
    finally:
        engine.dispose()
        _close(app)


@pytest.mark.parametrize("locked", ["markers", "outbox"])
def test_a_failure_inside_the_app_transaction_leaves_it_usable(
    locked: str, auth0: Auth0Emulator, keen: KeenEmulator, postgres_url: str, tmp_path: t.Any
) -> None:
    """A store error (in the read, or in the claim) rolls back only the signup's
    savepoint: the app's writes commit."""
    app, signup_ext = _pg_app(
        auth0, keen, postgres_url, tmp_path, KEEN_SIGNUP_PROPAGATE_ERRORS=False
    )
    state = signup_state(app)
    failed: list[str] = []

    def on_failed(sender: t.Any, user_id: str, **extra: t.Any) -> None:
        failed.append(user_id)

    signals.signup_failed.connect(on_failed, app)
    try:
        state.outbox.pending_count()
        with _pg().connect(postgres_url) as conn:
            conn.execute("CREATE TEMP TABLE accounts (sub text)")
            conn.execute("INSERT INTO accounts VALUES ('auth0|x')")
            # Make the outbox insert fail: lock the table out with a tiny lock_timeout.
            conn.execute("SET lock_timeout = '50ms'")
            with _pg().connect(postgres_url) as blocker:
                blocker.execute(f"LOCK TABLE {state.store.database.table(locked)}")
                outcome = _track_in(app, signup_ext, {"sub": "auth0|x"}, conn)
                blocker.rollback()
            assert outcome is None, "the error was logged, not raised"
            (count,) = conn.execute("SELECT count(*) FROM accounts").fetchone()
            assert count == 1, "the app's transaction is still usable"
            conn.commit()
        assert failed == ["auth0|x"]
        assert state.store.lookup("auth0|x") is None
    finally:
        signals.signup_failed.disconnect(on_failed, app)
        _close(app)


def test_connection_needs_the_postgres_store(
    auth0: Auth0Emulator, keen: KeenEmulator, tmp_path: t.Any
) -> None:
    app, signup_ext = quickstart_app(
        auth0, keen, str(tmp_path / "s.sqlite3"), KEEN_SIGNUP_PROPAGATE_ERRORS=True
    )
    with app.test_request_context("/callback"):
        with pytest.raises(ConfigurationError, match="KEEN_SIGNUP_STORE = 'postgres'"):
            signup_ext.track_claims({"sub": "auth0|a"}, connection=object())
    signup_state(app).sender.stop(2)


def test_a_login_while_postgres_is_unreachable_is_spooled_and_loud_without_the_password(
    auth0: Auth0Emulator, keen: KeenEmulator, tmp_path: t.Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The login goes on within the budget; the candidate waits in the local spool (its
    delivery once PostgreSQL is back is in test_postgres_hosts.py); nothing names the
    password."""
    url = f"postgresql://keen:{PASSWORD}@127.0.0.1:{free_port()}/postgres"
    app, _ = quickstart_app(
        auth0,
        keen,
        str(tmp_path / "app.sqlite3"),
        KEEN_SIGNUP_STORE="postgres",
        KEEN_SIGNUP_DATABASE_URL=url,
        KEEN_SIGNUP_PROPAGATE_ERRORS=False,
    )
    failed: list[str] = []

    def on_failed(sender: t.Any, user_id: str, **extra: t.Any) -> None:
        failed.append(user_id)

    signals.signup_failed.connect(on_failed, app)
    caplog.set_level(logging.DEBUG)
    ext = signup_state(app)
    try:
        started = time.monotonic()
        response = login(app.test_client(), auth0, "down@example.com")
        assert response.status_code == 302
        assert time.monotonic() - started < 10  # bounded by the budget, not a hang
        assert failed == [], "spooled, not failed"
        assert ext.spool.stats()[0] == 1
        assert "PostgreSQL" in caplog.text, "the store's trouble is logged"
        assert PASSWORD not in caplog.text
    finally:
        signals.signup_failed.disconnect(on_failed, app)
        _close(app)


# --------------------------------------------------------------------------- process life


def test_a_forked_child_opens_its_own_connections_and_the_parents_keep_working(
    parts: tuple[t.Any, t.Any],
) -> None:
    """gunicorn --preload in miniature: the parent's pooled connections never serve the
    child (each process's statements run on its own backend pid)."""
    import os

    store, box = parts
    database = store.database
    database.run("SELECT 1", what="warm")
    parents = {
        pid
        for (pid,) in database.run(
            "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'flask-keen-signup%%'",
            what="backends",
            fetch="all",
        )
    }
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            (backend,) = database.run("SELECT pg_backend_pid()", what="pid", fetch="one")
            won = box.claim_and_enqueue(store, "auth0|child", signup(5))
            os.write(write, f"{backend} {won}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(child, 0)
    with os.fdopen(read) as pipe:
        backend_text, won_text = pipe.read().split()
    assert os.WEXITSTATUS(status) == 0
    assert int(backend_text) not in parents, "the child used a connection of the parent's"
    assert won_text == "True"
    for _ in range(5):  # the parent's pooled connections are intact after the child's exit
        (backend,) = database.run("SELECT pg_backend_pid()", what="pid", fetch="one")
        assert backend in parents
    assert store.lookup("auth0|child") is MarkerState.PENDING
    assert box.pending_count() == 1


def test_the_request_budget_is_the_statement_timeout_and_url_options_are_kept(
    postgres_url: str,
) -> None:
    from flask_keen_signup.postgres import PostgresDatabase

    url = postgres_url + "?options=-c%20synchronous_commit%3Doff"
    database = PostgresDatabase(url, schema=fresh_schema(), timeout=0.25)
    try:
        show = "SELECT current_setting('statement_timeout'), current_setting('synchronous_commit')"
        assert database.run(show, what="show", fetch="one") == ("250ms", "off")
        assert database.run(show, what="show", role="worker", fetch="one") == ("30s", "off")
        with pytest.raises(StoreError, match="statement timeout"):
            database.run("SELECT pg_sleep(5)", what="sleep", fetch="one")
        assert database.run("SELECT 1", what="after", fetch="one") == (1,)
    finally:
        database.close()


def test_sync_mode_sends_in_the_request_and_queues_what_failed(
    auth0: Auth0Emulator, keen: KeenEmulator, postgres_url: str, tmp_path: t.Any
) -> None:
    app, _ = _pg_app(auth0, keen, postgres_url, tmp_path, KEEN_SIGNUP_DELIVERY="sync")
    state = signup_state(app)
    try:
        assert login(app.test_client(), auth0, "sync@example.com").status_code == 302
        (event,) = keen.events("signups")  # sent during the request
        assert state.store.lookup(event["userId"]) is MarkerState.CONFIRMED
        keen.set_down(True)
        assert login(app.test_client(), auth0, "later@example.com").status_code == 302
        later = next(u["user_id"] for u in auth0.users() if u["email"] == "later@example.com")
        assert state.store.lookup(later) is None, "released for the next login"
        keen.set_down(False)
        assert wait_until(lambda: len(keen.events("signups")) == 2)
        assert wait_until(lambda: state.store.lookup(later) is MarkerState.CONFIRMED)
    finally:
        keen.clear_faults()
        _close(app)


def test_known_users_are_loaded_from_the_table_at_start(
    auth0: Auth0Emulator, keen: KeenEmulator, postgres_url: str, tmp_path: t.Any
) -> None:
    from flask_keen_signup.postgres import PostgresDatabase
    from flask_keen_signup.stores.postgres import PostgresStore

    schema = fresh_schema()
    database = PostgresDatabase(postgres_url, schema=schema, timeout=5)
    PostgresStore(database, "signups").confirm_many([f"auth0|old{n}" for n in range(50)])
    database.close()
    app, _ = _pg_app(auth0, keen, postgres_url, tmp_path, KEEN_SIGNUP_DATABASE_SCHEMA=schema)
    tracker = signup_state(app).tracker
    try:
        assert wait_until(lambda: len(tracker.known) == 50)
        assert "auth0|old7" in tracker.known
    finally:
        _close(app)


def test_a_user_id_postgres_cannot_store_is_a_store_error(parts: tuple[t.Any, t.Any]) -> None:
    """PostgreSQL text holds no NUL character (SQLite's does): a clear StoreError, which
    the extension logs without breaking the login; nothing is written."""
    store, box = parts
    with pytest.raises(StoreError, match="NUL"):
        box.claim_and_enqueue(store, "auth0|a\x00b", signup(1))
    assert box.pending_count() == 0


def test_bulk_known_mark_and_report_for_migrations(parts: tuple[t.Any, t.Any]) -> None:
    """What a migration ledger needs: which users are known, mark many, report many (each
    user's confirmed marker and event both or neither, users already known left alone)."""
    store, box = parts
    assert store.claim("auth0|user1")  # a live login got there first: pending
    assert store.known(["auth0|user1", "auth0|user2"]) == {"auth0|user1"}
    assert store.mark(["auth0|user1", "auth0|user2", "auth0|user2"]) == {"auth0|user2"}
    assert store.lookup("auth0|user1") is MarkerState.PENDING, "an existing marker stays"
    assert store.lookup("auth0|user2") is MarkerState.CONFIRMED
    events = [signup(n) for n in (1, 2, 3, 4)]
    assert box.report_confirmed(store, events) == 2  # users 3 and 4
    assert box.report_confirmed(store, events) == 0, "safe to run again"
    assert store.lookup("auth0|user3") is MarkerState.CONFIRMED
    rows = box.claim_due(10, now=time.time() + 1, lease_seconds=60, owner="m")
    assert sorted(r.user_id for r in rows) == ["auth0|user3", "auth0|user4"]
    assert box.report_confirmed(store, []) == 0




def test_migrate_from_a_users_file_on_postgres(
    auth0: Auth0Emulator, keen: KeenEmulator, postgres_url: str, tmp_path: t.Any
) -> None:
    """``flask keen-signup migrate`` records users beside the postgres outbox: the Rule's
    users marked, the gap reported once, nobody twice on a second run."""
    from test_migrate import _write_ndjson_gz
    from test_migrate import migrate
    from test_migrate import table

    path = tmp_path / "users.ndjson.gz"
    _write_ndjson_gz(path)
    app, _ = _pg_app(auth0, keen, postgres_url, tmp_path)
    state = signup_state(app)
    try:
        first = migrate(app, "--users-file", str(path))
        assert first.exit_code == 0, first.output
        rows = table(first.output)
        assert (rows["marked"], rows["reported"], rows["already known"]) == (3, 1, 0)
        again = table(migrate(app, "--users-file", str(path)).output)
        assert (again["reported"], again["already known"]) == (0, 4)  # incl. the undated
        assert wait_until(lambda: len(keen.events("signups")) == 1)
        assert keen.events("signups")[0]["userId"] == "google-oauth2|gap"
        assert state.store.lookup("google-oauth2|gap") is MarkerState.CONFIRMED
    finally:
        _close(app)


def test_a_first_deploy_on_an_empty_postgres_ledger_warns_to_migrate(
    auth0: Auth0Emulator,
    keen: KeenEmulator,
    postgres_url: str,
    tmp_path: t.Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="flask_keen_signup.assembly")
    app, _ = _pg_app(auth0, keen, postgres_url, tmp_path)
    try:
        assert wait_until(lambda: "flask keen-signup migrate" in caplog.text, 20)
    finally:
        _close(app)
