"""The Auth0 emulator's OpenID provider, wired from Authlib's server components.

Authlib does the protocol work (authorization-code grant with OIDC and PKCE, client
authentication, the client-credentials grant, bearer-token checks, ``/userinfo``); this module
supplies the storage it asks for and the places where Auth0 differs from a textbook server:

- the ``/oauth/token`` body may be JSON as well as a form (Auth0 accepts both, and the
  official SDKs send JSON);
- error bodies use Auth0's wording (``access_denied`` / ``Unauthorized`` for bad client
  credentials, ``Service not found: ...`` for an unknown audience);
- Management API access tokens are RS256 JWTs with Auth0's claims (``gty``, ``azp``,
  ``sub = <client_id>@clients``);
- the next ID token can be deliberately broken (:meth:`Auth0Emulator.tamper_next_id_token`).

Plain ``http://`` is allowed without ``AUTHLIB_INSECURE_TRANSPORT``: see
:class:`EmulatorOAuth2Request`.
"""

from __future__ import annotations

import hmac
import json
import secrets
import time
import typing as t
from dataclasses import dataclass
from urllib.parse import urlsplit

from authlib.common.security import generate_token  # type: ignore[import-untyped, unused-ignore]
from authlib.integrations.flask_oauth2 import AuthorizationServer  # type: ignore[import-untyped, unused-ignore]
from authlib.integrations.flask_oauth2 import ResourceProtector  # type: ignore[import-untyped, unused-ignore]
from authlib.integrations.flask_oauth2.requests import FlaskOAuth2Payload  # type: ignore[import-untyped, unused-ignore]
from authlib.integrations.flask_oauth2.requests import FlaskOAuth2Request  # type: ignore[import-untyped, unused-ignore]
from authlib.oauth2.rfc6749 import ClientMixin  # type: ignore[import-untyped, unused-ignore]
from authlib.oauth2.rfc6749 import OAuth2Error
from authlib.oauth2.rfc6749 import OAuth2Request
from authlib.oauth2.rfc6749 import TokenValidator
from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc6750 import BearerTokenGenerator  # type: ignore[import-untyped, unused-ignore]
from authlib.oauth2.rfc6750 import InvalidTokenError
from authlib.oauth2.rfc7636 import CodeChallenge  # type: ignore[import-untyped, unused-ignore]
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator  # type: ignore[import-untyped, unused-ignore]
from authlib.oidc.core import UserInfo  # type: ignore[import-untyped, unused-ignore]
from authlib.oidc.core import UserInfoEndpoint
from authlib.oidc.core.grants import OpenIDCode  # type: ignore[import-untyped, unused-ignore]
from flask import Flask
from flask import Request
from joserfc import jwt
from joserfc.errors import ExpiredTokenError
from joserfc.errors import InvalidClaimError
from joserfc.errors import JoseError
from joserfc.errors import MissingClaimError
from werkzeug.datastructures import MultiDict

from ._auth0_tenant import M2M_SCOPES
from ._auth0_tenant import IssuedAccessToken
from ._auth0_tenant import Tenant

#: Lifetime of an authorization code (Auth0: short-lived, single use).
CODE_LIFETIME = 600
#: ``expires_in`` of code-flow access tokens, Auth0's default for ``/userinfo`` tokens.
USER_TOKEN_LIFETIME = 86400
SCOPES_SUPPORTED = ["openid", "profile", "email", "offline_access"]
_PROFILE_CLAIMS = ("name", "nickname", "picture", "updated_at", "given_name", "family_name")


# -- requests: JSON bodies and plain http ---------------------------------------------------


class _EmulatorPayload(FlaskOAuth2Payload):  # type: ignore[misc, unused-ignore]
    """Request parameters from the query, the form *and* a JSON body (Auth0 reads JSON too)."""

    def __init__(self, request: Request) -> None:
        super().__init__(request)
        merged: MultiDict[str, t.Any] = MultiDict(request.values)
        if request.is_json:
            body = request.get_json(silent=True)
            if isinstance(body, dict):
                for key, value in body.items():
                    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                        merged.setlist(key, [str(value)])
        self._merged = merged

    @property
    def data(self) -> MultiDict[str, t.Any]:
        return self._merged


