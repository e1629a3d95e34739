"""Retention and erasure (issue 10, item 8; DESIGN §9).

Retention: delivered bodies older than ``KEEN_SIGNUP_RETENTION`` are dropped (id, user,
outcome and times stay), newer ones stay, pending ones are never touched: for the memory,
SQLite and Redis outboxes, and by the sender by itself. Erasure: a user who signed up
through the real login, delivered to the Keen emulator, is forgotten with
``flask keen-signup forget`` (Flask's CliRunner): their personal data leaves the SQLite
file (read back with ``sqlite3``) and the emulator (extraction no longer returns it), and
their next login is still a returning user.
"""

from __future__ import annotations

import json
import time
import typing as t
import uuid

import pytest
import requests
from _flow import login
from _flow import quickstart_app
from _sqlite import open_sqlite
from flask import Flask

from flask_keen_signup import signup_state
from flask_keen_signup.database import Database
from flask_keen_signup.delivery import MemoryOutbox
from flask_keen_signup.delivery import Outbox
from flask_keen_signup.delivery import QueuedEvent
from flask_keen_signup.delivery.sender import Sender
from flask_keen_signup.delivery.sqlite_outbox import SQLiteOutbox
from flask_keen_signup.events import uniqueness_token
from flask_keen_signup.keen import KeenClient
from flask_keen_signup.stores import erased_user_id
from flask_keen_signup.testing import Auth0Emulator
from flask_keen_signup.testing import KeenEmulator

try:
    import redis
except ImportError:  # the redis_server fixture skips, or fails when CI=true
    redis = None  # type: ignore[assignment]

COLLECTION = "signups"
DAY = 86400.0
NOW = 1_800_000_000.0


def _event(n: int, user: str | None = None) -> QueuedEvent:
    user = user or f"auth0|user{n}"
    body = {
        "userId": user,
        "name": f"Person {n}",
        "ip": "203.0.113.7",
        "keen": {"uniqueness_token": uniqueness_token(COLLECTION, user)},
    }
    return QueuedEvent(COLLECTION, user, uniqueness_token(COLLECTION, user), body)


# --------------------------------------------------------------------------- the three outboxes


def _memory(tmp_path: t.Any, request: pytest.FixtureRequest) -> tuple[Outbox, t.Any]:
    box = MemoryOutbox()

    def rows() -> dict[int, tuple[str, str, str]]:
        with box.database.reading() as conn:
            found = conn.execute("SELECT id, state, user_id, body FROM keen_signup_outbox")
            return {i: (s, u, b) for i, s, u, b in found}

    return box, rows


def _sqlite(tmp_path: t.Any, request: pytest.FixtureRequest) -> tuple[Outbox, t.Any]:
    path = str(tmp_path / "outbox.sqlite3")
    box = SQLiteOutbox(Database(path))

    def rows() -> dict[int, tuple[str, str, str]]:
        with open_sqlite(path) as conn:
            found = conn.execute("SELECT id, state, user_id, body FROM keen_signup_outbox")
            return {i: (s, u, b) for i, s, u, b in found}

    return box, rows


def _redis(
    tmp_path: t.Any, request: pytest.FixtureRequest, cluster: bool = False
) -> tuple[Outbox, t.Any]:
    from flask_keen_signup.delivery.redis_outbox import RedisOutbox

    if cluster:  # three masters: the prefix's hash tag keeps every key on one of them
        port = request.getfixturevalue("redis_cluster").nodes[0].port
        client = redis.cluster.RedisCluster(host="127.0.0.1", port=port, decode_responses=True)
        prefix = f"{{test:{uuid.uuid4().hex[:12]}}}"
    else:
        server = request.getfixturevalue("redis_server")
        client = redis.Redis.from_url(server.url, decode_responses=True)
        prefix = f"test:{uuid.uuid4().hex[:12]}"
    request.addfinalizer(client.close)
    box = RedisOutbox(client, prefix=prefix)

    def rows() -> dict[int, tuple[str, str, str]]:
        found = {}
        for index in ("open", "done", "dead"):
            for member in client.zrange(f"{box.prefix}:outbox:{index}", 0, -1):
                h = client.hgetall(box.row_key(int(member)))
                found[int(member)] = (h["state"], h["user_id"], h.get("body", ""))
        return found

    return box, rows


