"""Configuration: the defaults of every config key, the table that reads them, and
:class:`Settings`. How one value is read and checked is :mod:`._config_values`; what a
store needs of the settings, its backend's ``validate`` (:mod:`.backends`).

Config is read once, at ``init_app``; a bad value raises :class:`ConfigurationError`
naming the key, so a broken deployment fails at start-up and never in a login.
Values may come from ``app.config.from_prefixed_env()``, so strings are accepted where a
list, number or boolean is expected (``"name,email"``, ``"3.05"``, ``"false"``).

A key that may hold a credential (the Keen keys, the Auth0 client secret, and the URL keys,
which can carry a password or a pasted key) is never quoted in an error: the message names
the key and the problem. Every credential read here is registered to be masked in every
message the package makes from outside text (:func:`._text.register_secret`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import os
import re
import typing as t

from ._config_values import _as_bool
from ._config_values import _as_choice
from ._config_values import _as_database_url
from ._config_values import _as_datetime
from ._config_values import _as_duration
from ._config_values import _as_list
from ._config_values import _as_number
from ._config_values import _as_optional_bool
from ._config_values import _as_optional_str
from ._config_values import _as_schema
from ._config_values import _as_timeout
from ._config_values import _check_api_url
from ._credentials import auth0_base_url
from ._credentials import check_credential
from ._credentials import register_authlib_secrets
from ._credentials import register_config_secrets
from ._text import safe_repr
from .exceptions import ConfigurationError

if t.TYPE_CHECKING:  # pragma: no cover
    from flask import Flask

#: Keen's public API.
DEFAULT_API_URL = "https://api.keen.io"
#: The Rule's collection.
DEFAULT_COLLECTION = "signups"
#: Claims copied into the event; ``email`` is opt-in.
DEFAULT_CLAIMS: tuple[str, ...] = ("name",)
#: Connect and read timeouts for every call to Keen and Auth0, in seconds.
DEFAULT_TIMEOUT = (3.05, 10.0)
#: Events per batch request (Keen documents no limit; its clients use 1000-5000).
DEFAULT_BATCH_SIZE = 500
#: How often the sender looks for due events when it has not been woken, in seconds.
DEFAULT_FLUSH_INTERVAL = 0.5
#: Attempts of the ``after_delivered`` hook (marking a user in Auth0, ...) for an event Keen
#: already has. Since ``KEEN_SIGNUP_RETRY_FOR`` it no longer dead-letters a retryable failure.
DEFAULT_MAX_ATTEMPTS = 30
#: How long exit and SIGTERM may spend flushing, in seconds. What is left stays queued.
DEFAULT_SHUTDOWN_TIMEOUT = 5.0
#: The ``app_metadata`` key the Rule used.
DEFAULT_MARKER = "signedUp"
#: Management API requests per second the extension allows itself (Auth0's free tenants: 2).
DEFAULT_AUTH0_REQUESTS_PER_SECOND = 2.0
#: Seconds of store work a login may spend before its signup goes to the local spool.
DEFAULT_STORE_TIMEOUT = 0.1
#: The longest budget accepted: beyond it a stuck store would visibly slow logins.
MAX_STORE_TIMEOUT = 30.0
#: File name of the SQLite ledger and outbox inside ``app.instance_path``.
DEFAULT_DATABASE_NAME = "keen_signup.sqlite3"
#: PostgreSQL schema of the ``postgres`` store's tables (``KEEN_SIGNUP_DATABASE_SCHEMA``).
DEFAULT_DATABASE_SCHEMA = "keen_signup"
#: How long a delivered event's body (personal data) is kept, in seconds: 7 days.
DEFAULT_RETENTION = 7 * 24 * 3600.0
#: How long a retryable failure is retried, from its first failure, before it becomes a
#: dead letter (``KEEN_SIGNUP_RETRY_FOR``): 3 days, a long weekend's outage.
DEFAULT_RETRY_FOR = 3 * 24 * 3600.0
#: At most 30 days: inside Keen's 31-day uniqueness window, so a late retry of an event
#: Keen had in fact stored is still de-duplicated.
MAX_RETRY_FOR = 30 * 24 * 3600.0

#: Upper bounds of the numeric keys. Far above any sane setting, and low enough that
#: nothing downstream overflows (``threading`` waits, ``time.time() + x``, SQLite REAL).
MAX_BATCH_SIZE = 10_000
MAX_FLUSH_INTERVAL = 3600.0
MAX_ATTEMPTS = 10_000
MAX_SHUTDOWN_TIMEOUT = 3600.0
MAX_TIMEOUT = 600.0
MAX_RETENTION = 10 * 366 * 24 * 3600.0
#: Bound of a numeric key that sets none of its own.
MAX_NUMBER = 1_000_000.0

DELIVERY_MODES = ("background", "sync")
IP_MODES = ("full", "anonymize", "none")
ADDONS = ("ip_to_geo", "ua_parser", "referrer_parser", "url_parser")
SQLITE_SYNCHRONOUS = ("normal", "full")

_COLLECTION_RE = re.compile(r"^[\x00-\x7f]{1,64}$")


@dataclasses.dataclass(frozen=True)
class Settings:
    """The validated configuration of one app. Built by :func:`load_settings`."""

    enabled: bool
    project_id: str
    write_key: str = dataclasses.field(repr=False)
    master_key: str | None = dataclasses.field(repr=False)
    api_url: str
    collection: str
    delivery: str
    store: str | object
    database: str
    sqlite_synchronous: str
    redis_url: str | None = dataclasses.field(repr=False)
    redis_prefix: str
    # -- postgres store (issue 11) --
    database_url: str | None = dataclasses.field(repr=False)
    database_schema: str
    auth0_domain: str | None
    auth0_client_id: str | None
    auth0_client_secret: str | None = dataclasses.field(repr=False)
    auth0_requests_per_second: float
    marker: str
    marker_claim: str | None
    created_at_claim: str | None
    since: dt.datetime | None
    claims: tuple[str, ...]
    ip_mode: str
    addons: tuple[str, ...]
    timeout: tuple[float, float]
    batch_size: int
    flush_interval: float
    max_attempts: int
    shutdown_timeout: float
    keep_delivered: bool
    propagate_errors: bool | None
    retention: float
    store_timeout: float = DEFAULT_STORE_TIMEOUT
    retry_for: float = DEFAULT_RETRY_FOR
    #: ``KEEN_SIGNUP_DATABASE_LISTEN_URL``: a direct PostgreSQL URL for ``LISTEN`` (issue 17).
    database_listen_url: str | None = dataclasses.field(repr=False, default=None)

    @property
    def has_management_api(self) -> bool:
        """Management API credentials are set: ``KEEN_SIGNUP_AUTH0_DOMAIN``, ``_CLIENT_ID``
        and ``_CLIENT_SECRET`` (the auth0 store, ``migrate``, resolving ``created_at``)."""
        return bool(self.auth0_domain and self.auth0_client_id and self.auth0_client_secret)


def _as_addons(key: str, value: object) -> tuple[str, ...]:
    return tuple(_as_choice(key, addon, ADDONS) for addon in _as_list(key, value))


def _as_collection(key: str, value: object) -> str:
    """A name Keen accepts for a collection."""
    if not isinstance(value, str):
        problem = "must be a string"
    elif not _COLLECTION_RE.match(value):
        problem = "must be 1-64 ASCII characters"
    elif "$" in value:
        problem = "cannot contain '$'"
    elif value.startswith("_"):
        problem = "cannot start with '_'"
    elif value.startswith(".") or value.endswith("."):
        problem = "cannot start or end with '.'"
    else:
        return value
    raise ConfigurationError(
        f"{key} {safe_repr(value, limit=80)} is not a valid Keen collection name: {problem}"
    )


#: ``KEEN_SIGNUP_STORE`` not set: the backends' default (``None`` is refused, as ever).
_UNSET = object()


def _as_store(key: str, value: object) -> str | object:
    from .backends import DEFAULT_STORE  # the store names are the backends'
    from .backends import check_store

    return check_store(DEFAULT_STORE if value is _UNSET else value)


def _as_credential(key: str, value: object) -> str | None:
    return check_credential(key, _as_optional_str(key, value))


def _as_api_url(key: str, value: object) -> str:
    return _check_api_url(_as_optional_str(key, value) or DEFAULT_API_URL).rstrip("/")


def _as_auth0_domain(key: str, value: object) -> str | None:
    domain = _as_optional_str(key, value)
    if domain is not None:
        auth0_base_url(domain)  # fails now, not at the first Management API call
    return domain


def _as_store_timeout(key: str, value: object) -> float:
    """Finite seconds in (0, :data:`MAX_STORE_TIMEOUT`]."""
    number = _as_number(key, value, minimum=0.0, maximum=MAX_STORE_TIMEOUT)
    if number <= 0:
        raise ConfigurationError(
            f"{key} must be a number of seconds > 0 and <= {MAX_STORE_TIMEOUT:g}, "
            f"got {safe_repr(value)}"
        )
    return number


#: How a key's value is read: ``reader(key, value)`` returns it checked, or raises
#: :class:`ConfigurationError` naming ``key``.
_Reader = t.Callable[[str, t.Any], t.Any]


def _choice(choices: tuple[str, ...]) -> _Reader:
    return functools.partial(_as_choice, choices=choices)


def _text_or(default: str) -> _Reader:
    return lambda key, value: _as_optional_str(key, value) or default


def _number(minimum: float, maximum: float = MAX_NUMBER, *, integer: bool = False) -> _Reader:
    return functools.partial(_as_number, minimum=minimum, maximum=maximum, integer=integer)


def _duration(maximum: float) -> _Reader:
    return functools.partial(_as_duration, maximum=maximum)


#: The keys read on their own, in this order: ``(key, default, reader)``. Each sets the
#: :class:`Settings` field named after it (``KEEN_SIGNUP_BATCH_SIZE``: ``batch_size``).
#: Every numeric key is here, with its bounds.
_KEYS: tuple[tuple[str, t.Any, _Reader], ...] = (
    ("KEEN_PROJECT_ID", None, _text_or("")),
    ("KEEN_WRITE_KEY", None, lambda key, value: _as_credential(key, value) or ""),
    ("KEEN_MASTER_KEY", None, _as_credential),
    ("KEEN_API_URL", None, _as_api_url),
    ("KEEN_SIGNUP_COLLECTION", DEFAULT_COLLECTION, _as_collection),
    ("KEEN_SIGNUP_STORE", _UNSET, _as_store),
    ("KEEN_SIGNUP_AUTH0_DOMAIN", None, _as_auth0_domain),
    ("KEEN_SIGNUP_AUTH0_CLIENT_ID", None, _as_optional_str),
    ("KEEN_SIGNUP_AUTH0_CLIENT_SECRET", None, _as_credential),
    ("KEEN_SIGNUP_DELIVERY", "background", _choice(DELIVERY_MODES)),
    ("KEEN_SIGNUP_SQLITE_SYNCHRONOUS", "normal", _choice(SQLITE_SYNCHRONOUS)),
    ("KEEN_SIGNUP_REDIS_URL", None, _as_optional_str),
    ("KEEN_SIGNUP_REDIS_PREFIX", None, _text_or("keen_signup")),
    ("KEEN_SIGNUP_DATABASE_URL", None, _as_database_url),
    ("KEEN_SIGNUP_DATABASE_SCHEMA", DEFAULT_DATABASE_SCHEMA, _as_schema),
    ("KEEN_SIGNUP_DATABASE_LISTEN_URL", None, _as_optional_str),
    ("KEEN_SIGNUP_MARKER", None, _text_or(DEFAULT_MARKER)),
    ("KEEN_SIGNUP_SINCE", None, _as_datetime),
    ("KEEN_SIGNUP_CREATED_AT_CLAIM", None, _as_optional_str),
    ("KEEN_SIGNUP_MARKER_CLAIM", None, _as_optional_str),
    ("KEEN_SIGNUP_CLAIMS", DEFAULT_CLAIMS, _as_list),
    ("KEEN_SIGNUP_IP", "full", _choice(IP_MODES)),
    ("KEEN_SIGNUP_ADDONS", (), _as_addons),
    ("KEEN_SIGNUP_KEEP_DELIVERED", True, _as_bool),
    ("KEEN_SIGNUP_PROPAGATE_ERRORS", None, _as_optional_bool),
    ("KEEN_SIGNUP_AUTH0_REQUESTS_PER_SECOND", DEFAULT_AUTH0_REQUESTS_PER_SECOND, _number(0.01)),
    ("KEEN_SIGNUP_TIMEOUT", DEFAULT_TIMEOUT, functools.partial(_as_timeout, maximum=MAX_TIMEOUT)),
    ("KEEN_SIGNUP_BATCH_SIZE", DEFAULT_BATCH_SIZE, _number(1, MAX_BATCH_SIZE, integer=True)),
    ("KEEN_SIGNUP_FLUSH_INTERVAL", DEFAULT_FLUSH_INTERVAL, _number(0.01, MAX_FLUSH_INTERVAL)),
    ("KEEN_SIGNUP_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS, _number(1, MAX_ATTEMPTS, integer=True)),
    ("KEEN_SIGNUP_SHUTDOWN_TIMEOUT", DEFAULT_SHUTDOWN_TIMEOUT, _number(0, MAX_SHUTDOWN_TIMEOUT)),
    ("KEEN_SIGNUP_RETENTION", DEFAULT_RETENTION, _duration(MAX_RETENTION)),
    ("KEEN_SIGNUP_STORE_TIMEOUT", DEFAULT_STORE_TIMEOUT, _as_store_timeout),
    ("KEEN_SIGNUP_RETRY_FOR", DEFAULT_RETRY_FOR, _duration(MAX_RETRY_FOR)),
)


def _field(key: str) -> str:
    """The :class:`Settings` field of ``key``."""
    if key == "KEEN_SIGNUP_IP":
        return "ip_mode"
    return key.removeprefix("KEEN_SIGNUP_").removeprefix("KEEN_").lower()


def load_settings(app: Flask) -> Settings:
    """Read and validate the ``KEEN_*`` keys of ``app.config``.

    The store's backend checks what it needs of the settings last
    (:func:`.backends.check_settings`): no store is named here.

    :raises ConfigurationError: naming the first bad key.
    """
    from .backends import check_settings

    c = app.config
    register_config_secrets(c)
    register_authlib_secrets(app)
    enabled = _as_bool("KEEN_SIGNUP_ENABLED", c.get("KEEN_SIGNUP_ENABLED", True))
    settings = Settings(
        enabled=enabled,
        database=_as_optional_str("KEEN_SIGNUP_DATABASE", c.get("KEEN_SIGNUP_DATABASE"))
        or os.path.join(app.instance_path, DEFAULT_DATABASE_NAME),
        **{_field(key): read(key, c.get(key, default)) for key, default, read in _KEYS},
    )
    for key in ("KEEN_PROJECT_ID", "KEEN_WRITE_KEY"):
        if enabled and not getattr(settings, _field(key)):
            raise ConfigurationError(
                f"{key} is not set: set it (e.g. FLASK_{key} in the environment "
                "with app.config.from_prefixed_env()) or set KEEN_SIGNUP_ENABLED = False"
            )
    if enabled and settings.since is not None:
        if not (settings.created_at_claim or settings.has_management_api):
            raise ConfigurationError(
                "KEEN_SIGNUP_SINCE needs each user's creation time, and Auth0's ID tokens do "
                "not carry it by default. Either deploy the post-login Action of "
                "docs/migrating-from-the-rule.md and set KEEN_SIGNUP_CREATED_AT_CLAIM to its "
                "claim (e.g. 'https://example.com/created_at'), or set "
                "KEEN_SIGNUP_AUTH0_DOMAIN, KEEN_SIGNUP_AUTH0_CLIENT_ID and "
                "KEEN_SIGNUP_AUTH0_CLIENT_SECRET (a machine-to-machine app with read:users) so "
                "that it is looked up off the request path"
            )
    check_settings(settings)
    return settings
