"""The Auth0 emulator against real clients over real HTTP: Authlib's Flask client (Auth0's
quickstart code), the official ``auth0-python`` SDK, and plain ``requests``. No mocks."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import subprocess
import sys
import time
import typing as t
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qs
from urllib.parse import quote
from urllib.parse import urlsplit

import pytest
import requests
from authlib.integrations.flask_client import OAuth
from flask import Flask
from flask import redirect
from flask import session
from flask import url_for
from joserfc import jwt
from joserfc.errors import BadSignatureError
from joserfc.errors import ExpiredTokenError
from joserfc.errors import InvalidClaimError
from joserfc.errors import JoseError
from joserfc.errors import MissingClaimError
from joserfc.jwk import KeySet

from flask_keen_signup.testing import Auth0Emulator

# -- helpers -----------------------------------------------------------------------------------


@pytest.fixture
def auth0() -> t.Iterator[Auth0Emulator]:
    with Auth0Emulator() as emulator:
        yield emulator


def quickstart_app(emulator: Auth0Emulator, **client_kwargs: t.Any) -> Flask:
    """Auth0's Flask quickstart (01-Login/server.py), pointed at the emulator."""
    app = Flask(__name__)
    app.secret_key = "test-secret"
    app.testing = True
    oauth = OAuth(app)
    oauth.register(
        "auth0",
        client_id=emulator.client_id,
        client_secret=emulator.client_secret,
        client_kwargs={"scope": "openid profile email", **client_kwargs},
        server_metadata_url=emulator.server_metadata_url,
    )

    @app.route("/")
    def home() -> str:
        return "home"

    @app.route("/callback", methods=["GET", "POST"])
    def callback() -> t.Any:
        token = oauth.auth0.authorize_access_token()
        session["user"] = token
        return redirect("/")

    @app.route("/login")
    def login() -> t.Any:
        return oauth.auth0.authorize_redirect(redirect_uri=url_for("callback", _external=True))

    return app


def start_login(client: t.Any, path: str = "/login") -> str:
    """GET the app's /login and return the emulator's /authorize URL it redirects to."""
    response = client.get(path)
    assert response.status_code == 302
    return str(response.headers["Location"])


def submit_form(authorize_url: str, email: str, password: str, name: str = "") -> requests.Response:
    """Post the login form as a browser would (the form's action is the /authorize URL)."""
    fields = {"email": email, "password": password, "name": name}
    return requests.post(authorize_url, data=fields, allow_redirects=False, timeout=10)


def finish_login(client: t.Any, redirect_to_app: str) -> t.Any:
    parts = urlsplit(redirect_to_app)
    return client.get(f"{parts.path}?{parts.query}")


def login(app: Flask, email: str, password: str = "password", name: str = "") -> dict[str, t.Any]:
    """The whole browser round trip; returns the token the quickstart stored in the session."""
    with app.test_client() as client:
        authorize_url = start_login(client)
        form_post = submit_form(authorize_url, email, password, name)
        assert form_post.status_code == 302, form_post.text
        response = finish_login(client, form_post.headers["Location"])
        assert response.status_code == 302
        with client.session_transaction() as sess:
            return dict(sess["user"])


def m2m_token(emulator: Auth0Emulator, **extra: str) -> str:
    response = requests.post(
        emulator.url + "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": emulator.m2m_client_id,
            "client_secret": emulator.m2m_client_secret,
            "audience": emulator.audience,
            **extra,
        },
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def api(
    emulator: Auth0Emulator, method: str, path: str, token: str | None, **kwargs: t.Any
) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    headers.update(kwargs.pop("headers", {}))
    return requests.request(
        method, emulator.url + "/api/v2/" + path, headers=headers, timeout=10, **kwargs
    )


def user_path(user_id: str) -> str:
    return "users/" + quote(user_id, safe="")


# -- discovery and keys ------------------------------------------------------------------------


def test_discovery_and_jwks(auth0: Auth0Emulator) -> None:
    assert auth0.url.startswith("http://127.0.0.1:")
    assert auth0.domain == auth0.url.removeprefix("http://")
    assert auth0.issuer == auth0.url + "/"
    assert auth0.audience == auth0.url + "/api/v2/"
    meta = requests.get(auth0.server_metadata_url, timeout=10).json()
    assert meta["issuer"] == auth0.issuer
    assert meta["authorization_endpoint"] == auth0.url + "/authorize"
    assert meta["token_endpoint"] == auth0.url + "/oauth/token"
    assert meta["userinfo_endpoint"] == auth0.url + "/userinfo"
    assert meta["end_session_endpoint"] == auth0.url + "/oidc/logout"
    assert meta["id_token_signing_alg_values_supported"] == ["RS256"]
    assert "S256" in meta["code_challenge_methods_supported"]
    assert "code" in meta["response_types_supported"]
    keys = requests.get(meta["jwks_uri"], timeout=10).json()["keys"]
    assert len(keys) == 1
    assert keys[0]["kty"] == "RSA" and keys[0]["alg"] == "RS256" and keys[0]["kid"]
    assert "d" not in keys[0]  # public part only


# -- 1. the real Authlib Flask client, Auth0's quickstart unchanged ----------------------------


