"""The mistakes a team makes on day one, each tried as a new user would, and
``KEEN_SIGNUP_SINCE`` holding whatever the store and whatever the ID token carries."""

from __future__ import annotations

import logging
import typing as t

import pytest
from _flow import login
from _flow import quickstart_app
from flask import Blueprint
from flask import Flask

from flask_keen_signup import KeenSignup
from flask_keen_signup import signup_state
from flask_keen_signup.exceptions import ConfigurationError
from flask_keen_signup.testing import Auth0Emulator
from flask_keen_signup.testing import KeenEmulator

SINCE = "2026-11-18T00:00:00Z"


@pytest.fixture
def make_app(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, tmp_path: t.Any
) -> t.Iterator[t.Callable[..., Flask]]:
    apps: list[Flask] = []

    def make(**config: t.Any) -> Flask:
        app, _ = quickstart_app(
            keen_signup_auth0, keen_signup_keen, str(tmp_path / f"{len(apps)}.sqlite3"), **config
        )
        apps.append(app)
        return app

    yield make
    for app in apps:
        signup_state(app).sender.shutdown(timeout=5)


def management(auth0: Auth0Emulator) -> dict[str, str]:
    return {
        "KEEN_SIGNUP_AUTH0_DOMAIN": auth0.url,
        "KEEN_SIGNUP_AUTH0_CLIENT_ID": auth0.m2m_client_id,
        "KEEN_SIGNUP_AUTH0_CLIENT_SECRET": auth0.m2m_client_secret,
        "KEEN_SIGNUP_AUTH0_REQUESTS_PER_SECOND": "50",
    }


# -- KEEN_SIGNUP_SINCE ------------------------------------------------------------------------


def test_since_without_a_claim_or_credentials_fails_at_init_naming_both_ways() -> None:
    app = Flask(__name__)
    app.config.update(KEEN_PROJECT_ID="p", KEEN_WRITE_KEY="w", KEEN_SIGNUP_SINCE=SINCE)
    with pytest.raises(ConfigurationError) as info:
        KeenSignup(app)
    message = str(info.value)
    assert "KEEN_SIGNUP_CREATED_AT_CLAIM" in message
    assert "KEEN_SIGNUP_AUTH0_CLIENT_ID" in message
    assert "docs/migrating-from-the-rule.md" in message


def test_since_without_claims_is_resolved_off_the_request_path_through_429s(
    make_app: t.Callable[..., Flask],
    keen_signup_auth0: Auth0Emulator,
    keen_signup_keen: KeenEmulator,
) -> None:
    """No created_at in the ID token: the sender asks the Management API, in batches,
    while it answers 429 part of the time. The logins themselves never call it."""
    auth0 = keen_signup_auth0
    olds = [
        auth0.add_user(email=f"old{i}@x.io", created_at=f"202{i % 5}-03-0{1 + i % 8}T00:00:00Z")
        for i in range(8)
    ]
    app = make_app(KEEN_SIGNUP_SINCE=SINCE, **management(auth0))
    signup = signup_state(app)
    signup.sender.stop(timeout=5)  # queue everything first, deliver after
    auth0.clear_log()
    for old in olds:
        login(app.test_client(), auth0, old["email"])
    for i in range(5):
        login(app.test_client(), auth0, f"new{i}@x.io", name=f"New {i}")
    management_calls = [r for r in auth0.request_log if r.path.startswith("/api/v2/")]
    assert management_calls == [], "no Management API call on the request path"

    auth0.rate_limit_next(3, reset_in=1)
    signup.sender.start()
    assert signup.sender.flush(timeout=60) == 0
    events = keen_signup_keen.events("signups")
    assert sorted(e["name"] for e in events) == [f"New {i}" for i in range(5)]
    statuses = [r.status for r in auth0.request_log if r.path == "/api/v2/users"]
    assert 429 in statuses and statuses[-1] == 200
    # batched: one search for many users, not a request per user
    assert statuses.count(200) < len(olds) + 5
    # The old users are marked now: their next login costs nothing and sends nothing.
    auth0.clear_log()
    login(app.test_client(), auth0, olds[0]["email"])
    assert signup.sender.flush(timeout=30) == 0
    assert len(keen_signup_keen.events("signups")) == 5


