"""A local Auth0 tenant: OpenID provider, login form and Management API subset.

:class:`Auth0Emulator` serves, on a real port of 127.0.0.1, what an app that logs users in
with Authlib and calls the Management API talks to: discovery, JWKS (RS256), ``/authorize``
with a login / sign-up form, ``/oauth/token`` (authorization code with PKCE, client
credentials), ``/userinfo``, logout, and ``GET/PATCH /api/v2/users``. It is built on Authlib's
*server* components, so the client side (Authlib's Flask client, ``auth0-python``) meets a
standards-conforming provider and the tests exercise real token validation.

Usage::

    from flask_keen_signup.testing import Auth0Emulator

    with Auth0Emulator() as auth0:
        oauth.register("auth0", client_id=auth0.client_id, client_secret=auth0.client_secret,
                       server_metadata_url=auth0.server_metadata_url,
                       client_kwargs={"scope": "openid profile email"})

From a shell (foreground, Ctrl-C to stop)::

    python -m flask_keen_signup.testing.auth0 --port 4000 --client-id C --client-secret S

See ``docs/auth0-emulator.md`` for every knob and for what is (not) emulated.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import threading
import time
import typing as t
import weakref
from datetime import datetime
from datetime import timezone
from urllib.parse import urlencode

from authlib.oauth2 import OAuth2Error  # type: ignore[import-untyped, unused-ignore]
from flask import Flask
from flask import Response
from flask import jsonify
from flask import redirect
from flask import request

from ._auth0_management import PREFIX as MANAGEMENT_PREFIX
from ._auth0_management import RATE_LIMIT
from ._auth0_management import management_error
from ._auth0_management import rate_limit_headers
from ._auth0_management import raw_path
from ._auth0_management import register_management_api
from ._auth0_oidc import SCOPES_SUPPORTED
from ._auth0_oidc import EmulatedUser
from ._auth0_oidc import EmulatorAuthorizationServer
from ._auth0_templates import render_error
from ._auth0_templates import render_login
from ._auth0_tenant import TAMPER_KINDS
from ._auth0_tenant import AutoLogin
from ._auth0_tenant import LoggedRequest
from ._auth0_tenant import RateLimit
from ._auth0_tenant import Tenant
from ._auth0_users import DEFAULT_CONNECTION
from ._auth0_users import UserStore
from ._auth0_users import build_user
from ._auth0_users import format_timestamp
from ._auth0_users import generated_users
from ._server import ThreadedServer
from ._tls import make_certificates

if t.TYPE_CHECKING:  # pragma: no cover
    from types import TracebackType

__all__ = ["Auth0Emulator", "LoggedRequest", "main"]


class Auth0Emulator:
    """An emulated Auth0 tenant with one regular web application and one M2M application.

    :param client_id: / :param client_secret: the regular web application (the Authlib login
        client). Its callback URLs are unrestricted unless ``allowed_callback_urls`` is given.
    :param host: / :param port: where to listen; ``port=0`` picks a free port.
    :param m2m_client_id: / :param m2m_client_secret: the machine-to-machine application
        authorised for the Management API (:attr:`audience`).
    :param token_lifetime: ``expires_in`` of Management API tokens, in seconds. Shorten it to
        test token expiry and re-fetching (tokens are checked without leeway).
    :param id_token_lifetime: lifetime of ID tokens, in seconds (Auth0's default: 36000).
    :param allowed_callback_urls: like the dashboard setting: when given, ``redirect_uri``
        must be one of them exactly, otherwise ``/authorize`` shows Auth0's error page.
    :param allowed_logout_urls: when given, ``returnTo`` of ``/v2/logout`` must be one of them.
    :param database: a SQLite file to keep the users in (password hashes included), so they
        survive a restart, e.g. the offline demo's. Default: in memory only.
    :param tls: serve HTTPS, as the real Auth0 does, with a certificate from a throwaway CA
        (:attr:`ca_bundle`; trust it with ``REQUESTS_CA_BUNDLE``). For apps that build
        ``https://{AUTH0_DOMAIN}/...`` URLs themselves, like Auth0's quickstart.
    """

    def __init__(
        self,
        client_id: str = "demo-client-id",
        client_secret: str = "demo-client-secret",
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        m2m_client_id: str = "demo-m2m-client-id",
        m2m_client_secret: str = "demo-m2m-client-secret",
        token_lifetime: int = 86400,
        id_token_lifetime: int = 36000,
        allowed_callback_urls: t.Sequence[str] | None = None,
        allowed_logout_urls: t.Sequence[str] | None = None,
        database: str | None = None,
        tls: bool = False,
    ) -> None:
        if token_lifetime < 1 or id_token_lifetime < 1:
            raise ValueError("token lifetimes must be at least 1 second")
        self.client_id = client_id
        self.client_secret = client_secret
        self.m2m_client_id = m2m_client_id
        self.m2m_client_secret = m2m_client_secret
        #: The SQLite file the users are kept in, or ``None`` (memory).
        self.database = database
        self._tenant = Tenant(
            client_id=client_id,
            client_secret=client_secret,
            m2m_client_id=m2m_client_id,
            m2m_client_secret=m2m_client_secret,
            token_lifetime=token_lifetime,
            id_token_lifetime=id_token_lifetime,
            allowed_callback_urls=tuple(allowed_callback_urls)
            if allowed_callback_urls is not None
            else None,
            allowed_logout_urls=tuple(allowed_logout_urls)
            if allowed_logout_urls is not None
            else None,
            users=UserStore(database),
        )
        #: The emulator's WSGI app (also usable with Flask's test client).
        self.app = create_app(self._tenant)
        self._certificates = make_certificates() if tls else None
        if self._certificates is not None:
            weakref.finalize(self, shutil.rmtree, self._certificates.directory, True)
        self._server = ThreadedServer(
            self.app,
            host,
            port,
            ssl_context=self._certificates.server_context() if self._certificates else None,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Auth0Emulator:
        """Start serving (idempotent). All URLs are known from here on."""
        self._server.start()
        self._tenant.base_url = self._server.url
        return self

    def stop(self) -> None:
        """Stop serving. Users and settings are kept; a restart may get another port."""
        self._server.stop()
        self._tenant.users.close()  # its SQLite file (database=), reopened on next use

    def __enter__(self) -> Auth0Emulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- URLs --------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL, ``http://127.0.0.1:PORT`` (``https://`` with ``tls=True``; no trailing
        slash)."""
        return self._server.url

    @property
    def ca_bundle(self) -> str | None:
        """With ``tls=True``, the PEM file of the CA that signed the emulator's certificate
        (for ``REQUESTS_CA_BUNDLE`` or ``verify=``); ``None`` without TLS."""
        return self._certificates.ca_bundle if self._certificates else None

    @property
    def domain(self) -> str:
        """``127.0.0.1:PORT``, what Auth0 calls the tenant domain."""
        return f"{self._server.host}:{self._server.port}"

    @property
    def issuer(self) -> str:
        """The ``iss`` of every token: :attr:`url` plus ``/``, as Auth0 issuers end with one."""
        return self.url + "/"

    @property
    def audience(self) -> str:
        """The Management API audience, :attr:`url` + ``/api/v2/``.

        ``https://{domain}/api/v2/`` is accepted as well (it is what a real tenant uses).
        """
        return self.url + "/api/v2/"

    @property
    def server_metadata_url(self) -> str:
        """The discovery document, for ``oauth.register(server_metadata_url=...)``."""
        return self.url + "/.well-known/openid-configuration"

    # -- users -------------------------------------------------------------------------------

    def add_user(
        self,
        *,
        email: str,
        password: str = "password",
        name: str | None = None,
        user_id: str | None = None,
        created_at: datetime | str | None = None,
        app_metadata: dict[str, t.Any] | None = None,
        connection: str = DEFAULT_CONNECTION,
        logins_count: int = 0,
        **extra: t.Any,
    ) -> dict[str, t.Any]:
        """Create a user as if they had signed up earlier, and return the Auth0-shaped user.

        ``user_id`` defaults to ``auth0|<24 hex>``; a ``provider|id`` value (e.g.
        ``google-oauth2|123``) makes a social identity. ``created_at`` (a datetime or an
        ISO-8601 string) lets tests put users before or after a cut-off. ``extra`` sets any
        other root attribute (``user_metadata``, ``email_verified``, ``blocked``, ...).
        """
        return self._tenant.users.add(
            email=email,
            password=password,
            name=name,
            user_id=user_id,
            created_at=created_at,
            app_metadata=app_metadata,
            connection=connection,
            logins_count=logins_count,
            **extra,
        )

    def get_user(self, user_id: str) -> dict[str, t.Any] | None:
        """The user as ``GET /api/v2/users/{id}`` returns it, or ``None``."""
        return self._tenant.users.get(user_id)

    def users(self) -> list[dict[str, t.Any]]:
        """All users, oldest first."""
        return self._tenant.users.all()

    def user_count(self) -> int:
        """How many users the tenant has (cheap, unlike ``len(users())``)."""
        return len(self._tenant.users)

    def load_users(
        self,
        n: int,
        *,
        created_from: datetime | str = "2020-01-01T00:00:00Z",
        created_to: datetime | str | None = None,
        marked: float | t.Callable[[dict[str, t.Any]], bool] = 0.0,
        seed: int = 0,
        marker: str = "signedUp",
        connection: str = DEFAULT_CONNECTION,
    ) -> list[str]:
        """Load ``n`` synthetic users at once, fast (100,000 in a few seconds), and return
        their ids in the order generated.

        For tests and benchmarks of whole tenants: no password (they cannot use the login
        form), no hashing, one lock hold, one SQLite transaction with ``database=``.
        ``created_at`` is uniform between ``created_from`` and ``created_to`` (default:
        now); ``marked`` is the fraction of users carrying the Rule's marker
        (``app_metadata.signedUp = true``) or a predicate on the user dict. The same
        ``seed`` gives the same users; a second call needs another ``seed`` (ids would
        clash). All or nothing: a clash stores none of them.
        """
        if n < 0:
            raise ValueError("n must be >= 0")
        if not callable(marked) and not 0.0 <= marked <= 1.0:
            raise ValueError("marked must be a fraction between 0 and 1, or a predicate")
        low = _as_datetime(created_from)
        high = _as_datetime(created_to) if created_to is not None else datetime.now(timezone.utc)
        if high < low:
            raise ValueError("created_to is before created_from")
        ids: list[str] = []

        def remember(users: t.Iterator[dict[str, t.Any]]) -> t.Iterator[dict[str, t.Any]]:
            for user in users:
                ids.append(user["user_id"])
                yield user

        self._tenant.users.add_many(
            remember(
                generated_users(
                    n,
                    created_from=low,
                    created_to=high,
                    marked=marked,
                    seed=seed,
                    marker=marker,
                    connection=connection,
                )
            )
        )
        return ids

    def add_users(self, users: t.Iterable[t.Mapping[str, t.Any]]) -> int:
        """Add many users described like :meth:`add_user`'s keywords, in one step.

        Faster than calling :meth:`add_user` in a loop: a password is hashed only when an
        item has a ``password`` key, and the store is locked (and, with ``database=``,
        written) once. All or nothing. Returns how many were added.
        """
        store = self._tenant.users
        prepared: list[dict[str, t.Any]] = []
        passwords: dict[str, str] = {}
        for item in users:
            fields = dict(item)
            password = fields.pop("password", None)
            user = build_user(**fields)
            if password is not None:
                passwords[user["user_id"]] = password
            prepared.append(user)
        count = store.add_many(prepared)
        for user_id, password in passwords.items():
            store.update(user_id, {"password": password})
        return count

    def add_users_from_file(self, path: str, format: str | None = None) -> int:
        """Add the users of a file in Auth0's own user-export format (NDJSON or CSV, plain
        or gzipped), so the file a team will export from its tenant is also the file it
        rehearses a migration with. Returns how many were added; all or nothing.

        Read per user: ``user_id``, ``email``, ``name``, ``created_at``, ``logins_count``
        and ``app_metadata`` (a JSON object, or CSV columns such as
        ``app_metadata.signedUp``, whose ``true``/``false`` become booleans). A user with
        no email (a social login without one) gets ``<id>@users.invalid``. Exports carry
        no passwords: these users exist for the Management API, not the login form. A user
        the tenant already has (a restart with ``database=``) is skipped.
        """
        from ..users_export import iter_users_file

        store = self._tenant.users
        with iter_users_file(path, format) as users:
            new = [u for u in map(_user_from_export, users) if store.get(u["user_id"]) is None]
        return self.add_users(new)

    @property
    def connection_id(self) -> str:
        """The ``con_...`` id of the database connection, for export ``connection_id``."""
        return next(iter(self._tenant.connection_ids))

    # -- knobs -------------------------------------------------------------------------------

    @property
    def id_token_claims(self) -> dict[str, t.Any]:
        """Extra claims merged into every ID token and ``/userinfo`` answer.

        Emulates claims added by a post-login Action, e.g. a namespaced marker or
        ``created_at``. A value may be a callable taking the stored user dict, for claims
        that differ per user (``lambda user: user["created_at"]``). Mutate it in place or
        assign a new dict.
        """
        return self._tenant.id_token_claims

    @id_token_claims.setter
    def id_token_claims(self, claims: dict[str, t.Any]) -> None:
        with self._tenant.lock:
            self._tenant.id_token_claims = dict(claims)

    def tamper_next_id_token(self, kind: str) -> None:
        """Break the next issued ID token so a test can show the relying party rejects it.

        ``kind`` is ``"expired"`` (expired an hour ago), ``"wrong_audience"`` (``aud`` is
        another application of the tenant), ``"bad_signature"`` (signed by a key that is not
        in the JWKS, same ``kid``), ``"wrong_issuer"`` or ``"wrong_nonce"``. Calls queue up.
        """
        if kind not in TAMPER_KINDS:
            raise ValueError(
                f"unknown tamper kind {kind!r}; expected one of {sorted(TAMPER_KINDS)}"
            )
        with self._tenant.lock:
            self._tenant.tampers.append(kind)

    def rate_limit_next(
        self,
        count: int,
        *,
        reset_in: int = 1,
        retry_after: int | None = None,
        path_prefix: str = MANAGEMENT_PREFIX,
    ) -> None:
        """Answer the next ``count`` requests under ``path_prefix`` with HTTP 429.

        The body is Auth0's (``"Global limit has been reached"``); the headers are
        ``x-ratelimit-limit``, ``x-ratelimit-remaining: 0`` and ``x-ratelimit-reset`` (epoch
        seconds, ``reset_in`` from now), plus ``Retry-After`` when ``retry_after`` is given.
        ``count=0`` disarms.
        """
        with self._tenant.lock:
            self._tenant.rate_limit = (
                RateLimit(count, reset_in, retry_after, path_prefix) if count > 0 else None
            )

    @property
    def export_polls(self) -> int:
        """How many ``GET /api/v2/jobs/{id}`` of a *new* export job answer ``pending`` /
        ``processing`` before it is ``completed`` (default 1; 0 completes at once)."""
        return self._tenant.export_polls

    @export_polls.setter
    def export_polls(self, polls: int) -> None:
        if polls < 0:
            raise ValueError("export_polls must be >= 0")
        with self._tenant.lock:
            self._tenant.export_polls = polls

    @property
    def export_link_lifetime(self) -> float:
        """Seconds a download ``location`` stays valid (Auth0: 60); then 403."""
        return self._tenant.export_link_lifetime

    @export_link_lifetime.setter
    def export_link_lifetime(self, seconds: float) -> None:
        with self._tenant.lock:
            self._tenant.export_link_lifetime = float(seconds)

    def fail_next_export(self, details: str = "Export failed: internal error") -> None:
        """Make the next created export job end ``failed`` with these ``status_details``."""
        with self._tenant.lock:
            self._tenant.export_failure = details

    def revoke_m2m_tokens(self) -> None:
        """Invalidate every Management API token issued so far (they now get 401)."""
        with self._tenant.lock:
            self._tenant.m2m_token_ids.clear()

    def auto_login(
        self, email: str, password: str = "password", *, name: str | None = None
    ) -> None:
        """Make the next ``GET /authorize`` sign this person in without showing the form.

        As if they had typed ``email`` and ``password`` in the form: an unknown email signs
        up, a wrong password shows the form with the error. Handy when a test follows
        redirects with a plain HTTP client. (Posting ``email`` and ``password`` form fields
        to the ``/authorize`` URL, query string unchanged, does the same without arming.)
        """
        with self._tenant.lock:
            self._tenant.auto_login = AutoLogin(email, password, name)

    @property
    def request_log(self) -> list[LoggedRequest]:
        """Every request answered so far: ``(method, path, status, query, time)`` tuples.

        ``path`` is as sent on the wire (percent-encoding intact), so tests can assert how a
        client encoded a user id.
        """
        with self._tenant.lock:
            return list(self._tenant.log)

    def clear_log(self) -> None:
        with self._tenant.lock:
            self._tenant.log.clear()

    def __repr__(self) -> str:
        try:
            where = self.url
        except RuntimeError:
            where = "not started"
        return f"<Auth0Emulator {where} client_id={self.client_id!r}>"


def _export_value(value: t.Any) -> t.Any:
    """A CSV export's strings back to JSON values where Auth0 wrote a boolean."""
    return {"true": True, "false": False}.get(value, value) if isinstance(value, str) else value


def _user_from_export(user: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    """One record of Auth0's user export as :meth:`Auth0Emulator.add_user` keywords."""
    from ..users_export import field_value

    user_id = str(field_value(user, "user_id") or "")
    if not user_id:
        raise ValueError("a user in the users file has no user_id")
    app_metadata = user.get("app_metadata")
    if not isinstance(app_metadata, dict):
        app_metadata = {
            key.split(".", 1)[1]: _export_value(value)
            for key, value in user.items()
            if key.startswith("app_metadata.") and value not in ("", None)
        }
    email = field_value(user, "email") or f"{user_id.replace('|', '.')}@users.invalid"
    fields: dict[str, t.Any] = {
        "user_id": user_id,
        "email": email,
        "name": field_value(user, "name") or None,
        "created_at": field_value(user, "created_at") or None,
        "app_metadata": app_metadata or None,
    }
    logins = field_value(user, "logins_count")
    if logins not in (None, ""):
        fields["logins_count"] = int(logins)
    return fields


def _as_datetime(value: datetime | str) -> datetime:
    return datetime.fromisoformat(format_timestamp(value).replace("Z", "+00:00"))


# -- the WSGI app ------------------------------------------------------------------------------


def create_app(tenant: Tenant) -> Flask:
    """Build the emulator's Flask app over ``tenant``."""
    app = Flask("flask_keen_signup.testing.auth0")
    app.config["OAUTH2_SCOPES_SUPPORTED"] = None  # Auth0 accepts any scope string
    server = EmulatorAuthorizationServer(app, tenant)

    @app.before_request
    def rate_limited() -> Response | None:
        with tenant.lock:
            limit = tenant.rate_limit
            if limit is None or not raw_path().startswith(limit.path_prefix):
                return None
            limit.remaining -= 1
            if limit.remaining <= 0:
                tenant.rate_limit = None
        headers = rate_limit_headers(0, limit.reset_in)
        if limit.retry_after is not None:
            headers["Retry-After"] = str(limit.retry_after)
        if raw_path().startswith(MANAGEMENT_PREFIX):
            return management_error(
                429, "Global limit has been reached", "too_many_requests", headers
            )
        response = jsonify(
            {"error": "too_many_requests", "error_description": "Global limit has been reached"}
        )
        response.status_code = 429
        response.headers.update(headers)
        return response

    @app.after_request
    def log_and_decorate(response: Response) -> Response:
        path = raw_path()
        if path.startswith(MANAGEMENT_PREFIX) and "x-ratelimit-limit" not in response.headers:
            response.headers.update(rate_limit_headers(RATE_LIMIT - 1, 1))
        entry = LoggedRequest(
            request.method,
            path,
            response.status_code,
            request.query_string.decode("latin-1"),
            time.time(),
            "Authorization" in request.headers,
        )
        with tenant.lock:
            tenant.log.append(entry)
        return response

    @app.get("/.well-known/openid-configuration")
    def discovery() -> Response:
        base = tenant.base_url
        return jsonify(
            {
                "issuer": tenant.issuer,
                "authorization_endpoint": f"{base}/authorize",
                "token_endpoint": f"{base}/oauth/token",
                "userinfo_endpoint": f"{base}/userinfo",
                "jwks_uri": f"{base}/.well-known/jwks.json",
                "end_session_endpoint": f"{base}/oidc/logout",
                "scopes_supported": SCOPES_SUPPORTED,
                "response_types_supported": ["code"],
                "response_modes_supported": ["query"],
                "grant_types_supported": ["authorization_code", "client_credentials"],
                "code_challenge_methods_supported": ["S256", "plain"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": [
                    "client_secret_basic",
                    "client_secret_post",
                ],
                "claims_supported": [
                    "aud",
                    "email",
                    "email_verified",
                    "exp",
                    "iat",
                    "iss",
                    "name",
                    "nickname",
                    "picture",
                    "sub",
                    "updated_at",
                ],
                "request_uri_parameter_supported": False,
                "request_parameter_supported": False,
            }
        )

    @app.get("/.well-known/jwks.json")
    def jwks() -> Response:
        return jsonify({"keys": [tenant.signing_key.as_dict(private=False)]})

    @app.route("/authorize", methods=["GET", "POST"])
    def authorize() -> t.Any:
        try:
            grant = server.get_consent_grant(end_user=None)
        except OAuth2Error as error:
            if getattr(error, "redirect_uri", None):
                return server.handle_error_response(None, error)
            return _authorize_error_page(error)

        signup = request.values.get("screen_hint") == "signup"
        action = "/authorize?" + request.query_string.decode("latin-1")
        if request.method == "GET":
            with tenant.lock:
                armed, tenant.auto_login = tenant.auto_login, None
            if armed is None:
                return render_login(
                    action=action,
                    signup=signup,
                    client_name=grant.request.client.client_id,
                    email=request.args.get("login_hint", ""),
                )
            email, password, name = armed.email, armed.password, armed.name or ""
        else:
            email = request.form.get("email") or request.values.get("login_hint") or ""
            password = request.form.get("password", "")
            name = request.form.get("name", "").strip()

        user, _created, message = tenant.users.login_or_signup(
            email, password, name or None, request.remote_addr
        )
        if user is None:
            page = render_login(
                action=action,
                signup=signup,
                client_name=grant.request.client.client_id,
                email=email,
                name=name,
                error=message,
            )
            status = 401 if message == "Wrong email or password." else 400
            return Response(page, status=status, mimetype="text/html")
        return server.create_authorization_response(grant=grant, grant_user=EmulatedUser(user))

    def _authorize_error_page(error: t.Any) -> Response:
        error_name = str(error.error)
        description = error.description or ""
        if error_name == "invalid_client":
            error_name = "invalid_request"
            description = f"Unknown client: {request.args.get('client_id', '')}"
        elif "Redirect URI" in str(description):
            description = (
                f"Callback URL mismatch. {request.args.get('redirect_uri', '')} is not in the "
                "list of allowed callback URLs"
            )
        return Response(render_error(error_name, description), status=400, mimetype="text/html")

    @app.post("/oauth/token")
    def token() -> t.Any:
        return server.create_token_response()

    @app.route("/userinfo", methods=["GET", "POST"])
    def userinfo() -> t.Any:
        return server.create_endpoint_response("userinfo")

    def _logout(return_to: str | None) -> t.Any:
        allowed = tenant.allowed_logout_urls
        if return_to:
            if allowed is not None and return_to not in allowed:
                description = (
                    f'The "returnTo" querystring parameter "{return_to}" is not defined as a '
                    'valid URL in "Allowed Logout URLs".'
                )
                return Response(
                    render_error("invalid_request", description), status=400, mimetype="text/html"
                )
            return redirect(return_to, code=302)
        if allowed:
            return redirect(allowed[0], code=302)
        return Response("OK", mimetype="text/plain")

    @app.get("/v2/logout")
    def logout() -> t.Any:
        return _logout(request.args.get("returnTo"))

    @app.get("/oidc/logout")
    def oidc_logout() -> t.Any:
        target = request.args.get("post_logout_redirect_uri")
        state = request.args.get("state")
        if target and state:
            target += ("&" if "?" in target else "?") + urlencode({"state": state})
        return _logout(target)

    register_management_api(app, tenant)
    return app


# -- command line ------------------------------------------------------------------------------


def main(argv: t.Sequence[str] | None = None) -> int:
    """Run an emulator in the foreground until interrupted (Ctrl-C or SIGTERM)."""
    parser = argparse.ArgumentParser(
        prog="python -m flask_keen_signup.testing.auth0",
        description="Serve a local Auth0 emulator (OpenID provider and Management API).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--client-id", default="demo-client-id")
    parser.add_argument("--client-secret", default="demo-client-secret")
    parser.add_argument("--m2m-client-id", default="demo-m2m-client-id")
    parser.add_argument("--m2m-client-secret", default="demo-m2m-client-secret")
    parser.add_argument("--token-lifetime", type=int, default=86400)
    parser.add_argument(
        "--callback-url",
        action="append",
        dest="callback_urls",
        help="allowed callback URL (repeatable); default: any",
    )
    parser.add_argument(
        "--logout-url",
        action="append",
        dest="logout_urls",
        help="allowed logout URL (repeatable); default: any",
    )
    parser.add_argument(
        "--user",
        action="append",
        default=[],
        metavar="EMAIL:PASSWORD",
        help="create this user at start (repeatable)",
    )
    parser.add_argument(
        "--users-file",
        action="append",
        default=[],
        metavar="PATH",
        help="add the users of a file in Auth0's export format (NDJSON or CSV, plain or "
        "gzipped) at start: created_at, app_metadata, logins_count (repeatable)",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="serve HTTPS with a throwaway CA, whose file is printed (REQUESTS_CA_BUNDLE)",
    )
    parser.add_argument("--database", help="SQLite file, so users survive restarts")
    parser.add_argument(
        "--load-users",
        type=int,
        default=0,
        metavar="N",
        help="add N synthetic users at start (a big tenant for benchmarks)",
    )
    args = parser.parse_args(argv)

    emulator = Auth0Emulator(
        args.client_id,
        args.client_secret,
        args.host,
        args.port,
        m2m_client_id=args.m2m_client_id,
        m2m_client_secret=args.m2m_client_secret,
        token_lifetime=args.token_lifetime,
        allowed_callback_urls=args.callback_urls,
        allowed_logout_urls=args.logout_urls,
        database=args.database,
        tls=args.tls,
    )
    for path in args.users_file:
        emulator.add_users_from_file(path)
    for spec in args.user:
        email, _, password = spec.partition(":")
        if emulator._tenant.users.find_by_email(email) is None:  # kept from a previous run
            emulator.add_user(email=email, password=password or "password")
    if args.load_users:
        emulator.load_users(args.load_users, seed=emulator.user_count())

    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    emulator.start()
    print(f"Auth0 emulator listening on {emulator.url}", flush=True)
    print(
        json.dumps(
            {
                "domain": emulator.domain,
                "server_metadata_url": emulator.server_metadata_url,
                "client_id": emulator.client_id,
                "m2m_client_id": emulator.m2m_client_id,
                "audience": emulator.audience,
                "ca_bundle": emulator.ca_bundle,
            }
        ),
        flush=True,
    )
    try:
        while not stopped.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
