"""``KEEN_SIGNUP_STORE = "redis"`` through the extension: several hosts, one Redis.

Each "host" is an app with its own SQLite file and its own sender, sharing one real
redis-server, or a real 3-master Redis Cluster (the session fixtures of ``tests/_redis.py``).
Two hosts never both report one user, and what one host queued is delivered by another if
the first one is lost.
"""

from __future__ import annotations

import os
import re
import threading
import typing as t
import uuid

import pytest
from _flow import login
from _flow import quickstart_app
from flask import Flask

from flask_keen_signup import signup_state
from flask_keen_signup.exceptions import ConfigurationError
from flask_keen_signup.testing import Auth0Emulator
from flask_keen_signup.testing import KeenEmulator

if os.environ.get("CI", "").strip().lower() in ("true", "1"):
    import redis  # on CI a missing client is a failure, not a skip
else:
    redis = pytest.importorskip("redis")


@pytest.fixture(params=["server", "cluster"])
def hosts(
    request: pytest.FixtureRequest,
    keen_signup_auth0: Auth0Emulator,
    keen_signup_keen: KeenEmulator,
    tmp_path: t.Any,
) -> t.Iterator[t.Callable[[], Flask]]:
    """Hosts sharing one redis-server (database 1, emptied), or a 3-master Redis Cluster
    (database 0 only: a fresh hash-tagged ``KEEN_SIGNUP_REDIS_PREFIX`` instead)."""
    if request.param == "cluster":
        url = request.getfixturevalue("redis_cluster").url
        settings = {"KEEN_SIGNUP_REDIS_PREFIX": f"{{hosts-{uuid.uuid4().hex[:8]}}}"}
    else:
        url = request.getfixturevalue("redis_server").url.rstrip("/") + "/1"
        redis.Redis.from_url(url).flushdb()
        settings = {}
    built: list[Flask] = []

    def host() -> Flask:
        app, _ = quickstart_app(
            keen_signup_auth0,
            keen_signup_keen,
            str(tmp_path / f"host{len(built)}.sqlite3"),
            KEEN_SIGNUP_STORE="redis",
            KEEN_SIGNUP_REDIS_URL=url,
            **settings,
        )
        built.append(app)
        return app

    yield host
    for app in built:
        signup_state(app).sender.shutdown(timeout=5)
        signup_state(app).store.close()


def test_one_user_logging_in_on_two_hosts_at_once_is_reported_once(
    hosts: t.Any, keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator
) -> None:
    a, b = hosts(), hosts()
    keen_signup_auth0.add_user(email="both@example.com")
    barrier = threading.Barrier(6)
    statuses: list[int] = []

    def sign_in(app: Flask) -> None:
        barrier.wait()
        statuses.append(login(app.test_client(), keen_signup_auth0, "both@example.com").status_code)

    threads = [threading.Thread(target=sign_in, args=(app,)) for app in (a, b) * 3]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [302] * 6
    for app in (a, b):
        assert signup_state(app).sender.flush(timeout=20) == 0
    assert len(keen_signup_keen.events("signups")) == 1
    posts = [r for r in keen_signup_keen.request_log if r.method == "POST"]
    assert len(posts) == 1, "claimed once across hosts: sent once"


def test_a_lost_host_queue_is_delivered_by_another(
    hosts: t.Any, keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator
) -> None:
    lost = hosts()
    signup_state(lost).sender.stop(timeout=5)  # the container dies before sending
    login(lost.test_client(), keen_signup_auth0, "lost@example.com")
    survivor = hosts()
    assert signup_state(survivor).sender.flush(timeout=20) == 0
    assert len(keen_signup_keen.events("signups")) == 1
    login(survivor.test_client(), keen_signup_auth0, "lost@example.com")
    assert signup_state(survivor).sender.flush(timeout=20) == 0
    assert len(keen_signup_keen.events("signups")) == 1, "returning on another host"


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:9/0", "redis+cluster://127.0.0.1:9,127.0.0.1:11/0"]
)
def test_redis_down_at_login_does_not_break_it(
    url: str, keen_signup_auth0: Auth0Emulator, tmp_path: t.Any, caplog: t.Any
) -> None:
    # init_app connects to neither (a cluster client would read the slot map as it is
    # built: that waits for the first claim).
    app, _ = quickstart_app(
        keen_signup_auth0,
        None,
        str(tmp_path / "down.sqlite3"),
        KEEN_SIGNUP_STORE="redis",
        KEEN_SIGNUP_REDIS_URL=url,
        KEEN_SIGNUP_REDIS_PREFIX="{keen_signup}",
    )
    from flask_keen_signup import signup_failed

    failures: list[dict[str, t.Any]] = []

    def on_failed(sender: t.Any, **payload: t.Any) -> None:
        failures.append(payload)

    signup_failed.connect(on_failed, app)
    try:
        response = login(app.test_client(), keen_signup_auth0, "noredis@example.com")
        assert response.status_code == 302 and response.location == "/"
        assert "cannot" in caplog.text and "Redis" in caplog.text
        # Guarantee 3 (issue 10): kept in the local spool, loudly, until Redis answers;
        # nothing has failed yet, so signup_failed does not fire.
        assert "did not answer within the login's budget" in caplog.text, "never silent"
        assert signup_state(app).spool.depth() == 1
        assert failures == []
    finally:
        signup_failed.disconnect(on_failed)
        signup_state(app).sender.shutdown(timeout=2)