def test_quickstart_signup_gives_validated_claims(auth0: Auth0Emulator) -> None:
    app = quickstart_app(auth0)
    with app.test_client() as client:
        authorize_url = start_login(client)
        query = parse_qs(urlsplit(authorize_url).query)
        assert authorize_url.startswith(auth0.url + "/authorize?")
        assert query["response_type"] == ["code"] and query["client_id"] == [auth0.client_id]
        assert "nonce" in query and "state" in query

        page = requests.get(authorize_url, timeout=10)
        assert page.status_code == 200
        assert '<label for="email">' in page.text and '<label for="password">' in page.text
        assert page.text.count("<button") == 1

        form_post = submit_form(authorize_url, "ada@example.com", "s3cret", "Ada Lovelace")
        assert form_post.status_code == 302
        back = urlsplit(form_post.headers["Location"])
        assert back.path == "/callback"
        assert parse_qs(back.query)["state"] == query["state"]

        response = finish_login(client, form_post.headers["Location"])
        assert response.status_code == 302
        with client.session_transaction() as sess:
            token = sess["user"]

    claims = token["userinfo"]
    assert claims["sub"].startswith("auth0|")
    assert claims["email"] == "ada@example.com"
    assert claims["name"] == "Ada Lovelace"
    assert claims["nonce"] == query["nonce"][0]
    assert claims["iss"] == auth0.issuer and claims["aud"] == auth0.client_id
    assert claims["sid"]
    assert token["token_type"] == "Bearer" and token["expires_in"] == 86400

    user = auth0.get_user(claims["sub"])
    assert user is not None
    assert user["logins_count"] == 1
    assert user["created_at"].endswith("Z") and user["last_login"]
    assert user["identities"] == [
        {
            "provider": "auth0",
            "user_id": claims["sub"].split("|", 1)[1],
            "connection": "Username-Password-Authentication",
            "isSocial": False,
        }
    ]

    header = json.loads(base64.urlsafe_b64decode(token["id_token"].split(".")[0] + "=="))
    assert header["alg"] == "RS256" and header["kid"]


def test_quickstart_with_pkce(auth0: Auth0Emulator) -> None:
    app = quickstart_app(auth0, code_challenge_method="S256")
    with app.test_client() as client:
        authorize_url = start_login(client)
        query = parse_qs(urlsplit(authorize_url).query)
        assert query["code_challenge_method"] == ["S256"] and query["code_challenge"]
        form_post = submit_form(authorize_url, "pkce@example.com", "pw")
        response = finish_login(client, form_post.headers["Location"])
        assert response.status_code == 302
        with client.session_transaction() as sess:
            assert sess["user"]["userinfo"]["email"] == "pkce@example.com"


def test_pkce_verifier_is_checked(auth0: Auth0Emulator) -> None:
    verifier = "v" * 50
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )
    params = {
        "response_type": "code",
        "client_id": auth0.client_id,
        "redirect_uri": "http://app.test/callback",
        "scope": "openid",
        "state": "st",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    authorize_url = (
        auth0.url + "/authorize?" + "&".join(f"{k}={quote(v)}" for k, v in params.items())
    )

    def fresh_code() -> str:
        location = submit_form(authorize_url, "p@example.com", "pw").headers["Location"]
        return parse_qs(urlsplit(location).query)["code"][0]

    def exchange(code: str, code_verifier: str) -> requests.Response:
        return requests.post(
            auth0.url + "/oauth/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": params["redirect_uri"],
                "code_verifier": code_verifier,
                "client_id": auth0.client_id,
                "client_secret": auth0.client_secret,  # client_secret_post
            },
            timeout=10,
        )

    wrong = exchange(fresh_code(), "w" * 50)
    assert wrong.status_code == 400
    assert wrong.json()["error"] == "invalid_grant"
    right = exchange(fresh_code(), verifier)
    assert right.status_code == 200, right.text
    assert right.json()["id_token"]


def test_userinfo_and_code_reuse(auth0: Auth0Emulator) -> None:
    auth0.id_token_claims["https://example.com/signed_up"] = False
    redirect_uri = "http://app.test/callback"
    authorize_url = (
        f"{auth0.url}/authorize?response_type=code&client_id={auth0.client_id}"
        f"&redirect_uri={quote(redirect_uri, safe='')}&scope=openid%20profile%20email&state=s"
    )
    location = submit_form(authorize_url, "u@example.com", "pw", "U").headers["Location"]
    code = parse_qs(urlsplit(location).query)["code"][0]
    body = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
    basic = (auth0.client_id, auth0.client_secret)  # client_secret_basic
    token = requests.post(auth0.url + "/oauth/token", data=body, auth=basic, timeout=10)
    assert token.status_code == 200
    assert set(token.json()) >= {"access_token", "id_token", "token_type", "expires_in", "scope"}

    info = requests.get(
        auth0.url + "/userinfo",
        headers={"Authorization": "Bearer " + token.json()["access_token"]},
        timeout=10,
    )
    assert info.status_code == 200
    assert info.json()["email"] == "u@example.com"
    assert info.json()["https://example.com/signed_up"] is False
    assert requests.get(auth0.url + "/userinfo", timeout=10).status_code == 401

    reused = requests.post(auth0.url + "/oauth/token", data=body, auth=basic, timeout=10)
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
    bad_secret = requests.post(
        auth0.url + "/oauth/token", data=body, auth=(auth0.client_id, "nope"), timeout=10
    )
    assert bad_secret.status_code == 401
    assert bad_secret.json() == {"error": "access_denied", "error_description": "Unauthorized"}