def _postgres(tmp_path: t.Any, request: pytest.FixtureRequest) -> tuple[Outbox, t.Any]:
    from flask_keen_signup.delivery.postgres_outbox import PostgresOutbox

    database = request.getfixturevalue("postgres_database")
    box = PostgresOutbox(database)

    def rows() -> dict[int, tuple[str, str, str]]:
        found = database.run(
            f"SELECT id, state, user_id, body FROM {database.table('outbox')}",
            what="read",
            fetch="all",
        )
        return {i: (s, u, b) for i, s, u, b in found}

    return box, rows


OUTBOXES = {
    "memory": _memory,
    "sqlite": _sqlite,
    "redis": _redis,
    "redis-cluster": lambda tmp_path, request: _redis(tmp_path, request, cluster=True),
    "postgres": _postgres,
}


@pytest.fixture(params=sorted(OUTBOXES))
def outbox(tmp_path: t.Any, request: pytest.FixtureRequest) -> tuple[Outbox, t.Any]:
    return OUTBOXES[request.param](tmp_path, request)


def _claim_all(box: Outbox, now: float) -> list[int]:
    return [row.id for row in box.claim_due(100, now=now, lease_seconds=60, owner="t")]


def test_retention_drops_old_delivered_bodies_only(outbox: tuple[Outbox, t.Any]) -> None:
    box, rows = outbox
    old = [box.enqueue(_event(n), now=NOW - 10 * DAY) for n in range(3)]
    pending_old = box.enqueue(_event(3), now=NOW - 30 * DAY)
    assert sorted(_claim_all(box, NOW - 10 * DAY)) == sorted([*old, pending_old])
    box.mark_delivered(old[:2], now=NOW - 8 * DAY)  # past a 7-day retention
    box.mark_delivered(old[2:], now=NOW - 6 * DAY)  # within it
    box.mark_retry(pending_old, next_attempt_at=NOW + DAY, error="keen down")

    assert box.drop_delivered_bodies(7 * DAY, now=NOW) == 2
    after = rows()
    for row_id in old[:2]:
        state, user, body = after[row_id]
        assert (state, body) == ("delivered", ""), "body gone"
        assert user.startswith("auth0|user"), "id, user and outcome stay"
    assert json.loads(after[old[2]][2])["name"] == "Person 2", "newer body stays"
    assert after[pending_old][0] == "pending"
    assert json.loads(after[pending_old][2])["name"] == "Person 3", "pending never touched"
    assert box.drop_delivered_bodies(7 * DAY, now=NOW) == 0, "idempotent and cheap"
    assert box.drop_delivered_bodies(0, now=NOW) == 1
    assert json.loads(rows()[pending_old][2])["name"] == "Person 3"
    # the pending event is still delivered normally
    (row,) = box.claim_due(10, now=NOW + 2 * DAY, lease_seconds=60, owner="t")
    assert row.id == pending_old and row.body["name"] == "Person 3"
    assert box.stats(now=NOW).delivered == 3


