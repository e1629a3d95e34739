"""Signup attribution (DESIGN §3): the parser, and the first touch through the real login.

Unit tests of the pure parts (external vs own host vs identity-provider referrer, caps,
control characters, the sanitiser, the age window), then the extension end to end: the
real Authlib flow against the Auth0 emulator, the Keen emulator receiving the event (and
running the ``referrer_parser`` / ``url_parser`` add-ons), real SQLite files.
``tests/system/test_example_app.py`` drives the same through a real Chromium.
"""

from __future__ import annotations

import typing as t

import pytest
from _flow import login
from _flow import quickstart_app
from flask import Flask
from flask import url_for

from flask_keen_signup import KeenSignup
from flask_keen_signup import signup_state
from flask_keen_signup.attribution import MAX_PATH_LENGTH
from flask_keen_signup.attribution import MAX_URL_LENGTH
from flask_keen_signup.attribution import MAX_VALUE_LENGTH
from flask_keen_signup.attribution import SESSION_KEY
from flask_keen_signup.attribution import event_attribution
from flask_keen_signup.attribution import host_matches
from flask_keen_signup.attribution import identity_provider_hosts
from flask_keen_signup.attribution import intent_of_authorize_url
from flask_keen_signup.attribution import is_candidate
from flask_keen_signup.attribution import parse_touch
from flask_keen_signup.exceptions import ConfigurationError
from flask_keen_signup.testing import Auth0Emulator
from flask_keen_signup.testing import KeenEmulator

CAMPAIGN = "/?utm_source=newsletter&utm_medium=email&utm_campaign=launch"

# -- the parser ------------------------------------------------------------------------------


def test_utm_parameters_become_fields_with_the_landing_path() -> None:
    touch = parse_touch(
        "utm_source=newsletter&utm_medium=email&utm_campaign=launch&utm_term=flask"
        "&utm_content=hero&page=2",
        None,
        "/pricing",
        "app.example.com",
    )
    assert touch == {
        "source": "newsletter",
        "medium": "email",
        "campaign": "launch",
        "term": "flask",
        "content": "hero",
        "landing": "/pricing",
    }


def test_no_utm_and_no_referrer_is_no_touch() -> None:
    assert parse_touch("", None, "/", "app.example.com") is None
    assert parse_touch("page=2&utm_=x&xutm_source=y", None, "/", "app.example.com") is None
    assert parse_touch("utm_source=&utm_medium=%20", None, "/", "app.example.com") is None


def test_external_referrer_counts_own_host_and_identity_provider_do_not() -> None:
    external = parse_touch("", "https://news.ycombinator.com/item?id=1", "/", "app.example.com")
    assert external == {"referrer": "https://news.ycombinator.com/item?id=1", "landing": "/"}
    # Own host (any port, any case): an in-app navigation.
    assert parse_touch("", "https://APP.example.com:8443/docs", "/", "app.example.com") is None
    # The identity provider: the callback's Referer after the round trip.
    idp = ("tenant.eu.auth0.com",)
    own = "app.example.com"
    assert parse_touch("", "https://tenant.eu.auth0.com/u/login", "/", own, idp) is None
    # A subdomain pattern covers the marketing site; a lookalike host is external.
    site = (".example.com",)
    assert parse_touch("", "https://www.example.com/", "/", own, site) is None
    lookalike = parse_touch("", "https://evilexample.com/", "/", own, site)
    assert lookalike is not None and lookalike["referrer"] == "https://evilexample.com/"
    # Not an http(s) URL: ignored.
    assert parse_touch("", "android-app://com.google.android.gm", "/", "a.example.com") is None
    assert parse_touch("", "not a url", "/", "a.example.com") is None


@pytest.mark.parametrize(
    ("query", "referer", "candidate"),
    [
        ("", None, False),
        ("page=2", None, False),
        ("", "https://app.example.com/docs", False),
        ("", "https://app.example.com", False),
        ("", "http://app.example.com?x=1", False),
        ("", "https://app.example.com.evil.org/", True),
        ("", "https://news.example.org/", True),
        ("", "android-app://com.example", True),  # decided on the slow path: ignored there
        ("a=1&utm_source=x", "https://app.example.com/", True),
    ],
)
def test_fast_path_lets_only_possible_touches_through(
    query: str, referer: str | None, candidate: bool
) -> None:
    environ = {"QUERY_STRING": query, "HTTP_HOST": "app.example.com"}
    if referer is not None:
        environ["HTTP_REFERER"] = referer
    assert is_candidate(environ) is candidate