@pytest.mark.parametrize("deployment", ["server", "cluster"])
def test_migrate_with_redis_reports_the_gap_once(
    deployment: str,
    request: pytest.FixtureRequest,
    keen_signup_auth0: Auth0Emulator,
    keen_signup_keen: KeenEmulator,
    tmp_path: t.Any,
) -> None:
    if deployment == "cluster":
        url = request.getfixturevalue("redis_cluster").url
        settings = {"KEEN_SIGNUP_REDIS_PREFIX": f"{{migrate-{uuid.uuid4().hex[:8]}}}"}
    else:
        url = request.getfixturevalue("redis_server").url.rstrip("/") + "/2"
        redis.Redis.from_url(url).flushdb()
        settings = {}
    keen_signup_auth0.add_user(email="old@x.io", name="Old", created_at="2020-01-01T00:00:00Z")
    keen_signup_auth0.add_user(email="new@x.io", name="New", created_at="2026-11-25T00:00:00Z")
    app, _ = quickstart_app(
        keen_signup_auth0,
        keen_signup_keen,
        str(tmp_path / "bf.sqlite3"),
        KEEN_SIGNUP_STORE="redis",
        KEEN_SIGNUP_REDIS_URL=url,
        KEEN_SIGNUP_AUTH0_DOMAIN=keen_signup_auth0.url,
        KEEN_SIGNUP_AUTH0_CLIENT_ID=keen_signup_auth0.m2m_client_id,
        KEEN_SIGNUP_AUTH0_CLIENT_SECRET=keen_signup_auth0.m2m_client_secret,
        **settings,
    )
    runner = app.test_cli_runner()
    args = ["keen-signup", "migrate", "--reported-until", "2026-11-18T00:00:00Z"]
    try:
        first = runner.invoke(args=args)
        assert first.exit_code == 0, first.output
        assert re.search(r"^marked\s+1$", first.output, re.M), first.output
        assert re.search(r"^reported\s+1$", first.output, re.M), first.output
        again = runner.invoke(args=args)
        assert re.search(r"^reported\s+0$", again.output, re.M), again.output
        assert re.search(r"^already known\s+2$", again.output, re.M), again.output
        assert signup_state(app).sender.flush(timeout=20) == 0
        assert [e["name"] for e in keen_signup_keen.events("signups")] == ["New"]
        login(app.test_client(), keen_signup_auth0, "old@x.io")  # marked: not a signup
        login(app.test_client(), keen_signup_auth0, "new@x.io")  # reported: not again
        assert signup_state(app).sender.flush(timeout=20) == 0
        assert len(keen_signup_keen.events("signups")) == 1
    finally:
        signup_state(app).sender.shutdown(timeout=5)
        signup_state(app).store.close()


@pytest.mark.parametrize("prefix", [None, "keen_signup", "{}keen_signup", "{keen_signup"])
def test_a_cluster_without_a_hash_tag_in_the_prefix_is_refused_at_init_app(
    prefix: str | None, keen_signup_auth0: Auth0Emulator, tmp_path: t.Any
) -> None:
    settings = {} if prefix is None else {"KEEN_SIGNUP_REDIS_PREFIX": prefix}
    with pytest.raises(ConfigurationError) as refused:
        quickstart_app(
            keen_signup_auth0,
            None,
            str(tmp_path / "refused.sqlite3"),
            KEEN_SIGNUP_STORE="redis",
            KEEN_SIGNUP_REDIS_URL="redis+cluster://:s3cret@127.0.0.1:9/0",
            **settings,
        )
    message = str(refused.value)
    assert "KEEN_SIGNUP_REDIS_PREFIX" in message and "hash tag" in message
    assert "'{keen_signup" in message, "the message shows a prefix that works"
    assert "s3cret" not in message


@pytest.mark.parametrize(
    "url", ["redis+cluster://127.0.0.1:9/1", "redis+cluster://127.0.0.1:x/0", "redis+cluster:///0"]
)
def test_an_unusable_cluster_url_is_refused_at_init_app(
    url: str, keen_signup_auth0: Auth0Emulator, tmp_path: t.Any
) -> None:
    with pytest.raises(ConfigurationError, match="KEEN_SIGNUP_REDIS_URL (is not usable|has an)"):
        quickstart_app(
            keen_signup_auth0,
            None,
            str(tmp_path / "bad.sqlite3"),
            KEEN_SIGNUP_STORE="redis",
            KEEN_SIGNUP_REDIS_URL=url,
            KEEN_SIGNUP_REDIS_PREFIX="{keen_signup}",
        )