def test_since_without_claims_sends_the_looked_up_created_at_as_keen_timestamp(
    make_app: t.Callable[..., Flask],
    keen_signup_auth0: Auth0Emulator,
    keen_signup_keen: KeenEmulator,
) -> None:
    """DESIGN §3: the lookup SINCE makes is the user's creation time, and it is the event's
    ``keen.timestamp`` (not the callback time), for a user created after the cutoff whose
    ID token carries no ``created_at``."""
    auth0 = keen_signup_auth0
    created = "2026-11-20T08:00:00.000Z"
    user = auth0.add_user(email="later@x.io", name="Later", created_at=created)
    assert "created_at" not in auth0.id_token_claims  # the ID token does not carry it
    app = make_app(KEEN_SIGNUP_SINCE=SINCE, **management(auth0))
    client = app.test_client()
    assert login(client, auth0, "later@x.io").status_code == 302
    with client.session_transaction() as session:
        assert "created_at" not in session["user"]["userinfo"]
    assert signup_state(app).sender.flush(timeout=30) == 0
    lookups = [r for r in auth0.request_log if r.path == "/api/v2/users"]
    assert lookups, "the Management API was asked for created_at"
    events = keen_signup_keen.events("signups")
    assert len(events) == 1
    assert events[0]["userId"] == user["user_id"]
    assert events[0]["keen"]["timestamp"] == created


def test_since_with_the_actions_created_at_claim_needs_no_management_api(
    make_app: t.Callable[..., Flask],
    keen_signup_auth0: Auth0Emulator,
    keen_signup_keen: KeenEmulator,
) -> None:
    claim = "https://example.com/created_at"
    keen_signup_auth0.id_token_claims = {claim: lambda user: user["created_at"]}
    keen_signup_auth0.add_user(email="old@x.io", created_at="2021-01-01T00:00:00Z")
    app = make_app(KEEN_SIGNUP_SINCE=SINCE, KEEN_SIGNUP_CREATED_AT_CLAIM=claim)
    login(app.test_client(), keen_signup_auth0, "old@x.io")
    login(app.test_client(), keen_signup_auth0, "new@x.io", name="New")
    assert signup_state(app).sender.flush(timeout=30) == 0
    assert [e["name"] for e in keen_signup_keen.events("signups")] == ["New"]
    assert not [r for r in keen_signup_auth0.request_log if r.path.startswith("/api/v2/")]


