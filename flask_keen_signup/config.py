"""Configuration: the defaults of every config key, and their validation.

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
import decimal
import json
import math
import numbers
import os
import re
import typing as t
from urllib.parse import urlsplit

from ._credentials import auth0_base_url
from ._credentials import check_credential
from ._credentials import check_url_port
from ._credentials import register_authlib_secrets
from ._credentials import register_config_secrets
from ._text import safe_repr
from .backends import REGISTRY
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

#: Units of ``KEEN_SIGNUP_RETENTION`` strings (``"7 days"``, ``"12h"``, ``"30m"``).
_DURATION_UNITS = {
    "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "mins": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hrs": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
    "w": 604800.0, "week": 604800.0, "weeks": 604800.0,
}  # fmt: skip
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$")

DELIVERY_MODES = ("background", "sync")
#: The built-in ``KEEN_SIGNUP_STORE`` names (the backend registry's, :mod:`.backends`).
STORE_NAMES = tuple(REGISTRY)
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


def _as_bool(key: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ConfigurationError(f"{key} must be a boolean, got {safe_repr(value)}")


def _as_choice(key: str, value: object, choices: tuple[str, ...]) -> str:
    if isinstance(value, str) and value.strip().lower() in choices:
        return value.strip().lower()
    raise ConfigurationError(f"{key} must be one of {', '.join(choices)}; got {safe_repr(value)}")


def _as_list(key: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except (ValueError, RecursionError) as exc:
                raise ConfigurationError(
                    f"{key} is not a valid JSON list: {type(exc).__name__}"
                ) from None
        else:
            return tuple(part.strip() for part in text.split(",") if part.strip())
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigurationError(f"{key} must be a list of strings, got {safe_repr(value)}")


def _as_number(
    key: str,
    value: object,
    *,
    minimum: float,
    maximum: float = MAX_NUMBER,
    integer: bool = False,
) -> float:
    """A finite number in ``[minimum, maximum]``: ``inf``, ``NaN``, ``"1e400"`` and
    ``10**400`` are refused with the key's name, never an ``OverflowError``."""
    kind = "an integer" if integer else "a number"
    bounds = f"{kind} from {minimum:g} to {maximum:g}"
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, decimal.Decimal, str)):
        raise ConfigurationError(f"{key} must be {bounds}, got {safe_repr(value)}")
    try:
        number = float(value)
    except (ValueError, OverflowError, TypeError):
        raise ConfigurationError(f"{key} must be {bounds}, got {safe_repr(value)}") from None
    if not math.isfinite(number) or not minimum <= number <= maximum:
        raise ConfigurationError(f"{key} must be {bounds}, got {safe_repr(value)}")
    if integer and not number.is_integer():
        raise ConfigurationError(f"{key} must be {bounds}, got {safe_repr(value)}")
    return number