def test_host_matches() -> None:
    assert host_matches("example.com", (".example.com",))
    assert host_matches("a.b.example.com", (".example.com",))
    assert not host_matches("badexample.com", (".example.com",))
    assert host_matches("login.example.com", ("login.example.com",))
    assert not host_matches("x.login.example.com", ("login.example.com",))


def test_values_are_capped_and_cleaned_of_control_characters() -> None:
    long = "x" * 5000
    touch = parse_touch(
        f"utm_source={long}&utm_campaign=a%0D%0ASet-Cookie:%20x%1b[31m",
        "https://ref.example.org/" + "p" * 5000,
        "/" + "l" * 5000,
        "app.example.com",
    )
    assert touch is not None
    assert touch["source"] == "x" * MAX_VALUE_LENGTH
    assert touch["campaign"] == "a Set-Cookie: x [31m"
    assert len(touch["referrer"]) == MAX_URL_LENGTH
    assert len(touch["landing"]) == MAX_PATH_LENGTH


def test_event_attribution_keeps_known_string_fields_only_and_sanitises() -> None:
    stored = {
        "source": "newsletter",
        "medium": 42,  # not a string: dropped
        "campaign": "\ud800launch",  # a lone surrogate: repaired by the sanitiser
        "evil.$name": "x",  # not a field: dropped
        "landing": "/pricing",
        "at": 1_000,
    }
    out = event_attribution(stored, now=1_010, max_age=60)
    assert out == {"source": "newsletter", "campaign": "\ufffdlaunch", "landing": "/pricing"}
    with_url = event_attribution(stored, now=1_010, max_age=60, url_root="http://a.test/")
    assert with_url is not None and with_url["landing_url"] == "http://a.test/pricing"


def test_event_attribution_outside_the_window_or_malformed_is_none() -> None:
    assert event_attribution({"source": "x", "at": 0}, now=100, max_age=60) is None
    assert event_attribution({"source": "x", "at": 50}, now=100, max_age=60) == {"source": "x"}
    assert event_attribution("source=x", now=0, max_age=60) is None
    assert event_attribution({"at": 0}, now=0, max_age=60) is None


def test_signup_intent_from_the_authorize_url() -> None:
    assert intent_of_authorize_url("https://t.auth0.com/authorize?screen_hint=signup&x=1") is True
    assert intent_of_authorize_url("https://t.auth0.com/authorize?screen_hint=login") is False
    assert intent_of_authorize_url("https://t.auth0.com/authorize?state=s") is False
    assert intent_of_authorize_url(None) is None


def test_bad_attribution_config_fails_at_init_app(tmp_path: t.Any) -> None:
    for key, value in (
        ("KEEN_SIGNUP_ATTRIBUTION", "maybe"),
        ("KEEN_SIGNUP_ATTRIBUTION_MAX_AGE", "inf"),
        ("KEEN_SIGNUP_ATTRIBUTION_MAX_AGE", 0),
        ("KEEN_SIGNUP_ATTRIBUTION_IGNORE_HOSTS", 3),
    ):
        app = Flask(__name__)
        app.config.update(
            KEEN_PROJECT_ID="p",
            KEEN_WRITE_KEY="w",
            KEEN_SIGNUP_DATABASE=str(tmp_path / "x.sqlite3"),
            **{key: value},
        )
        with pytest.raises(ConfigurationError, match=key):
            KeenSignup(app)


# -- through the real login ------------------------------------------------------------------


@pytest.fixture
def apps(tmp_path: t.Any) -> t.Iterator[t.Callable[..., Flask]]:
    built: list[Flask] = []

    def make(auth0: Auth0Emulator, keen: KeenEmulator, **config: t.Any) -> Flask:
        app, signup = quickstart_app(auth0, keen, str(tmp_path / f"app{len(built)}.db"), **config)
        app.config["TEST_SIGNUP"] = signup

        @app.route("/")
        def home() -> str:
            return "home"

        @app.route("/pricing")
        def pricing() -> str:
            return "pricing"

        oauth = app.extensions["authlib.integrations.flask_client"]

        @app.route("/signup")
        def signup_view() -> t.Any:
            return oauth.auth0.authorize_redirect(
                redirect_uri=url_for("callback", _external=True), screen_hint="signup"
            )

        built.append(app)
        return app

    yield make
    for app in built:
        signup_state(app).sender.shutdown(timeout=5)