def test_a_token_without_the_configured_claim_is_said_once(
    make_app: t.Callable[..., Flask],
    keen_signup_auth0: Auth0Emulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_app(KEEN_SIGNUP_SINCE=SINCE, KEEN_SIGNUP_CREATED_AT_CLAIM="https://x.io/c")
    with caplog.at_level(logging.WARNING, logger="flask_keen_signup"):
        login(app.test_client(), keen_signup_auth0, "a@x.io")
        login(app.test_client(), keen_signup_auth0, "b@x.io")
    said = [r for r in caplog.records if "carries no https://x.io/c claim" in r.getMessage()]
    assert len(said) == 1


# -- the decorator written above the route ----------------------------------------------------


def _app(testing: bool, database: str) -> tuple[Flask, KeenSignup]:
    app = Flask(__name__)
    app.config.update(
        KEEN_PROJECT_ID="p",
        KEEN_WRITE_KEY="w",
        KEEN_API_URL="http://127.0.0.1:9",
        KEEN_SIGNUP_STORE="session",
        KEEN_SIGNUP_DATABASE=database,
        TESTING=testing,
    )
    return app, KeenSignup(app)


def test_track_above_route_raises_in_testing(tmp_path: t.Any) -> None:
    app, signup = _app(testing=True, database=str(tmp_path / "a.sqlite3"))
    with pytest.raises(RuntimeError, match="above @app.route for the view 'callback'"):

        @signup.track
        @app.route("/callback")
        def callback() -> str:
            return "ok"

    signup_state(app).sender.shutdown(timeout=2)


def test_track_above_route_logs_an_error_in_production(
    caplog: pytest.LogCaptureFixture, tmp_path: t.Any
) -> None:
    app, signup = _app(testing=False, database=str(tmp_path / "a.sqlite3"))
    with caplog.at_level(logging.ERROR, logger="flask_keen_signup"):

        @signup.track
        @app.route("/callback")
        def callback() -> str:
            return "ok"

    assert any("above @app.route" in r.getMessage() for r in caplog.records)
    signup_state(app).sender.shutdown(timeout=2)


def test_track_below_route_is_quiet(caplog: pytest.LogCaptureFixture, tmp_path: t.Any) -> None:
    app, signup = _app(testing=True, database=str(tmp_path / "a.sqlite3"))

    @app.route("/callback")
    @signup.track
    def callback() -> str:
        return "ok"

    assert app.test_client().get("/callback").text == "ok"
    assert not [r for r in caplog.records if "above @app.route" in r.getMessage()]
    signup_state(app).sender.shutdown(timeout=2)


def test_misordered_blueprint_view_registered_after_init_app_is_caught_at_first_request(
    tmp_path: t.Any,
) -> None:
    signup = KeenSignup()
    bp = Blueprint("auth", __name__)

    @signup.track
    @bp.route("/callback")
    def callback() -> str:
        return "ok"

    app = Flask(__name__)
    app.config.update(
        KEEN_PROJECT_ID="p",
        KEEN_WRITE_KEY="w",
        KEEN_API_URL="http://127.0.0.1:9",
        KEEN_SIGNUP_STORE="session",
        KEEN_SIGNUP_DATABASE=str(tmp_path / "bp.sqlite3"),
        TESTING=True,
    )
    signup.init_app(app)
    app.register_blueprint(bp)
    try:
        with pytest.raises(RuntimeError, match="'auth.callback'"):
            app.test_client().get("/callback")
    finally:
        signup_state(app).sender.shutdown(timeout=2)


# -- messages --------------------------------------------------------------------------------


def test_a_missing_write_key_names_the_flask_prefix() -> None:
    app = Flask(__name__)
    app.config.update(KEEN_PROJECT_ID="p")
    with pytest.raises(ConfigurationError, match="FLASK_KEEN_WRITE_KEY"):
        KeenSignup(app)


def test_a_first_deploy_warns_that_existing_users_need_migrate(
    make_app: t.Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    from flask_keen_signup.assembly import load_known_users as _load_known_users

    app = make_app()
    with caplog.at_level(logging.WARNING, logger="flask_keen_signup"):
        _load_known_users(signup_state(app).tracker)
    assert any("flask keen-signup migrate" in r.getMessage() for r in caplog.records)


def test_sync_mode_with_since_and_no_claim_waits_in_the_outbox_instead_of_posting(
    make_app: t.Callable[..., Flask],
    keen_signup_auth0: Auth0Emulator,
    keen_signup_keen: KeenEmulator,
) -> None:
    """Sync mode POSTs in the request, but not before the creation time is known: such a
    candidate waits in the outbox, and the sender decides it."""
    auth0 = keen_signup_auth0
    auth0.add_user(email="old@x.io", created_at="2022-02-02T00:00:00Z")
    app = make_app(KEEN_SIGNUP_DELIVERY="sync", KEEN_SIGNUP_SINCE=SINCE, **management(auth0))
    signup = signup_state(app)
    signup.sender.stop(timeout=5)
    login(app.test_client(), auth0, "old@x.io")
    login(app.test_client(), auth0, "new@x.io", name="New")
    assert keen_signup_keen.request_log == [], "nothing was posted in the login requests"
    signup.sender.start()
    assert signup.sender.flush(timeout=30) == 0
    assert keen_signup_keen.request_log, "the sender's request is in the log"
    assert [e["name"] for e in keen_signup_keen.events("signups")] == ["New"]


def test_the_state_accessor_and_flush_are_the_public_surface(
    make_app: t.Callable[..., Flask],
    keen_signup_auth0: Auth0Emulator,
    keen_signup_keen: KeenEmulator,
) -> None:
    """DESIGN §5: the state lives in app.extensions["keen_signup"]; tests and tools read
    it through signup_state(app) and send with signup.flush(timeout)."""
    from flask_keen_signup import signup_state

    app = make_app()
    signup = KeenSignup()
    state = signup_state(app)
    assert state is app.extensions["keen_signup"]
    with app.app_context():
        assert signup_state() is state
    login(app.test_client(), keen_signup_auth0, "flush@x.io", name="Flush")
    assert signup.flush(timeout=30, app=app) == 0
    assert [e["name"] for e in keen_signup_keen.events("signups")] == ["Flush"]
    with pytest.raises(RuntimeError, match="not initialised"):
        signup_state(Flask("bare"))