#: The sender's numeric keys: (key, default, minimum, maximum, integer). Each sets the
#: :class:`Settings` field named after it (``KEEN_SIGNUP_BATCH_SIZE``: ``batch_size``).
_SENDER_NUMBERS: tuple[tuple[str, float, float, float, bool], ...] = (
    ("KEEN_SIGNUP_BATCH_SIZE", DEFAULT_BATCH_SIZE, 1, MAX_BATCH_SIZE, True),
    ("KEEN_SIGNUP_FLUSH_INTERVAL", DEFAULT_FLUSH_INTERVAL, 0.01, MAX_FLUSH_INTERVAL, False),
    ("KEEN_SIGNUP_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS, 1, MAX_ATTEMPTS, True),
    ("KEEN_SIGNUP_SHUTDOWN_TIMEOUT", DEFAULT_SHUTDOWN_TIMEOUT, 0, MAX_SHUTDOWN_TIMEOUT, False),
)


def _sender_numbers(c: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    """:data:`_SENDER_NUMBERS` read and checked in order; integers come back as ``int``."""
    numbers: dict[str, t.Any] = {}
    for key, default, low, high, integer in _SENDER_NUMBERS:
        number = _as_number(key, c.get(key, default), minimum=low, maximum=high, integer=integer)
        numbers[key.removeprefix("KEEN_SIGNUP_").lower()] = int(number) if integer else number
    return numbers


def as_store_timeout(value: object, key: str = "KEEN_SIGNUP_STORE_TIMEOUT") -> float:
    """``KEEN_SIGNUP_STORE_TIMEOUT``: finite seconds in (0, :data:`MAX_STORE_TIMEOUT`]."""
    number = _as_number(key, value, minimum=0.0, maximum=MAX_STORE_TIMEOUT)
    if number <= 0:
        raise ConfigurationError(
            f"{key} must be a number of seconds > 0 and <= {MAX_STORE_TIMEOUT:g}, "
            f"got {safe_repr(value)}"
        )
    return number


def _as_timeout(key: str, value: object) -> tuple[float, float]:
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            raise ConfigurationError(
                f"{key} is not a valid JSON pair: {safe_repr(value)}"
            ) from None
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ConfigurationError(f"{key} must be a number or a (connect, read) pair")
        connect, read = (_as_number(key, v, minimum=0.001, maximum=MAX_TIMEOUT) for v in value)
        return (connect, read)
    seconds = _as_number(key, value, minimum=0.001, maximum=MAX_TIMEOUT)
    return (seconds, seconds)


def _as_duration(key: str, value: object, *, maximum: float) -> float:
    """Seconds, from a number of seconds or a string such as ``"7 days"``, ``"12h"``,
    ``"30m"``, ``"90"`` or ``"0"``."""
    if isinstance(value, dt.timedelta):
        value = value.total_seconds()
    if isinstance(value, str):
        match = _DURATION_RE.match(value.lower())
        unit = _DURATION_UNITS.get(match.group(2) or "s") if match else None
        if match is None or unit is None:
            raise ConfigurationError(
                f"{key} must be seconds or a duration such as '7 days', '12h', '30m' or '0'; "
                f"got {safe_repr(value)}"
            )
        try:
            value = float(match.group(1)) * unit
        except OverflowError:  # pragma: no cover - float() of digits gives inf instead
            value = math.inf
    return _as_number(key, value, minimum=0, maximum=maximum)


def _check_api_url(url: str) -> str:
    """An http(s) base URL without credentials, query or fragment.

    The message never repeats what it refuses: a URL with ``?api_key=``, ``user:pass@`` or
    a key pasted where the port goes carries a secret, and config errors end up in logs
    and CI output.
    """
    if "@" in url:
        raise ConfigurationError(
            "KEEN_API_URL must not carry credentials (user:password@): Keen's key goes in "
            "the Authorization header, from KEEN_WRITE_KEY"
        )
    if any(c in url for c in "?#"):
        raise ConfigurationError(
            "KEEN_API_URL must not have a query or a fragment (such as ?api_key=...): Keen's "
            "key goes in the Authorization header, from KEEN_WRITE_KEY"
        )
    if not re.match(r"^https?://[^/\s?#]+(/[^\s?#]*)?$", url):
        raise ConfigurationError(
            "KEEN_API_URL must be an http(s) base URL such as https://api.keen.io, without "
            "spaces (the value is not shown: it may hold a key)"
        )
    try:
        urlsplit(url).port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ConfigurationError(
            "KEEN_API_URL has an invalid port: after the host's ':' only digits from 0 to "
            "65535 may follow (the value is not shown: it may hold a key)"
        ) from None
    return url


def _check_redis_url(url: str | None) -> str | None:
    """A ``redis://``, ``rediss://`` or ``unix://`` URL, or ``redis+cluster://`` /
    ``rediss+cluster://`` for a Redis Cluster. The message never repeats it: it usually
    carries a password."""
    if url is not None and not re.match(r"^(rediss?(\+cluster)?|unix)://", url, re.IGNORECASE):
        raise ConfigurationError(
            "KEEN_SIGNUP_REDIS_URL must be a redis://, rediss://, unix:// URL, or "
            "redis+cluster:// (rediss+cluster://) for a Redis Cluster "
            "(the value is not shown: it may contain a password)"
        )
    if url is not None:
        check_url_port("KEEN_SIGNUP_REDIS_URL", url)
    return url


def _as_datetime(key: str, value: object) -> dt.datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, dt.date):
        moment = dt.datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            moment = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ConfigurationError(
                f"{key} must be an ISO-8601 instant such as 2026-11-18T00:00:00Z, "
                f"got {safe_repr(value)}"
            ) from None
    else:
        raise ConfigurationError(f"{key} must be a datetime or an ISO-8601 string")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    try:
        return moment.astimezone(dt.timezone.utc)
    except (OverflowError, ValueError):
        raise ConfigurationError(f"{key} is out of range: {safe_repr(value)}") from None


def _as_optional_str(key: str, value: object) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value.strip()
    raise ConfigurationError(f"{key} must be a string, got {type(value).__name__}")


def validate_collection_name(name: str) -> str | None:
    """Return why ``name`` breaks Keen's collection-name rules, or ``None`` if it is valid."""
    if not _COLLECTION_RE.match(name):
        return "must be 1-64 ASCII characters"
    if "$" in name:
        return "cannot contain '$'"
    if name.startswith("_"):
        return "cannot start with '_'"
    if name.startswith(".") or name.endswith("."):
        return "cannot start or end with '.'"
    return None


def load_settings(app: Flask) -> Settings:
    """Read and validate the ``KEEN_*`` keys of ``app.config``.

    :raises ConfigurationError: naming the first bad key.
    """
    c = app.config
    register_config_secrets(c)
    register_authlib_secrets(app)
    enabled = _as_bool("KEEN_SIGNUP_ENABLED", c.get("KEEN_SIGNUP_ENABLED", True))
    project_id = _as_optional_str("KEEN_PROJECT_ID", c.get("KEEN_PROJECT_ID")) or ""
    write_key = check_credential(
        "KEEN_WRITE_KEY", _as_optional_str("KEEN_WRITE_KEY", c.get("KEEN_WRITE_KEY"))
    ) or ""
    if enabled and not project_id:
        raise ConfigurationError(
            "KEEN_PROJECT_ID is not set: set it (e.g. FLASK_KEEN_PROJECT_ID in the environment "
            "with app.config.from_prefixed_env()) or set KEEN_SIGNUP_ENABLED = False"
        )
    if enabled and not write_key:
        raise ConfigurationError(
            "KEEN_WRITE_KEY is not set: set it (e.g. FLASK_KEEN_WRITE_KEY in the environment "
            "with app.config.from_prefixed_env()) or set KEEN_SIGNUP_ENABLED = False"
        )
    master_key = check_credential(
        "KEEN_MASTER_KEY", _as_optional_str("KEEN_MASTER_KEY", c.get("KEEN_MASTER_KEY"))
    )
    api_url = _check_api_url(
        _as_optional_str("KEEN_API_URL", c.get("KEEN_API_URL")) or DEFAULT_API_URL
    )
    collection = c.get("KEEN_SIGNUP_COLLECTION", DEFAULT_COLLECTION)
    if not isinstance(collection, str) or (problem := validate_collection_name(collection)):
        raise ConfigurationError(
            f"KEEN_SIGNUP_COLLECTION {safe_repr(collection, limit=80)} is not a valid Keen "
            "collection name: "
            f"{problem if isinstance(collection, str) else 'must be a string'}"
        )

    store = c.get("KEEN_SIGNUP_STORE", "sqlite")
    if isinstance(store, str):
        store = _as_choice("KEEN_SIGNUP_STORE", store, tuple(REGISTRY))
    else:
        from .stores import MarkerStore

        if not isinstance(store, MarkerStore):
            raise ConfigurationError(
                "KEEN_SIGNUP_STORE must be one of "
                f"{', '.join(REGISTRY)} or a flask_keen_signup.stores.MarkerStore instance; "
                f"got {type(store).__name__}"
            )

    database = _as_optional_str("KEEN_SIGNUP_DATABASE", c.get("KEEN_SIGNUP_DATABASE"))
    if database is None:
        database = os.path.join(app.instance_path, DEFAULT_DATABASE_NAME)

    auth0_domain = _as_optional_str("KEEN_SIGNUP_AUTH0_DOMAIN", c.get("KEEN_SIGNUP_AUTH0_DOMAIN"))
    auth0_client_id = _as_optional_str(
        "KEEN_SIGNUP_AUTH0_CLIENT_ID", c.get("KEEN_SIGNUP_AUTH0_CLIENT_ID")
    )
    if auth0_domain is not None:
        auth0_base_url(auth0_domain)  # fails now, not at the first Management API call
    auth0_client_secret = check_credential(
        "KEEN_SIGNUP_AUTH0_CLIENT_SECRET",
        _as_optional_str(
            "KEEN_SIGNUP_AUTH0_CLIENT_SECRET", c.get("KEEN_SIGNUP_AUTH0_CLIENT_SECRET")
        ),
    )
    if enabled and store == "auth0":
        for key, value in (
            ("KEEN_SIGNUP_AUTH0_DOMAIN", auth0_domain),
            ("KEEN_SIGNUP_AUTH0_CLIENT_ID", auth0_client_id),
            ("KEEN_SIGNUP_AUTH0_CLIENT_SECRET", auth0_client_secret),
        ):
            if not value:
                raise ConfigurationError(
                    f"{key} is required with KEEN_SIGNUP_STORE = 'auth0' "
                    "(Management API machine-to-machine credentials)"
                )
    redis_url = _as_optional_str("KEEN_SIGNUP_REDIS_URL", c.get("KEEN_SIGNUP_REDIS_URL"))
    if store == "redis":
        _check_redis_url(redis_url)
    redis_prefix = (
        _as_optional_str("KEEN_SIGNUP_REDIS_PREFIX", c.get("KEEN_SIGNUP_REDIS_PREFIX"))
        or "keen_signup"
    )
    if enabled and store == "redis" and not redis_url:
        raise ConfigurationError(
            "KEEN_SIGNUP_REDIS_URL is required with KEEN_SIGNUP_STORE = 'redis'"
        )

    database_url, database_schema = _postgres_settings(c, enabled=enabled, store=store)

    marker = _as_optional_str("KEEN_SIGNUP_MARKER", c.get("KEEN_SIGNUP_MARKER")) or DEFAULT_MARKER
    since = _as_datetime("KEEN_SIGNUP_SINCE", c.get("KEEN_SIGNUP_SINCE"))
    created_at_claim = _as_optional_str(
        "KEEN_SIGNUP_CREATED_AT_CLAIM", c.get("KEEN_SIGNUP_CREATED_AT_CLAIM")
    )
    has_management_api = bool(auth0_domain and auth0_client_id and auth0_client_secret)
    if enabled and since is not None and not (created_at_claim or has_management_api):
        raise ConfigurationError(
            "KEEN_SIGNUP_SINCE needs each user's creation time, and Auth0's ID tokens do not "
            "carry it by default. Either deploy the post-login Action of "
            "docs/migrating-from-the-rule.md and set KEEN_SIGNUP_CREATED_AT_CLAIM to its claim "
            "(e.g. 'https://example.com/created_at'), or set KEEN_SIGNUP_AUTH0_DOMAIN, "
            "KEEN_SIGNUP_AUTH0_CLIENT_ID and KEEN_SIGNUP_AUTH0_CLIENT_SECRET (a machine-to-machine "
            "app with read:users) so that it is looked up off the request path"
        )
    propagate = c.get("KEEN_SIGNUP_PROPAGATE_ERRORS")
    return Settings(
        enabled=enabled,
        project_id=project_id,
        write_key=write_key,
        master_key=master_key,
        api_url=api_url.rstrip("/"),
        collection=collection,
        delivery=_as_choice(
            "KEEN_SIGNUP_DELIVERY", c.get("KEEN_SIGNUP_DELIVERY", "background"), DELIVERY_MODES
        ),
        store=store,
        database=database,
        sqlite_synchronous=_as_choice(
            "KEEN_SIGNUP_SQLITE_SYNCHRONOUS",
            c.get("KEEN_SIGNUP_SQLITE_SYNCHRONOUS", "normal"),
            SQLITE_SYNCHRONOUS,
        ),
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        database_url=database_url,
        database_schema=database_schema,
        database_listen_url=_as_optional_str(
            "KEEN_SIGNUP_DATABASE_LISTEN_URL", c.get("KEEN_SIGNUP_DATABASE_LISTEN_URL")
        ),
        auth0_domain=auth0_domain,
        auth0_client_id=auth0_client_id,
        auth0_client_secret=auth0_client_secret,
        auth0_requests_per_second=_as_number(
            "KEEN_SIGNUP_AUTH0_REQUESTS_PER_SECOND",
            c.get("KEEN_SIGNUP_AUTH0_REQUESTS_PER_SECOND", DEFAULT_AUTH0_REQUESTS_PER_SECOND),
            minimum=0.01,
        ),
        marker=marker,
        marker_claim=_as_optional_str(
            "KEEN_SIGNUP_MARKER_CLAIM", c.get("KEEN_SIGNUP_MARKER_CLAIM")
        ),
        created_at_claim=created_at_claim,
        since=since,
        claims=_as_list("KEEN_SIGNUP_CLAIMS", c.get("KEEN_SIGNUP_CLAIMS", list(DEFAULT_CLAIMS))),
        ip_mode=_as_choice("KEEN_SIGNUP_IP", c.get("KEEN_SIGNUP_IP", "full"), IP_MODES),
        addons=tuple(
            _as_choice("KEEN_SIGNUP_ADDONS", a, ADDONS)
            for a in _as_list("KEEN_SIGNUP_ADDONS", c.get("KEEN_SIGNUP_ADDONS", []))
        ),
        timeout=_as_timeout("KEEN_SIGNUP_TIMEOUT", c.get("KEEN_SIGNUP_TIMEOUT", DEFAULT_TIMEOUT)),
        **_sender_numbers(c),  # batch_size, flush_interval, max_attempts, shutdown_timeout
        keep_delivered=_as_bool(
            "KEEN_SIGNUP_KEEP_DELIVERED", c.get("KEEN_SIGNUP_KEEP_DELIVERED", True)
        ),
        propagate_errors=None
        if propagate is None
        else _as_bool("KEEN_SIGNUP_PROPAGATE_ERRORS", propagate),
        retention=_as_duration(
            "KEEN_SIGNUP_RETENTION",
            c.get("KEEN_SIGNUP_RETENTION", DEFAULT_RETENTION),
            maximum=MAX_RETENTION,
        ),
        store_timeout=as_store_timeout(
            c.get("KEEN_SIGNUP_STORE_TIMEOUT", DEFAULT_STORE_TIMEOUT)
        ),
        retry_for=_as_duration(
            "KEEN_SIGNUP_RETRY_FOR",
            c.get("KEEN_SIGNUP_RETRY_FOR", DEFAULT_RETRY_FOR),
            maximum=MAX_RETRY_FOR,
        ),
    )


def _postgres_settings(
    c: t.Mapping[str, t.Any], *, enabled: bool, store: object
) -> tuple[str | None, str]:
    """``KEEN_SIGNUP_DATABASE_URL`` and ``KEEN_SIGNUP_DATABASE_SCHEMA``, checked.

    The URL is required with the ``postgres`` store and never quoted in an error (it may
    hold a password); its full parsing happens where psycopg is imported (``init_app``).
    """
    url = c.get("KEEN_SIGNUP_DATABASE_URL")
    if url is not None and not isinstance(url, str):
        raise ConfigurationError(
            f"KEEN_SIGNUP_DATABASE_URL must be a string, got {type(url).__name__}"
        )
    url = url.strip() if url else None
    if enabled and store == "postgres" and not url:
        raise ConfigurationError(
            "KEEN_SIGNUP_DATABASE_URL is required with KEEN_SIGNUP_STORE = 'postgres' "
            "(e.g. postgresql://user@db.example.com/app; FLASK_KEEN_SIGNUP_DATABASE_URL in the "
            "environment with app.config.from_prefixed_env())"
        )
    if url and "://" in url and not url.startswith(("postgresql://", "postgres://")):
        raise ConfigurationError(
            "KEEN_SIGNUP_DATABASE_URL must start with postgresql:// "
            "(or be a key=value conninfo string)"
        )
    if url:
        check_url_port("KEEN_SIGNUP_DATABASE_URL", url)
    schema = c.get("KEEN_SIGNUP_DATABASE_SCHEMA", DEFAULT_DATABASE_SCHEMA)
    if not isinstance(schema, str) or not re.match(r"^[a-z_][a-z0-9_]{0,62}$", schema):
        raise ConfigurationError(
            "KEEN_SIGNUP_DATABASE_SCHEMA must be a plain lower-case SQL identifier "
            f"(letters, digits and _, at most 63), got {safe_repr(schema)}"
        )
    return url, schema
