"""docs/postgres.md's Flask-SQLAlchemy recipe, as written, through the real login: the
signup commits with the app's own account row, or rolls back with it."""

from __future__ import annotations

import typing as t
import uuid

import pytest
from _postgres import fresh_schema
from authlib.integrations.flask_client import OAuth
from flask import Flask
from flask import redirect
from flask import session
from flask import url_for
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import String
from sqlalchemy import text
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from flask_keen_signup import KeenSignup
from flask_keen_signup import signup_state
from flask_keen_signup.testing import Auth0Emulator
from flask_keen_signup.testing import KeenEmulator
from flask_keen_signup.testing import flow


@pytest.fixture
def recipe_app(
    keen_signup_auth0: Auth0Emulator,
    keen_signup_keen: KeenEmulator,
    postgres_url: str,
    tmp_path: t.Any,
) -> t.Iterator[tuple[Flask, SQLAlchemy, type[t.Any]]]:
    auth0 = keen_signup_auth0
    app = Flask(__name__)
    app.secret_key = "test-secret"
    app.config.update(
        SQLALCHEMY_DATABASE_URI=postgres_url.replace("postgresql://", "postgresql+psycopg://"),
        KEEN_PROJECT_ID=keen_signup_keen.project_id,
        KEEN_WRITE_KEY=keen_signup_keen.write_key,
        KEEN_API_URL=keen_signup_keen.url,
        KEEN_SIGNUP_STORE="postgres",
        KEEN_SIGNUP_DATABASE_URL=postgres_url,
        KEEN_SIGNUP_DATABASE_SCHEMA=fresh_schema(),
        KEEN_SIGNUP_DATABASE=str(tmp_path / "unused.sqlite3"),
        KEEN_SIGNUP_FLUSH_INTERVAL=0.05,
    )
    oauth = OAuth(app)
    oauth.register(
        "auth0",
        client_id=auth0.client_id,
        client_secret=auth0.client_secret,
        client_kwargs={"scope": "openid profile email"},
        server_metadata_url=auth0.server_metadata_url,
    )
    db = SQLAlchemy(app)
    table = f"accounts_{uuid.uuid4().hex[:12]}"

    class Account(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = table
        sub: Mapped[str] = mapped_column(String, primary_key=True)
        email: Mapped[str | None] = mapped_column(String, nullable=True)

    signup = KeenSignup(app)
    fail_once = {"rollback@x.io"}  # the app's own write fails at this user's first login

    @app.route("/login")
    def login() -> t.Any:
        return oauth.auth0.authorize_redirect(redirect_uri=url_for("callback", _external=True))

    @app.route("/callback")
    def callback() -> t.Any:  # docs/postgres.md, line for line
        token = oauth.auth0.authorize_access_token()
        claims = token["userinfo"]
        account = db.session.get(Account, claims["sub"])
        if account is None:
            db.session.add(Account(sub=claims["sub"], email=claims.get("email")))
        signup.track_claims(claims, connection=db.session.connection())
        if claims.get("email") in fail_once:
            fail_once.discard(claims["email"])
            db.session.rollback()  # the app's own write failed: nothing of it stays
        else:
            db.session.commit()  # the account and the signup, together
        session["user"] = token
        return redirect("/")

    with app.app_context():
        db.create_all()
    try:
        yield app, db, Account
    finally:
        state = signup_state(app)
        if state.sender is not None:
            state.sender.stop(5)
        state.outbox.close()
        with app.app_context():
            db.session.execute(text(f'DROP TABLE IF EXISTS "{table}"'))
            db.session.commit()
            db.engine.dispose()


def test_the_signup_commits_and_rolls_back_with_the_apps_own_row(
    recipe_app: tuple[Flask, SQLAlchemy, type[t.Any]],
    keen_signup_auth0: Auth0Emulator,
    keen_signup_keen: KeenEmulator,
) -> None:
    app, db, account = recipe_app
    assert flow.login(app.test_client(), "kept@x.io", name="Kept").status_code == 302
    assert flow.login(app.test_client(), "rollback@x.io", name="Gone").status_code == 302
    flow.deliver(app)
    users = {u["email"]: u["user_id"] for u in keen_signup_auth0.users()}
    assert [e["userId"] for e in keen_signup_keen.events("signups")] == [users["kept@x.io"]]
    with app.app_context():
        assert db.session.get(account, users["kept@x.io"]) is not None
        assert db.session.get(account, users["rollback@x.io"]) is None
    state = signup_state(app)
    assert state.store.lookup(users["rollback@x.io"]) is None, "no marker: a later login retries"
    # The rolled-back user's next login (now committed) is their signup, reported once.
    assert flow.login(app.test_client(), "rollback@x.io", "password").status_code == 302
    flow.deliver(app)
    ids = sorted(e["userId"] for e in keen_signup_keen.events("signups"))
    assert ids == sorted([users["kept@x.io"], users["rollback@x.io"]])
