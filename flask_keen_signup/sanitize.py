"""Keen's property rules: :func:`sanitize_properties` repairs or drops what Keen would refuse.

Keen refuses a whole event, permanently (400), for one bad property name or value, and a
refused signup is a lost signup; so every claim, ``extra`` property and attribution value
goes through here (or through the event builder's fast check that it needs nothing,
:func:`.events._valid_as_is`). Each change is logged with the property's name, never its
value. Public through :mod:`.events`; docs/events.md, "Sanitising", lists the rules.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import json
import logging
import math
import typing as t
import uuid
from collections.abc import Mapping

from ._text import keen_text
from ._text import valid_unicode
from .timestamps import format_timestamp

logger = logging.getLogger("flask_keen_signup.events")

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
#: Strings shorter than this cannot reach MAX_STRING_LENGTH even in UTF-16 units or escapes.
_SHORT_STRING = (MAX_STRING_LENGTH + 1) // 2
_UNSAFE_TEXT_CHANGE = "changed: control or bidi characters replaced"

#: Marks a value the sanitiser dropped (``None`` is a valid JSON value, so it cannot).
_DROP: t.Final = object()


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
        name, changed = valid_unicode(str.__str__(key))  # a str subclass as a plain str
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
        if isinstance(value, str):  # subclasses (a str Enum) as their plain value
            return self.string(str.__str__(value), path)
        if isinstance(value, int):
            return self.integer(int(value), path)
        if isinstance(value, float):
            return self.number(float(value), path)
        if depth > MAX_DEPTH:
            self.warn(path, f"dropped: nested deeper than {MAX_DEPTH} levels")
            return _DROP
        if isinstance(value, Mapping):
            return self.mapping(value, path, depth)
        if isinstance(value, (list, tuple, set, frozenset)):
            return self.array(value, path, depth)
        if isinstance(value, enum.Enum):
            return self.value(value.value, path, depth)
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

    def string(self, text: str, path: str) -> str:
        text, changed = valid_unicode(text)
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