def _events(app: Flask, keen: KeenEmulator) -> list[dict[str, t.Any]]:
    assert signup_state(app).sender.flush(timeout=20) == 0
    return keen.events("signups")


def _event_of(app: Flask, keen: KeenEmulator, auth0: Auth0Emulator, email: str) -> dict[str, t.Any]:
    [user] = [u for u in auth0.users() if u["email"] == email]
    [event] = [e for e in _events(app, keen) if e["userId"] == user["user_id"]]
    return event


def test_campaign_link_then_signup_carries_attribution_another_browser_none(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, apps: t.Any
) -> None:
    app = apps(keen_signup_auth0, keen_signup_keen)
    campaign, plain = app.test_client(), app.test_client()
    assert campaign.get(CAMPAIGN).status_code == 200
    campaign.get("/pricing?utm_source=other")  # later touches do not replace the first
    plain.get("/pricing")

    # The callback request comes back from the IdP with its Referer: not a referrer.
    idp = {"Referer": f"{keen_signup_auth0.url}/authorize?client_id=x"}
    assert login(campaign, keen_signup_auth0, "ada@example.com", headers=idp).status_code == 302
    assert login(plain, keen_signup_auth0, "bob@example.com", headers=idp).status_code == 302

    ada = _event_of(app, keen_signup_keen, keen_signup_auth0, "ada@example.com")
    assert ada["attribution"] == {
        "source": "newsletter",
        "medium": "email",
        "campaign": "launch",
        "landing": "/",
    }
    assert ada["signup_intent"] is False  # /login did not ask for the sign-up screen
    bob = _event_of(app, keen_signup_keen, keen_signup_auth0, "bob@example.com")
    assert "attribution" not in bob

    # Recorded: the first touch is cleared from the session.
    with campaign.session_transaction() as session:
        assert SESSION_KEY not in session


def test_external_referrer_on_the_login_view_counts(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, apps: t.Any
) -> None:
    app = apps(keen_signup_auth0, keen_signup_keen)
    client = app.test_client()
    client.get("/login", headers={"Referer": "https://blog.example.org/post?id=7"})
    with client.session_transaction() as session:
        assert session[SESSION_KEY]["referrer"] == "https://blog.example.org/post?id=7"
        assert session[SESSION_KEY]["landing"] == "/login"
    # flow.login starts at /login again: first touch wins, the Referer stays the blog.
    login(client, keen_signup_auth0, "cy@example.com")
    event = _event_of(app, keen_signup_keen, keen_signup_auth0, "cy@example.com")
    assert event["attribution"] == {
        "referrer": "https://blog.example.org/post?id=7",
        "landing": "/login",
    }


def test_ordinary_requests_do_not_touch_the_session(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, apps: t.Any
) -> None:
    app = apps(keen_signup_auth0, keen_signup_keen)
    client = app.test_client()
    for headers in ({}, {"Referer": "http://localhost/pricing"}):
        response = client.get("/pricing?page=2", headers=headers)
        assert "Set-Cookie" not in response.headers
        assert "Cookie" not in response.headers.get("Vary", "")
    # The tracked callback itself is never a first touch, whatever it carries.
    response = client.get("/callback?utm_source=x", headers={"Referer": "https://x.example/"})
    with client.session_transaction() as session:
        assert SESSION_KEY not in session


def test_returning_user_login_clears_the_touch_and_sends_nothing(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, apps: t.Any
) -> None:
    app = apps(keen_signup_auth0, keen_signup_keen)
    login(app.test_client(), keen_signup_auth0, "dee@example.com")
    assert len(_events(app, keen_signup_keen)) == 1
    client = app.test_client()
    client.get(CAMPAIGN)
    login(client, keen_signup_auth0, "dee@example.com")
    with client.session_transaction() as session:
        assert SESSION_KEY not in session
    assert len(_events(app, keen_signup_keen)) == 1


def test_switched_off_adds_nothing_and_keeps_no_hook(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, apps: t.Any
) -> None:
    app = apps(keen_signup_auth0, keen_signup_keen, KEEN_SIGNUP_ATTRIBUTION=False)
    assert signup_state(app).attribution is None
    client = app.test_client()
    response = client.get(CAMPAIGN, headers={"Referer": "https://blog.example.org/"})
    assert "Set-Cookie" not in response.headers
    login(client, keen_signup_auth0, "eve@example.com")
    event = _event_of(app, keen_signup_keen, keen_signup_auth0, "eve@example.com")
    assert "attribution" not in event and "signup_intent" not in event


