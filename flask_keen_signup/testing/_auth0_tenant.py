"""The state of one emulated Auth0 tenant: clients, signing key, users, codes, tokens, knobs.

Everything the HTTP handlers share lives here, behind one re-entrant lock, because the server
answers each request on its own thread.
"""

from __future__ import annotations

import secrets
import threading
import time
import typing as t
from dataclasses import dataclass
from dataclasses import field

from joserfc.jwk import RSAKey

from ._auth0_jobs import ExportJob
from ._auth0_users import DEFAULT_CONNECTION
from ._auth0_users import UserStore

#: The ``tamper_next_id_token`` kinds, each a way a relying party must refuse an ID token.
TAMPER_KINDS = frozenset(
    {"expired", "wrong_audience", "bad_signature", "wrong_issuer", "wrong_nonce"}
)
#: Scopes granted to the machine-to-machine client for the Management API.
M2M_SCOPES = (
    "read:users",
    "update:users",
    "update:users_app_metadata",
    "create:users",
    "delete:users",
)


class LoggedRequest(t.NamedTuple):
    """One request the emulator answered (see :attr:`Auth0Emulator.request_log`)."""

    method: str
    #: The path exactly as the client sent it, still percent-encoded (``/api/v2/users/auth0%7Cx``).
    path: str
    status: int
    #: The raw query string, without ``?``.
    query: str
    #: Seconds since the epoch when the response was ready.
    time: float
    #: Whether the request carried an ``Authorization`` header (never its value).
    authorized: bool = False


@dataclass
class RateLimit:
    """An armed ``rate_limit_next``: the next ``remaining`` matching requests answer 429."""

    remaining: int
    reset_in: int
    retry_after: int | None
    path_prefix: str


@dataclass
class AutoLogin:
    """An armed ``auto_login``: the next ``GET /authorize`` signs this person in, no form."""

    email: str
    password: str
    name: str | None


@dataclass
class IssuedAccessToken:
    """An opaque access token from the code flow (good for ``/userinfo`` only, as at Auth0)."""

    access_token: str
    client: t.Any
    user_id: str
    scope: str
    expires_at: float

    def get_client(self) -> t.Any:
        return self.client

    def get_user(self) -> t.Any:
        return self.user_id

    def get_scope(self) -> str:
        return self.scope

    def is_expired(self) -> bool:
        return time.time() >= self.expires_at


@dataclass
class Tenant:
    """Configuration and mutable state of one emulated tenant."""

    client_id: str
    client_secret: str
    m2m_client_id: str
    m2m_client_secret: str
    token_lifetime: int
    id_token_lifetime: int
    allowed_callback_urls: tuple[str, ...] | None = None
    allowed_logout_urls: tuple[str, ...] | None = None
    #: ``http://host:port`` once the server listens; all URLs and the issuer derive from it.
    base_url: str = ""
    lock: threading.RLock = field(default_factory=threading.RLock)
    users: UserStore = field(default_factory=UserStore)
    signing_key: RSAKey = field(default_factory=lambda: _new_key())
    #: Same ``kid`` as the real key, different key material: the ``bad_signature`` tamper.
    rogue_key: RSAKey | None = None
    codes: dict[str, t.Any] = field(default_factory=dict)
    access_tokens: dict[str, IssuedAccessToken] = field(default_factory=dict)
    #: ``jti`` of every M2M token still valid; ``revoke_m2m_tokens`` empties it.
    m2m_token_ids: set[str] = field(default_factory=set)
    id_token_claims: dict[str, t.Any] = field(default_factory=dict)
    tampers: list[str] = field(default_factory=list)
    rate_limit: RateLimit | None = None
    auto_login: AutoLogin | None = None
    log: list[LoggedRequest] = field(default_factory=list)
    #: User export jobs by id.
    jobs: dict[str, ExportJob] = field(default_factory=dict)
    #: ``GET /api/v2/jobs/{id}`` answers before a new export job completes.
    export_polls: int = 1
    #: ``status_details`` of the next export job, which then fails; ``None``: succeed.
    export_failure: str | None = None
    #: Seconds a download link of a completed export stays valid (Auth0: 60).
    export_link_lifetime: float = 60.0
    #: The ``con_...`` id of the database connection, for ``connection_id`` filters.
    connection_ids: dict[str, str] = field(
        default_factory=lambda: {_new_connection_id(): DEFAULT_CONNECTION}
    )

    @property
    def kid(self) -> str:
        return str(self.signing_key.kid)

    @property
    def issuer(self) -> str:
        return self.base_url + "/"

    @property
    def audience(self) -> str:
        return self.base_url + "/api/v2/"

    @property
    def management_audiences(self) -> frozenset[str]:
        """Audiences accepted for the Management API.

        Besides :attr:`audience`, the ``https://{domain}/api/v2/`` spelling a real tenant uses
        is accepted, so clients that derive the audience from the domain (as auth0-python's
        ``ManagementClient`` does) get a token too.
        """
        domain = self.base_url.split("://", 1)[-1]
        return frozenset({self.audience, f"https://{domain}/api/v2/"})

    def pop_tamper(self) -> str | None:
        with self.lock:
            return self.tampers.pop(0) if self.tampers else None

    def get_rogue_key(self) -> RSAKey:
        with self.lock:
            if self.rogue_key is None:
                self.rogue_key = _new_key(self.kid)
            return self.rogue_key


def _new_connection_id() -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return "con_" + "".join(secrets.choice(alphabet) for _ in range(16))


def _new_key(kid: str | None = None) -> RSAKey:
    kid = kid or secrets.token_urlsafe(16)
    key: RSAKey = RSAKey.generate_key(
        2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"}, private=True
    )
    return key