class EmulatorOAuth2Request(FlaskOAuth2Request):  # type: ignore[misc, unused-ignore]
    """Authlib's Flask request, accepting plain ``http://`` for this emulator only.

    Authlib raises ``InsecureTransportError`` for an ``http://`` URL unless the host is a
    loopback address or ``AUTHLIB_INSECURE_TRANSPORT`` is set process-wide. The emulator is
    a local test double that may also be reached on a LAN address (``--host 0.0.0.0``), and a
    process-wide switch would also relax the *application's* Authlib, which must stay strict.
    So the transport check is run against the ``https`` form of the URL, here only.
    """

    def __init__(self, request: Request) -> None:
        parts = urlsplit(request.url)
        OAuth2Request.__init__(
            self,
            method=request.method,
            uri=parts._replace(scheme="https").geturl(),
            headers=request.headers,
        )
        self.uri = request.url
        self._request = request
        self.payload = _EmulatorPayload(request)

    @property
    def form(self) -> MultiDict[str, t.Any]:
        return self.payload.data


# -- models ---------------------------------------------------------------------------------


class EmulatedClient(ClientMixin):  # type: ignore[misc, unused-ignore]
    """A registered application: the regular web app, or the machine-to-machine app."""

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        grant_types: tuple[str, ...],
        callback_urls: tuple[str, ...] | None = None,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.grant_types = grant_types
        self.callback_urls = callback_urls
        self.client_metadata: dict[str, t.Any] = {}

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return self.callback_urls[0] if self.callback_urls else None

    def get_allowed_scope(self, scope: str | None) -> str:
        return scope or ""

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        # No list configured: any http(s) URL, so tests need not predict their callback URL.
        if self.callback_urls is None:
            return urlsplit(redirect_uri).scheme in ("http", "https")
        return redirect_uri in self.callback_urls

    def check_client_secret(self, client_secret: str) -> bool:
        return hmac.compare_digest(client_secret.encode(), self.client_secret.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return "authorization_code" in self.grant_types and response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


class EmulatedUser:
    """What Authlib calls the resource owner: a handle on a stored user."""

    def __init__(self, user: dict[str, t.Any]) -> None:
        self.user = user

    def get_user_id(self) -> str:
        return str(self.user["user_id"])


@dataclass
class AuthorizationCode:
    """An issued code, bound to client, redirect URI, scope, nonce and PKCE challenge."""

    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user_id: str
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    auth_time: int
    sid: str
    expires_at: float
    #: The tamper to apply to the ID token issued for this code (set when the code is redeemed).
    tamper: str | None = None

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> None:
        return None


# -- Auth0-flavoured errors -----------------------------------------------------------------


class Auth0TokenError(OAuth2Error):  # type: ignore[misc, unused-ignore]
    """An ``/oauth/token`` error with Auth0's status and wording."""

    def __init__(self, error: str, description: str, status_code: int) -> None:
        super().__init__(description=description, status_code=status_code)
        self.error = error


def _auth0_error_body(error: t.Any, grant_type: str) -> tuple[int, dict[str, str]]:
    """Translate an Authlib error into the status and body Auth0 sends for it."""
    if error.error == "invalid_client":
        return 401, {"error": "access_denied", "error_description": "Unauthorized"}
    if error.error == "unauthorized_client":
        return 403, {
            "error": "unauthorized_client",
            "error_description": f"Grant type '{grant_type}' not allowed for the client.",
        }
    if error.error == "unsupported_grant_type":
        return 403, {
            "error": "unsupported_grant_type",
            "error_description": error.description or "Unsupported grant type",
        }
    body = {"error": str(error.error)}
    if error.description:
        body["error_description"] = str(error.description)
    return int(error.status_code or 400), body


# -- the authorization server ---------------------------------------------------------------


class EmulatorAuthorizationServer(AuthorizationServer):  # type: ignore[misc, unused-ignore]
    """Authlib's Flask authorization server over the emulator's in-memory tenant."""

    def __init__(self, app: Flask, tenant: Tenant) -> None:
        self.tenant = tenant
        self.web_client = EmulatedClient(
            tenant.client_id,
            tenant.client_secret,
            ("authorization_code",),
            tenant.allowed_callback_urls,
        )
        self.m2m_client = EmulatedClient(
            tenant.m2m_client_id, tenant.m2m_client_secret, ("client_credentials",)
        )
        super().__init__(app, query_client=self._query_client, save_token=self._save_token)
        self.register_token_generator(
            "authorization_code",
            BearerTokenGenerator(
                access_token_generator=lambda **_: generate_token(32),
                expires_generator=lambda client, grant_type: USER_TOKEN_LIFETIME,
            ),
        )
        self.register_token_generator("client_credentials", _ManagementTokenGenerator(tenant))
        self.register_grant(_CodeGrant, [_OpenIDCode(tenant), CodeChallenge(required=False)])
        self.register_grant(_ClientCredentialsGrant)
        protector = ResourceProtector()
        protector.register_token_validator(_UserTokenValidator(tenant))
        self.register_endpoint(_UserInfoEndpoint(resource_protector=protector))

    def _query_client(self, client_id: str) -> EmulatedClient | None:
        for client in (self.web_client, self.m2m_client):
            if client.client_id == client_id:
                return client
        return None

    def _save_token(self, token: dict[str, t.Any], request: t.Any) -> None:
        if request.user is None:
            return  # client credentials: a JWT, recorded by its jti when generated
        with self.tenant.lock:
            self.tenant.access_tokens[token["access_token"]] = IssuedAccessToken(
                access_token=token["access_token"],
                client=request.client,
                user_id=request.user.get_user_id(),
                scope=token.get("scope", ""),
                expires_at=time.time() + int(token.get("expires_in", USER_TOKEN_LIFETIME)),
            )

    def create_oauth2_request(self, request: t.Any) -> EmulatorOAuth2Request:
        from flask import request as flask_request

        return EmulatorOAuth2Request(flask_request)

    def handle_error_response(self, request: t.Any, error: t.Any) -> t.Any:
        if getattr(error, "redirect_uri", None):
            # Authorization errors go back to the validated redirect URI (?error=...&state=).
            return self.handle_response(*error(None))
        grant_type = ""
        if request is not None and getattr(request, "payload", None) is not None:
            grant_type = request.payload.data.get("grant_type") or ""
        status, body = _auth0_error_body(error, grant_type)
        headers = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]
        return self.handle_response(status, json.dumps(body), headers)

    def send_signal(self, name: str, *args: t.Any, **kwargs: t.Any) -> None:
        return None  # the emulator publishes no Flask signals


