"""The ``auth0`` store: the marker in ``app_metadata``, as the Rule kept it.

Real Authlib logins against the Auth0 emulator, the Management API over real HTTP, and
the Keen emulator. Background mode must never call Auth0's Management API or Keen from
the login request; sync mode does what the Rule did.
"""

from __future__ import annotations

import typing as t

import pytest
from _flow import login
from _flow import quickstart_app
from flask import Flask

from flask_keen_signup import signup_state
from flask_keen_signup.testing import Auth0Emulator
from flask_keen_signup.testing import KeenEmulator


@pytest.fixture
def make_app(tmp_path: t.Any) -> t.Iterator[t.Callable[..., Flask]]:
    built: list[Flask] = []

    def make(auth0: Auth0Emulator, keen: KeenEmulator, **config: t.Any) -> Flask:
        app, _ = quickstart_app(
            auth0,
            keen,
            str(tmp_path / f"app{len(built)}.sqlite3"),
            KEEN_SIGNUP_STORE="auth0",
            KEEN_SIGNUP_AUTH0_DOMAIN=auth0.url,
            KEEN_SIGNUP_AUTH0_CLIENT_ID=auth0.m2m_client_id,
            KEEN_SIGNUP_AUTH0_CLIENT_SECRET=auth0.m2m_client_secret,
            **config,
        )
        built.append(app)
        return app

    yield make
    for app in built:
        signup_state(app).sender.shutdown(timeout=5)


def management_calls(auth0: Auth0Emulator) -> list[str]:
    return [f"{r.method} {r.path}" for r in auth0.request_log if r.path.startswith("/api/v2/")]


def deliver(app: Flask) -> None:
    assert signup_state(app).sender.flush(timeout=20) == 0


def test_sync_new_user_is_sent_then_marked_in_app_metadata(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, make_app: t.Any
) -> None:
    app = make_app(keen_signup_auth0, keen_signup_keen, KEEN_SIGNUP_DELIVERY="sync")
    signup_state(app).sender.stop(timeout=5)
    login(app.test_client(), keen_signup_auth0, "rule@example.com", name="Rule")
    user = keen_signup_auth0.users()[0]
    assert user["app_metadata"] == {"signedUp": True}
    events = keen_signup_keen.events("signups")
    assert len(events) == 1
    assert events[0]["keen"]["timestamp"][:19] == user["created_at"][:19], "created_at is used"
    calls = management_calls(keen_signup_auth0)
    assert calls[0].startswith("GET ") and calls[-1].startswith("PATCH ")


def test_sync_user_already_marked_elsewhere_is_not_reported(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, make_app: t.Any
) -> None:
    keen_signup_auth0.add_user(email="old@example.com", app_metadata={"signedUp": True})
    app = make_app(keen_signup_auth0, keen_signup_keen, KEEN_SIGNUP_DELIVERY="sync")
    login(app.test_client(), keen_signup_auth0, "old@example.com")
    deliver(app)
    assert keen_signup_keen.events() == []
    keen_signup_auth0.clear_log()
    login(app.test_client(), keen_signup_auth0, "old@example.com")
    assert management_calls(keen_signup_auth0) == [], "the local ledger now answers"


def test_sync_since_marks_old_users_without_reporting(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, make_app: t.Any
) -> None:
    keen_signup_auth0.add_user(email="early@example.com", created_at="2019-05-01T00:00:00.000Z")
    app = make_app(
        keen_signup_auth0,
        keen_signup_keen,
        KEEN_SIGNUP_DELIVERY="sync",
        KEEN_SIGNUP_SINCE="2026-11-18T00:00:00Z",
    )
    login(app.test_client(), keen_signup_auth0, "early@example.com")
    assert keen_signup_keen.events() == []
    assert keen_signup_auth0.users()[0]["app_metadata"] == {"signedUp": True}


def test_sync_management_api_rate_limited_login_still_succeeds(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, make_app: t.Any
) -> None:
    app = make_app(keen_signup_auth0, keen_signup_keen, KEEN_SIGNUP_DELIVERY="sync")
    signup_state(app).sender.stop(timeout=5)
    keen_signup_auth0.rate_limit_next(10, reset_in=1)
    response = login(app.test_client(), keen_signup_auth0, "limited@example.com")
    assert response.status_code == 302 and response.location == "/"
    user_id = keen_signup_auth0.users()[0]["user_id"]
    state = signup_state(app)
    assert state.tracker.claimer.lookup(user_id) is None, "released: the next login retries"
    assert state.outbox.pending_count() == 1, "and queued durably"