def test_id_token_claims_knob_reaches_the_app(auth0: Auth0Emulator) -> None:
    auth0.id_token_claims = {"https://example.com/created_at": "2020-01-01T00:00:00.000Z"}
    claims = login(quickstart_app(auth0), "claims@example.com")["userinfo"]
    assert claims["https://example.com/created_at"] == "2020-01-01T00:00:00.000Z"


def test_id_token_claims_can_be_computed_per_user(auth0: Auth0Emulator) -> None:
    """Like a post-login Action copying ``event.user`` fields into namespaced claims."""
    auth0.id_token_claims["https://example.com/created_at"] = lambda user: user["created_at"]
    auth0.id_token_claims["https://example.com/logins"] = lambda user: user["logins_count"]
    old = auth0.add_user(email="old@example.com", created_at="2019-05-01T12:00:00Z")
    claims = login(quickstart_app(auth0), "old@example.com")["userinfo"]
    assert claims["https://example.com/created_at"] == "2019-05-01T12:00:00.000Z"
    assert claims["https://example.com/logins"] == 1
    assert claims["sub"] == old["user_id"]


def test_concurrent_logins(auth0: Auth0Emulator) -> None:
    """The server is threaded: simultaneous signups neither lose nor duplicate users."""
    app = quickstart_app(auth0)
    emails = [f"c{i % 4}@example.com" for i in range(12)]  # each email 3 times at once
    with ThreadPoolExecutor(max_workers=12) as pool:
        subs = list(pool.map(lambda email: login(app, email)["userinfo"]["sub"], emails))
    assert len(auth0.users()) == 4
    sub_by_email: dict[str, set[str]] = {}
    for sub, email in zip(subs, emails, strict=True):
        sub_by_email.setdefault(email, set()).add(sub)
    assert all(len(found) == 1 for found in sub_by_email.values())
    assert sorted(u["logins_count"] for u in auth0.users()) == [3, 3, 3, 3]


# -- 2. tampered ID tokens are rejected by Authlib ---------------------------------------------


@pytest.mark.parametrize(
    ("kind", "error", "claim"),
    [
        ("expired", ExpiredTokenError, None),
        ("bad_signature", BadSignatureError, None),
        ("wrong_issuer", InvalidClaimError, "iss"),
        ("wrong_nonce", InvalidClaimError, "nonce"),
        # Authlib does not compare ``aud`` with client_id by default: a token for another
        # application is refused because ``azp`` then becomes required (reference A4).
        ("wrong_audience", MissingClaimError, "azp"),
    ],
)
def test_tampered_id_token_is_rejected(
    auth0: Auth0Emulator, kind: str, error: type[JoseError], claim: str | None
) -> None:
    app = quickstart_app(auth0)
    auth0.tamper_next_id_token(kind)
    with app.test_client() as client:
        form_post = submit_form(start_login(client), f"{kind}@example.com", "pw")
        with pytest.raises(error) as raised:
            finish_login(client, form_post.headers["Location"])
    if claim is not None:
        assert raised.value.claim == claim  # type: ignore[attr-defined]

    # Only the next token was broken: the same person can log in afterwards.
    assert login(app, f"{kind}@example.com", "pw")["userinfo"]["email"] == f"{kind}@example.com"


def test_wrong_audience_with_strict_claims_options(auth0: Auth0Emulator) -> None:
    """With the strict ``claims_options`` the reference recommends, ``aud`` itself fails."""
    app = Flask(__name__)
    app.secret_key = "k"
    app.testing = True
    oauth = OAuth(app)
    oauth.register(
        "auth0",
        client_id=auth0.client_id,
        client_secret=auth0.client_secret,
        client_kwargs={"scope": "openid profile email"},
        server_metadata_url=auth0.server_metadata_url,
    )

    @app.route("/login")
    def login_view() -> t.Any:
        return oauth.auth0.authorize_redirect(url_for("callback", _external=True))

    @app.route("/callback")
    def callback() -> t.Any:
        oauth.auth0.authorize_access_token(
            claims_options={
                "iss": {"essential": True, "values": [auth0.issuer]},
                "aud": {"essential": True, "values": [auth0.client_id]},
            }
        )
        return "ok"

    auth0.tamper_next_id_token("wrong_audience")
    with app.test_client() as client:
        form_post = submit_form(start_login(client), "aud@example.com", "pw")
        with pytest.raises(InvalidClaimError) as raised:
            finish_login(client, form_post.headers["Location"])
    assert raised.value.claim == "aud"


def test_unknown_tamper_kind_is_refused(auth0: Auth0Emulator) -> None:
    with pytest.raises(ValueError, match="unknown tamper kind"):
        auth0.tamper_next_id_token("slightly-off")


# -- 3. returning users, wrong passwords, auto login -------------------------------------------


