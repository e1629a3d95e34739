"""Keen's data-enrichment add-ons (``keen.addons``), as the emulator runs them.

``keen:url_parser`` and ``keen:referrer_parser`` are real parsers. ``keen:ip_to_geo``,
``keen:ua_parser`` and ``keen:date_time_parser`` are *deterministic stand-ins* that produce
Keen's documented output shapes: there is no geo database offline, and code under test only
needs to see the right structure land at the right ``output`` path.
"""

from __future__ import annotations

import ipaddress
import re
import typing as t
import zlib
from urllib.parse import parse_qsl
from urllib.parse import urlsplit

from ._keen_validation import parse_timestamp


def get_path(event: dict[str, t.Any], path: str) -> t.Any:
    """The value at dotted ``path`` (``"referrer.url"``), or ``None`` when absent."""
    node: t.Any = event
    for part in path.split("."):
        if type(node) is not dict:
            return None
        node = node.get(part)
    return node


def set_path(event: dict[str, t.Any], path: str, value: t.Any) -> None:
    """Write ``value`` at dotted ``path``, creating (or replacing non-object) parents."""
    parts = path.split(".")
    node = event
    for part in parts[:-1]:
        child = node.get(part)
        if type(child) is not dict:
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def run_addons(event: dict[str, t.Any], addons: list[dict[str, t.Any]]) -> None:
    """Run ``addons`` in order (a later one can read an earlier one's output)."""
    for addon in addons:
        name = addon["name"]
        inputs = addon["input"]
        if name == "keen:ip_to_geo":
            result: dict[str, t.Any] = ip_to_geo(get_path(event, inputs.get("ip", "")))
            if inputs.get("remove_ip_property") is True and "ip" in inputs:
                _delete_path(event, inputs["ip"])
        elif name == "keen:ua_parser":
            result = ua_parser(get_path(event, inputs.get("ua_string", "")))
        elif name == "keen:url_parser":
            result = url_parser(get_path(event, inputs.get("url", "")))
        elif name == "keen:referrer_parser":
            result = referrer_parser(
                get_path(event, inputs.get("referrer_url", "")),
                get_path(event, inputs.get("page_url", "")),
            )
        else:  # keen:date_time_parser (names are validated before we get here)
            result = date_time_parser(get_path(event, inputs.get("date_time", "")))
        set_path(event, addon["output"], result)


def _delete_path(event: dict[str, t.Any], path: str) -> None:
    *parents, last = path.split(".")
    node: t.Any = event
    for part in parents:
        node = node.get(part) if type(node) is dict else None
    if type(node) is dict:
        node.pop(last, None)


# --- keen:ip_to_geo -----------------------------------------------------------------------

_CITIES: tuple[dict[str, t.Any], ...] = (
    {
        "city": "San Francisco",
        "province": "California",
        "country": "United States",
        "continent": "North America",
        "postal_code": "94122",
        "coordinates": [-122.42005, 37.77479],
    },
    {
        "city": "Portland",
        "province": "Oregon",
        "country": "United States",
        "continent": "North America",
        "postal_code": "97205",
        "coordinates": [-122.6819, 45.5202],
    },
    {
        "city": "London",
        "province": "England",
        "country": "United Kingdom",
        "continent": "Europe",
        "postal_code": "EC1A",
        "coordinates": [-0.1278, 51.5074],
    },
    {
        "city": "Berlin",
        "province": "Berlin",
        "country": "Germany",
        "continent": "Europe",
        "postal_code": "10115",
        "coordinates": [13.405, 52.52],
    },
    {
        "city": "Tokyo",
        "province": "Tokyo",
        "country": "Japan",
        "continent": "Asia",
        "postal_code": "100-0001",
        "coordinates": [139.6917, 35.6895],
    },
    {
        "city": "Sydney",
        "province": "New South Wales",
        "country": "Australia",
        "continent": "Oceania",
        "postal_code": "2000",
        "coordinates": [151.2093, -33.8688],
    },
)
_NO_GEO = dict.fromkeys(("city", "province", "country", "continent", "postal_code", "coordinates"))


def ip_to_geo(ip: object) -> dict[str, t.Any]:
    """Documented shape; a stable fake city per address, ``null`` values when there is none.

    Loopback, unspecified and unparseable addresses get all-``null`` values (there is no
    location for them); any other address maps to one of a few cities by a stable hash, so
    the same IP always gets the same answer.
    """
    try:
        address = ipaddress.ip_address(ip) if type(ip) is str else None
    except ValueError:
        address = None
    if address is None or address.is_loopback or address.is_unspecified:
        return dict(_NO_GEO)
    city = _CITIES[zlib.crc32(address.packed) % len(_CITIES)]
    return {**city, "coordinates": list(city["coordinates"])}


