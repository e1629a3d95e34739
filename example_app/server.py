"""Auth0's Flask quickstart (auth0-samples/auth0-python-web-app, 01-Login) plus two lines.

The two lines are marked ``# flask-keen-signup``. Everything else is the quickstart as
Auth0 ships it, turned into a factory so the offline demo and the tests can build it, and
a ``/signups`` page that reads back what Keen received.
"""

from __future__ import annotations

import json
import typing as t
from collections import Counter
from datetime import date
from datetime import datetime
from datetime import timedelta
from datetime import timezone
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

    @app.context_processor
    def offline_flag() -> dict[str, t.Any]:
        return {"offline": app.config.get("EXAMPLE_OFFLINE", False)}

    @app.route("/")
    def home() -> t.Any:
        return render_template(
            "home.html",
            session=session.get("user"),
            pretty=json.dumps(session.get("user"), indent=4),
        )

    @app.route("/signups")
    def signups() -> t.Any:
        events, error = _read_signups(app)
        events.sort(key=_timestamp, reverse=True)
        return render_template(
            "signups.html",
            events=events,
            limit=EXTRACTION_LIMIT,
            days=_per_day(events, datetime.now(timezone.utc).date()),
            error=error,
            health=signup.health(app),
        )

    return app


#: /signups reads at most this many events (the most recent ones) from Keen.
EXTRACTION_LIMIT = 500
#: The bar chart covers this many days, ending today (UTC).
CHART_DAYS = 14


def _timestamp(event: t.Mapping[str, t.Any]) -> str:
    keen = event.get("keen")
    return str(keen.get("timestamp", "")) if isinstance(keen, dict) else ""


def _per_day(events: list[dict[str, t.Any]], today: date) -> list[tuple[date, int]]:
    """Signups per UTC day over the last ``CHART_DAYS`` days, days without any included."""
    counts = Counter(_timestamp(e)[:10] for e in events)
    days = [today - timedelta(days=n) for n in range(CHART_DAYS - 1, -1, -1)]
    return [(day, counts.get(day.isoformat(), 0)) for day in days]


def _read_signups(app: Flask) -> tuple[list[dict[str, t.Any]], str | None]:
    """Read the collection back through Keen's query API (the emulator speaks it too)."""
    read_key = app.config.get("KEEN_READ_KEY")
    if not read_key:
        return [], "Set FLASK_KEEN_READ_KEY (a read key of your Keen project) to list the signups."
    base = app.config.get("KEEN_API_URL", "https://api.keen.io").rstrip("/")
    try:
        response = requests.get(
            f"{base}/3.0/projects/{app.config['KEEN_PROJECT_ID']}/queries/extraction",
            params={
                "event_collection": app.config.get("KEEN_SIGNUP_COLLECTION", "signups"),
                "timeframe": "this_3650_days",
                "latest": EXTRACTION_LIMIT,
            },
            headers={"Authorization": read_key},
            timeout=(3.05, 10),
        )
    except requests.RequestException as exc:
        return [], f"Could not reach Keen at {base}: {type(exc).__name__}."
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code != 200 or not isinstance(body, dict):
        code = body.get("error_code") if isinstance(body, dict) else None
        return [], f"Keen answered HTTP {response.status_code} ({code or 'no JSON body'})."
    return [e for e in body.get("result", []) if isinstance(e, dict)], None
