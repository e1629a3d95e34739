"""The extension end to end: the real Authlib flow against the Auth0 emulator, the real
Keen emulator, real SQLite files. One event per new user, none for a returning user, and
the login never changed or broken by analytics."""

from __future__ import annotations

import logging
import typing as t

import pytest
from _flow import login
from _flow import quickstart_app
from _waits import wait_until
from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from flask_keen_signup import KeenSignup
from flask_keen_signup import signals
from flask_keen_signup import signup_state
from flask_keen_signup.events import uniqueness_token
from flask_keen_signup.exceptions import ConfigurationError
from flask_keen_signup.testing import Auth0Emulator
from flask_keen_signup.testing import KeenEmulator
from flask_keen_signup.tracker import TrackOutcome


@pytest.fixture
def apps(tmp_path: t.Any) -> t.Iterator[t.Callable[..., tuple[Flask, KeenSignup | None]]]:
    """Build quickstart apps; their senders are shut down after the test."""
    built: list[Flask] = []

    def make(auth0: Auth0Emulator, keen: KeenEmulator | None, **config: t.Any) -> t.Any:
        database = config.pop("database", str(tmp_path / f"app{len(built)}.sqlite3"))
        app, signup = quickstart_app(auth0, keen, database, **config)
        built.append(app)
        return app, signup

    yield make
    for app in built:
        state = app.extensions.get("keen_signup")
        if state is not None and state.sender is not None:
            state.sender.shutdown(timeout=5)


def deliver(app: Flask) -> None:
    """Let the background sender deliver everything queued."""
    left = signup_state(app).sender.flush(timeout=20)
    assert left == 0


def test_new_user_gives_exactly_one_event_with_the_design_fields(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, apps: t.Any
) -> None:
    app, _ = apps(keen_signup_auth0, keen_signup_keen)
    client = app.test_client()
    response = login(
        client,
        keen_signup_auth0,
        "ada@example.com",
        name="Ada",
        headers={"User-Agent": "Mozilla/5.0 test"},
    )
    assert response.status_code == 302 and response.location == "/"
    deliver(app)
    events = keen_signup_keen.events("signups")
    assert len(events) == 1
    event = events[0]
    user = keen_signup_auth0.users()[0]
    assert event["userId"] == user["user_id"] and event["userId"].startswith("auth0|")
    assert event["name"] == "Ada"
    assert event["ip"] == "127.0.0.1"
    assert event["connection"] == "auth0"
    assert event["user_agent"] == "Mozilla/5.0 test"
    assert "email" not in event, "email is opt-in"
    assert event["keen"]["timestamp"].endswith("Z")
    assert event["keen"]["created_at"]
    # the token is not echoed in the stored event by the emulator; check via the request log
    sent = [r for r in keen_signup_keen.request_log if r.method == "POST"]
    assert uniqueness_token("signups", user["user_id"]).encode() in b"".join(r.body for r in sent)


def test_returning_user_gives_no_event(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, apps: t.Any
) -> None:
    app, _ = apps(keen_signup_auth0, keen_signup_keen)
    login(app.test_client(), keen_signup_auth0, "bob@example.com")
    deliver(app)
    keen_signup_keen.clear_log()
    for _ in range(3):
        login(app.test_client(), keen_signup_auth0, "bob@example.com")  # new browser each time
    deliver(app)
    assert len(keen_signup_keen.events("signups")) == 1
    assert not [r for r in keen_signup_keen.request_log if r.method == "POST"]


def test_background_login_makes_no_network_call_to_keen(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, apps: t.Any
) -> None:
    app, _ = apps(keen_signup_auth0, keen_signup_keen)
    signup_state(app).sender.stop(timeout=5)  # nothing may send in the background
    keen_signup_keen.set_down(True)
    keen_signup_keen.clear_log()
    response = login(app.test_client(), keen_signup_auth0, "offline@example.com")
    assert response.status_code == 302
    assert keen_signup_keen.request_log == [], "the callback must not call Keen"
    assert signup_state(app).outbox.pending_count() == 1
    keen_signup_keen.set_down(False)
    signup_state(app).sender.start()
    deliver(app)
    assert len(keen_signup_keen.events("signups")) == 1