# --- keen:ua_parser -----------------------------------------------------------------------

_BROWSERS: tuple[tuple[str, str], ...] = (
    ("Edge", r"Edg(?:e|A|iOS)?/(\d+)(?:\.(\d+))?(?:\.(\d+))?"),
    ("Opera", r"OPR/(\d+)(?:\.(\d+))?(?:\.(\d+))?"),
    ("Chrome Mobile iOS", r"CriOS/(\d+)(?:\.(\d+))?(?:\.(\d+))?"),
    ("Firefox", r"Firefox/(\d+)(?:\.(\d+))?(?:\.(\d+))?"),
    ("Chrome Mobile", r"Chrome/(\d+)(?:\.(\d+))?(?:\.(\d+))?.*Mobile"),
    ("Chrome", r"Chrome/(\d+)(?:\.(\d+))?(?:\.(\d+))?"),
    ("Mobile Safari", r"Version/(\d+)(?:\.(\d+))?(?:\.(\d+))?.*Mobile.*Safari"),
    ("Safari", r"Version/(\d+)(?:\.(\d+))?(?:\.(\d+))?.*Safari"),
    ("IE", r"(?:MSIE |Trident/.*rv:)(\d+)(?:\.(\d+))?()"),
    ("curl", r"curl/(\d+)(?:\.(\d+))?(?:\.(\d+))?"),
    ("Python Requests", r"python-requests/(\d+)(?:\.(\d+))?(?:\.(\d+))?"),
)
_BROWSER_RES = tuple((family, re.compile(rx)) for family, rx in _BROWSERS)
_OSES: tuple[tuple[str, str], ...] = (
    ("iOS", r"(?:iPhone|CPU) OS (\d+)(?:_(\d+))?(?:_(\d+))?"),
    ("Android", r"Android (\d+)(?:\.(\d+))?(?:\.(\d+))?"),
    ("Mac OS X", r"Mac OS X (\d+)(?:[_.](\d+))?(?:[_.](\d+))?"),
    ("Windows", r"Windows NT (\d+)(?:\.(\d+))?()"),
    ("Chrome OS", r"CrOS \S+ (\d+)(?:\.(\d+))?(?:\.(\d+))?"),
    ("Linux", r"Linux()()()"),
)
_OS_RES = tuple((family, re.compile(rx)) for family, rx in _OSES)
_WINDOWS = {(10, 0): (10, None), (6, 3): (8, 1), (6, 2): (8, None), (6, 1): (7, None)}
_BOT = re.compile(r"bot|crawl|spider|slurp", re.IGNORECASE)


def _version(match: re.Match[str]) -> list[int | None]:
    return [int(g) if g else None for g in match.groups()[:3]]


def ua_parser(ua: object) -> dict[str, t.Any]:
    """``{"device": {"family", "type"}, "browser": {...}, "os": {...}}`` from a small rule set.

    Recognises the common browsers, operating systems and device classes; anything else is
    ``"Other"``. Version parts are integers or ``null``, as in Keen's documented example.
    """
    text = ua if type(ua) is str else ""
    browser: dict[str, t.Any] = {"family": "Other", "major": None, "minor": None, "patch": None}
    for family, regex in _BROWSER_RES:
        match = regex.search(text)
        if match:
            major, minor, patch = _version(match)
            browser = {"family": family, "major": major, "minor": minor, "patch": patch}
            break
    os: dict[str, t.Any] = {
        "family": "Other",
        "major": None,
        "minor": None,
        "patch": None,
        "patch_minor": None,
    }
    for family, regex in _OS_RES:
        match = regex.search(text)
        if match:
            major, minor, patch = _version(match)
            if family == "Windows" and major is not None:
                major, minor = _WINDOWS.get((major, minor or 0), (major, minor))
            os = {"family": family, "major": major, "minor": minor, "patch": patch}
            os["patch_minor"] = None
            break
    device: dict[str, t.Any]
    if "iPad" in text:
        device = {"family": "iPad", "type": "tablet"}
    elif "iPhone" in text:
        device = {"family": "iPhone", "type": "mobile phone"}
    elif "Android" in text:
        mobile = "Mobile" in text
        device = {
            "family": "Generic Smartphone" if mobile else "Generic Tablet",
            "type": "mobile phone" if mobile else "tablet",
        }
    elif _BOT.search(text):
        device = {"family": "Spider", "type": "spider"}
    elif os["family"] in ("Windows", "Mac OS X", "Linux", "Chrome OS"):
        device = {"family": "Other", "type": "desktop"}
    else:
        device = {"family": "Other", "type": None}
    return {"device": device, "browser": browser, "os": os}