def test_signup_intent_from_screen_hint(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, apps: t.Any
) -> None:
    app = apps(keen_signup_auth0, keen_signup_keen)
    from flask_keen_signup.testing import flow

    flow.login(app.test_client(), "fay@example.com", "password", login_path="/signup")
    event = _event_of(app, keen_signup_keen, keen_signup_auth0, "fay@example.com")
    assert event["signup_intent"] is True
    assert "attribution" not in event


def test_attribution_beside_the_apps_event_properties(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, apps: t.Any
) -> None:
    app = apps(keen_signup_auth0, keen_signup_keen)
    instance = app.config["TEST_SIGNUP"]

    @instance.event_properties
    def plan(claims: t.Any, request: t.Any) -> dict[str, t.Any]:
        return {"plan": "pro", "attribution": "overridden?"}

    client = app.test_client()
    client.get("/?utm_source=ads&utm_campaign=black-friday")
    login(client, keen_signup_auth0, "gus@example.com")
    event = _event_of(app, keen_signup_keen, keen_signup_auth0, "gus@example.com")
    assert event["plan"] == "pro"
    assert event["attribution"] == {
        "source": "ads",
        "campaign": "black-friday",
        "landing": "/",
    }


def test_keen_url_addons_enrich_the_attribution(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, apps: t.Any
) -> None:
    app = apps(
        keen_signup_auth0,
        keen_signup_keen,
        KEEN_SIGNUP_ADDONS=["referrer_parser", "url_parser"],
    )
    client = app.test_client()
    client.get(
        "/pricing?utm_source=google&utm_medium=cpc",
        headers={"Referer": "https://www.google.com/search?q=flask+signup+analytics"},
    )
    login(client, keen_signup_auth0, "hal@example.com")
    event = _event_of(app, keen_signup_keen, keen_signup_auth0, "hal@example.com")
    assert event["attribution"]["landing_url"] == "http://localhost/pricing"
    assert event["parsed_referrer"] == {
        "medium": "SEARCH",
        "source": "Google",
        "term": "flask signup analytics",
    }
    assert event["parsed_landing_url"]["domain"] == "localhost"
    assert event["parsed_landing_url"]["path"] == "/pricing"
    # What was sent is Keen's documented add-on shape.
    sent = b"".join(r.body for r in keen_signup_keen.request_log if r.method == "POST")
    assert b'"name":"keen:referrer_parser"' in sent.replace(b" ", b"")
    assert b'"referrer_url":"attribution.referrer"' in sent.replace(b" ", b"")

    # Without a referrer, referrer_parser is left out (Keen fails a missing input);
    # url_parser still runs.
    other = app.test_client()
    other.get("/?utm_source=x")
    login(other, keen_signup_auth0, "ida@example.com")
    event = _event_of(app, keen_signup_keen, keen_signup_auth0, "ida@example.com")
    assert "parsed_referrer" not in event
    assert event["parsed_landing_url"]["path"] == "/"


def test_identity_provider_hosts_are_learnt_from_authlib(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, apps: t.Any
) -> None:
    app = apps(keen_signup_auth0, keen_signup_keen, AUTH0_DOMAIN="tenant.eu.auth0.com")
    hosts = identity_provider_hosts(app)
    assert "127.0.0.1" in hosts and "tenant.eu.auth0.com" in hosts


def test_a_management_domain_given_as_a_url_is_an_identity_provider_host(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, apps: t.Any
) -> None:
    """``KEEN_SIGNUP_AUTH0_DOMAIN`` may be a URL (``http://...`` for the emulator)."""
    app = apps(
        keen_signup_auth0,
        keen_signup_keen,
        KEEN_SIGNUP_AUTH0_DOMAIN="http://login.example.net:4000",
        KEEN_SIGNUP_AUTH0_CLIENT_ID="id",
        KEEN_SIGNUP_AUTH0_CLIENT_SECRET="m2m-secret",
    )
    hosts = identity_provider_hosts(app)
    assert "login.example.net" in hosts and "http" not in hosts