def test_response_is_byte_identical_with_and_without_the_extension(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, apps: t.Any
) -> None:
    with_app, _ = apps(keen_signup_auth0, keen_signup_keen)
    bare_app, _ = apps(keen_signup_auth0, keen_signup_keen, with_extension=False)
    a = login(with_app.test_client(), keen_signup_auth0, "same@example.com")
    b = login(bare_app.test_client(), keen_signup_auth0, "same@example.com")
    assert a.status_code == b.status_code
    assert a.get_data() == b.get_data()
    strip = {"Set-Cookie"}  # the session holds a different token each login
    assert [h for h in a.headers if h[0] not in strip] == [
        h for h in b.headers if h[0] not in strip
    ]
    assert (
        a.headers.get("Set-Cookie", "").split("=")[0]
        == b.headers.get("Set-Cookie", "").split("=")[0]
    )


@pytest.mark.parametrize("kind", ["expired", "wrong_audience", "bad_signature", "wrong_issuer"])
def test_forged_or_invalid_id_tokens_produce_no_event(
    kind: str, keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, apps: t.Any
) -> None:
    app, _ = apps(keen_signup_auth0, keen_signup_keen)
    app.testing = False  # let Flask turn the view's exception into a 500, as in production
    keen_signup_auth0.tamper_next_id_token(kind)
    response = login(app.test_client(), keen_signup_auth0, f"{kind}@example.com")
    assert response.status_code == 500, "Authlib rejected the token; the view failed"
    deliver(app)
    assert keen_signup_keen.events("signups") == []
    assert signup_state(app).outbox.pending_count() == 0


