"""Issue 10, item 9: a batch slower than the lease is not resent by another sender.

Two senders (two "hosts": separate owners, separate clients) share one outbox, SQLite or
Redis. The Keen emulator holds the first batch request longer than the lease (its latency
injection); while it is on the wire the first sender renews its leases, so the second one
never claims those rows. The judge is the emulator's request log: each event's uniqueness
token went over the wire once, and the outbox counted no resends.
"""

from __future__ import annotations

import time
import typing as t

import pytest
from _redis import RedisServer
from _waits import wait_for

from flask_keen_signup.database import Database
from flask_keen_signup.delivery import MemoryOutbox
from flask_keen_signup.delivery import Outbox
from flask_keen_signup.delivery import QueuedEvent
from flask_keen_signup.delivery.sender import Sender
from flask_keen_signup.delivery.sqlite_outbox import SQLiteOutbox
from flask_keen_signup.events import uniqueness_token
from flask_keen_signup.keen import KeenClient
from flask_keen_signup.testing import KeenEmulator

LEASE = 0.6
LATENCY = 2.5  # > 4 leases: without renewal the other sender would claim the batch


def event(user_id: str) -> QueuedEvent:
    token = uniqueness_token("signups", user_id)
    return QueuedEvent(
        "signups", user_id, token, {"userId": user_id, "keen": {"uniqueness_token": token}}
    )


def sender(outbox: Outbox, keen: KeenEmulator, name: str) -> Sender:
    client = KeenClient(keen.project_id, keen.write_key, api_url=keen.url, timeout=(2, 10))
    return Sender(
        outbox,
        client,
        lease_seconds=LEASE,
        flush_interval=0.05,
        handle_signals=False,
        name=name,
        linger=0,
    )


def run_two_senders(first: Outbox, second: Outbox, keen: KeenEmulator) -> None:
    users = [f"auth0|slow{n}" for n in range(3)]
    for user in users:
        first.enqueue(event(user))
    keen.add_latency(LATENCY, count=1)  # only the first request is slow
    a, b = sender(first, keen, "sender-a"), sender(second, keen, "sender-b")
    a.start()
    try:
        wait_for(lambda: first.stats().in_flight == 3, 10, "the batch leased by sender a")
        b.start()
        wait_for(lambda: first.pending_count() == 0, LATENCY + 15, "the batch delivered")
        time.sleep(LEASE)  # a late resend would show now
    finally:
        a.stop(5)
        b.stop(5)
    tokens = [uniqueness_token("signups", user).encode() for user in users]
    posts = [r.body for r in keen.request_log if r.method == "POST"]
    assert [sum(body.count(token) for body in posts) for token in tokens] == [1, 1, 1]
    assert len(keen.events("signups")) == 3
    assert first.stats().resends == 0


@pytest.fixture
def keen() -> t.Iterator[KeenEmulator]:
    with KeenEmulator(request_log_limit=None) as emulator:
        yield emulator


def test_sqlite_leases_are_renewed_while_a_slow_batch_is_on_the_wire(
    tmp_path: t.Any, keen: KeenEmulator
) -> None:
    path = str(tmp_path / "keen_signup.sqlite3")
    # Two Database objects: the second sender is another process as far as SQLite knows.
    run_two_senders(SQLiteOutbox(Database(path)), SQLiteOutbox(Database(path)), keen)


def test_redis_leases_are_renewed_while_a_slow_batch_is_on_the_wire(
    tmp_path: t.Any, keen: KeenEmulator
) -> None:
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(str(directory), "--appendonly", "no").start()
    try:
        from flask_keen_signup.delivery.redis_outbox import RedisOutbox
        from flask_keen_signup.stores.redis import connect

        prefix = "lease-test"
        first = RedisOutbox(connect(server.url), prefix=prefix, close_client=True)
        second = RedisOutbox(connect(server.url), prefix=prefix, close_client=True)
        run_two_senders(first, second, keen)
        first.close()
        second.close()
    finally:
        server.kill()


def test_postgres_leases_are_renewed_while_a_slow_batch_is_on_the_wire(
    keen: KeenEmulator, postgres_url: str
) -> None:
    from _postgres import fresh_schema

    from flask_keen_signup.delivery.postgres_outbox import PostgresOutbox
    from flask_keen_signup.postgres import PostgresDatabase

    schema = fresh_schema()
    # Two databases (their own pools): two hosts.
    databases = [PostgresDatabase(postgres_url, schema=schema, timeout=5) for _ in range(2)]
    try:
        run_two_senders(PostgresOutbox(databases[0]), PostgresOutbox(databases[1]), keen)
    finally:
        for database in databases:
            database.close()


@pytest.mark.parametrize("backend", ["sqlite", "memory", "postgres"])
def test_renew_leases_extends_only_the_owners_open_rows(
    tmp_path: t.Any, backend: str, request: pytest.FixtureRequest
) -> None:
    outbox: Outbox = MemoryOutbox()
    if backend == "sqlite":
        outbox = SQLiteOutbox(Database(str(tmp_path / "db.sqlite3")))
    elif backend == "postgres":
        from flask_keen_signup.delivery.postgres_outbox import PostgresOutbox

        outbox = PostgresOutbox(request.getfixturevalue("postgres_database"))
    for user in ("a", "b", "c"):
        outbox.enqueue(event(user), now=100.0)
    mine = outbox.claim_due(2, now=100.0, lease_seconds=10, owner="me")
    theirs = outbox.claim_due(1, now=100.0, lease_seconds=10, owner="them")
    outbox.mark_delivered([mine[1].id], now=101.0)
    renewed = outbox.renew_leases(
        [r.id for r in mine + theirs], owner="me", now=105.0, lease_seconds=10
    )
    assert renewed == 1  # the delivered row and the other owner's row are left alone
    # At 112 the other owner's lease (to 110) has run out; the renewed one (to 115) has not.
    assert [r.id for r in outbox.claim_due(5, now=112.0, lease_seconds=10, owner="x")] == [
        theirs[0].id
    ]
    assert [r.id for r in outbox.claim_due(5, now=116.0, lease_seconds=10, owner="y")] == [
        mine[0].id
    ]
