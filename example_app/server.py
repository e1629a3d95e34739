"""Auth0's Flask quickstart (auth0-samples/auth0-python-web-app, 01-Login) plus two lines.

The two lines are marked ``# flask-keen-signup``. Everything else is the quickstart as
Auth0 ships it, turned into a factory so the offline demo and the tests can build it, a
``/signups`` page that reads back what Keen received (with a chart of signups per day and
by source), and a ``/signup`` link that opens Auth0's sign-up screen.
"""

from __future__ import annotations

import dataclasses
import json
import typing as t
from collections import Counter
from datetime import date
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
from flask_keen_signup.attribution import SESSION_KEY as ATTRIBUTION_SESSION_KEY


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

    @app.route("/signup")
    def signup_page() -> t.Any:
        # Auth0's Universal Login opens on its sign-up screen; the event says signup_intent.
        return oauth.auth0.authorize_redirect(
            redirect_uri=url_for("callback", _external=True), screen_hint="signup"
        )

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
            # What flask-keen-signup noted of this browser's first visit (demo only).
            touch=session.get(ATTRIBUTION_SESSION_KEY),
        )

    @app.route("/signups")
    def signups() -> t.Any:
        events, error = _read_signups(app)
        events.sort(key=_timestamp, reverse=True)
        chart, chart_error = _signups_chart(app)
        return render_template(
            "signups.html",
            events=events,
            limit=EXTRACTION_LIMIT,
            chart=chart,
            error=error or chart_error,
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


#: The label of signups that came with no ``utm_source`` (typed URL, bookmark, referrer only).
NO_SOURCE = "(none)"
#: Bar colours of the sources, in order of their share; the rest share the last one.
PALETTE = ("#3b5bdb", "#0ca678", "#f59f00", "#e8590c", "#ae3ec9", "#1098ad", "#868e96")


@dataclasses.dataclass
class Day:
    day: date
    total: int
    #: (source, count, colour), in the legend's order, non-zero only.
    parts: list[tuple[str, int, str]]


@dataclasses.dataclass
class Chart:
    days: list[Day]
    #: (source, count, colour, percent of the total), largest first.
    sources: list[tuple[str, int, str, float]]
    total: int
    peak: int


def _signups_chart(app: Flask) -> tuple[Chart | None, str | None]:
    """Signups per UTC day and by source over ``CHART_DAYS`` days: one Keen query,
    ``count`` with ``interval=daily`` and ``group_by=attribution.source``."""
    result, error = _keen_query(
        app,
        "count",
        {
            "timeframe": f"this_{CHART_DAYS}_days",
            "interval": "daily",
            "group_by": "attribution.source",
            "timezone": "UTC",
        },
    )
    if error is not None or not isinstance(result, list):
        return None, error or "Keen answered an unexpected count result."
    per_day: list[tuple[date, dict[str, int]]] = []
    totals: Counter[str] = Counter()
    for interval in result:
        start = str(interval.get("timeframe", {}).get("start", ""))[:10]
        try:
            day = date.fromisoformat(start)
        except ValueError:
            continue
        counts: dict[str, int] = {}
        for group in interval.get("value") or []:
            source = group.get("attribution.source")
            label = source if isinstance(source, str) and source else NO_SOURCE
            counts[label] = counts.get(label, 0) + int(group.get("result") or 0)
        totals.update(counts)
        per_day.append((day, counts))
    ranked = [name for name, _ in totals.most_common()]
    colour = {name: PALETTE[min(i, len(PALETTE) - 1)] for i, name in enumerate(ranked)}
    total = sum(totals.values())
    days = [
        Day(day, sum(c.values()), [(n, c[n], colour[n]) for n in ranked if c.get(n)])
        for day, c in per_day
    ]
    sources = [(n, totals[n], colour[n], 100.0 * totals[n] / total) for n in ranked]
    peak = max([d.total for d in days] + [1])
    return Chart(days=days, sources=sources, total=total, peak=peak), None


def _keen_query(
    app: Flask, analysis: str, params: dict[str, t.Any]
) -> tuple[t.Any, str | None]:
    """One query through Keen's query API (the emulator speaks it too): (result, error)."""
    read_key = app.config.get("KEEN_READ_KEY")
    if not read_key:
        return None, "Set FLASK_KEEN_READ_KEY (a read key of your Keen project) to see signups."
    base = app.config.get("KEEN_API_URL", "https://api.keen.io").rstrip("/")
    try:
        response = requests.get(
            f"{base}/3.0/projects/{app.config['KEEN_PROJECT_ID']}/queries/{analysis}",
            params={
                "event_collection": app.config.get("KEEN_SIGNUP_COLLECTION", "signups"),
                **params,
            },
            headers={"Authorization": read_key},
            timeout=(3.05, 10),
        )
    except requests.RequestException as exc:
        return None, f"Could not reach Keen at {base}: {type(exc).__name__}."
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code != 200 or not isinstance(body, dict):
        code = body.get("error_code") if isinstance(body, dict) else None
        return None, f"Keen answered HTTP {response.status_code} ({code or 'no JSON body'})."
    return body.get("result"), None


def _read_signups(app: Flask) -> tuple[list[dict[str, t.Any]], str | None]:
    """The latest signups, for the table (``extraction``)."""
    result, error = _keen_query(
        app, "extraction", {"timeframe": "this_3650_days", "latest": EXTRACTION_LIMIT}
    )
    if error is not None:
        return [], error
    return [e for e in result or [] if isinstance(e, dict)], None