def test_token_without_userinfo_is_a_clear_logged_error(
    keen_signup_auth0: Auth0Emulator,
    keen_signup_keen: KeenEmulator,
    apps: t.Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, _ = apps(keen_signup_auth0, keen_signup_keen, scope="profile email")
    app.config["KEEN_SIGNUP_PROPAGATE_ERRORS"] = None
    app.testing = False
    with caplog.at_level(logging.ERROR, logger="flask_keen_signup"):
        response = login(app.test_client(), keen_signup_auth0, "noopenid@example.com")
    assert response.status_code == 302 and response.location == "/"
    assert "userinfo" in caplog.text and "openid" in caplog.text
    deliver(app)
    assert keen_signup_keen.events("signups") == []


def test_error_status_from_the_view_is_not_tracked(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, apps: t.Any
) -> None:
    app, signup = apps(keen_signup_auth0, keen_signup_keen)
    from authlib.integrations.flask_client import OAuth  # noqa: F401 - the app has one

    registry = app.extensions["authlib.integrations.flask_client"]

    @app.route("/callback-denied")
    @signup.track
    def denied() -> t.Any:
        registry.auth0.authorize_access_token()
        return "not allowed", 403

    client = app.test_client()
    response = client.get("/login")
    from urllib.parse import urlsplit

    import requests

    answer = requests.post(
        response.location,
        data={"email": "denied@example.com", "password": "p"},
        allow_redirects=False,
        timeout=10,
    )
    back = urlsplit(answer.headers["Location"])
    assert client.get(f"/callback-denied?{back.query}").status_code == 403
    deliver(app)
    assert keen_signup_keen.events("signups") == []


def test_sync_mode_delivers_in_the_request(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, apps: t.Any
) -> None:
    app, _ = apps(keen_signup_auth0, keen_signup_keen, KEEN_SIGNUP_DELIVERY="sync")
    signup_state(app).sender.stop(timeout=5)
    login(app.test_client(), keen_signup_auth0, "sync@example.com")
    assert len(keen_signup_keen.events("signups")) == 1, "sent before the response"
    user_id = keen_signup_auth0.users()[0]["user_id"]
    assert signup_state(app).store.lookup(user_id).value == "confirmed"


def test_sync_mode_with_keen_down_logs_in_releases_and_retries_at_next_login(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, apps: t.Any
) -> None:
    app, _ = apps(keen_signup_auth0, keen_signup_keen, KEEN_SIGNUP_DELIVERY="sync")
    state = signup_state(app)
    state.sender.stop(timeout=5)  # isolate the next-login retry from the outbox retry
    keen_signup_keen.set_down(True)
    response = login(app.test_client(), keen_signup_auth0, "down@example.com")
    assert response.status_code == 302 and response.location == "/", "login still succeeds"
    user_id = keen_signup_auth0.users()[0]["user_id"]
    assert state.store.lookup(user_id) is None, "marker released"
    assert state.outbox.pending_count() == 1, "and queued for a durable retry"
    keen_signup_keen.set_down(False)
    login(app.test_client(), keen_signup_auth0, "down@example.com")
    assert len(keen_signup_keen.events("signups")) == 1
    assert state.store.lookup(user_id).value == "confirmed"
    state.sender.start()
    deliver(app)
    assert len(keen_signup_keen.events("signups")) == 1, "the outbox copy is deduplicated"


def test_signals_fire_with_their_payloads(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, apps: t.Any
) -> None:
    app, _ = apps(keen_signup_auth0, keen_signup_keen)
    heard: list[tuple[str, t.Any, dict[str, t.Any]]] = []

    def recorder(name: str) -> t.Callable[..., None]:
        def receive(sender: t.Any, **payload: t.Any) -> None:
            heard.append((name, sender, payload))

        return receive

    receivers = {name: recorder(name) for name in ("detected", "recorded", "delivered")}
    signals.signup_detected.connect(receivers["detected"], app)
    signals.signup_recorded.connect(receivers["recorded"], app)
    signals.signup_delivered.connect(receivers["delivered"], app)
    try:
        login(app.test_client(), keen_signup_auth0, "sig@example.com")
        deliver(app)
    finally:
        signals.signup_detected.disconnect(receivers["detected"])
        signals.signup_recorded.disconnect(receivers["recorded"])
        signals.signup_delivered.disconnect(receivers["delivered"])
    names = [name for name, _, _ in heard]
    assert names == ["detected", "recorded", "delivered"]
    assert all(sender is app for _, sender, _ in heard)
    user_id = keen_signup_auth0.users()[0]["user_id"]
    assert all(payload["user_id"] == user_id for _, _, payload in heard)
    assert heard[1][2]["event"]["userId"] == user_id


def test_a_failing_signal_receiver_does_not_break_the_login(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, apps: t.Any
) -> None:
    app, _ = apps(keen_signup_auth0, keen_signup_keen)

    def broken(sender: t.Any, **payload: t.Any) -> None:
        raise RuntimeError("subscriber bug")

    signals.signup_recorded.connect(broken, app)
    try:
        response = login(app.test_client(), keen_signup_auth0, "brokensub@example.com")
    finally:
        signals.signup_recorded.disconnect(broken)
    assert response.status_code == 302
    deliver(app)
    assert len(keen_signup_keen.events("signups")) == 1


def test_event_properties_callback_extends_the_event(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, apps: t.Any
) -> None:
    app, signup = apps(keen_signup_auth0, keen_signup_keen)

    @signup.event_properties
    def props(claims: t.Mapping[str, t.Any], request: t.Any) -> dict[str, t.Any]:
        return {"plan": "free", "referrer.url": request.headers.get("X-Test", ""), "userId": "x"}

    login(app.test_client(), keen_signup_auth0, "props@example.com", headers={"X-Test": "r"})
    deliver(app)
    event = keen_signup_keen.events("signups")[0]
    assert event["plan"] == "free"
    assert event["referrer_url"] == "r", "sanitised to Keen's rules"
    assert event["userId"].startswith("auth0|"), "built-in fields win"


def test_ip_is_remote_addr_spoofed_forwarded_for_is_ignored(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, apps: t.Any
) -> None:
    app, _ = apps(keen_signup_auth0, keen_signup_keen)
    login(
        app.test_client(),
        keen_signup_auth0,
        "spoof@example.com",
        headers={"X-Forwarded-For": "198.51.100.7"},
    )
    deliver(app)
    assert keen_signup_keen.events("signups")[0]["ip"] == "127.0.0.1"


def test_ip_behind_proxyfix_and_anonymized(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, apps: t.Any
) -> None:
    app, _ = apps(keen_signup_auth0, keen_signup_keen, KEEN_SIGNUP_IP="anonymize")
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1)  # type: ignore[method-assign]
    login(
        app.test_client(),
        keen_signup_auth0,
        "proxy@example.com",
        headers={"X-Forwarded-For": "203.0.113.77"},
    )
    deliver(app)
    assert keen_signup_keen.events("signups")[0]["ip"] == "203.0.113.0"


