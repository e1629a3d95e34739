"""Test helpers: Auth0's quickstart app with the two lines, and a login driven over HTTP."""

from __future__ import annotations

import typing as t

from authlib.integrations.flask_client import OAuth
from flask import Flask
from flask import redirect
from flask import session
from flask import url_for
from flask.testing import FlaskClient

from flask_keen_signup import KeenSignup
from flask_keen_signup.testing import Auth0Emulator
from flask_keen_signup.testing import KeenEmulator
from flask_keen_signup.testing import flow


def quickstart_app(
    auth0: Auth0Emulator,
    keen: KeenEmulator | None,
    database: str,
    *,
    with_extension: bool = True,
    scope: str = "openid profile email",
    **config: t.Any,
) -> tuple[Flask, KeenSignup | None]:
    """Auth0's quickstart (01-Login) pointed at the emulators, plus the two lines."""
    app = Flask(__name__)
    app.secret_key = "test-secret"
    app.config.update(
        {
            "KEEN_PROJECT_ID": keen.project_id if keen else "p",
            "KEEN_WRITE_KEY": keen.write_key if keen else "w",
            "KEEN_API_URL": keen.url if keen else "http://127.0.0.1:9",
            "KEEN_SIGNUP_DATABASE": database,
            "KEEN_SIGNUP_FLUSH_INTERVAL": 0.05,
            **config,
        }
    )
    oauth = OAuth(app)
    oauth.register(
        "auth0",
        client_id=auth0.client_id,
        client_secret=auth0.client_secret,
        client_kwargs={"scope": scope},
        server_metadata_url=auth0.server_metadata_url,
    )
    signup = KeenSignup(app) if with_extension else None

    @app.route("/login")
    def login() -> t.Any:
        return oauth.auth0.authorize_redirect(redirect_uri=url_for("callback", _external=True))

    def callback() -> t.Any:
        token = oauth.auth0.authorize_access_token()
        session["user"] = token
        return redirect("/")

    view = signup.track(callback) if signup else callback
    app.add_url_rule("/callback", "callback", view, methods=["GET", "POST"])
    return app, signup


def login(
    client: FlaskClient,
    auth0: Auth0Emulator,
    email: str,
    password: str = "password",
    *,
    name: str | None = None,
    headers: dict[str, str] | None = None,
) -> t.Any:
    """Drive the real flow: app /login, the emulator's form, app /callback (shipped helper)."""
    return flow.login(client, email, password, name=name, headers=headers)
