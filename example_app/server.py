"""Auth0's Flask quickstart (auth0-samples/auth0-python-web-app, 01-Login) plus two lines.

The two lines are marked ``# flask-keen-signup``. Everything else is the quickstart as
Auth0 ships it, turned into a factory so the offline demo and the tests can build it, and
a ``/signups`` page that reads back what Keen received.
"""

from __future__ import annotations

import json
import typing as t
from collections import Counter
from os import environ as env
from urllib.parse import quote_plus
from urllib.parse import urlencode

import requests
from authlib.integrations.flask_client import OAuth
from flask import Flask
from flask import redirect
from flask import render_template
from flask import session
from flask import url_for

from flask_keen_signup import KeenSignup


def create_app(config: t.Mapping[str, t.Any] | None = None) -> Flask:
    app = Flask(__name__, instance_relative_config=True)
    app.secret_key = env.get("APP_SECRET_KEY")
    app.config.from_prefixed_env()  # FLASK_KEEN_PROJECT_ID -> KEEN_PROJECT_ID, ...
    app.config.update(config or {})
    domain = app.config.get("AUTH0_DOMAIN") or env.get("AUTH0_DOMAIN")
    scheme = app.config.get("AUTH0_SCHEME", "https")

    oauth = OAuth(app)
    oauth.register(
        "auth0",
        client_id=app.config.get("AUTH0_CLIENT_ID") or env.get("AUTH0_CLIENT_ID"),
        client_secret=app.config.get("AUTH0_CLIENT_SECRET") or env.get("AUTH0_CLIENT_SECRET"),
        client_kwargs={"scope": "openid profile email"},
        server_metadata_url=f"{scheme}://{domain}/.well-known/openid-configuration",
    )
    signup = KeenSignup(app)  # flask-keen-signup

    @app.route("/login")
    def login() -> t.Any:
        return oauth.auth0.authorize_redirect(redirect_uri=url_for("callback", _external=True))

    @app.route("/callback", methods=["GET", "POST"])
    @signup.track  # flask-keen-signup
    def callback() -> t.Any:
        token = oauth.auth0.authorize_access_token()
        session["user"] = token
        return redirect("/")

    @app.route("/logout")
    def logout() -> t.Any:
        session.clear()
        return redirect(
            f"{scheme}://{domain}/v2/logout?"
            + urlencode(
                {
                    "returnTo": url_for("home", _external=True),
                    "client_id": oauth.auth0.client_id,
                },
                quote_via=quote_plus,
            )
        )

    @app.route("/")
    def home() -> t.Any:
        return render_template(
            "home.html",
            session=session.get("user"),
            pretty=json.dumps(session.get("user"), indent=4),
            offline=app.config.get("EXAMPLE_OFFLINE", False),
        )

    @app.route("/signups")
    def signups() -> t.Any:
        events, error = _read_signups(app)
        per_day = Counter(str(e.get("keen", {}).get("timestamp", ""))[:10] for e in events)
        days = sorted(per_day.items())
        return render_template(
            "signups.html",
            events=sorted(
                events, key=lambda e: e.get("keen", {}).get("timestamp", ""), reverse=True
            ),
            days=days,
            peak=max(per_day.values(), default=0),
            error=error,
            health=signup.health(app),
        )

    return app


def _read_signups(app: Flask) -> tuple[list[dict[str, t.Any]], str | None]:
    """Read the collection back through Keen's query API (the emulator speaks it too)."""
    read_key = app.config.get("KEEN_READ_KEY")
    if not read_key:
        return [], "Set KEEN_READ_KEY to list the signups Keen received."
    base = app.config.get("KEEN_API_URL", "https://api.keen.io").rstrip("/")
    try:
        response = requests.get(
            f"{base}/3.0/projects/{app.config['KEEN_PROJECT_ID']}/queries/extraction",
            params={
                "event_collection": app.config.get("KEEN_SIGNUP_COLLECTION", "signups"),
                "timeframe": "this_3650_days",
            },
            headers={"Authorization": read_key},
            timeout=(3.05, 10),
        )
        response.raise_for_status()
        return list(response.json().get("result", [])), None
    except (requests.RequestException, ValueError) as exc:
        return [], f"Could not read from Keen: {type(exc).__name__}"