def test_disabled_records_nothing(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, apps: t.Any
) -> None:
    app, signup = apps(keen_signup_auth0, keen_signup_keen, KEEN_SIGNUP_ENABLED=False)
    response = login(app.test_client(), keen_signup_auth0, "off@example.com")
    assert response.status_code == 302
    assert signup_state(app).outbox.pending_count() == 0
    assert keen_signup_keen.events() == []


def test_since_marks_old_users_without_reporting(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, apps: t.Any
) -> None:
    app, signup = apps(
        keen_signup_auth0,
        keen_signup_keen,
        KEEN_SIGNUP_SINCE="2026-11-18T00:00:00Z",
        KEEN_SIGNUP_CREATED_AT_CLAIM="created_at",
    )
    with app.test_request_context():
        old = signup.track_claims({"sub": "auth0|old", "created_at": "2020-01-01T00:00:00Z"})
        new = signup.track_claims({"sub": "auth0|new", "created_at": "2026-11-20T00:00:00Z"})
        again = signup.track_claims({"sub": "auth0|old", "created_at": "2020-01-01T00:00:00Z"})
    assert (old, new, again) == (
        TrackOutcome.MARKED_ONLY,
        TrackOutcome.QUEUED,
        TrackOutcome.RETURNING,
    )
    deliver(app)
    events = keen_signup_keen.events("signups")
    assert [e["userId"] for e in events] == ["auth0|new"]
    assert events[0]["keen"]["timestamp"].startswith("2026-11-20T00:00:00")


def test_track_claims_without_sub_is_refused(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, apps: t.Any
) -> None:
    app, signup = apps(keen_signup_auth0, keen_signup_keen)
    from flask_keen_signup.exceptions import InvalidClaimsError

    app.testing = True
    with app.test_request_context(), pytest.raises(InvalidClaimsError):
        signup.track_claims({"name": "no sub"})  # testing: errors propagate
    app.testing = False
    with app.test_request_context():
        assert signup.track_claims({"name": "no sub"}) is None  # production: logged


def test_two_apps_in_one_process_are_independent(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, apps: t.Any
) -> None:
    a, _ = apps(keen_signup_auth0, keen_signup_keen)
    b, _ = apps(keen_signup_auth0, keen_signup_keen, KEEN_SIGNUP_COLLECTION="signups_b")
    login(a.test_client(), keen_signup_auth0, "two@example.com")
    login(b.test_client(), keen_signup_auth0, "two@example.com")
    deliver(a)
    deliver(b)
    assert len(keen_signup_keen.events("signups")) == 1
    assert len(keen_signup_keen.events("signups_b")) == 1


