"""Keen's event validation rules, applied in one recursive pass (see ``docs/keen-emulator.md``).

Validation is on the emulator's hot path (the product's benchmark pushes tens of thousands of
events a second through the batch endpoint), so the walk touches every value exactly once,
raises only on the rare invalid event, and substitutes the ``${keen.ip}`` /
``${keen.user_agent}`` placeholders in the same pass instead of walking the event twice.
"""

from __future__ import annotations

import re
import typing as t
from datetime import datetime
from datetime import timedelta
from datetime import timezone

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
#: Strings must be *shorter* than this (Keen: "less than 10,000 characters long").
MAX_STRING_LENGTH = 10_000
MAX_COLLECTION_NAME = 64
MAX_UNIQUENESS_TOKEN = 64

#: Keys a client may put in the root ``keen`` object. ``created_at`` and ``id`` are accepted
#: but overwritten by the server, as the data-modeling guide says they cannot be overridden.
CLIENT_KEEN_KEYS = frozenset(
    {"timestamp", "addons", "uniqueness_token", "location", "created_at", "id"}
)

ADDON_NAMES = frozenset(
    {
        "keen:ip_to_geo",
        "keen:ua_parser",
        "keen:url_parser",
        "keen:referrer_parser",
        "keen:date_time_parser",
    }
)


class KeenProblem(Exception):
    """A Keen API error: ``error_code`` and ``message`` become the error body.

    For a single write (or a whole request) the emulator answers ``status`` with
    ``{"message", "error_code"}``; inside a batch the same problem becomes that item's
    ``{"success": false, "error": {"name", "description"}}``.
    """

    def __init__(self, error_code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message
        self.status = status


class KeenNamespace(t.NamedTuple):
    """What the server needs from a client's ``keen`` object, already validated."""

    timestamp: datetime | None
    uniqueness_token: str | None
    addons: list[dict[str, t.Any]] | None
    location: dict[str, t.Any] | None


def check_collection_name(name: str) -> None:
    """Raise :class:`KeenProblem` unless ``name`` obeys the data-modeling guide's six rules."""
    problem = None
    if not name:
        problem = "it cannot be empty"
    elif len(name) > MAX_COLLECTION_NAME:
        problem = f"it must be {MAX_COLLECTION_NAME} characters or less"
    elif not name.isascii():
        problem = "it must contain only ASCII characters"
    elif "$" in name:
        problem = "it cannot contain the '$' character"
    elif name[0] == "_":
        problem = "it cannot start with an underscore"
    elif name[0] == "." or name[-1] == ".":
        problem = "it cannot start or end with a period"
    if problem is not None:
        raise KeenProblem(
            "InvalidCollectionNameError",
            f"Event collection name is invalid: {problem}. You specified: '{name}'.",
        )


def _bad_name(name: str, name_max: int) -> KeenProblem:
    # The first sentence is verbatim from a real Keen error response.
    rule = f"Must be <= {name_max} characters, cannot contain the '.' symbol anywhere"
    return KeenProblem(
        "InvalidPropertyNameError",
        f"Property name is invalid. {rule}, cannot start with '$' and cannot be empty. "
        f"You specified: '{name}'.",
    )


def _bad_value(name: str, detail: str) -> KeenProblem:
    return KeenProblem(
        "InvalidPropertyValueError",
        f"Property value is invalid: {detail}. Property: '{name}'.",
    )


def check_properties(
    props: dict[str, t.Any],
    name_max: int,
    strict_arrays: bool,
    placeholders: dict[str, str] | None,
    *,
    root: bool = False,
) -> None:
    """Validate every name and value under ``props``; substitute placeholders in place.

    At the root the ``keen`` namespace is skipped (it has its own rules, see
    :func:`check_keen_namespace`); anywhere deeper ``keen`` is an ordinary name.
    """
    for name, value in props.items():
        if not name or len(name) > name_max or "." in name or name[0] == "$":
            raise _bad_name(name, name_max)
        if root and name == "keen":
            continue
        kind = type(value)
        if kind is str:
            if len(value) >= MAX_STRING_LENGTH:
                raise _bad_value(name, f"strings must be less than {MAX_STRING_LENGTH} characters")
            if placeholders is not None and value and value[0] == "$" and value in placeholders:
                props[name] = placeholders[value]
        elif kind is int:
            if not INT64_MIN <= value <= INT64_MAX:
                raise _bad_value(name, "numbers must be between -2^63 and 2^63 - 1")
        elif kind is float:
            if not INT64_MIN <= value <= INT64_MAX:
                raise _bad_value(name, "numbers must be between -2^63 and 2^63 - 1")
        elif kind is dict:
            check_properties(value, name_max, strict_arrays, placeholders)
        elif kind is list:
            _check_list(name, value, name_max, strict_arrays, placeholders)


def _check_list(
    name: str,
    items: list[t.Any],
    name_max: int,
    strict_arrays: bool,
    placeholders: dict[str, str] | None,
) -> None:
    for index, value in enumerate(items):
        kind = type(value)
        if kind is str:
            if len(value) >= MAX_STRING_LENGTH:
                raise _bad_value(name, f"strings must be less than {MAX_STRING_LENGTH} characters")
            if placeholders is not None and value and value[0] == "$" and value in placeholders:
                items[index] = placeholders[value]
        elif kind is int or kind is float:
            if not INT64_MIN <= value <= INT64_MAX:
                raise _bad_value(name, "numbers must be between -2^63 and 2^63 - 1")
        elif kind is dict or kind is list:
            if strict_arrays:
                raise KeenProblem(
                    "ListsOfNonPrimitivesNotAllowedError",
                    "Arrays may only contain primitive values (strings, numbers, booleans, "
                    f"null), not objects or arrays. Property: '{name}'.",
                )
            if kind is dict:
                check_properties(value, name_max, strict_arrays, placeholders)
            else:
                _check_list(name, value, name_max, strict_arrays, placeholders)


def _bad_keen(detail: str) -> KeenProblem:
    return KeenProblem(
        "InvalidKeenNamespaceProperty", f"Invalid keen namespace property: {detail}."
    )


def check_keen_namespace(keen: object, name_max: int) -> KeenNamespace:
    """Validate the client's root ``keen`` object and pull out what the server acts on."""
    if type(keen) is not dict:
        raise KeenProblem(
            "NamespaceTypeError",
            "The 'keen' property must be an object (a JSON dictionary). "
            f"You specified a {type(keen).__name__}.",
        )
    keen = t.cast("dict[str, t.Any]", keen)
    for key in keen:
        if key not in CLIENT_KEEN_KEYS:
            raise _bad_keen(f"'keen.{key}' is not a property clients may set")
    timestamp = None
    if "timestamp" in keen:
        raw = keen["timestamp"]
        timestamp = parse_timestamp(raw) if type(raw) is str else None
        if timestamp is None:
            raise KeenProblem(
                "InvalidPropertyValueError",
                "Property value is invalid: keen.timestamp must be an ISO-8601 date-time "
                f"string. You specified: {raw!r}.",
            )
    token = keen.get("uniqueness_token")
    if token is not None and (type(token) is not str or not 0 < len(token) <= MAX_UNIQUENESS_TOKEN):
        raise _bad_keen(
            f"'keen.uniqueness_token' must be a string of 1 to {MAX_UNIQUENESS_TOKEN} characters"
        )
    location = keen.get("location")
    if "location" in keen:
        _check_location(location)
    addons = keen.get("addons")
    if addons is not None:
        _check_addons(addons, name_max)
    return KeenNamespace(timestamp, token, addons, location)


def _check_location(location: object) -> None:
    coords = location.get("coordinates") if type(location) is dict else None
    ok = (
        type(coords) is list
        and len(coords) == 2
        and all(type(c) in (int, float) for c in coords)
        and -180 <= coords[0] <= 180
        and -90 <= coords[1] <= 90
    )
    if not ok:
        raise _bad_keen("'keen.location' must be {\"coordinates\": [longitude, latitude]}")


def _check_addons(addons: object, name_max: int) -> None:
    if type(addons) is not list:
        raise _bad_keen("'keen.addons' must be a list")
    for addon in addons:
        if type(addon) is not dict:
            raise _bad_keen("each add-on must be an object with 'name', 'input' and 'output'")
        name = addon.get("name")
        if name not in ADDON_NAMES:
            raise _bad_keen(f"unknown add-on name {name!r}")
        inputs = addon.get("input")
        if type(inputs) is not dict or not all(type(v) in (str, bool) for v in inputs.values()):
            raise _bad_keen(f"the input of {name} must map parameters to property paths")
        output = addon.get("output")
        if type(output) is not str or not output:
            raise _bad_keen(f"the output of {name} must be a property path")
        for part in output.split("."):
            if not part or len(part) > name_max or part[0] == "$" or part == "keen":
                raise _bad_keen(f"the output path {output!r} of {name} is not a valid name")


_ISO = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?"
    r"(Z|z|[+-]\d{2}(?::?\d{2})?)?"
)


