"""The slice of Keen's query API that tests need: timeframes and filters.

Queries select on ``keen.timestamp`` (the event's time, which clients may set), as Keen does,
not on the receipt time.
"""

from __future__ import annotations

import json
import re
import typing as t
from datetime import datetime
from datetime import timedelta
from datetime import timezone
from datetime import tzinfo

from ._keen_validation import KeenProblem
from ._keen_validation import parse_timestamp

_RELATIVE = re.compile(
    r"(this|previous)_(?:(\d+)_)?(minute|hour|day|week|month|year)s?",
)
_MISSING: t.Any = object()
OPERATORS = frozenset(
    {"eq", "ne", "lt", "lte", "gt", "gte", "exists", "in", "contains", "not_contains"}
)


class Filter(t.NamedTuple):
    path: tuple[str, ...]
    operator: str
    value: t.Any


def _bad_timeframe(raw: str, why: str) -> KeenProblem:
    return KeenProblem("TimeframeDefinitionError", f"The timeframe {raw!r} is invalid: {why}.")


def parse_timezone(raw: str | None) -> tzinfo:
    """``timezone`` as Keen takes it: an offset in seconds, or an IANA name."""
    if not raw:
        return timezone.utc
    try:
        return timezone(timedelta(seconds=int(raw)))
    except ValueError:
        pass
    try:
        from zoneinfo import ZoneInfo

        return ZoneInfo(raw)
    except Exception as exc:  # ZoneInfoNotFoundError, ValueError for odd keys
        raise KeenProblem("InvalidTimezoneError", f"Unknown timezone {raw!r}.") from exc


def parse_timeframe(raw: str | None, now: datetime, tz: tzinfo) -> tuple[float, float] | None:
    """``(start, end)`` in epoch seconds, start inclusive, end exclusive; ``None`` = all time.

    Relative: ``this_N_units`` is the current (incomplete) unit plus the N-1 before it;
    ``previous_N_units`` is the N whole units before the current one. Units are minutes,
    hours, days, weeks (starting on Sunday), months and years, floored in ``tz``.
    Absolute: the JSON object ``{"start": iso, "end": iso}``.
    """
    if not raw:
        return None
    if raw.lstrip().startswith("{"):
        try:
            window = json.loads(raw)
        except ValueError:
            raise _bad_timeframe(raw, "not valid JSON") from None
        if type(window) is not dict:
            raise _bad_timeframe(raw, "expected an object with 'start' and 'end'")
        start = window.get("start")
        end = window.get("end")
        s = parse_timestamp(start) if type(start) is str else None
        e = parse_timestamp(end) if type(end) is str else None
        if s is None or e is None:
            raise _bad_timeframe(raw, "'start' and 'end' must be ISO-8601 times")
        return s.timestamp(), e.timestamp()
    match = _RELATIVE.fullmatch(raw)
    if match is None:
        raise _bad_timeframe(raw, "expected this_N_units, previous_N_units or {start, end}")
    which, count, unit = match.groups()
    n = int(count) if count else 1
    if n < 1:
        raise _bad_timeframe(raw, "the number of units must be positive")
    floor = _floor(now.astimezone(tz), unit)
    if which == "this":
        start_at, end_at = _shift(floor, unit, -(n - 1)), _shift(floor, unit, 1)
    else:
        start_at, end_at = _shift(floor, unit, -n), floor
    return start_at.timestamp(), end_at.timestamp()


def _floor(moment: datetime, unit: str) -> datetime:
    if unit == "minute":
        return moment.replace(second=0, microsecond=0)
    moment = moment.replace(minute=0, second=0, microsecond=0)
    if unit == "hour":
        return moment
    moment = moment.replace(hour=0)
    if unit == "day":
        return moment
    if unit == "week":
        return moment - timedelta(days=(moment.weekday() + 1) % 7)
    moment = moment.replace(day=1)
    return moment if unit == "month" else moment.replace(month=1)