def test_sync_delivery_and_ignored_hosts(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, apps: t.Any
) -> None:
    app = apps(
        keen_signup_auth0,
        keen_signup_keen,
        KEEN_SIGNUP_DELIVERY="sync",
        KEEN_SIGNUP_ATTRIBUTION_IGNORE_HOSTS=".example.com",
    )
    client = app.test_client()
    # The marketing site on www.example.com is ours: not a referrer, so no touch yet.
    client.get("/pricing", headers={"Referer": "https://www.example.com/launch"})
    with client.session_transaction() as session:
        assert SESSION_KEY not in session
    client.get("/pricing", headers={"Referer": "https://news.example.org/"})
    login(client, keen_signup_auth0, "jo@example.com")
    # Sync mode: in Keen when the callback returns, with its attribution.
    [user] = [u for u in keen_signup_auth0.users() if u["email"] == "jo@example.com"]
    [event] = [e for e in keen_signup_keen.events("signups") if e["userId"] == user["user_id"]]
    assert event["attribution"] == {"referrer": "https://news.example.org/", "landing": "/pricing"}


# -- whatever a browser sends ----------------------------------------------------------------

from hypothesis import given  # noqa: E402
from hypothesis import settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from flask_keen_signup.testing._keen_validation import check_properties  # noqa: E402

_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=300) | st.sampled_from(
    ["", "utm_source", "%00%0a", "\ud800", "x" * 2000, "https://evil.example/\r\nSet-Cookie:"]
)


@settings(max_examples=300, deadline=None)
@given(
    values=st.dictionaries(
        st.sampled_from(["utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_x"]),
        _text,
        max_size=5,
    ),
    raw_query=_text,
    referer=st.none() | _text | _text.map(lambda s: "https://news.example.org/" + s),
    path=_text,
)
def test_any_request_gives_a_small_clean_keen_valid_attribution(
    values: dict[str, str], raw_query: str, referer: str | None, path: str
) -> None:
    from urllib.parse import quote

    # As WSGI hands it over: percent-encoded UTF-8 (lone surrogates passed through as bytes).
    query = "&".join(
        f"{k}={quote(v.encode('utf-8', 'surrogatepass'))}" for k, v in values.items()
    )
    query += "&" + quote(raw_query.encode("utf-8", "surrogatepass"), safe="=&")
    touch = parse_touch(query, referer, path, "app.example.com", ("tenant.auth0.com",))
    if touch is None:
        return
    assert set(touch) <= {"source", "medium", "campaign", "term", "content", "referrer", "landing"}
    for field, value in touch.items():
        limit = {"referrer": MAX_URL_LENGTH, "landing": MAX_PATH_LENGTH}.get(
            field, MAX_VALUE_LENGTH
        )
        assert 0 < len(value) <= limit
        assert not any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in value)
        value.encode("utf-8")  # storable in the session cookie: no lone surrogates
    event = event_attribution(touch, now=0, max_age=60, url_root="https://app.example.com/")
    assert event is not None
    check_properties({"attribution": event}, 256, True, None, root=True)  # Keen's rules
    import json

    json.dumps(event).encode("utf-8")  # valid Unicode all the way to the wire


def test_the_largest_touch_and_a_login_under_way_fit_in_a_session_cookie(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, apps: t.Any
) -> None:
    """Browsers drop cookies over 4,096 bytes: a worst-case first touch (every value at its
    cap, characters that do not compress) plus Authlib's state must stay well under it."""
    import random
    import string
    from urllib.parse import quote

    rng = random.Random(12)

    def noise(n: int) -> str:
        return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(n))

    app = apps(keen_signup_auth0, keen_signup_keen)
    client = app.test_client()
    query = "&".join(
        f"utm_{name}={quote(noise(500))}"
        for name in ("source", "medium", "campaign", "term", "content")
    )
    app.add_url_rule("/<path:anything>", "anything", lambda anything: "ok")
    first = client.get(
        "/" + noise(1000) + "?" + query,
        headers={"Referer": "https://news.example.org/" + noise(1000)},
    )
    login_page = client.get("/login")
    cookies = [
        h for r in (first, login_page) for h in r.headers.getlist("Set-Cookie")
        if h.startswith("session=")
    ]
    assert cookies, "the first touch was not written"
    assert max(len(c) for c in cookies) < 3_000, [len(c) for c in cookies]
    with client.session_transaction() as session:
        kept = session[SESSION_KEY]
    assert len(kept["source"]) == MAX_VALUE_LENGTH and len(kept["referrer"]) == MAX_URL_LENGTH
