"""The signup event: a pure function from ID-token claims and request facts to a Keen event.

Nothing here touches Flask, the network or the clock (``now`` is passed in), so the same
function builds the event for a live signup, a retry and a backfill, and tests need no app.
It runs on the login request path, so it is cheap: one pass over the allow-listed claims,
and properties Keen accepts as they are skip the per-property sanitiser.

Whatever the input, the event passes Keen's validation: Keen rejects an invalid event
*permanently* (400), and a rejected signup is a lost signup, so what Keen would refuse is
repaired or dropped (:mod:`.sanitize`) and logged by property name, never value (claims are
personal data). Timestamps are :mod:`.timestamps`'; the text rule (no control or bidi
characters) is :func:`._text.keen_text`. All their public names are importable from here.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import ipaddress
import itertools
import json
import logging
import socket
import typing as t
from collections.abc import Mapping
from collections.abc import Sequence

from ._text import KEEN_UNSAFE_RE
from ._text import keen_text as keen_text
from ._text import valid_unicode
from .exceptions import InvalidClaimsError
from .sanitize import _SHORT_STRING
from .sanitize import _UNSAFE_TEXT_CHANGE
from .sanitize import MAX_DEPTH as MAX_DEPTH
from .sanitize import MAX_NAME_LENGTH as MAX_NAME_LENGTH
from .sanitize import MAX_STRING_LENGTH as MAX_STRING_LENGTH
from .sanitize import _Sanitizer
from .sanitize import _string_too_long
from .sanitize import sanitize_properties as sanitize_properties
from .timestamps import format_timestamp as format_timestamp
from .timestamps import parse_created_at as parse_created_at

logger = logging.getLogger(__name__)

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


def uniqueness_token(collection: str, user_id: str) -> str:
    """Return Keen's ``keen.uniqueness_token`` for the signup of ``user_id`` in ``collection``.

    Derived from the pair only, so a live signup, a retry, another host and a backfill all
    send the same token and Keen keeps the first copy: this is what makes delivery
    at-least-once yet the result exactly-once. 64 hex chars, Keen's maximum token length.
    """
    return hashlib.sha256(f"{collection}\n{user_id}".encode()).hexdigest()


def connection_of(user_id: str) -> str | None:
    """Return the identity-provider prefix of an Auth0 ``sub``, or ``None`` if it has none.

    ``"google-oauth2|123"`` -> ``"google-oauth2"``. The Rule reported ``context.connection``;
    the ID token has no such claim, but Auth0's user ids start with the provider (strategy),
    which answers the same question without a Management API call on the login path.
    """
    head, sep, _ = user_id.partition("|")
    return head if sep and head else None


def anonymize_ip(ip: str) -> str | None:
    """Return ``ip`` with its host part zeroed, or ``None`` if it is not an IP address.

    IPv4 loses its last octet, IPv6 its last 80 bits: enough for a country or city, not for
    a household. An IPv4-mapped IPv6 address (``::ffff:203.0.113.7``) is anonymised and
    returned as the IPv4 it is (80 zero bits would erase it); a zone id is dropped.
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


def user_id_of(claims: Mapping[str, t.Any]) -> str:
    """The user id (``sub``) of validated ID-token ``claims``, checked to be usable.

    The id is the marker's key and the event's ``userId``: a non-empty string, valid
    Unicode (SQLite and JSON need UTF-8) and within Keen's string limit.

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
    if valid_unicode(sub)[1]:
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

    Every argument and property is described in docs/events.md. In short: only the claims
    of ``claim_names`` (``KEEN_SIGNUP_CLAIMS``) that are present leave the app; ``ip_mode``
    is ``full``, ``anonymize`` or ``none`` (an invalid address is never sent); an add-on is
    added only when its input is in the event; ``created_at``, when known, is the timestamp,
    else ``now`` (injected: the builder stays pure); ``extra`` (``@signup.event_properties``)
    is sanitised and merged over the claims, and the builder's own fields always win.
    ``user_id`` is ``claims["sub"]`` already checked by :func:`user_id_of`.

    :raises InvalidClaimsError: ``claims`` is not a mapping, or ``sub`` is missing, empty,
        not a string, or too long for Keen. The message names keys, never values.
    """
    sub = user_id_of(claims) if user_id is None else user_id

    sanitizer = _Sanitizer(logger)
    active: list[tuple[str, tuple[tuple[str, str], ...], str]] = []
    for addon in addons:
        spec = ADDONS.get(addon)
        if spec is None:
            logger.warning("Keen add-on %r is unknown; skipped", addon)
        elif spec not in active:
            active.append(spec)
    reserved = RESERVED_PROPERTIES.union(s[2] for s in active) if active else RESERVED_PROPERTIES

    shown_id = keen_text(sub)
    if shown_id is not sub:
        sanitizer.warn("userId", _UNSAFE_TEXT_CHANGE)
    event: dict[str, t.Any] = {"userId": shown_id}
    # Allow-listed claims: only those present, sanitised as one mapping so renames and
    # collisions are handled the same way as anywhere else.
    wanted = {name: claims[name] for name in claim_names if claims.get(name) is not None}
    _merge(event, wanted, reserved, sanitizer, "dropped: the builder sets this property itself")

    address = _event_ip(ip, ip_mode)
    if address is not None:
        event["ip"] = address
    connection = connection_of(shown_id)
    if connection is not None:
        event["connection"] = connection
    if isinstance(user_agent, str) and user_agent:
        event["user_agent"] = sanitizer.string(user_agent, "user_agent")

    more: object = extra  # checked at run time: apps' callbacks return anything
    if isinstance(more, Mapping):
        note = "dropped from extra properties: reserved by the builder"
        _merge(event, more, reserved, sanitizer, note)
    elif more is not None:
        logger.warning("event_properties returned %s, not a mapping; ignored", type(more).__name__)

    keen: dict[str, t.Any] = {
        "timestamp": _timestamp(created_at, now),
        "uniqueness_token": uniqueness_token(collection, sub),
    }
    entries = []
    for keen_name, inputs, output in active:
        missing = [source for _, source in inputs if not _has_path(event, source)]
        if missing:
            logger.warning(
                "Keen add-on %r skipped: the event has no %r property", keen_name, missing[0]
            )
        else:
            entries.append({"name": keen_name, "input": dict(inputs), "output": output})
    if entries:
        keen["addons"] = entries
    event["keen"] = keen
    _fit_size(event)
    return event


