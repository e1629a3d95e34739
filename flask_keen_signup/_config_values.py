"""How one config value is read and checked: booleans, choices, lists, numbers, durations,
timeouts, instants and URLs, from Python values or the strings of
``app.config.from_prefixed_env()`` (``"name,email"``, ``"3.05"``, ``"false"``, ``"7 days"``).

Each reader takes the key and its value and returns the value checked, or raises
:class:`ConfigurationError` naming the key; a value that may hold a credential (the URLs) is
never quoted. :mod:`.config` applies them to its table of keys.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import json
import math
import numbers
import re
from urllib.parse import urlsplit

from ._credentials import check_url_port
from ._text import safe_repr
from .exceptions import ConfigurationError

#: Units of ``KEEN_SIGNUP_RETENTION`` strings (``"7 days"``, ``"12h"``, ``"30m"``).
_DURATION_UNITS = {
    "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "mins": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hrs": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
    "w": 604800.0, "week": 604800.0, "weeks": 604800.0,
}  # fmt: skip
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$")

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
    maximum: float,
    integer: bool = False,
) -> float:
    """A finite number in ``[minimum, maximum]`` (an ``int`` when ``integer``): ``inf``,
    ``NaN``, ``"1e400"`` and ``10**400`` are refused with the key's name, never an
    ``OverflowError``."""
    number = math.nan
    if not isinstance(value, bool) and isinstance(value, (numbers.Real, decimal.Decimal, str)):
        with contextlib.suppress(ValueError, OverflowError, TypeError):
            number = float(value)
    if not (math.isfinite(number) and minimum <= number <= maximum) or (
        integer and not number.is_integer()
    ):
        kind = "an integer" if integer else "a number"
        raise ConfigurationError(
            f"{key} must be {kind} from {minimum:g} to {maximum:g}, got {safe_repr(value)}"
        )
    return int(number) if integer else number


def _as_timeout(key: str, value: object, *, maximum: float) -> tuple[float, float]:
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
        connect, read = (_as_number(key, v, minimum=0.001, maximum=maximum) for v in value)
        return (connect, read)
    seconds = _as_number(key, value, minimum=0.001, maximum=maximum)
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


def _as_database_url(key: str, value: object) -> str | None:
    """``KEEN_SIGNUP_DATABASE_URL``, never quoted in an error (it may hold a password); its
    full parsing happens where psycopg is imported (``init_app``)."""
    url = _as_optional_str(key, value)
    if url and "://" in url and not url.startswith(("postgresql://", "postgres://")):
        raise ConfigurationError(
            f"{key} must start with postgresql:// (or be a key=value conninfo string)"
        )
    if url:
        check_url_port(key, url)
    return url


def _as_schema(key: str, value: object) -> str:
    if not isinstance(value, str) or not re.match(r"^[a-z_][a-z0-9_]{0,62}$", value):
        raise ConfigurationError(
            f"{key} must be a plain lower-case SQL identifier "
            f"(letters, digits and _, at most 63), got {safe_repr(value)}"
        )
    return value


def _as_optional_bool(key: str, value: object) -> bool | None:
    return None if value is None else _as_bool(key, value)