def test_marker_claim_in_the_id_token_costs_no_api_call(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, make_app: t.Any
) -> None:
    keen_signup_auth0.id_token_claims["https://example.com/signed_up"] = True
    app = make_app(
        keen_signup_auth0,
        keen_signup_keen,
        KEEN_SIGNUP_DELIVERY="sync",
        KEEN_SIGNUP_MARKER_CLAIM="https://example.com/signed_up",
    )
    login(app.test_client(), keen_signup_auth0, "claimed@example.com")
    deliver(app)
    assert management_calls(keen_signup_auth0) == []
    assert keen_signup_keen.events() == []


def test_background_login_calls_neither_auth0_api_nor_keen(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, make_app: t.Any
) -> None:
    app = make_app(keen_signup_auth0, keen_signup_keen)
    state = signup_state(app)
    state.sender.stop(timeout=5)
    keen_signup_auth0.clear_log()
    keen_signup_keen.clear_log()
    response = login(app.test_client(), keen_signup_auth0, "bg@example.com")
    assert response.status_code == 302
    assert management_calls(keen_signup_auth0) == []
    assert keen_signup_keen.request_log == []
    state.sender.start()
    deliver(app)
    assert len(keen_signup_keen.events("signups")) == 1
    assert keen_signup_auth0.users()[0]["app_metadata"] == {"signedUp": True}


def test_background_skips_users_already_marked_by_another_host(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, make_app: t.Any
) -> None:
    keen_signup_auth0.add_user(email="elsewhere@example.com", app_metadata={"signedUp": True})
    app = make_app(keen_signup_auth0, keen_signup_keen)
    login(app.test_client(), keen_signup_auth0, "elsewhere@example.com")
    deliver(app)
    assert keen_signup_keen.events() == []
    assert signup_state(app).outbox.stats().skipped == 1


def test_background_since_uses_the_management_api_created_at(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, make_app: t.Any
) -> None:
    keen_signup_auth0.add_user(email="pre@example.com", created_at="2018-01-01T00:00:00.000Z")
    app = make_app(keen_signup_auth0, keen_signup_keen, KEEN_SIGNUP_SINCE="2026-11-18T00:00:00Z")
    login(app.test_client(), keen_signup_auth0, "pre@example.com")
    deliver(app)
    assert keen_signup_keen.events() == []
    assert keen_signup_auth0.users()[0]["app_metadata"] == {"signedUp": True}


def test_background_marker_update_is_retried_without_resending(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, make_app: t.Any
) -> None:
    from flask_keen_signup.hooks import MarkerHooks

    app = make_app(keen_signup_auth0, keen_signup_keen)
    state = signup_state(app)
    state.sender.stop(timeout=5)
    original = state.sender.hooks

    class RateLimitAfterCheck(MarkerHooks):
        """Let the pre-send GET through, then rate-limit the PATCH that follows delivery."""

        def before_send(self, rows: t.Any) -> dict[int, str]:
            skip = original.before_send(rows)
            keen_signup_auth0.rate_limit_next(1000, reset_in=1)
            return skip

    state.sender.hooks = RateLimitAfterCheck(
        original.settings, ledger=original.ledger, remote=original.remote
    )
    login(app.test_client(), keen_signup_auth0, "patchfail@example.com")
    state.sender.flush(timeout=30)
    assert len(keen_signup_keen.events("signups")) == 1, "Keen has the event"
    assert keen_signup_auth0.users()[0]["app_metadata"] == {}, "the PATCH was refused"
    assert state.outbox.pending_count() == 1, "the confirmation waits durably"
    keen_signup_auth0.rate_limit_next(0)
    state.sender.hooks = original
    for _ in range(3):
        if state.sender.flush(timeout=20) == 0:
            break
    assert keen_signup_auth0.users()[0]["app_metadata"] == {"signedUp": True}
    assert state.outbox.pending_count() == 0
    posts = [r for r in keen_signup_keen.request_log if r.method == "POST"]
    assert len(posts) == 1, "Keen was written once"
    assert keen_signup_keen.duplicates_rejected == 0


def test_bad_auth0_domain_fails_at_init_app(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, tmp_path: t.Any
) -> None:
    from flask_keen_signup.exceptions import ConfigurationError

    with pytest.raises(ConfigurationError, match="KEEN_SIGNUP_AUTH0_DOMAIN"):
        quickstart_app(
            keen_signup_auth0,
            keen_signup_keen,
            str(tmp_path / "x.sqlite3"),
            KEEN_SIGNUP_STORE="auth0",
            KEEN_SIGNUP_AUTH0_DOMAIN="not a domain/",
            KEEN_SIGNUP_AUTH0_CLIENT_ID="id",
            KEEN_SIGNUP_AUTH0_CLIENT_SECRET="secret",
        )
