"""The marker stores: the same contract for every backend, plus each one's own promises."""

from __future__ import annotations

import multiprocessing
import os
import stat
import threading
import typing as t

import pytest
from _postgres import POSTGRES_VARIANTS
from flask import Flask

from flask_keen_signup.database import Database
from flask_keen_signup.stores import MarkerState
from flask_keen_signup.stores import MarkerStore
from flask_keen_signup.stores import MemoryStore
from flask_keen_signup.stores.session import SessionStore
from flask_keen_signup.stores.sqlite import SQLiteStore


@pytest.fixture(params=["memory", "sqlite", "session", *POSTGRES_VARIANTS])
def store(request: pytest.FixtureRequest, tmp_path: t.Any) -> t.Iterator[MarkerStore]:
    if request.param == "memory":
        yield MemoryStore()
    elif request.param in POSTGRES_VARIANTS:  # direct, or through PgBouncer
        from flask_keen_signup.stores.postgres import PostgresStore

        database = request.getfixturevalue(POSTGRES_VARIANTS[request.param])
        yield PostgresStore(database, "signups")
    elif request.param == "sqlite":
        yield SQLiteStore(Database(str(tmp_path / "ledger.sqlite3")), "signups")
    else:
        app = Flask(__name__)
        app.secret_key = "test"
        with app.test_request_context():
            yield SessionStore("signups")


def test_claim_confirm_release_contract(store: MarkerStore) -> None:
    assert store.lookup("auth0|a") is None
    assert store.claim("auth0|a") is True
    assert store.lookup("auth0|a") is MarkerState.PENDING
    assert store.claim("auth0|a") is False, "a second claim must lose"
    store.release("auth0|a")
    assert store.lookup("auth0|a") is None
    assert store.claim("auth0|a") is True, "after a release the next login retries"
    store.confirm("auth0|a")
    assert store.lookup("auth0|a") is MarkerState.CONFIRMED
    store.release("auth0|a")
    assert store.lookup("auth0|a") is MarkerState.CONFIRMED, "release never undoes a confirm"
    assert store.claim("auth0|a") is False


def test_confirm_without_claim_marks_the_user(store: MarkerStore) -> None:
    store.confirm("google-oauth2|b")
    assert store.lookup("google-oauth2|b") is MarkerState.CONFIRMED
    assert store.claim("google-oauth2|b") is False


def test_users_are_independent(store: MarkerStore) -> None:
    assert store.claim("auth0|a")
    assert store.claim("auth0|b")
    assert store.lookup("auth0|c") is None


def test_sqlite_markers_are_per_collection(tmp_path: t.Any) -> None:
    database = Database(str(tmp_path / "ledger.sqlite3"))
    assert SQLiteStore(database, "signups").claim("auth0|a")
    assert SQLiteStore(database, "other").claim("auth0|a")


def test_sqlite_file_is_private_and_in_wal_mode(tmp_path: t.Any) -> None:
    path = tmp_path / "sub" / "ledger.sqlite3"
    store = SQLiteStore(Database(str(path)), "signups")
    store.claim("auth0|a")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    mode = store.database.connection().execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_sqlite_survives_a_new_process_view(tmp_path: t.Any) -> None:
    path = str(tmp_path / "ledger.sqlite3")
    SQLiteStore(Database(path), "signups").confirm("auth0|a")
    assert SQLiteStore(Database(path), "signups").lookup("auth0|a") is MarkerState.CONFIRMED


def test_sqlite_stale_pending_claim_can_be_reclaimed(tmp_path: t.Any) -> None:
    database = Database(str(tmp_path / "ledger.sqlite3"))
    store = SQLiteStore(database, "signups", reclaim_after=60)
    assert store.claim("auth0|a")
    assert not store.claim("auth0|a"), "a fresh pending claim is not stale"
    database.connection().execute("UPDATE keen_signup_markers SET claimed_at = claimed_at - 120")
    assert store.claim("auth0|a"), "a claim left by a dead request is reclaimed"
    store.confirm("auth0|a")
    database.connection().execute("UPDATE keen_signup_markers SET claimed_at = claimed_at - 120")
    assert not store.claim("auth0|a"), "a confirmed marker is never reclaimed"


def test_sqlite_without_reclaim_keeps_pending(tmp_path: t.Any) -> None:
    database = Database(str(tmp_path / "ledger.sqlite3"))
    store = SQLiteStore(database, "signups")
    assert store.claim("auth0|a")
    database.connection().execute("UPDATE keen_signup_markers SET claimed_at = claimed_at - 1e6")
    assert not store.claim("auth0|a")


def test_sqlite_claim_and_rollback_share_a_transaction(tmp_path: t.Any) -> None:
    store = SQLiteStore(Database(str(tmp_path / "ledger.sqlite3")), "signups")
    with pytest.raises(RuntimeError):
        with store.database.transaction() as conn:
            assert store.claim_in(conn, "auth0|a")
            raise RuntimeError("the enqueue failed")
    assert store.lookup("auth0|a") is None, "a rolled-back claim leaves no marker"


def test_threads_racing_for_one_user_one_wins(tmp_path: t.Any) -> None:
    store = SQLiteStore(Database(str(tmp_path / "ledger.sqlite3")), "signups")
    barrier = threading.Barrier(8)
    wins: list[bool] = []

    def race() -> None:
        barrier.wait()
        wins.append(store.claim("auth0|same"))

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(wins) == [False] * 7 + [True]


def test_memory_store_threads_racing_one_wins() -> None:
    store = MemoryStore()
    barrier = threading.Barrier(8)
    wins: list[bool] = []

    def race() -> None:
        barrier.wait()
        wins.append(store.claim("auth0|same"))

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wins.count(True) == 1


def _claim_in_process(path: str, start: t.Any, results: t.Any) -> None:
    store = SQLiteStore(Database(path), "signups")
    start.wait()
    results.put(store.claim("auth0|same"))


def test_processes_racing_for_one_user_one_wins(tmp_path: t.Any) -> None:
    path = str(tmp_path / "ledger.sqlite3")
    SQLiteStore(Database(path), "signups").lookup("warm-up")  # create the schema once
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    results = ctx.Queue()
    processes = [
        ctx.Process(target=_claim_in_process, args=(path, start, results)) for _ in range(4)
    ]
    for process in processes:
        process.start()
    start.set()
    outcomes = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert sorted(outcomes) == [False, False, False, True]


def test_session_store_is_per_browser() -> None:
    app = Flask(__name__)
    app.secret_key = "test"
    with app.test_request_context():
        SessionStore("signups").confirm("auth0|a")
    with app.test_request_context():  # a new browser: an empty session
        assert SessionStore("signups").lookup("auth0|a") is None


def test_session_store_keeps_the_user_id_out_of_the_cookie() -> None:
    from flask import session

    app = Flask(__name__)
    app.secret_key = "test"
    with app.test_request_context():
        SessionStore("signups").confirm("auth0|secret-user")
        assert "auth0|secret-user" not in repr(dict(session))


def test_sqlite_confirm_many_in_one_go(tmp_path: t.Any) -> None:
    store = SQLiteStore(Database(str(tmp_path / "ledger.sqlite3")), "signups")
    assert store.claim("auth0|pending")
    store.confirm_many(["auth0|pending", "auth0|absent"])
    store.confirm_many([])
    assert store.lookup("auth0|pending") is MarkerState.CONFIRMED
    assert store.lookup("auth0|absent") is MarkerState.CONFIRMED
    assert store.counts() == {"confirmed": 2}