def test_returning_user_keeps_sub_and_counts_logins(auth0: Auth0Emulator) -> None:
    app = quickstart_app(auth0)
    first = login(app, "bob@example.com", "hunter2", "Bob")["userinfo"]
    second = login(app, "bob@example.com", "hunter2")["userinfo"]
    assert first["sub"] == second["sub"]
    assert second["name"] == "Bob"
    user = auth0.get_user(first["sub"])
    assert user is not None and user["logins_count"] == 2
    assert len(auth0.users()) == 1

    with app.test_client() as client:
        wrong = submit_form(start_login(client), "bob@example.com", "wrong")
    assert wrong.status_code == 401
    assert "Wrong email or password." in wrong.text
    assert 'value="bob@example.com"' in wrong.text  # the form again, email kept
    assert auth0.get_user(first["sub"])["logins_count"] == 2  # type: ignore[index]


def test_seeded_user_logs_in(auth0: Auth0Emulator) -> None:
    seeded = auth0.add_user(email="old@example.com", password="pw", name="Old", logins_count=5)
    claims = login(quickstart_app(auth0), "old@example.com", "pw")["userinfo"]
    assert claims["sub"] == seeded["user_id"] and claims["name"] == "Old"
    assert auth0.get_user(seeded["user_id"])["logins_count"] == 6  # type: ignore[index]


def test_auto_login_skips_the_form(auth0: Auth0Emulator) -> None:
    app = quickstart_app(auth0)
    auth0.auto_login("auto@example.com", "pw", name="Auto")
    with app.test_client() as client:
        response = requests.get(start_login(client), allow_redirects=False, timeout=10)
        assert response.status_code == 302
        finish_login(client, response.headers["Location"])
        with client.session_transaction() as sess:
            assert sess["user"]["userinfo"]["name"] == "Auto"
    # Armed for one request only: the next /authorize shows the form.
    with app.test_client() as client:
        assert requests.get(start_login(client), timeout=10).status_code == 200


def test_screen_hint_signup_and_login_hint(auth0: Auth0Emulator) -> None:
    url = (
        f"{auth0.url}/authorize?response_type=code&client_id={auth0.client_id}"
        "&redirect_uri=http%3A%2F%2Fapp.test%2Fcb&scope=openid&screen_hint=signup"
        "&login_hint=new%40example.com"
    )
    page = requests.get(url, timeout=10)
    assert "<h1>Sign up</h1>" in page.text
    assert 'value="new@example.com"' in page.text


def test_authorize_errors(auth0: Auth0Emulator) -> None:
    unknown = requests.get(
        f"{auth0.url}/authorize?response_type=code&client_id=nope"
        "&redirect_uri=http%3A%2F%2Fapp.test%2Fcb",
        timeout=10,
    )
    assert unknown.status_code == 400 and "Unknown client: nope" in unknown.text

    prompt_none = requests.get(
        f"{auth0.url}/authorize?response_type=code&client_id={auth0.client_id}"
        "&redirect_uri=http%3A%2F%2Fapp.test%2Fcb&scope=openid&prompt=none&state=xyz",
        allow_redirects=False,
        timeout=10,
    )
    assert prompt_none.status_code == 302
    back = parse_qs(urlsplit(prompt_none.headers["Location"]).query)
    assert back["error"] == ["login_required"] and back["state"] == ["xyz"]

    with Auth0Emulator(allowed_callback_urls=["http://app.test/callback"]) as strict:
        mismatch = requests.get(
            f"{strict.url}/authorize?response_type=code&client_id={strict.client_id}"
            "&redirect_uri=http%3A%2F%2Fevil.test%2Fcb",
            timeout=10,
        )
        assert mismatch.status_code == 400 and "Callback URL mismatch" in mismatch.text


def test_logout_redirects(auth0: Auth0Emulator) -> None:
    response = requests.get(
        auth0.url + "/v2/logout",
        params={"returnTo": "http://app.test/", "client_id": auth0.client_id},
        allow_redirects=False,
        timeout=10,
    )
    assert response.status_code == 302 and response.headers["Location"] == "http://app.test/"
    with Auth0Emulator(allowed_logout_urls=["http://app.test/"]) as strict:
        refused = requests.get(
            strict.url + "/v2/logout", params={"returnTo": "http://evil.test/"}, timeout=10
        )
        assert refused.status_code == 400 and "Allowed Logout URLs" in refused.text


# -- 4. the official auth0-python SDK ----------------------------------------------------------


def test_auth0_python_sdk(auth0: Auth0Emulator) -> None:
    from auth0.authentication import GetToken
    from auth0.management import Auth0

    user = auth0.add_user(email="sdk@example.com", name="Sdk")
    # The Authentication API client takes ``protocol`` ("useful for testing", says its docs).
    token = GetToken(
        auth0.domain, auth0.m2m_client_id, client_secret=auth0.m2m_client_secret, protocol="http"
    ).client_credentials(auth0.audience)
    assert token["token_type"] == "Bearer" and token["expires_in"] == 86400

    # ManagementClient hard-codes https://{domain}; its generated core client takes a base URL.
    client = Auth0(base_url=auth0.url + "/api/v2", token=token["access_token"])
    fetched = client.users.get(user["user_id"])
    assert fetched.email == "sdk@example.com"
    updated = client.users.update(user["user_id"], app_metadata={"signedUp": True})
    assert updated.app_metadata == {"signedUp": True}
    assert auth0.get_user(user["user_id"])["app_metadata"] == {"signedUp": True}  # type: ignore[index]
    assert any("%7C" in entry.path for entry in auth0.request_log)  # the SDK quoted the id

    # Its retry honours the 429 and x-ratelimit-reset the emulator sends.
    auth0.rate_limit_next(1, reset_in=1)
    assert client.users.get(user["user_id"]).user_id == user["user_id"]
    statuses = [entry.status for entry in auth0.request_log if entry.method == "GET"]
    assert statuses[-2:] == [429, 200]

    from auth0.management.errors import NotFoundError

    with pytest.raises(NotFoundError) as missing:
        client.users.get("auth0|nobody")
    assert missing.value.body["errorCode"] == "inexistent_user"