def test_forget_erases_one_user_in_the_outbox(outbox: tuple[Outbox, t.Any]) -> None:
    box, rows = outbox
    delivered = box.enqueue(_event(1), now=NOW)
    queued = box.enqueue(_event(2), now=NOW)
    dead = box.enqueue(_event(3), now=NOW)
    other = box.enqueue(_event(4), now=NOW)
    _claim_all(box, NOW)
    box.mark_delivered([delivered], now=NOW)
    box.mark_retry(queued, next_attempt_at=NOW, error="x")
    box.mark_dead(dead, reason="InvalidPropertyValueError: Person 3", error_code="E", now=NOW)
    box.mark_delivered([other], now=NOW)

    for n in (1, 2, 3):
        user = f"auth0|user{n}"
        report = box.forget_user(COLLECTION, user, erased_id=erased_user_id(COLLECTION, user))
        assert report.total == 1
    after = rows()
    for row_id in (delivered, queued):
        state, user, body = after[row_id]
        assert user.startswith("sha256:") and body == ""
        assert state in ("delivered", "skipped")
    assert after[queued][0] == "skipped", "a queued event of an erased user is never sent"
    assert dead not in after or after[dead][1].startswith("sha256:")
    assert box.dead_letters() == []
    assert after[other][1] == "auth0|user4" and json.loads(after[other][2])["name"]
    assert box.claim_due(10, now=NOW + DAY, lease_seconds=60, owner="t") == []
    text = json.dumps(after)
    for n in (1, 2, 3):
        assert f"auth0|user{n}" not in text and f"Person {n}" not in text


def test_the_sender_drops_bodies_by_itself(tmp_path: t.Any, keen_signup_keen: KeenEmulator) -> None:
    path = str(tmp_path / "sender.sqlite3")
    box = SQLiteOutbox(Database(path))
    ids = [box.enqueue(_event(n)) for n in range(3)]
    client = KeenClient(
        keen_signup_keen.project_id, keen_signup_keen.write_key, api_url=keen_signup_keen.url
    )
    sender = Sender(
        box,
        client,
        flush_interval=0.02,
        handle_signals=False,
        retention=0.0,
        retention_check_interval=0.05,
    )
    sender.start()
    try:
        deadline = time.monotonic() + 30
        bodies: list[str] = []
        while time.monotonic() < deadline:
            with open_sqlite(path) as conn:
                bodies = [b for (b,) in conn.execute("SELECT body FROM keen_signup_outbox")]
            if len(bodies) == 3 and all(b == "" for b in bodies):
                break
            time.sleep(0.05)
        assert bodies == ["", "", ""]
        assert len(keen_signup_keen.events(COLLECTION)) == 3
        with open_sqlite(path) as conn:
            kept = conn.execute(
                "SELECT id, user_id, state, done_at FROM keen_signup_outbox ORDER BY id"
            ).fetchall()
        assert [k[0] for k in kept] == ids
        assert all(k[2] == "delivered" and k[3] and k[1].startswith("auth0|") for k in kept)
    finally:
        sender.shutdown(2)
        client.close()


# --------------------------------------------------------------------------- end to end


def _app(
    auth0: Auth0Emulator, keen: KeenEmulator, database: str, **config: t.Any
) -> tuple[Flask, t.Any]:
    app, signup = quickstart_app(auth0, keen, database, **config)
    return app, signup


def _extract(keen: KeenEmulator) -> list[dict[str, t.Any]]:
    answer = requests.get(
        f"{keen.url}/3.0/projects/{keen.project_id}/queries/extraction",
        params={"event_collection": COLLECTION},
        headers={"Authorization": keen.read_key},
        timeout=10,
    )
    answer.raise_for_status()
    result: list[dict[str, t.Any]] = answer.json()["result"]
    return result