def _shift(moment: datetime, unit: str, n: int) -> datetime:
    if unit in ("minute", "hour", "day", "week"):
        return moment + timedelta(**{unit + "s": n})
    months = n * 12 if unit == "year" else n
    index = moment.year * 12 + moment.month - 1 + months
    return moment.replace(year=index // 12, month=index % 12 + 1)


def parse_filters(raw: str | list[t.Any] | None) -> list[Filter]:
    """Keen's ``filters``: a JSON list of ``{property_name, operator, property_value}``."""
    if not raw:
        return []
    items: t.Any = raw
    if isinstance(raw, str):
        try:
            items = json.loads(raw)
        except ValueError:
            raise KeenProblem("FilterDefinitionError", "filters must be a JSON list.") from None
    if type(items) is not list:
        raise KeenProblem("FilterDefinitionError", "filters must be a JSON list.")
    filters = []
    for item in items:
        if (
            type(item) is not dict
            or type(item.get("property_name")) is not str
            or item.get("operator") not in OPERATORS
            or "property_value" not in item
        ):
            raise KeenProblem(
                "FilterDefinitionError",
                "Each filter needs 'property_name', 'property_value' and an 'operator' among "
                f"{', '.join(sorted(OPERATORS))}. You specified: {json.dumps(item)}.",
            )
        path = tuple(item["property_name"].split("."))
        filters.append(Filter(path, item["operator"], item["property_value"]))
    return filters


def _resolve(event: dict[str, t.Any], path: tuple[str, ...]) -> t.Any:
    node: t.Any = event
    for part in path:
        if type(node) is not dict or part not in node:
            return _MISSING
        node = node[part]
    return node


def _comparable(a: t.Any, b: t.Any) -> bool:
    numbers = (int, float)
    if isinstance(a, bool) or isinstance(b, bool):
        return False
    return (isinstance(a, numbers) and isinstance(b, numbers)) or (
        isinstance(a, str) and isinstance(b, str)
    )


def matches(event: dict[str, t.Any], filters: list[Filter]) -> bool:
    """Whether ``event`` passes every filter (they are ANDed, as in Keen)."""
    for f in filters:
        value = _resolve(event, f.path)
        op = f.operator
        if op == "exists":
            ok = (value is not _MISSING and value is not None) == bool(f.value)
        elif op == "ne":
            ok = value is _MISSING or value != f.value
        elif op == "not_contains":
            ok = not _contains(value, f.value)
        elif value is _MISSING:
            ok = False
        elif op == "eq":
            ok = value == f.value
        elif op == "in":
            ok = isinstance(f.value, list) and value in f.value
        elif op == "contains":
            ok = _contains(value, f.value)
        elif not _comparable(value, f.value):
            ok = False
        elif op == "gt":
            ok = value > f.value
        elif op == "gte":
            ok = value >= f.value
        elif op == "lt":
            ok = value < f.value
        else:  # lte
            ok = value <= f.value
        if not ok:
            return False
    return True


def _contains(value: t.Any, needle: t.Any) -> bool:
    if isinstance(value, str):
        return isinstance(needle, str) and needle in value
    if isinstance(value, list):
        return needle in value
    return False


# --- count with interval and group_by ----------------------------------------------------

_INTERVAL = re.compile(
    r"(minutely|hourly|daily|weekly|monthly|yearly)|every_(\d+)_(minute|hour|day|week|month|year)s?"
)
_NAMED_INTERVALS = {
    "minutely": "minute",
    "hourly": "hour",
    "daily": "day",
    "weekly": "week",
    "monthly": "month",
    "yearly": "year",
}
#: More intervals than this in one query is refused (Keen also bounds a query's size).
MAX_INTERVALS = 10_000


def parse_interval(raw: str | None) -> tuple[int, str] | None:
    """``daily`` -> ``(1, "day")``, ``every_6_hours`` -> ``(6, "hour")``; ``None`` if unset."""
    if not raw:
        return None
    match = _INTERVAL.fullmatch(raw)
    if match is None:
        raise KeenProblem(
            "InvalidIntervalError",
            f"The interval {raw!r} is invalid: expected minutely, hourly, daily, weekly, "
            "monthly, yearly or every_N_units.",
        )
    named, count, unit = match.groups()
    if named:
        return 1, _NAMED_INTERVALS[named]
    n = int(count)
    if n < 1:
        raise KeenProblem("InvalidIntervalError", f"The interval {raw!r} must be positive.")
    return n, unit


def interval_buckets(
    frame: tuple[float, float], interval: tuple[int, str], tz: tzinfo
) -> list[tuple[datetime, datetime]]:
    """The consecutive ``[start, end)`` buckets covering ``frame`` from its start, in ``tz``
    (the last one cut at the frame's end)."""
    n, unit = interval
    start = datetime.fromtimestamp(frame[0], tz)
    stop = datetime.fromtimestamp(frame[1], tz)
    buckets = []
    while start < stop:
        end = min(_shift(start, unit, n), stop)
        buckets.append((start, end))
        if len(buckets) > MAX_INTERVALS:
            raise KeenProblem(
                "InvalidIntervalError", f"The query spans more than {MAX_INTERVALS} intervals."
            )
        start = end
    return buckets


def parse_group_by(raw: str | list[t.Any] | None) -> list[str] | None:
    """``group_by``: one property name, or a JSON list of names."""
    if not raw:
        return None
    names: t.Any = raw
    if isinstance(raw, str) and raw.lstrip().startswith("["):
        try:
            names = json.loads(raw)
        except ValueError:
            raise KeenProblem(
                "InvalidGroupByError", "group_by must be a name or a JSON list."
            ) from None
    if isinstance(names, str):
        names = [names]
    if type(names) is not list or not names or not all(type(n) is str and n for n in names):
        raise KeenProblem("InvalidGroupByError", "group_by must be a name or a JSON list.")
    return names


def group_counts(events: t.Iterable[dict[str, t.Any]], names: list[str]) -> list[dict[str, t.Any]]:
    """Keen's grouped result: one ``{name: value, ..., "result": count}`` per distinct
    combination; an event without the property is counted under ``null``. Sorted by the
    group values, so results are stable."""
    counts: dict[str, tuple[list[t.Any], int]] = {}
    for event in events:
        values = []
        for name in names:
            value = _resolve(event, tuple(name.split(".")))
            values.append(None if value is _MISSING else value)
        key = json.dumps(values, sort_keys=True, default=str)
        seen = counts.get(key)
        counts[key] = (values, (seen[1] if seen else 0) + 1)
    rows = []
    for key in sorted(counts, key=lambda k: (k.count("null"), k)):
        values, count = counts[key]
        row: dict[str, t.Any] = dict(zip(names, values, strict=True))
        row["result"] = count
        rows.append(row)
    return rows


def format_bucket_time(moment: datetime) -> str:
    """Keen's interval bounds: ISO-8601 with milliseconds, ``Z`` for UTC, else the offset."""
    text = moment.isoformat(timespec="milliseconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text