def test_auth0_python_sdk_export_job(auth0: Auth0Emulator) -> None:
    """The SDK's generated jobs client parses the emulator's job answers unchanged."""
    from auth0.authentication import GetToken
    from auth0.management import Auth0

    auth0.load_users(30, seed=5)
    token = GetToken(
        auth0.domain, auth0.m2m_client_id, client_secret=auth0.m2m_client_secret, protocol="http"
    ).client_credentials(auth0.audience)
    client = Auth0(base_url=auth0.url + "/api/v2", token=token["access_token"])
    job = client.jobs.users_exports.create(
        format="csv", limit=7, fields=[{"name": "user_id"}, {"name": "email", "export_as": "mail"}]
    )
    assert job.status == "pending" and job.type == "users_export" and job.limit == 7
    assert client.jobs.get(job.id).status == "pending"
    done = client.jobs.get(job.id)
    assert done.status == "completed" and done.location
    rows = requests.get(done.location, timeout=10).content
    lines = gzip.decompress(rows).decode().splitlines()
    assert lines[0] == "user_id,mail" and len(lines) == 8


def test_auth0_python_management_client_cannot_use_http(auth0: Auth0Emulator) -> None:
    """``ManagementClient`` builds ``https://{domain}`` for both token and API URLs."""
    import httpx
    from auth0.management import ManagementClient

    client = ManagementClient(
        domain=auth0.domain,
        client_id=auth0.m2m_client_id,
        client_secret=auth0.m2m_client_secret,
    )
    with pytest.raises(httpx.HTTPError):
        client.users.get("auth0|x", request_options={"max_retries": 0})


# -- 5. Management API semantics ---------------------------------------------------------------


def test_client_credentials_errors(auth0: Auth0Emulator) -> None:
    def post(**body: str) -> requests.Response:
        return requests.post(auth0.url + "/oauth/token", json=body, timeout=10)

    base = {
        "grant_type": "client_credentials",
        "client_id": auth0.m2m_client_id,
        "client_secret": auth0.m2m_client_secret,
    }
    ok = post(**base, audience=auth0.audience)  # JSON body, as the SDKs send it
    assert ok.status_code == 200 and ok.json()["token_type"] == "Bearer"
    claims = jwt.decode(
        ok.json()["access_token"],
        KeySet.import_key_set(
            requests.get(auth0.url + "/.well-known/jwks.json", timeout=10).json()
        ),
    ).claims
    assert claims["aud"] == auth0.audience and claims["gty"] == "client-credentials"
    assert claims["sub"] == f"{auth0.m2m_client_id}@clients" and claims["iss"] == auth0.issuer

    no_audience = post(**base)
    assert no_audience.status_code == 403
    assert no_audience.json()["error"] == "access_denied"
    other = post(**base, audience="https://other.example/api")
    assert other.status_code == 403
    assert other.json() == {
        "error": "access_denied",
        "error_description": "Service not found: https://other.example/api",
    }
    wrong_secret = post(**{**base, "client_secret": "nope"}, audience=auth0.audience)
    assert wrong_secret.status_code == 401
    assert wrong_secret.json() == {"error": "access_denied", "error_description": "Unauthorized"}
    web_client = post(
        grant_type="client_credentials",
        client_id=auth0.client_id,
        client_secret=auth0.client_secret,
        audience=auth0.audience,
    )
    assert web_client.status_code == 403
    assert web_client.json()["error"] == "unauthorized_client"
    https_alias = post(**base, audience=f"https://{auth0.domain}/api/v2/")
    assert https_alias.status_code == 200


@pytest.mark.parametrize(
    "user_id", ["auth0|abc123", "email|6123/x", "samlp|conn|ada@example.com", "google-oauth2|1"]
)
def test_user_ids_are_percent_decoded(auth0: Auth0Emulator, user_id: str) -> None:
    auth0.add_user(email="id@example.com", user_id=user_id)
    token = m2m_token(auth0)
    response = api(auth0, "GET", user_path(user_id), token)
    assert response.status_code == 200
    assert response.json()["user_id"] == user_id
    if "/" in user_id:  # the unencoded slash is another path, not this user
        assert api(auth0, "GET", "users/" + user_id, token).status_code == 404