class _CodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc, unused-ignore]
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

    @property
    def tenant(self) -> Tenant:
        return t.cast(Tenant, self.server.tenant)

    def save_authorization_code(self, code: str, request: t.Any) -> None:
        data = request.payload.data
        item = AuthorizationCode(
            code=code,
            client_id=request.client.client_id,
            redirect_uri=request.payload.redirect_uri or "",
            scope=request.scope or "",
            user_id=request.user.get_user_id(),
            nonce=data.get("nonce"),
            code_challenge=data.get("code_challenge"),
            code_challenge_method=data.get("code_challenge_method"),
            auth_time=int(time.time()),
            sid=secrets.token_urlsafe(24),
            expires_at=time.time() + CODE_LIFETIME,
        )
        with self.tenant.lock:
            self.tenant.codes[code] = item

    def query_authorization_code(self, code: str, client: t.Any) -> AuthorizationCode | None:
        with self.tenant.lock:
            item = t.cast("AuthorizationCode | None", self.tenant.codes.get(code))
        if item is None or item.client_id != client.client_id or time.time() > item.expires_at:
            return None
        return item

    def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
        with self.tenant.lock:
            self.tenant.codes.pop(authorization_code.code, None)

    def authenticate_user(self, authorization_code: AuthorizationCode) -> EmulatedUser | None:
        user = self.tenant.users.get(authorization_code.user_id)
        return EmulatedUser(user) if user else None


class _ClientCredentialsGrant(grants.ClientCredentialsGrant):  # type: ignore[misc, unused-ignore]
    """Client credentials for the Management API, with Auth0's ``audience`` rules."""

    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

    def validate_token_request(self) -> None:
        super().validate_token_request()
        tenant: Tenant = self.server.tenant
        audience = self.request.payload.data.get("audience")
        if not audience:
            raise Auth0TokenError(
                "access_denied",
                "No audience parameter was provided, and no default audience has been configured",
                403,
            )
        if audience not in tenant.management_audiences:
            raise Auth0TokenError("access_denied", f"Service not found: {audience}", 403)
        requested = (self.request.payload.data.get("scope") or "").split()
        unknown = [scope for scope in requested if scope not in M2M_SCOPES]
        if unknown:
            raise Auth0TokenError(
                "access_denied",
                f"Client has not been granted scopes: {' '.join(unknown)}",
                403,
            )
        self.request.audience = audience
        self.request.granted_scope = " ".join(requested) if requested else " ".join(M2M_SCOPES)

    def create_token_response(self) -> tuple[int, dict[str, t.Any], t.Any]:
        token = self.generate_token(scope=self.request.granted_scope, include_refresh_token=False)
        self.save_token(token)
        return 200, token, self.TOKEN_RESPONSE_HEADER