def _file_text(path: str) -> str:
    """Every value of every table of the SQLite file, as text."""
    with open_sqlite(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        tables = [
            name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
        return json.dumps(
            {name: conn.execute(f"SELECT * FROM {name}").fetchall() for name in tables}
        )


@pytest.mark.parametrize("with_master_key", [True, False])
def test_forget_end_to_end(
    tmp_path: t.Any,
    keen_signup_auth0: Auth0Emulator,
    keen_signup_keen: KeenEmulator,
    with_master_key: bool,
) -> None:
    auth0, keen = keen_signup_auth0, keen_signup_keen
    database = str(tmp_path / "app.sqlite3")
    config = {"KEEN_MASTER_KEY": keen.master_key} if with_master_key else {}
    app, _ = _app(auth0, keen, database, **config)
    state = signup_state(app)
    try:
        assert login(app.test_client(), auth0, "ada@example.com", name="Ada Lovelace")
        assert login(app.test_client(), auth0, "bob@example.com", name="Bob Builder")
        assert state.sender.flush(timeout=20) == 0
        ada = next(u for u in auth0.users() if u["email"] == "ada@example.com")["user_id"]
        assert {e["userId"] for e in _extract(keen)} == {
            ada,
            next(u for u in auth0.users() if u["email"] == "bob@example.com")["user_id"],
        }
        assert ada in _file_text(database) and "Ada Lovelace" in _file_text(database)

        result = app.test_cli_runner().invoke(args=["keen-signup", "forget", ada])
        assert result.exit_code == 0, result.output
        assert "kept as sha256:" in result.output

        stored = _file_text(database)
        assert ada not in stored and "Ada Lovelace" not in stored
        assert erased_user_id(COLLECTION, ada) in stored, "the marker stays, as a hash"
        assert "Bob Builder" in stored, "nobody else is touched"
        remaining = [e["userId"] for e in _extract(keen)]
        if with_master_key:
            assert "events were deleted" in result.output
            assert ada not in remaining and len(remaining) == 1
            deletes = [r for r in keen.request_log if r.method == "DELETE"]
            assert len(deletes) == 1 and deletes[0].headers["Authorization"] == keen.master_key
            assert json.loads(deletes[0].query["filters"]) == [
                {"property_name": "userId", "operator": "eq", "property_value": ada}
            ]
        else:
            assert "Keen still holds this user's events" in result.output
            assert ada in remaining and len(remaining) == 2
    finally:
        state.sender.shutdown(timeout=5)

    # A restarted app (nothing remembered in memory): Ada is still a returning user.
    keen.clear_log()
    app2, _ = _app(auth0, keen, database, **config)
    state2 = signup_state(app2)
    try:
        assert login(app2.test_client(), auth0, "ada@example.com")
        assert state2.sender.flush(timeout=20) == 0
        assert state2.outbox.stats().pending == 0
        assert not [r for r in keen.request_log if r.method == "POST"], "no new event"
        assert ada not in _file_text(database)
    finally:
        state2.sender.shutdown(timeout=5)


def test_forget_with_a_wrong_master_key_fails_loudly(
    tmp_path: t.Any, keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator
) -> None:
    keen = keen_signup_keen
    app, _ = _app(
        keen_signup_auth0, keen, str(tmp_path / "a.sqlite3"), KEEN_MASTER_KEY=keen.write_key
    )
    try:
        result = app.test_cli_runner().invoke(args=["keen-signup", "forget", "auth0|nobody"])
        assert result.exit_code != 0
        assert "Keen still holds this user's events" in result.output
        assert "AdminOnlyEndpointError" in result.output
        assert keen.write_key not in result.output
    finally:
        signup_state(app).sender.shutdown(timeout=5)


def test_prune_command(
    tmp_path: t.Any, keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator
) -> None:
    database = str(tmp_path / "p.sqlite3")
    app, _ = _app(keen_signup_auth0, keen_signup_keen, database)
    state = signup_state(app)
    try:
        for email in ("a@example.com", "b@example.com"):
            login(app.test_client(), keen_signup_auth0, email, name="Someone Private")
        assert state.sender.flush(timeout=20) == 0
        runner = app.test_cli_runner()
        result = runner.invoke(args=["keen-signup", "prune"])
        assert result.exit_code == 0, result.output
        assert "dropped the body of 0 delivered event(s) older than 7 days" in result.output
        assert "Someone Private" in _file_text(database)
        result = runner.invoke(args=["keen-signup", "prune", "--older-than", "0"])
        assert result.exit_code == 0, result.output
        assert "dropped the body of 2 delivered event(s)" in result.output
        assert "Someone Private" not in _file_text(database)
        bad = runner.invoke(args=["keen-signup", "prune", "--older-than", "soon"])
        assert bad.exit_code != 0 and "--older-than" in bad.output
    finally:
        state.sender.shutdown(timeout=5)


def test_the_emulator_delete_api_needs_the_master_key(keen_signup_keen: KeenEmulator) -> None:
    from flask_keen_signup.exceptions import KeenAPIError
    from flask_keen_signup.keen_admin import KeenAdminClient

    keen = keen_signup_keen
    with KeenClient(keen.project_id, keen.write_key, api_url=keen.url) as client:
        client.add_events({COLLECTION: [{"userId": "auth0|a"}, {"userId": "auth0|b"}]})
    for key in (keen.write_key, keen.read_key):
        with KeenAdminClient(keen.project_id, key, api_url=keen.url) as admin:
            with pytest.raises(KeenAPIError) as info:
                admin.delete_user_events(COLLECTION, "auth0|a", property_name="userId")
        assert info.value.status_code == 401 and info.value.retryable is False
        assert info.value.error_code == "AdminOnlyEndpointError"
        assert key not in str(info.value)
    assert len(keen.events(COLLECTION)) == 2
    with KeenAdminClient(keen.project_id, keen.master_key, api_url=keen.url) as admin:
        admin.delete_user_events(COLLECTION, "auth0|a", property_name="userId")
        with pytest.raises(ValueError):
            admin.delete_events(COLLECTION, [])
    assert [e["userId"] for e in keen.events(COLLECTION)] == ["auth0|b"]


def test_forget_with_the_redis_store(
    redis_server: t.Any,  # noqa: F811 - the imported fixture
    tmp_path: t.Any,
    keen_signup_auth0: Auth0Emulator,
    keen_signup_keen: KeenEmulator,
) -> None:
    auth0, keen = keen_signup_auth0, keen_signup_keen
    url = redis_server.url.rstrip("/") + "/2"
    client = redis.Redis.from_url(url, decode_responses=True)
    client.flushdb()
    config = {"KEEN_SIGNUP_STORE": "redis", "KEEN_SIGNUP_REDIS_URL": url}
    app, _ = _app(auth0, keen, str(tmp_path / "r.sqlite3"), **config)
    state = signup_state(app)
    try:
        login(app.test_client(), auth0, "ada@example.com", name="Ada Lovelace")
        assert state.sender.flush(timeout=20) == 0
        ada = auth0.users()[0]["user_id"]

        def everything() -> str:
            values = []
            for key in client.scan_iter("*"):
                kind = client.type(key)
                if kind == "hash":
                    values.append(json.dumps(client.hgetall(key)))
                elif kind == "string":
                    values.append(client.get(key) or "")
                values.append(key)
            return "\n".join(values)

        assert ada in everything() and "Ada Lovelace" in everything()
        result = app.test_cli_runner().invoke(args=["keen-signup", "forget", ada, "--local-only"])
        assert result.exit_code == 0, result.output
        assert "no raw user id in the marker store" in result.output
        assert ada not in everything() and "Ada Lovelace" not in everything()
    finally:
        state.sender.shutdown(timeout=5)
        state.store.close()
    # Another host (nothing in memory): Ada is still a returning user.
    app2, _ = _app(auth0, keen, str(tmp_path / "r2.sqlite3"), **config)
    state2 = signup_state(app2)
    try:
        keen.clear_log()
        login(app2.test_client(), auth0, "ada@example.com")
        assert state2.sender.flush(timeout=20) == 0
        assert not [r for r in keen.request_log if r.method == "POST"], "no new event"
        assert ada not in everything()
    finally:
        state2.sender.shutdown(timeout=5)
        state2.store.close()
        client.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
@pytest.mark.parametrize("reclaim_after", [None, 0.0])
def test_an_erased_marker_is_found_and_never_claimed_again(
    tmp_path: t.Any, reclaim_after: float | None, backend: str, request: pytest.FixtureRequest
) -> None:
    from flask_keen_signup.stores import MarkerState
    from flask_keen_signup.stores import MarkerStore
    from flask_keen_signup.stores.sqlite import SQLiteStore

    path = str(tmp_path / "m.sqlite3")
    store: MarkerStore = SQLiteStore(Database(path), COLLECTION, reclaim_after=reclaim_after)
    if backend == "postgres":
        from flask_keen_signup.stores.postgres import PostgresStore

        database = request.getfixturevalue("postgres_database")
        store = PostgresStore(database, COLLECTION, reclaim_after=reclaim_after)

        def user_ids() -> list[str]:
            found = database.run(
                f"SELECT user_id FROM {database.table('markers')}", what="read", fetch="all"
            )
            return sorted(u for (u,) in found)
    else:

        def user_ids() -> list[str]:
            with open_sqlite(path) as conn:
                return sorted(u for (u,) in conn.execute("SELECT user_id FROM keen_signup_markers"))

    assert store.claim("auth0|ada") and store.claim("auth0|bob")
    assert store.forget("auth0|ada") is True
    assert store.forget("auth0|ada") is False, "nothing raw left to hash"
    assert store.lookup("auth0|ada") is MarkerState.CONFIRMED
    assert store.claim("auth0|ada") is False
    assert store.lookup("auth0|bob") is MarkerState.PENDING
    assert user_ids() == ["auth0|bob", erased_user_id(COLLECTION, "auth0|ada")]
    assert store.lookup("auth0|carol") is None and store.claim("auth0|carol")


@pytest.mark.parametrize("store", ["sqlite", "redis", "postgres"])
def test_forget_drops_a_signup_still_in_the_local_spool(
    store: str,
    tmp_path: t.Any,
    keen_signup_auth0: Auth0Emulator,
    keen_signup_keen: KeenEmulator,
    request: pytest.FixtureRequest,
) -> None:
    """A signup the login path spooled (the store was slow) has no marker yet: forget must
    still keep it from ever reaching Keen."""
    config: dict[str, t.Any] = {}
    if store == "redis":
        server = request.getfixturevalue("redis_server")
        config = {"KEEN_SIGNUP_STORE": "redis", "KEEN_SIGNUP_REDIS_URL": server.url}
    elif store == "postgres":
        from _postgres import fresh_schema

        config = {
            "KEEN_SIGNUP_STORE": "postgres",
            "KEEN_SIGNUP_DATABASE_URL": request.getfixturevalue("postgres_url"),
            "KEEN_SIGNUP_DATABASE_SCHEMA": fresh_schema(),
            "KEEN_SIGNUP_STORE_TIMEOUT": 5,
        }
    app, _ = _app(keen_signup_auth0, keen_signup_keen, str(tmp_path / "s.sqlite3"), **config)
    state = signup_state(app)
    try:
        state.sender.stop(timeout=5)
        user = f"auth0|spooled-{uuid.uuid4().hex}"
        assert state.spool is not None
        state.spool.append(_event(1, user), TimeoutError("the store did not answer in time"))
        assert state.spool.depth() == 1
        result = app.test_cli_runner().invoke(
            args=["keen-signup", "forget", user, "--local-only"]
        )
        assert result.exit_code == 0, result.output
        state.sender.start()
        assert state.sender.flush(timeout=20) == 0
        assert state.spool.depth() == 0, "the spooled signup was decided"
        assert keen_signup_keen.events(COLLECTION) == [], "and dropped, never sent"
    finally:
        state.sender.shutdown(timeout=5)
        state.store.close()
