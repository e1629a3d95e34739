"""The shipped pytest plugin, as a user's test suite sees it (pytester runs a real session)."""

from __future__ import annotations

import pytest

USER_TESTS = """
from authlib.integrations.flask_client import OAuth
from flask import Flask, redirect, session, url_for

from flask_keen_signup import signup_state
from flask_keen_signup import KeenSignup


def make_app(config):
    app = Flask(__name__)
    app.secret_key = "s"
    app.config.update(config)
    oauth = OAuth(app)
    oauth.register("auth0", client_kwargs={"scope": "openid profile email"})
    signup = KeenSignup(app)

    @app.route("/login")
    def login():
        return oauth.auth0.authorize_redirect(url_for("callback", _external=True))

    @app.route("/callback")
    @signup.track
    def callback():
        session["user"] = oauth.auth0.authorize_access_token()
        return redirect("/")

    return app


def test_signup_lands_in_keen_once(
    keen_signup_config, keen_signup_login, keen_signup_deliver, keen_signup_keen
):
    app = make_app(keen_signup_config)
    try:
        keen_signup_login(app.test_client(), "user@example.com", name="User")
        keen_signup_login(app.test_client(), "user@example.com")
        keen_signup_deliver(app)
        events = keen_signup_keen.events("signups")
        assert [e["name"] for e in events] == ["User"]
    finally:
        signup_state(app).sender.shutdown(timeout=5)


def test_emulators_are_fresh_per_test(keen_signup_keen, keen_signup_auth0):
    assert keen_signup_keen.events() == []
    assert keen_signup_auth0.users() == []
"""


def test_plugin_fixtures_in_a_user_suite(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user_app=USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error")
    result.assert_outcomes(passed=2)


def test_login_helper_fails_clearly_without_a_redirect(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_bad="""
from flask import Flask
import pytest

def test_no_redirect(keen_signup_login):
    app = Flask(__name__)
    app.add_url_rule("/login", "login", lambda: "no redirect here")
    with pytest.raises(AssertionError, match="did not redirect"):
        keen_signup_login(app.test_client(), "a@b.c")
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
