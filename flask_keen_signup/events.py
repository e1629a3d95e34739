"""The signup event: a pure function from ID-token claims and request facts to a Keen event.

Nothing here touches Flask, the network or the clock (``now`` is passed in), so the same
function builds the event for a live signup, a retry and a backfill, and tests need no app.

The builder runs on the login request path, so it is cheap: one pass over the allow-listed
claims, no deep copies beyond the sanitised output, regular expressions compiled once.

Whatever the input, the event it returns passes Keen's validation (the rules the Keen
emulator enforces too, docs/keen-emulator.md):
Keen rejects an invalid event *permanently* (400), and a rejected signup is a lost signup,
so the builder repairs or drops what Keen would refuse and says so in the log, naming the
property but never its value (claim values are personal data).
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import functools
import hashlib
import ipaddress
import json
import logging
import math
import re
import socket
import typing as t
import uuid
from collections.abc import Mapping
from collections.abc import Sequence

from .exceptions import InvalidClaimsError

__all__ = [
    "ADDONS",
    "EVENT_SIZE_MARGIN",
    "MAX_DEPTH",
    "MAX_EVENT_BYTES",
    "MAX_NAME_LENGTH",
    "MAX_STRING_LENGTH",
    "RESERVED_PROPERTIES",
    "anonymize_ip",
    "build_signup_event",
    "connection_of",
    "format_timestamp",
    "keen_text",
    "parse_created_at",
    "sanitize_properties",
    "uniqueness_token",
]

logger = logging.getLogger(__name__)

#: Longest property name kept. Keen's guide says "less than 256", its server message says
#: "<= 256"; we keep names that satisfy both, so a stricter Keen cannot reject the event.
MAX_NAME_LENGTH = 255
#: Longest string value kept: Keen wants strings "less than 10,000 characters". Measured in
#: UTF-16 code units as well as code points, whichever is larger, so an emoji-heavy string
#: cannot pass our check and fail a server that counts the way Java and JavaScript do.
MAX_STRING_LENGTH = 9_999
#: Keen's integer range; numbers outside it become strings (see :func:`sanitize_properties`).
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
#: Nesting deeper than this is dropped. ID-token claims are at most a few levels deep (the
#: ``address`` claim is two); the bound also stops a self-referencing ``extra`` mapping.
MAX_DEPTH = 32
#: Keen's cap on one event, in bytes: a larger event is refused (413) for good. The one
#: definition of the limit: :mod:`.keen` (and through it the sender, which dead-letters an
#: event whose encoded bytes exceed it) imports it from here. The figure is reported by
#: third parties; Keen's own documentation does not state one.
MAX_EVENT_BYTES = 900_000
#: Bytes the builder keeps free below :data:`MAX_EVENT_BYTES`: it trims an event whose
#: serialised form (``json.dumps`` with ASCII escapes, the worst case) exceeds
#: ``MAX_EVENT_BYTES - EVENT_SIZE_MARGIN`` (800,000 bytes), because the figure is not
#: Keen's own and an oversize event is lost.
EVENT_SIZE_MARGIN = 100_000
_EVENT_SIZE_BUDGET = MAX_EVENT_BYTES - EVENT_SIZE_MARGIN

#: Add-on name -> (Keen add-on name, ((input parameter, input property path), ...),
#: output property). The URL parsers read the signup's attribution (``attribution.py``):
#: ``landing_url`` is the absolute URL of the landing path, added for them only.
ADDONS: dict[str, tuple[str, tuple[tuple[str, str], ...], str]] = {
    "ip_to_geo": ("keen:ip_to_geo", (("ip", "ip"),), "ip_geo_info"),
    "ua_parser": ("keen:ua_parser", (("ua_string", "user_agent"),), "parsed_user_agent"),
    "referrer_parser": (
        "keen:referrer_parser",
        (("referrer_url", "attribution.referrer"), ("page_url", "attribution.landing_url")),
        "parsed_referrer",
    ),
    "url_parser": (
        "keen:url_parser",
        (("url", "attribution.landing_url"),),
        "parsed_landing_url",
    ),
}

#: Top-level properties the builder owns. Neither a claim nor ``extra`` can set them, even
#: when the builder leaves them out (``KEEN_SIGNUP_IP = "none"`` must really mean no IP).
RESERVED_PROPERTIES = frozenset({"userId", "ip", "connection", "user_agent", "keen"})

_ISO_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?"
    r"\s*([Zz]|[+-]\d{2}(?::?\d{2})?)?"
)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
#: An epoch value this large in seconds is after the year 5000: it is milliseconds.
_EPOCH_MS_THRESHOLD = 1e11
#: Strings shorter than this cannot reach MAX_STRING_LENGTH even in UTF-16 units or escapes.
_SHORT_STRING = (MAX_STRING_LENGTH + 1) // 2

#: What no string sent to Keen carries (DESIGN §3): C0 controls but tab, DEL, C1 controls,
#: the bidi embeddings and overrides (U+202A-U+202E) and isolates (U+2066-U+2069). People
#: read this data in terminals, where ESC sequences recolour, retitle or write the
#: clipboard (OSC 52), and in spreadsheets, where U+202E shows text backwards. CRLF is one
#: match so that it becomes one space.
_UNSAFE_TEXT_RE = re.compile("\r\n|[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
#: These become a space (a name on two lines is still a name); the others U+FFFD.
_LINE_BREAKS = frozenset({"\r\n", "\n", "\r", "\x0b", "\x0c", "\x85"})
_UNSAFE_TEXT_CHANGE = "changed: control or bidi characters replaced"

#: Marks a value the sanitiser dropped (``None`` is a valid JSON value, so it cannot).
_DROP: t.Final = object()


# --------------------------------------------------------------------------------------
# Small pure helpers
# --------------------------------------------------------------------------------------


def uniqueness_token(collection: str, user_id: str) -> str:
    """Return Keen's ``keen.uniqueness_token`` for the signup of ``user_id`` in ``collection``.

    Derived from the pair only, so a live signup, a retry, another host and a backfill all
    send the same token and Keen keeps the first copy: this is what makes delivery
    at-least-once yet the result exactly-once. 64 hex chars, Keen's maximum token length.
    """
    return hashlib.sha256(f"{collection}\n{user_id}".encode()).hexdigest()


def connection_of(user_id: str) -> str | None:
    """Return the identity-provider prefix of an Auth0 ``sub``, or ``None`` if it has none.

    ``"google-oauth2|123"`` -> ``"google-oauth2"``, ``"auth0|abc"`` -> ``"auth0"``. The Rule
    reported ``context.connection``; the ID token has no such claim, but Auth0's user ids
    start with the provider (strategy), which answers the same question ("how did they sign
    up?") without a Management API call on the login path.
    """
    head, sep, _ = user_id.partition("|")
    return head if sep and head else None


def anonymize_ip(ip: str) -> str | None:
    """Return ``ip`` with its host part zeroed, or ``None`` if it is not an IP address.

    IPv4 loses its last octet (``203.0.113.7`` -> ``203.0.113.0``), IPv6 its last 80 bits
    (``2001:db8:1:2:3:4:5:6`` -> ``2001:db8:1::``), the usual analytics convention: enough
    for a country or city, not for a household. An IPv4-mapped IPv6 address
    (``::ffff:203.0.113.7``) is the IPv4 client behind a dual-stack socket: it is anonymised
    as IPv4 and returned in IPv4 form (zeroing 80 bits of it would erase the whole address).
    A zone id (``fe80::1%eth0``) is host-local and dropped.
    """
    text: object = ip  # checked at run time: callers pass request data
    if not isinstance(text, str):
        return None
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        if mapped is None:
            packed = address.packed[:6] + bytes(10)
            return str(ipaddress.IPv6Address(packed))
        address = mapped
    return str(ipaddress.IPv4Address(address.packed[:3] + b"\0"))


def format_timestamp(moment: dt.datetime) -> str:
    """Format ``moment`` as Keen's ISO-8601: UTC, milliseconds, ``Z``.

    ``2026-11-26T10:00:00.000Z`` is the form Keen's own docs and JavaScript client send. A
    naive datetime is taken as UTC, as Keen itself would. Sub-millisecond digits are cut,
    not rounded, so a time never moves into the next second.
    """
    # isoformat truncates to milliseconds and pads the year to four digits: Keen's form,
    # once its "+00:00" is a "Z". (This runs for every signup, in the login request.)
    zone = moment.tzinfo
    if zone is None:
        return moment.isoformat(timespec="milliseconds") + "Z"
    if zone is not dt.timezone.utc:
        if moment.utcoffset() is None:
            return moment.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"
        moment = moment.astimezone(dt.timezone.utc)
    return moment.isoformat(timespec="milliseconds")[:-6] + "Z"


def parse_created_at(value: object) -> dt.datetime | None:
    """Parse a user's creation time into an aware UTC datetime, or ``None`` if it is garbage.

    Accepts what an ID-token claim or the Management API may carry: ISO-8601 strings (``Z``,
    ``+hh:mm``, ``+hhmm``, no zone = UTC, any number of fractional digits, date only),
    epoch seconds as int, float or numeric string, and :class:`~datetime.datetime` /
    :class:`~datetime.date`. Epoch values beyond 1e11 are read as milliseconds (JavaScript's
    ``Date.now()``), since as seconds they would be after the year 5000. Never raises:
    a bad ``created_at`` only means the callback time is used instead.
    """
    try:
        if isinstance(value, dt.datetime):
            moment = value
        elif isinstance(value, dt.date):
            moment = dt.datetime(value.year, value.month, value.day)
        elif isinstance(value, bool):
            return None
        elif isinstance(value, (int, float)):
            return _from_epoch(float(value))
        elif isinstance(value, str):
            text = value.strip()
            match = _ISO_RE.fullmatch(text)
            if match is None:
                return _from_epoch(float(text)) if text else None
            moment = _from_iso_match(match)
        else:
            return None
        if moment.tzinfo is None or moment.utcoffset() is None:
            return moment.replace(tzinfo=dt.timezone.utc)
        return moment.astimezone(dt.timezone.utc)
    except (ValueError, OverflowError, TypeError):
        return None


def _from_epoch(seconds: float) -> dt.datetime | None:
    if not math.isfinite(seconds):
        return None
    if abs(seconds) >= _EPOCH_MS_THRESHOLD:
        seconds /= 1000.0
    return _EPOCH + dt.timedelta(seconds=seconds)


def _from_iso_match(match: re.Match[str]) -> dt.datetime:
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    tz: dt.tzinfo | None = None
    if zone and zone in "Zz":
        tz = dt.timezone.utc
    elif zone:
        digits = zone[1:].replace(":", "")
        offset = dt.timedelta(hours=int(digits[:2]), minutes=int(digits[2:] or 0))
        tz = dt.timezone(-offset if zone[0] == "-" else offset)
    return dt.datetime(
        int(year),
        int(month),
        int(day),
        int(hour or 0),
        int(minute or 0),
        int(second or 0),
        micro,
        tzinfo=tz,
    )


# --------------------------------------------------------------------------------------
# Sanitising
# --------------------------------------------------------------------------------------


def _path(prefix: str, name: str) -> str:
    """The name of a property for the log: its path, shortened, never its value."""
    shown = name if len(name) <= 64 else f"{name[:48]}...({len(name)} chars)"
    return f"{prefix}.{shown}" if prefix else shown


def _string_too_long(text: str) -> bool:
    if len(text) < _SHORT_STRING:
        return False
    if len(text) > MAX_STRING_LENGTH:
        return True
    # Code points within the limit; characters outside the BMP count twice in UTF-16.
    return len(text) + sum(1 for ch in text if ch > "\uffff") > MAX_STRING_LENGTH


def _truncate(text: str) -> str:
    """Cut ``text`` to MAX_STRING_LENGTH UTF-16 units, never inside a surrogate pair."""
    text = text[:MAX_STRING_LENGTH]
    units = 0
    for index, ch in enumerate(text):
        units += 2 if ch > "\uffff" else 1
        if units > MAX_STRING_LENGTH:
            return text[:index]
    return text


def _clean_text(text: str) -> tuple[str, bool]:
    """Return ``text`` as valid Unicode (lone surrogates -> U+FFFD) and whether it changed.

    A JSON ID token may carry ``"\\ud800"``; Python decodes it to a lone surrogate, which
    cannot be encoded as UTF-8 and would make the outbox or the HTTP client raise.
    """
    if text.isascii():
        return text, False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        fixed = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
        # Pairs stored as two lone halves are joined back by the UTF-16 round trip; what
        # remains unpaired became U+FFFD.
        return fixed, True
    return text, False


def _replacement(match: re.Match[str]) -> str:
    return " " if match.group() in _LINE_BREAKS else "\ufffd"


def keen_text(text: str) -> str:
    """``text`` as it is sent to Keen: control and bidi characters replaced, visibly.

    Line breaks (CR, LF, CRLF, VT, FF, NEL) become a space; every other C0 control (tab
    is kept), DEL, C1 control and bidi embedding, override or isolate character becomes
    U+FFFD, as invalid Unicode already does. Replaced rather than removed: removing ESC
    from ``ESC ] 52 ; c ; …`` would leave the rest looking like data, and a reader
    should see that something was there. :func:`build_signup_event` applies it to every
    string and property name; ``forget`` applies it to the ``userId`` it looks for.
    """
    if _UNSAFE_TEXT_RE.search(text) is None:
        return text
    return _UNSAFE_TEXT_RE.sub(_replacement, text)


class _Sanitizer:
    """One sanitising pass. Holds the logger so the recursion does not pass it around."""

    __slots__ = ("log",)

    def __init__(self, log: logging.Logger) -> None:
        self.log = log

    def warn(self, path: str, what: str) -> None:
        self.log.warning("Keen event property %r %s", path, what)

    def name(self, prefix: str, key: object) -> str | None:
        """Return a Keen-valid property name for ``key``, or ``None`` to drop the property."""
        if not isinstance(key, str):
            self.warn(_path(prefix, repr(key)), "dropped: property names must be strings")
            return None
        if type(key) is not str:
            key = str.__str__(key)
        name, changed = _clean_text(key)
        if changed:
            self.warn(_path(prefix, name), "renamed: invalid Unicode replaced")
        safe = keen_text(name)
        if safe is not name:
            self.warn(_path(prefix, safe), "renamed: control or bidi characters replaced")
            name = safe
        if "." in name:
            new = name.replace(".", "_")
            self.warn(_path(prefix, name), f"renamed to {_path('', new)!r}: Keen forbids '.'")
            name = new
        if name.startswith("$"):
            new = name.lstrip("$")
            if not new:
                self.warn(_path(prefix, name), "dropped: Keen forbids a leading '$'")
                return None
            self.warn(_path(prefix, name), f"renamed to {_path('', new)!r}: leading '$'")
            name = new
        if not name.strip():
            self.warn(_path(prefix, name), "dropped: empty property name")
            return None
        if len(name) > MAX_NAME_LENGTH:
            self.warn(_path(prefix, name), f"dropped: name longer than {MAX_NAME_LENGTH}")
            return None
        return name

    def mapping(self, value: Mapping[t.Any, t.Any], prefix: str, depth: int) -> dict[str, t.Any]:
        out: dict[str, t.Any] = {}
        renamed: list[tuple[str, str, t.Any]] = []
        for key, item in value.items():
            name = self.name(prefix, key)
            if name is None:
                continue
            path = _path(prefix, name)
            clean = self.value(item, path, depth + 1)
            if clean is _DROP:
                continue
            if name is key:
                out[name] = clean
            else:
                renamed.append((name, path, clean))
        # A renamed property never overwrites one that was already valid under that name,
        # whatever the order of the input: the valid one is what the app meant.
        for name, path, clean in renamed:
            if name in out:
                self.warn(path, "dropped: its sanitised name collides with another property")
            else:
                out[name] = clean
        return out

    def value(self, value: object, path: str, depth: int) -> t.Any:
        """Return a Keen-valid version of ``value``, or ``_DROP``."""
        if value is None or value is True or value is False:
            return value
        kind = type(value)
        if kind is str:
            return self.string(t.cast(str, value), path)
        if kind is int:
            return self.integer(t.cast(int, value), path)
        if kind is float:
            return self.number(t.cast(float, value), path)
        if depth > MAX_DEPTH:
            self.warn(path, f"dropped: nested deeper than {MAX_DEPTH} levels")
            return _DROP
        if isinstance(value, Mapping):
            return self.mapping(value, path, depth)
        if isinstance(value, (list, tuple, set, frozenset)):
            return self.array(value, path, depth)
        return self.other(value, path, depth)

    def string(self, text: str, path: str) -> str:
        text, changed = _clean_text(text)
        if changed:
            self.warn(path, "changed: invalid Unicode replaced with U+FFFD")
        safe = keen_text(text)
        if safe is not text:
            self.warn(path, _UNSAFE_TEXT_CHANGE)
            text = safe
        if _string_too_long(text):
            self.warn(path, f"truncated to {MAX_STRING_LENGTH} characters")
            return _truncate(text)
        return text

    def integer(self, number: int, path: str) -> t.Any:
        if INT64_MIN <= number <= INT64_MAX:
            return number
        # Keen refuses integers outside int64. A string keeps the value (a big numeric id
        # stays readable and filterable by equality); an absurdly long one is dropped.
        try:
            text = str(number)
        except ValueError:  # beyond sys.get_int_max_str_digits()
            text = ""
        if not text or len(text) > MAX_STRING_LENGTH:
            self.warn(path, "dropped: integer far outside Keen's 64-bit range")
            return _DROP
        self.warn(path, "converted to a string: integer outside Keen's 64-bit range")
        return text

    def number(self, number: float, path: str) -> t.Any:
        if not math.isfinite(number):
            self.warn(path, "dropped: NaN and infinity are not JSON")
            return _DROP
        if INT64_MIN <= number <= INT64_MAX:
            return number
        self.warn(path, "converted to a string: number outside Keen's 64-bit range")
        return repr(number)

    def array(self, items: t.Iterable[t.Any], path: str, depth: int) -> t.Any:
        if isinstance(items, (set, frozenset)):
            try:
                items = sorted(items)
            except Exception:  # unorderable items: any order will do
                items = list(items)
        out: list[t.Any] = []
        nested = False
        for index, item in enumerate(items):
            clean = self.value(item, f"{path}[{index}]", depth + 1)
            if clean is _DROP:
                continue
            nested = nested or isinstance(clean, (dict, list))
            out.append(clean)
        if not nested:
            return out
        # Keen cannot query objects or arrays inside an array, and a strict Keen refuses
        # them (ListsOfNonPrimitivesNotAllowedError). A JSON string keeps the data visible
        # in extractions and exports and is valid everywhere.
        text = json.dumps(out, ensure_ascii=False, separators=(",", ":"))
        if _string_too_long(text):
            self.warn(path, "dropped: array of objects or arrays too long as a JSON string")
            return _DROP
        self.warn(path, "converted to a JSON string: Keen cannot store arrays of objects")
        return text

    def other(self, value: object, path: str, depth: int) -> t.Any:
        if isinstance(value, enum.Enum):
            return self.value(value.value, path, depth)
        if isinstance(value, str):
            return self.string(str.__str__(value), path)
        if isinstance(value, int):
            return self.integer(int(value), path)
        if isinstance(value, float):
            return self.number(float(value), path)
        if isinstance(value, dt.datetime):
            try:
                return format_timestamp(value)
            except (OverflowError, ValueError):
                self.warn(path, "dropped: datetime cannot be expressed in UTC")
                return _DROP
        if isinstance(value, (dt.date, dt.time)):
            return value.isoformat()
        if isinstance(value, decimal.Decimal):
            if value.is_nan():  # float() of a signalling NaN raises
                self.warn(path, "dropped: NaN is not JSON")
                return _DROP
            if value.is_finite() and value == value.to_integral_value():
                return self.integer(int(value), path)
            return self.number(float(value), path)
        if isinstance(value, uuid.UUID):
            return str(value)
        if isinstance(value, (bytes, bytearray, memoryview)):
            self.warn(path, "dropped: binary values are not sent to Keen")
        else:
            self.warn(path, f"dropped: {type(value).__name__} is not a JSON type")
        return _DROP


def sanitize_properties(
    props: Mapping[str, t.Any], *, log: logging.Logger = logger
) -> dict[str, t.Any]:
    """Return a copy of ``props`` that Keen accepts, repairing or dropping what it would refuse.

    Keen refuses a whole event for one bad property, and a refused signup is lost, so every
    property is made valid here instead (Keen's rules for property names and values):

    * names: ``.`` becomes ``_`` (Auth0's namespaced claims are URLs); leading ``$`` are
      stripped; empty, non-string and longer-than-255 names are dropped; a renamed property
      never overwrites a property already valid under the new name;
    * strings and names: no control or bidi characters (:func:`keen_text`: line breaks
      become a space, the others U+FFFD); strings cut to 9,999 characters; lone
      surrogates become U+FFFD;
    * integers and floats outside the int64 range become strings (dropped if even that
      string would be too long); NaN and infinities are dropped;
    * datetimes become ISO-8601 UTC strings, dates and times ISO strings, ``Decimal`` a
      number, ``UUID`` and ``Enum`` their value; sets and tuples become lists; bytes and
      other objects are dropped;
    * mappings are sanitised recursively; nesting deeper than :data:`MAX_DEPTH` is dropped;
    * arrays keep their primitive items; an array holding objects or arrays becomes its
      JSON text, since Keen can neither query such arrays nor (in strict mode) accept them.

    Every change is logged at WARNING on ``log`` with the property's *name* (its path, for
    nested properties) and never its value: claim values are personal data.
    """
    checked: object = props  # checked at run time: apps' callbacks return anything
    if not isinstance(checked, Mapping):
        log.warning("Keen event properties dropped: expected a mapping, got %s", type(props))
        return {}
    return _Sanitizer(log).mapping(checked, "", 0)


# --------------------------------------------------------------------------------------
# The event
# --------------------------------------------------------------------------------------


def user_id_of(claims: Mapping[str, t.Any]) -> str:
    """The user id (``sub``) of validated ID-token ``claims``, checked to be usable.

    Checked before anything is stored or built: the id is the marker's key and the event's
    ``userId``, so it must be a non-empty string, valid Unicode (SQLite and JSON need
    UTF-8) and within Keen's string limit.

    :raises InvalidClaimsError: naming the problem, never the value.
    """
    checked: object = claims  # checked at run time: callers pass what the token held
    if not isinstance(checked, Mapping):
        raise InvalidClaimsError(f"claims must be a mapping, got {type(checked).__name__}")
    sub = claims.get("sub")
    if not isinstance(sub, str):
        if sub is None:
            raise InvalidClaimsError("the claims have no 'sub': cannot identify the user")
        raise InvalidClaimsError(f"claim 'sub' must be a string, got {type(sub).__name__}")
    if not sub.strip():
        raise InvalidClaimsError("claim 'sub' is empty: cannot identify the user")
    if _clean_text(sub)[1]:
        raise InvalidClaimsError("claim 'sub' is not valid Unicode text")
    if _string_too_long(sub):
        raise InvalidClaimsError(f"claim 'sub' is longer than Keen's {MAX_STRING_LENGTH} chars")
    return sub


def build_signup_event(
    claims: Mapping[str, t.Any],
    *,
    collection: str,
    ip: str | None,
    user_agent: str | None,
    claim_names: Sequence[str] = ("name",),
    ip_mode: str = "full",
    addons: Sequence[str] = (),
    created_at: dt.datetime | None = None,
    now: dt.datetime,
    extra: Mapping[str, t.Any] | None = None,
    user_id: str | None = None,
) -> dict[str, t.Any]:
    """Build the Keen ``signup`` event for the user the validated ID-token ``claims`` describe.

    :param claims: the validated ID-token claims (``token["userinfo"]``); ``sub`` is required.
    :param collection: the Keen collection; part of the uniqueness token.
    :param ip: the client address (``request.remote_addr``), or ``None``.
    :param user_agent: the ``User-Agent`` header, or ``None``.
    :param claim_names: the allow-list (``KEEN_SIGNUP_CLAIMS``). Only these claims leave
        the app, and only when present: a missing claim is omitted, never sent as null.
        ``email`` is sent only if listed.
    :param ip_mode: ``full`` sends ``ip`` as given, ``anonymize`` zeroes its host part,
        ``none`` sends no IP at all. An invalid address is never sent.
    :param addons: ``ip_to_geo``, ``ua_parser``, ``referrer_parser``, ``url_parser``; each
        is added only when its input properties are in the event, since Keen fails an event
        whose add-on input is missing (the URL parsers read ``attribution``).
    :param created_at: the user's creation time when known; else ``now`` is the timestamp.
    :param now: the callback time, injected so the builder stays pure.
    :param extra: the app's ``@signup.event_properties`` result, sanitised, then merged over
        the claims. The builder's own fields (``userId``, ``ip``, ``connection``,
        ``user_agent``, ``keen`` and active add-on outputs) always win: a colliding claim or
        extra key is dropped with a log line.
    :param user_id: ``claims["sub"]`` already checked by :func:`user_id_of` (the tracker
        checks it before anything else); checked here when not given.
    :raises InvalidClaimsError: ``claims`` is not a mapping, or ``sub`` is missing, empty,
        not a string, or too long for Keen. The message names keys, never values.
    """
    sub = user_id_of(claims) if user_id is None else user_id

    sanitizer = _Sanitizer(logger)
    reserved: t.AbstractSet[str] = RESERVED_PROPERTIES
    active: list[tuple[str, tuple[tuple[str, str], ...], str]] = []
    for addon in addons:
        spec = ADDONS.get(addon)
        if spec is None:
            logger.warning("Keen add-on %r is unknown; skipped", addon)
        elif spec not in active:
            active.append(spec)
            reserved = reserved | {spec[2]}

    shown_id = keen_text(sub)
    if shown_id is not sub:
        sanitizer.warn("userId", _UNSAFE_TEXT_CHANGE)
    event: dict[str, t.Any] = {"userId": shown_id}

    # Allow-listed claims: only those present, sanitised as one mapping so renames and
    # collisions are handled the same way as anywhere else (unless all are valid as is).
    wanted = {name: claims[name] for name in claim_names if claims.get(name) is not None}
    if wanted and _valid_as_is(wanted, reserved):
        event.update(wanted)
    elif wanted:
        for name, value in sanitizer.mapping(wanted, "", 0).items():
            if name in reserved:
                sanitizer.warn(name, "dropped: the builder sets this property itself")
            else:
                event[name] = value

    address = _event_ip(ip, ip_mode)
    if address is not None:
        event["ip"] = address
    connection = connection_of(shown_id)
    if connection is not None:
        event["connection"] = connection
    if isinstance(user_agent, str) and user_agent:
        event["user_agent"] = sanitizer.string(user_agent, "user_agent")

    more: object = extra  # checked at run time: apps' callbacks return anything
    if more is not None:
        if not isinstance(more, Mapping):
            logger.warning(
                "event_properties returned %s, not a mapping; ignored", type(extra).__name__
            )
        elif _valid_as_is(more, reserved):
            event.update(more)
        else:
            for name, value in sanitizer.mapping(more, "", 0).items():
                if name in reserved:
                    sanitizer.warn(name, "dropped from extra properties: reserved by the builder")
                else:
                    event[name] = value

    keen: dict[str, t.Any] = {
        "timestamp": _timestamp(created_at, now),
        "uniqueness_token": uniqueness_token(collection, sub),
    }
    entries = []
    for keen_name, inputs, output in active:
        missing = [source for _, source in inputs if not _has_path(event, source)]
        if not missing:
            entries.append(
                {"name": keen_name, "input": dict(inputs), "output": output}
            )
        else:
            logger.warning(
                "Keen add-on %r skipped: the event has no %r property", keen_name, missing[0]
            )
    if entries:
        keen["addons"] = entries
    event["keen"] = keen
    _fit_size(event)
    return event


def _has_path(event: Mapping[str, t.Any], path: str) -> bool:
    """Whether the dotted ``path`` names a property of ``event`` (Keen fails an event whose
    add-on input is missing)."""
    node: t.Any = event
    for part in path.split("."):
        if not isinstance(node, Mapping) or node.get(part) is None:
            return False
        node = node[part]
    return True


def _valid_as_is(props: Mapping[t.Any, t.Any], reserved: t.AbstractSet[str]) -> bool:
    """Whether Keen accepts every property of ``props`` unchanged: short valid strings and
    booleans under plain names. The usual claims (``name``, ``nickname``, ``email``) are, and
    skip the sanitiser's per-property work on the login path; anything else goes through it.
    """
    for name, value in props.items():
        if type(name) is not str or name in reserved or not _plain_name(name):
            return False
        if type(value) is str:
            if len(value) >= _SHORT_STRING or not (value.isascii() or _is_utf8_text(value)):
                return False
            if _UNSAFE_TEXT_RE.search(value) is not None:
                return False
        elif value is not True and value is not False:
            return False
    return True


@functools.lru_cache(maxsize=1024)
def _plain_name(name: str) -> bool:
    """A property name the sanitiser would keep as is (cached: claim names come from the
    app's settings, so there are few)."""
    return (
        name.isascii()
        and _UNSAFE_TEXT_RE.search(name) is None
        and "." not in name
        and not name.startswith("$")
        and bool(name.strip())
        and len(name) <= MAX_NAME_LENGTH
    )


def _is_utf8_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _timestamp(created_at: dt.datetime | None, now: dt.datetime) -> str:
    if created_at is not None:
        try:
            return format_timestamp(created_at)
        except (OverflowError, ValueError, AttributeError):
            logger.warning("created_at cannot be expressed in UTC; the callback time is used")
    return format_timestamp(now)


def _event_ip(ip: str | None, mode: str) -> str | None:
    """The ``ip`` property for ``mode``, or ``None``. The address itself is never logged."""
    if mode == "none" or ip is None:
        return None
    if not isinstance(ip, str) or not ip:
        logger.debug("no client IP address; the event has no 'ip'")
        return None
    if mode == "anonymize":
        anonymized = anonymize_ip(ip)
        if anonymized is None:
            logger.warning("client IP address is not a valid IP address; 'ip' omitted")
        return anonymized
    if mode != "full":
        logger.warning("unknown IP mode %r; 'ip' omitted", mode)
        return None
    if not _is_ip_address(ip):
        logger.warning("client IP address is not a valid IP address; 'ip' omitted")
        return None
    return ip


def _is_ip_address(text: str) -> bool:
    # inet_pton is ~20x cheaper than ipaddress on the login path; ipaddress still has the
    # last word for what inet_pton refuses (e.g. an IPv6 zone id such as "fe80::1%eth0").
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    try:
        socket.inet_pton(family, text)
        return True
    except (OSError, ValueError):
        pass
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _size_bound(value: t.Any, limit: int) -> int:
    """An upper bound of ``len(json.dumps(value))``, cheap to compute; stops past ``limit``.

    Every character may become a 6-byte ``\\uXXXX`` escape; numbers, booleans and null
    take at most 32 bytes; each key, comma and bracket is counted generously.
    """
    if isinstance(value, str):
        return 6 * len(value) + 2
    if isinstance(value, dict):
        total = 2
        for key, item in value.items():
            total += 6 * len(key) + 4 + _size_bound(item, limit)
            if total > limit:
                return total
        return total
    if isinstance(value, list):
        total = 2
        for item in value:
            total += 1 + _size_bound(item, limit)
            if total > limit:
                return total
        return total
    return 32


def _fit_size(event: dict[str, t.Any]) -> None:
    """Drop the largest optional properties until the event fits the size budget.

    Keen refuses an oversize event outright (413), so a claim bloated past the limit would
    lose the whole signup. Only claim and extra properties can be large enough to matter;
    the builder's own fields are each bounded by the string limit.
    """
    budget = _EVENT_SIZE_BUDGET
    bound = 2
    for name, value in event.items():  # flat strings inline: this runs for every signup
        bound += 6 * len(name) + 4
        bound += 6 * len(value) + 2 if type(value) is str else _size_bound(value, budget)
    if bound <= budget:
        return  # the common case, without serialising the event on the login path
    size = len(json.dumps(event))
    if size <= _EVENT_SIZE_BUDGET:
        return
    optional = [name for name in event if name not in RESERVED_PROPERTIES]
    sizes = {name: len(json.dumps({name: event[name]})) for name in optional}
    for name in sorted(optional, key=sizes.__getitem__, reverse=True):
        del event[name]
        logger.warning("Keen event property %r dropped: the event exceeded Keen's size limit", name)
        size -= sizes[name]
        if size <= _EVENT_SIZE_BUDGET:
            return