def _merge(
    event: dict[str, t.Any],
    props: Mapping[t.Any, t.Any],
    reserved: t.AbstractSet[str],
    sanitizer: _Sanitizer,
    reserved_note: str,
) -> None:
    """Merge ``props`` into ``event``, sanitised, without the names the builder reserves."""
    if _valid_as_is(props, reserved):
        event.update(props)
        return
    for name, value in sanitizer.mapping(props, "", 0).items():
        if name in reserved:
            sanitizer.warn(name, reserved_note)
        else:
            event[name] = value


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
            if len(value) >= _SHORT_STRING or KEEN_UNSAFE_RE.search(value) is not None:
                return False
            if not value.isascii() and valid_unicode(value)[1]:
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
        and KEEN_UNSAFE_RE.search(name) is None
        and "." not in name
        and not name.startswith("$")
        and bool(name.strip())
        and len(name) <= MAX_NAME_LENGTH
    )


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
        address = anonymize_ip(ip)
    elif mode == "full":
        address = ip if _is_ip_address(ip) else None
    else:
        logger.warning("unknown IP mode %r; 'ip' omitted", mode)
        return None
    if address is None:
        logger.warning("client IP address is not a valid IP address; 'ip' omitted")
    return address


def _is_ip_address(text: str) -> bool:
    # inet_pton is ~20x cheaper than ipaddress on the login path; ipaddress still has the
    # last word for what inet_pton refuses (e.g. an IPv6 zone id such as "fe80::1%eth0").
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
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
    take at most 32 bytes; each key, comma and bracket is counted generously. Flat strings
    are counted inline: this runs for every signup.
    """
    if type(value) is str:
        return 6 * len(value) + 2
    pairs: t.Iterable[tuple[str, t.Any]]
    if isinstance(value, dict):
        pairs = value.items()
    elif isinstance(value, list):
        pairs = zip(itertools.repeat(""), value)  # counted as values under empty names
    else:
        return 32
    total = 2
    for key, item in pairs:
        total += 6 * len(key) + 4
        total += 6 * len(item) + 2 if type(item) is str else _size_bound(item, limit)
        if total > limit:
            break
    return total


def _fit_size(event: dict[str, t.Any]) -> None:
    """Drop the largest optional properties until the event fits the size budget.

    Keen refuses an oversize event outright (413), so a claim bloated past the limit would
    lose the whole signup. Only claim and extra properties can be large enough to matter;
    the builder's own fields are each bounded by the string limit. The event is serialised
    only when the cheap bound is over the budget.
    """
    if _size_bound(event, _EVENT_SIZE_BUDGET) <= _EVENT_SIZE_BUDGET:
        return
    size = len(json.dumps(event))
    optional = [name for name in event if name not in RESERVED_PROPERTIES]
    sizes = {name: len(json.dumps({name: event[name]})) for name in optional}
    for name in sorted(optional, key=sizes.__getitem__, reverse=True):
        if size <= _EVENT_SIZE_BUDGET:
            return
        del event[name]
        logger.warning("Keen event property %r dropped: the event exceeded Keen's size limit", name)
        size -= sizes[name]