def test_get_user_fields(auth0: Auth0Emulator) -> None:
    user = auth0.add_user(email="f@example.com", app_metadata={"signedUp": True})
    token = m2m_token(auth0)
    only = api(
        auth0,
        "GET",
        user_path(user["user_id"]),
        token,
        params={"fields": "app_metadata,user_id", "include_fields": "true"},
    )
    assert only.json() == {"app_metadata": {"signedUp": True}, "user_id": user["user_id"]}
    without = api(
        auth0,
        "GET",
        user_path(user["user_id"]),
        token,
        params={"fields": "app_metadata", "include_fields": "false"},
    )
    assert "app_metadata" not in without.json() and without.json()["email"] == "f@example.com"


def test_patch_merges_app_metadata_on_the_first_level(auth0: Auth0Emulator) -> None:
    user = auth0.add_user(email="m@example.com", app_metadata={"a": 1, "nested": {"x": 1, "y": 2}})
    token = m2m_token(auth0)
    path = user_path(user["user_id"])

    merged = api(
        auth0, "PATCH", path, token, json={"app_metadata": {"signedUp": True, "nested": {"x": 9}}}
    )
    assert merged.status_code == 200
    assert merged.json()["app_metadata"] == {"a": 1, "signedUp": True, "nested": {"x": 9}}
    assert merged.json()["email"] == "m@example.com"  # the full user comes back

    deleted = api(auth0, "PATCH", path, token, json={"app_metadata": {"a": None}})
    assert deleted.json()["app_metadata"] == {"signedUp": True, "nested": {"x": 9}}

    root = api(auth0, "PATCH", path, token, json={"name": "New Name", "user_metadata": {"c": 1}})
    assert root.json()["name"] == "New Name" and root.json()["user_metadata"] == {"c": 1}
    assert root.json()["app_metadata"] == {"signedUp": True, "nested": {"x": 9}}

    cleared = api(auth0, "PATCH", path, token, json={"app_metadata": {}})
    assert cleared.json()["app_metadata"] == {}
    assert auth0.get_user(user["user_id"])["app_metadata"] == {}  # type: ignore[index]


def test_management_errors(auth0: Auth0Emulator) -> None:
    user = auth0.add_user(email="e@example.com")
    token = m2m_token(auth0)
    missing = api(auth0, "GET", user_path("auth0|nobody"), token)
    assert missing.status_code == 404
    assert missing.json() == {
        "statusCode": 404,
        "error": "Not Found",
        "message": "The user does not exist.",
        "errorCode": "inexistent_user",
    }
    for body in ([1, 2], {"app_metadata": "yes"}, {"unknown_field": 1}, {}):
        bad = api(auth0, "PATCH", user_path(user["user_id"]), token, json=body)
        assert bad.status_code == 400, body
        assert bad.json()["statusCode"] == 400 and bad.json()["error"] == "Bad Request"
    not_json = api(
        auth0,
        "PATCH",
        user_path(user["user_id"]),
        token,
        data="x",
        headers={"Content-Type": "application/json"},
    )
    assert not_json.status_code == 400

    no_token = api(auth0, "GET", user_path(user["user_id"]), None)
    assert no_token.status_code == 401
    assert no_token.json()["statusCode"] == 401 and no_token.json()["error"] == "Unauthorized"
    assert no_token.json()["message"] == "Missing authentication"
    garbage = api(auth0, "GET", user_path(user["user_id"]), "not-a-jwt")
    assert garbage.status_code == 401 and garbage.json()["message"] == "Invalid token"

    read_only = m2m_token(auth0, scope="read:users")
    forbidden = api(auth0, "PATCH", user_path(user["user_id"]), read_only, json={"name": "x"})
    assert forbidden.status_code == 403
    assert forbidden.json()["errorCode"] == "insufficient_scope"


def test_user_access_token_is_not_a_management_token(auth0: Auth0Emulator) -> None:
    token = login(quickstart_app(auth0), "ut@example.com")
    response = api(auth0, "GET", "users", token["access_token"])
    assert response.status_code == 401 and response.json()["message"] == "Invalid token"
    # The ID token is a valid JWT of this tenant, but for the web application, not the API.
    id_token = api(auth0, "GET", "users", token["id_token"])
    assert id_token.status_code == 401
    assert id_token.json()["message"] == f"Bad audience: {auth0.client_id}"


def test_revoked_and_expired_tokens_get_401(auth0: Auth0Emulator) -> None:
    token = m2m_token(auth0)
    assert api(auth0, "GET", "users", token).status_code == 200
    auth0.revoke_m2m_tokens()
    revoked = api(auth0, "GET", "users", token)
    assert revoked.status_code == 401 and revoked.json()["message"] == "Token has been revoked"
    assert api(auth0, "GET", "users", m2m_token(auth0)).status_code == 200  # re-fetch works

    with Auth0Emulator(token_lifetime=1) as short:
        token = m2m_token(short)
        assert api(short, "GET", "users", token).status_code == 200
        claims = jwt.decode(
            token,
            KeySet.import_key_set(
                requests.get(short.url + "/.well-known/jwks.json", timeout=10).json()
            ),
        ).claims
        while time.time() < claims["exp"] + 1:  # wait for the clock, not a fixed duration
            time.sleep(0.2)
        expired = api(short, "GET", "users", token)
        assert expired.status_code == 401
        assert expired.json()["errorCode"] == "token_expired"