class _ManagementTokenGenerator(JWTBearerTokenGenerator):  # type: ignore[misc, unused-ignore]
    """RS256 access tokens for the Management API, shaped like Auth0's."""

    def __init__(self, tenant: Tenant) -> None:
        self.tenant = tenant
        super().__init__(
            issuer="", expires_generator=lambda client, grant_type: tenant.token_lifetime
        )

    def get_jwks(self) -> t.Any:
        return self.tenant.signing_key

    def get_audiences(self, client: t.Any, user: t.Any, scope: t.Any) -> str:
        from flask import request

        audience = request.values.get("audience") or (
            (request.get_json(silent=True) or {}).get("audience")
        )
        return str(audience or self.tenant.audience)

    def get_jti(self, client: t.Any, grant_type: str, user: t.Any, scope: t.Any) -> str:
        jti = secrets.token_urlsafe(16)
        with self.tenant.lock:
            self.tenant.m2m_token_ids.add(jti)
        return jti

    def get_extra_claims(
        self, client: t.Any, grant_type: str, user: t.Any, scope: t.Any
    ) -> dict[str, t.Any]:
        return {
            "iss": self.tenant.issuer,
            "sub": f"{client.get_client_id()}@clients",
            "azp": client.get_client_id(),
            "gty": "client-credentials",
        }

    def access_token_generator(
        self, client: t.Any, grant_type: str, user: t.Any, scope: t.Any
    ) -> str:
        # Authlib signs without a ``kid``; Auth0's tokens carry one, and JWKS clients need it.
        token = str(super().access_token_generator(client, grant_type, user, scope))
        decoded = jwt.decode(token, self.tenant.signing_key)
        header = {"alg": "RS256", "typ": "JWT", "kid": self.tenant.kid}
        return jwt.encode(header, dict(decoded.claims), self.tenant.signing_key)


class _OpenIDCode(OpenIDCode):  # type: ignore[misc, unused-ignore]
    """ID tokens as Auth0 issues them, plus the test knobs (extra claims, tampering)."""

    def __init__(self, tenant: Tenant) -> None:
        super().__init__(require_nonce=False)
        self.tenant = tenant

    def exists_nonce(self, nonce: str, request: t.Any) -> bool:
        return False  # Auth0 does not reject a reused nonce; the relying party checks it

    def resolve_client_private_key(self, client: t.Any) -> t.Any:
        return self.tenant.signing_key

    def get_client_algorithm(self, client: t.Any) -> str:
        return "RS256"

    def get_encode_header(self, client: t.Any) -> dict[str, str]:
        return {"alg": "RS256", "typ": "JWT", "kid": self.tenant.kid}

    def get_compatible_claims(self, request: t.Any) -> dict[str, t.Any]:
        now = int(time.time())
        tamper = getattr(request.authorization_code, "tamper", None)
        claims: dict[str, t.Any] = {
            "iss": self.tenant.issuer,
            "aud": request.client.get_client_id(),
            "iat": now,
            "exp": now + self.tenant.id_token_lifetime,
        }
        if tamper == "expired":
            # Far beyond the 120 s leeway relying parties allow for clock skew.
            claims["iat"] = now - self.tenant.id_token_lifetime - 3600
            claims["exp"] = now - 3600
        elif tamper == "wrong_audience":
            # A genuine token of this tenant, minted for another application of it.
            claims["aud"] = "another-application-client-id"
        elif tamper == "wrong_issuer":
            claims["iss"] = "https://another-tenant.auth0.com/"
        return claims

    def get_authorization_code_claims(self, authorization_code: AuthorizationCode) -> t.Any:
        claims = dict(super().get_authorization_code_claims(authorization_code))
        claims.pop("auth_time", None)  # Auth0 sends auth_time only when max_age is used
        claims["sid"] = authorization_code.sid
        if authorization_code.tamper == "wrong_nonce":
            claims["nonce"] = secrets.token_urlsafe(20)
        return claims

    def generate_user_info(self, user: EmulatedUser, scope: str) -> t.Any:
        return generate_user_info(self.tenant, user, scope)

    def process_token(self, grant: t.Any, response: t.Any) -> t.Any:
        code = grant.request.authorization_code
        if code is not None:
            code.tamper = self.tenant.pop_tamper()
        return super().process_token(grant, response)

    def encode_id_token(self, token: t.Any, request: t.Any) -> str:
        id_token = str(super().encode_id_token(token, request))
        if getattr(request.authorization_code, "tamper", None) == "bad_signature":
            # Same header and claims, signed by a key the JWKS does not publish (same kid).
            decoded = jwt.decode(id_token, self.tenant.signing_key)
            id_token = jwt.encode(
                dict(decoded.header), dict(decoded.claims), self.tenant.get_rogue_key()
            )
        return id_token


