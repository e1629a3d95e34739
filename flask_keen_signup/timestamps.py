"""Keen's timestamps: the form Keen wants (:func:`format_timestamp`) and a user's creation
time read from whatever an ID token or the Management API carries (:func:`parse_created_at`).

Both are public through :mod:`.events`; pure, no clock (callers pass the times).
"""

from __future__ import annotations

import datetime as dt
import math
import re

_ISO_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?"
    r"\s*([Zz]|[+-]\d{2}(?::?\d{2})?)?"
)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
#: An epoch value this large in seconds is after the year 5000: it is milliseconds.
_EPOCH_MS_THRESHOLD = 1e11


def format_timestamp(moment: dt.datetime) -> str:
    """Format ``moment`` as Keen's ISO-8601: UTC, milliseconds, ``Z``.

    ``2026-11-26T10:00:00.000Z`` is the form Keen's own docs and JavaScript client send. A
    naive datetime is taken as UTC, as Keen itself would. Sub-millisecond digits are cut,
    not rounded, so a time never moves into the next second.
    """
    # isoformat truncates to milliseconds and pads the year to four digits: Keen's form,
    # once the offset is cut. A zero or unknown offset is UTC already (a naive time is
    # taken as UTC); any other is converted first.
    if moment.utcoffset():
        moment = moment.astimezone(dt.timezone.utc)
    return moment.isoformat(timespec="milliseconds")[:23] + "Z"


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
    hours, minutes, seconds = (int(part or 0) for part in (hour, minute, second))
    return dt.datetime(int(year), int(month), int(day), hours, minutes, seconds, micro, tzinfo=tz)