def test_list_users_pagination(auth0: Auth0Emulator) -> None:
    for day in (3, 1, 2, 5, 4):
        auth0.add_user(email=f"u{day}@example.com", created_at=f"2020-01-0{day}T00:00:00Z")
    token = m2m_token(auth0)
    page = api(
        auth0, "GET", "users", token, params={"page": 1, "per_page": 2, "include_totals": "true"}
    ).json()
    assert page["start"] == 2 and page["limit"] == 2 and page["length"] == 2 and page["total"] == 5
    assert [u["email"] for u in page["users"]] == ["u3@example.com", "u4@example.com"]
    plain = api(auth0, "GET", "users", token, params={"page": 2, "per_page": 2}).json()
    assert [u["email"] for u in plain] == ["u5@example.com"]
    assert page["users"][0]["created_at"] == "2020-01-03T00:00:00.000Z"
    too_many = api(auth0, "GET", "users", token, params={"per_page": 101})
    assert too_many.status_code == 400


def test_rate_limit_then_success(auth0: Auth0Emulator) -> None:
    user = auth0.add_user(email="r@example.com")
    token = m2m_token(auth0)
    auth0.rate_limit_next(2, reset_in=30, retry_after=7)
    before = int(time.time())
    for _ in range(2):
        limited = api(auth0, "GET", user_path(user["user_id"]), token)
        assert limited.status_code == 429
        assert limited.json() == {
            "statusCode": 429,
            "error": "Too Many Requests",
            "message": "Global limit has been reached",
            "errorCode": "too_many_requests",
        }
        assert (
            limited.headers["x-ratelimit-limit"] and limited.headers["x-ratelimit-remaining"] == "0"
        )
        assert int(limited.headers["x-ratelimit-reset"]) >= before + 30
        assert limited.headers["Retry-After"] == "7"
    ok = api(auth0, "GET", user_path(user["user_id"]), token)
    assert ok.status_code == 200 and "x-ratelimit-reset" in ok.headers
    # /oauth/token is not under /api/v2/, so it was never limited.
    assert [e.status for e in auth0.request_log if e.path.startswith("/api/v2/")] == [429, 429, 200]

    auth0.rate_limit_next(1, path_prefix="/oauth/token")
    limited_token = requests.post(auth0.url + "/oauth/token", data={}, timeout=10)
    assert limited_token.status_code == 429
    assert limited_token.json()["error"] == "too_many_requests"