# --- keen:url_parser and keen:referrer_parser ---------------------------------------------

_NO_URL = dict.fromkeys(("protocol", "domain", "path", "anchor", "query_string"))


def url_parser(url: object) -> dict[str, t.Any]:
    """``{"protocol", "domain", "path", "anchor", "query_string": {k: v}}`` (a real parse)."""
    if type(url) is not str or "://" not in url:
        return dict(_NO_URL)
    try:
        parts = urlsplit(url)
        domain = parts.hostname
    except ValueError:
        return dict(_NO_URL)
    return {
        "protocol": parts.scheme,
        "domain": domain,
        "path": parts.path,
        "anchor": parts.fragment,
        "query_string": dict(parse_qsl(parts.query, keep_blank_values=True)),
    }


_SEARCH_ENGINES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("google.", "Google", ("q",)),
    ("bing.com", "Bing", ("q",)),
    ("search.yahoo.", "Yahoo!", ("p",)),
    ("duckduckgo.com", "DuckDuckGo", ("q",)),
    ("baidu.com", "Baidu", ("wd", "word")),
    ("yandex.", "Yandex", ("text",)),
    ("ecosia.org", "Ecosia", ("q",)),
)
_EMAIL_HOSTS: tuple[tuple[str, str], ...] = (
    ("mail.google.com", "Gmail"),
    ("outlook.live.com", "Outlook.com"),
    ("mail.yahoo.", "Yahoo! Mail"),
)
_TERM_PARAMS = ("q", "query", "search", "p", "text", "term")


def referrer_parser(referrer_url: object, page_url: object) -> dict[str, t.Any]:
    """``{"medium": UNKNOWN|INTERNAL|SEARCH|EMAIL, "source", "term"}`` (a real classifier).

    As Keen documents, a malformed ``page_url`` or ``referrer_url`` gives blank (``null``)
    output values.
    """
    blank: dict[str, t.Any] = {"medium": None, "source": None, "term": None}
    if type(referrer_url) is not str or type(page_url) is not str:
        return blank
    try:
        ref, page = urlsplit(referrer_url), urlsplit(page_url)
        ref_host, page_host = (ref.hostname or ""), (page.hostname or "")
    except ValueError:
        return blank
    if not ref.scheme or not ref_host or not page.scheme or not page_host:
        return blank
    if ref_host == page_host:
        return {"medium": "INTERNAL", "source": None, "term": None}
    params = dict(parse_qsl(ref.query, keep_blank_values=True))
    for marker, source in _EMAIL_HOSTS:
        if ref_host.startswith(marker):
            return {"medium": "EMAIL", "source": source, "term": None}
    for marker, source, keys in _SEARCH_ENGINES:
        if marker in ref_host:
            return {"medium": "SEARCH", "source": source, "term": _first(params, keys)}
    if "search" in ref_host or any(key in params for key in ("q", "query", "search")):
        source = ref_host.removeprefix("www.").split(".")[0].replace("-", " ").title()
        return {"medium": "SEARCH", "source": source, "term": _first(params, _TERM_PARAMS)}
    return {"medium": "UNKNOWN", "source": None, "term": None}


def _first(params: dict[str, str], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        if params.get(key):
            return params[key]
    return None


# --- keen:date_time_parser ----------------------------------------------------------------

_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_DATE_FIELDS = (
    "millisecond",
    "second",
    "minute",
    "hour",
    "day_of_week",
    "day_of_week_string",
    "day_of_month",
    "week",
    "month",
    "year",
    "timezone_offset",
)


def date_time_parser(value: object) -> dict[str, t.Any]:
    """A UTC breakdown of an ISO-8601 time; ``null`` values when it does not parse.

    Keen's exact field list is not in the archived docs; these are the fields of its
    date-time add-on as best remembered (``day_of_week`` is ISO: Monday = 1).
    """
    moment = parse_timestamp(value) if type(value) is str else None
    if moment is None:
        return dict.fromkeys(_DATE_FIELDS)
    return {
        "millisecond": moment.microsecond // 1000,
        "second": moment.second,
        "minute": moment.minute,
        "hour": moment.hour,
        "day_of_week": moment.isoweekday(),
        "day_of_week_string": _DAYS[moment.weekday()],
        "day_of_month": moment.day,
        "week": moment.isocalendar()[1],
        "month": moment.month,
        "year": moment.year,
        "timezone_offset": 0,
    }