def parse_timestamp(value: str) -> datetime | None:
    """Parse ISO-8601 as Keen accepts it; a missing time zone means UTC. ``None`` if invalid.

    Hand-rolled rather than :meth:`datetime.fromisoformat` because the SDKs send forms that
    Python 3.10's parser rejects (``Z``, and Java's ``-0800`` without a colon).
    """
    match = _ISO.fullmatch(value)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    tz = timezone.utc
    if zone and zone not in ("Z", "z"):
        digits = zone[1:].replace(":", "")
        offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:] or 0))
        if offset >= timedelta(hours=24):
            return None
        tz = timezone(-offset if zone[0] == "-" else offset)
    try:
        moment = datetime(
            int(year),
            int(month),
            int(day),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            micro,
            tzinfo=tz,
        )
    except ValueError:
        return None
    return moment.astimezone(timezone.utc)


def format_timestamp(moment: datetime) -> str:
    """UTC ISO-8601 with milliseconds and ``Z``, e.g. ``2024-05-01T12:00:00.123Z``."""
    m = moment.astimezone(timezone.utc)
    return (
        f"{m.year:04d}-{m.month:02d}-{m.day:02d}T{m.hour:02d}:{m.minute:02d}:{m.second:02d}"
        f".{m.microsecond // 1000:03d}Z"
    )