def test_plain_http_on_a_non_loopback_host(
    auth0: Auth0Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Authlib's server accepts http:// only on loopback unless AUTHLIB_INSECURE_TRANSPORT is
    set; the emulator lifts that for itself alone (e.g. ``--host 0.0.0.0`` on a LAN)."""
    monkeypatch.delenv("AUTHLIB_INSECURE_TRANSPORT", raising=False)
    response = auth0.app.test_client().post(
        "/oauth/token",
        base_url="http://auth.lan.example",
        data={
            "grant_type": "client_credentials",
            "client_id": auth0.m2m_client_id,
            "client_secret": auth0.m2m_client_secret,
            "audience": auth0.audience,
        },
    )
    assert response.status_code == 200, response.get_data(as_text=True)

    from authlib.common.security import is_secure_transport

    assert not is_secure_transport("http://auth.lan.example/oauth/token")  # still strict


def test_request_log(auth0: Auth0Emulator) -> None:
    requests.get(auth0.server_metadata_url, timeout=10)
    log = auth0.request_log
    method, path, status, *_ = log[-1]
    assert (method, path, status) == ("GET", "/.well-known/openid-configuration", 200)
    auth0.clear_log()
    assert auth0.request_log == []


def test_pytest_plugin_fixture(keen_signup_auth0: Auth0Emulator) -> None:
    assert requests.get(keen_signup_auth0.server_metadata_url, timeout=10).status_code == 200


# -- 6. the command line -----------------------------------------------------------------------


@pytest.mark.slow
def test_cli_serves_discovery() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flask_keen_signup.testing.auth0",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--client-id",
            "cli-client",
            "--client-secret",
            "cli-secret",
            "--user",
            "seed@example.com:pw",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("Auth0 emulator listening on http://127.0.0.1:")
        url = first.rsplit(" ", 1)[1].strip()
        info = json.loads(process.stdout.readline())
        assert info["client_id"] == "cli-client"
        meta = requests.get(url + "/.well-known/openid-configuration", timeout=10).json()
        assert meta["issuer"] == url + "/"
    finally:
        process.terminate()
        returncode = process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
    assert returncode == 0  # SIGTERM stops it cleanly


# -- 7. big tenants and persistence ------------------------------------------------------------


def test_load_users_builds_a_reproducible_tenant(auth0: Auth0Emulator) -> None:
    ids = auth0.load_users(
        5_000, created_from="2020-01-01", created_to="2026-11-30", marked=0.25, seed=11
    )
    assert len(ids) == len(set(ids)) == 5_000 == auth0.user_count()
    with Auth0Emulator() as other:
        assert (
            other.load_users(
                5_000, created_from="2020-01-01", created_to="2026-11-30", marked=0.25, seed=11
            )
            == ids
        )
    users = auth0.users()
    assert all("2020-01-01" <= u["created_at"] <= "2026-11-30T00:00:00.000Z" for u in users)
    marked = sum(1 for u in users if u["app_metadata"].get("signedUp") is True)
    assert 1_000 < marked < 1_500
    one = auth0.get_user(ids[1234])
    assert one is not None and one["identities"][0]["connection"] == (
        "Username-Password-Authentication"
    )
    assert one["user_id"].startswith("auth0|") and len(one["user_id"]) == 30
    assert isinstance(one["logins_count"], int)


def test_load_users_with_a_predicate_and_all_or_nothing(auth0: Auth0Emulator) -> None:
    ids = auth0.load_users(
        200,
        marked=lambda user: user["created_at"] < "2023",
        created_from="2020-01-01",
        created_to="2026-01-01",
        seed=1,
    )
    for user_id in ids:
        user = auth0.get_user(user_id)
        assert user is not None
        assert bool(user["app_metadata"]) is (user["created_at"] < "2023")
    with pytest.raises(Exception, match="already exists"):
        auth0.load_users(300, seed=1)  # the same seed: the first 200 ids clash
    assert auth0.user_count() == 200  # none of the 300 was kept
    with pytest.raises(ValueError):
        auth0.load_users(10, marked=1.5)


def test_add_users_in_bulk(auth0: Auth0Emulator) -> None:
    count = auth0.add_users(
        [
            {"email": "a@example.com", "created_at": "2019-05-05", "logins_count": 3},
            {"email": "b@example.com", "password": "pw-b", "app_metadata": {"signedUp": True}},
        ]
    )
    assert count == 2
    claims = login(quickstart_app(auth0), "b@example.com", "pw-b")["userinfo"]
    assert auth0.get_user(claims["sub"])["app_metadata"] == {"signedUp": True}  # type: ignore[index]
    with pytest.raises(Exception, match="already exists"):
        auth0.add_users([{"email": "c@example.com"}, {"email": "a@example.com"}])
    assert auth0.user_count() == 2


def test_lookups_stay_fast_in_a_big_tenant(auth0: Auth0Emulator) -> None:
    """100,000 users: a login by email and a GET by id do not walk the tenant (counted in
    work, not time: the index is a dict, and the login below would take minutes if not)."""
    ids = auth0.load_users(100_000, seed=2)
    auth0.add_user(email="late@example.com", password="pw")
    token = m2m_token(auth0)
    for user_id in ids[::10_000]:
        response = api(auth0, "GET", user_path(user_id), token)
        assert response.status_code == 200 and response.json()["user_id"] == user_id
    claims = login(quickstart_app(auth0), "late@example.com", "pw")["userinfo"]
    assert claims["email"] == "late@example.com"


def test_users_survive_a_restart_with_a_database(tmp_path: t.Any) -> None:
    database = str(tmp_path / "auth0.sqlite3")
    with Auth0Emulator(database=database) as first:
        app = quickstart_app(first)
        signed_up = login(app, "dora@example.com", "s3cret", "Dora")["userinfo"]
        first.load_users(1_000, seed=3)
        token = m2m_token(first)
        patched = api(
            first,
            "PATCH",
            user_path(signed_up["sub"]),
            token,
            json={"app_metadata": {"signedUp": True}},
        )
        assert patched.status_code == 200
    with Auth0Emulator(database=database) as second:
        assert second.user_count() == 1_001
        user = second.get_user(signed_up["sub"])
        assert user is not None and user["app_metadata"] == {"signedUp": True}
        assert user["logins_count"] == 1
        # The password hash was kept: the same person logs in again, a wrong one fails.
        again = login(quickstart_app(second), "dora@example.com", "s3cret")["userinfo"]
        assert again["sub"] == signed_up["sub"]
        with quickstart_app(second).test_client() as client:
            wrong = submit_form(start_login(client), "dora@example.com", "nope")
        assert wrong.status_code == 401
    with Auth0Emulator() as in_memory:
        assert in_memory.user_count() == 0


@pytest.mark.slow
def test_cli_database_keeps_users_across_runs(tmp_path: t.Any) -> None:
    database = str(tmp_path / "cli.sqlite3")

    def run_once() -> list[dict[str, t.Any]]:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flask_keen_signup.testing.auth0",
                "--port",
                "0",
                "--database",
                database,
                "--user",
                "seed@example.com:pw",
                "--load-users",
                "50",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert process.stdout is not None
            url = process.stdout.readline().rsplit(" ", 1)[1].strip()
            process.stdout.readline()
            token = requests.post(
                url + "/oauth/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": "demo-m2m-client-id",
                    "client_secret": "demo-m2m-client-secret",
                    "audience": url + "/api/v2/",
                },
                timeout=10,
            ).json()["access_token"]
            users = requests.get(
                url + "/api/v2/users",
                params={"per_page": 100, "q": 'email:"seed@example.com"'},
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            ).json()
            total = requests.get(
                url + "/api/v2/users",
                params={"per_page": 1, "include_totals": "true"},
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            ).json()["total"]
            return [{"users": users, "total": total}]
        finally:
            process.terminate()
            process.wait(timeout=10)
            if process.stdout is not None:
                process.stdout.close()

    first = run_once()[0]
    second = run_once()[0]
    assert len(first["users"]) == len(second["users"]) == 1  # the seed user not added twice
    assert first["users"][0]["user_id"] == second["users"][0]["user_id"]
    assert (first["total"], second["total"]) == (51, 101)  # --load-users adds each run