def test_init_app_twice_and_bad_config_fail_loudly(tmp_path: t.Any) -> None:
    app = Flask(__name__)
    with pytest.raises(ConfigurationError, match="KEEN_PROJECT_ID"):
        KeenSignup(app)
    app.config.update(
        KEEN_PROJECT_ID="p",
        KEEN_WRITE_KEY="w",
        KEEN_SIGNUP_DATABASE=str(tmp_path / "x.db"),
        KEEN_SIGNUP_STORE="redis",
        KEEN_SIGNUP_REDIS_URL="mysql://nope",
    )
    with pytest.raises(ConfigurationError, match="KEEN_SIGNUP_REDIS_URL"):
        KeenSignup(app)
    app.config["KEEN_SIGNUP_STORE"] = "sqlite"
    signup = KeenSignup(app)
    try:
        with pytest.raises(RuntimeError, match="already registered"):
            signup.init_app(app)
    finally:
        signup_state(app).sender.shutdown(timeout=2)


def test_event_properties_callback_runs_only_for_new_users(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, apps: t.Any
) -> None:
    app, signup = apps(keen_signup_auth0, keen_signup_keen)
    calls: list[str] = []

    @signup.event_properties
    def props(claims: t.Mapping[str, t.Any], request: t.Any) -> dict[str, t.Any]:
        calls.append(claims["sub"])
        return {}

    login(app.test_client(), keen_signup_auth0, "once@example.com")
    login(app.test_client(), keen_signup_auth0, "once@example.com")
    assert len(calls) == 1


def test_returning_users_are_remembered_per_process_and_survive_restart(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, apps: t.Any, tmp_path: t.Any
) -> None:
    database = str(tmp_path / "shared.sqlite3")
    first, signup = apps(keen_signup_auth0, keen_signup_keen, database=database)
    with first.test_request_context():
        assert signup.track_claims({"sub": "auth0|m"}) is TrackOutcome.QUEUED
        assert "auth0|m" in signup_state(first).tracker.known
        assert signup.track_claims({"sub": "auth0|m"}) is TrackOutcome.RETURNING
    # another process (a new app on the same file) starts with the ledger's users in memory,
    # loaded on a thread of its own; until then a login would answer from the ledger
    second, signup2 = apps(keen_signup_auth0, keen_signup_keen, database=database)
    known = signup_state(second).tracker.known
    assert wait_until(lambda: "auth0|m" in known)
    with second.test_request_context():
        assert signup2.track_claims({"sub": "auth0|m"}) is TrackOutcome.RETURNING


def test_known_users_memory_is_bounded() -> None:
    from flask_keen_signup.tracker import KnownUsers

    known = KnownUsers(maximum=3)
    for n in range(5):
        known.add(f"u{n}")
    assert len(known) == 3
    assert "u0" not in known and "u1" not in known and "u4" in known


def test_session_store_is_not_remembered_in_memory(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, apps: t.Any
) -> None:
    app, _ = apps(keen_signup_auth0, keen_signup_keen, KEEN_SIGNUP_STORE="session")
    assert signup_state(app).tracker.known is None
    login(app.test_client(), keen_signup_auth0, "sess@example.com")
    deliver(app)
    assert len(keen_signup_keen.events("signups")) == 1


def test_async_callback_view_is_tracked(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, apps: t.Any
) -> None:
    """Flask runs ``async def`` views (``flask[async]``); ``@signup.track`` wraps them too."""
    app, signup = apps(keen_signup_auth0, keen_signup_keen)
    registry = app.extensions["authlib.integrations.flask_client"]

    @app.route("/callback-async")
    @signup.track
    async def callback_async() -> t.Any:
        registry.auth0.authorize_access_token()
        return "ok"

    client = app.test_client()
    start = client.get("/login")
    import requests

    answer = requests.post(
        start.location,
        data={"email": "async@example.com", "password": "p"},
        allow_redirects=False,
        timeout=10,
    )
    query = answer.headers["Location"].split("?", 1)[1]
    assert client.get(f"/callback-async?{query}").get_data() == b"ok"
    deliver(app)
    assert len(keen_signup_keen.events("signups")) == 1