def generate_user_info(tenant: Tenant, user: EmulatedUser | str, scope: str) -> t.Any:
    """The OIDC claims of a user for ``scope``, as in Auth0's ID tokens and ``/userinfo``."""
    user_id = user if isinstance(user, str) else user.get_user_id()
    stored = tenant.users.get(user_id) or {}
    scopes = set((scope or "").split())
    info: dict[str, t.Any] = {"sub": user_id}
    if "profile" in scopes:
        for claim in _PROFILE_CLAIMS:
            if claim in stored:
                info[claim] = stored[claim]
    if "email" in scopes:
        info["email"] = stored.get("email")
        info["email_verified"] = bool(stored.get("email_verified", False))
    with tenant.lock:
        extra = dict(tenant.id_token_claims)
    for name, value in extra.items():
        # A callable computes the claim from the stored user, like a post-login Action's
        # api.idToken.setCustomClaim(name, event.user.created_at).
        info[name] = value(stored) if callable(value) else value
    return UserInfo(info)


class _UserInfoEndpoint(UserInfoEndpoint):  # type: ignore[misc, unused-ignore]
    def generate_user_info(self, user: str, scope: str) -> t.Any:
        return generate_user_info(self.server.tenant, user, scope)

    def get_issuer(self) -> str:
        return str(self.server.tenant.issuer)


class _UserTokenValidator(TokenValidator):  # type: ignore[misc, unused-ignore]
    """Bearer check for ``/userinfo``: the opaque tokens issued by the code flow."""

    def __init__(self, tenant: Tenant) -> None:
        super().__init__()
        self.tenant = tenant

    def authenticate_token(self, token_string: str) -> IssuedAccessToken | None:
        with self.tenant.lock:
            return self.tenant.access_tokens.get(token_string)

    def validate_token(
        self, token: IssuedAccessToken | None, scopes: t.Any, request: t.Any, **_: t.Any
    ) -> None:
        if token is None or token.is_expired():
            raise InvalidTokenError()
        if self.scope_insufficient(token.get_scope(), scopes):
            from authlib.oauth2.rfc6750 import InsufficientScopeError

            raise InsufficientScopeError()


# -- Management API tokens ------------------------------------------------------------------


class ManagementTokenError(Exception):
    """A rejected Management API token, with the 401 message Auth0 uses for the case."""

    def __init__(self, message: str, status: int = 401, error_code: str = "invalid_token") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_code = error_code


def validate_management_token(tenant: Tenant, authorization: str | None) -> dict[str, t.Any]:
    """Check a Management API ``Authorization`` header and return the token's claims.

    Signature (the tenant's key), issuer, audience (the Management API), expiry (no leeway,
    so a test can let a short-lived token expire) and revocation are all checked.
    """
    if not authorization:
        raise ManagementTokenError("Missing authentication", error_code="missing_authentication")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ManagementTokenError("Bad HTTP authentication header format")
    try:
        decoded = jwt.decode(token.strip(), tenant.signing_key, algorithms=["RS256"])
    except (JoseError, ValueError) as error:
        raise ManagementTokenError("Invalid token") from error
    claims = dict(decoded.claims)
    registry = jwt.JWTClaimsRegistry(
        leeway=0,
        iss={"essential": True, "value": tenant.issuer},
        aud={"essential": True, "values": sorted(tenant.management_audiences)},
        exp={"essential": True},
    )
    try:
        registry.validate(claims)
    except ExpiredTokenError as error:
        raise ManagementTokenError(
            "Expired token received for JSON Web Token validation", error_code="token_expired"
        ) from error
    except (InvalidClaimError, MissingClaimError) as error:
        if getattr(error, "claim", None) == "aud":
            raise ManagementTokenError(f"Bad audience: {claims.get('aud')}") from error
        raise ManagementTokenError("Invalid token") from error
    with tenant.lock:
        if claims.get("jti") not in tenant.m2m_token_ids:
            raise ManagementTokenError("Token has been revoked", error_code="token_revoked")
    return claims
