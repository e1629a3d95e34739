"""The Keen emulator over real HTTP on 127.0.0.1: keen-api.md §9, row by row.

No mocks: every test talks to a running emulator with ``requests``, the way the product and
users' test suites do.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import typing as t
from datetime import datetime
from datetime import timedelta
from datetime import timezone

import pytest
import requests

from flask_keen_signup.testing import KeenEmulator
from flask_keen_signup.testing.keen import LoggedRequest

PID = "demo-project"
WRITE = "demo-write-key"
READ = "demo-read-key"
MASTER = "demo-master-key"
TIMEOUT = 30  # generous: these tests assert behaviour, never speed
ISO_MS_Z = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")


@pytest.fixture
def keen() -> t.Iterator[KeenEmulator]:
    with KeenEmulator() as emulator:
        yield emulator


def post_event(
    keen: KeenEmulator,
    collection: str,
    event: t.Any,
    *,
    key: str | None = WRITE,
    raw: bytes | None = None,
    **kwargs: t.Any,
) -> requests.Response:
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
    if key is not None:
        headers["Authorization"] = key
    body = raw if raw is not None else json.dumps(event).encode()
    url = f"{keen.url}/3.0/projects/{PID}/events/{collection}"
    kwargs.setdefault("timeout", TIMEOUT)
    return requests.post(url, data=body, headers=headers, **kwargs)


def post_batch(
    keen: KeenEmulator, batch: t.Any, *, key: str = WRITE, raw: bytes | None = None
) -> requests.Response:
    body = raw if raw is not None else json.dumps(batch).encode()
    return requests.post(
        f"{keen.url}/3.0/projects/{PID}/events",
        data=body,
        headers={"Authorization": key, "Content-Type": "application/json"},
        timeout=TIMEOUT,
    )


def query(keen: KeenEmulator, analysis: str, key: str = READ, **params: t.Any) -> requests.Response:
    for name in ("filters", "timeframe"):
        if name in params and not isinstance(params[name], str):
            params[name] = json.dumps(params[name])
    return requests.get(
        f"{keen.url}/3.0/projects/{PID}/queries/{analysis}",
        params=params,
        headers={"Authorization": key},
        timeout=TIMEOUT,
    )


def assert_error(response: requests.Response, status: int, code: str) -> dict[str, t.Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error_code"] == code
    assert isinstance(body["message"], str) and body["message"]
    return t.cast("dict[str, t.Any]", body)


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- writes -------------------------------------------------------------------------------


def test_single_write_answers_201_created_and_stores(keen: KeenEmulator) -> None:
    response = post_event(keen, "signups", {"userId": "auth0|abc", "name": "Ada"})
    assert response.status_code == 201
    assert response.json() == {"created": True}
    [event] = keen.events("signups")
    assert event["userId"] == "auth0|abc"
    assert keen.collections() == ["signups"]


def test_batch_write_answers_per_event_results_in_input_order(keen: KeenEmulator) -> None:
    batch = {
        "signups": [{"n": 1}, {"bad.name": 2}, {"n": 3}],
        "logins": [{"n": 4}, "not an object"],
    }
    response = post_batch(keen, batch)
    assert response.status_code == 200
    body = response.json()
    assert body["signups"][0] == {"success": True}
    assert body["signups"][1]["success"] is False
    assert body["signups"][1]["error"]["name"] == "InvalidPropertyNameError"
    assert "bad.name" in body["signups"][1]["error"]["description"]
    assert body["signups"][2] == {"success": True}
    assert body["logins"][0] == {"success": True}
    assert body["logins"][1]["error"]["name"] == "InvalidEventError"
    assert [e["n"] for e in keen.events("signups")] == [1, 3]
    assert [e["n"] for e in keen.events()] == [1, 3, 4]


def test_empty_batch_is_fine(keen: KeenEmulator) -> None:
    response = post_batch(keen, {"signups": []})
    assert (response.status_code, response.json()) == (200, {"signups": []})


@pytest.mark.parametrize("name", ["sign ups", "User posts.new", "a" * 64, "signups"])
def test_valid_collection_names(keen: KeenEmulator, name: str) -> None:
    assert post_event(keen, name, {"a": 1}).status_code == 201
    assert keen.events(name)


# --- auth ---------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [WRITE, MASTER])
def test_write_accepts_write_and_master_keys_in_the_header(keen: KeenEmulator, key: str) -> None:
    assert post_event(keen, "signups", {"a": 1}, key=key).status_code == 201


def test_write_accepts_api_key_query_parameter(keen: KeenEmulator) -> None:
    response = post_event(keen, "signups", {"a": 1}, key=None, params={"api_key": WRITE})
    assert response.status_code == 201


@pytest.mark.parametrize("key", [None, "wrong-key", READ])
def test_write_without_a_write_key_is_401(keen: KeenEmulator, key: str | None) -> None:
    body = assert_error(post_event(keen, "signups", {"a": 1}, key=key), 401, "InvalidApiKeyError")
    assert WRITE not in body["message"] and READ not in body["message"]
    assert keen.events() == []


def test_batch_with_a_wrong_key_is_401(keen: KeenEmulator) -> None:
    assert_error(post_batch(keen, {"s": [{"a": 1}]}, key="nope"), 401, "InvalidApiKeyError")


@pytest.mark.parametrize("key", [READ, MASTER])
def test_queries_accept_read_and_master_keys(keen: KeenEmulator, key: str) -> None:
    response = query(keen, "count", key=key, event_collection="signups")
    assert response.json() == {"result": 0}


@pytest.mark.parametrize("key", [WRITE, "wrong"])
def test_queries_reject_other_keys(keen: KeenEmulator, key: str) -> None:
    assert_error(query(keen, "count", key=key, event_collection="s"), 401, "InvalidApiKeyError")


def test_unknown_project_is_404(keen: KeenEmulator) -> None:
    response = requests.post(
        f"{keen.url}/3.0/projects/riker/events/signups",
        json={"a": 1},
        headers={"Authorization": WRITE},
        timeout=TIMEOUT,
    )
    body = assert_error(response, 404, "ResourceNotFoundError")
    assert body["message"] == "Resource not found."


def test_unknown_path_is_404(keen: KeenEmulator) -> None:
    response = requests.get(f"{keen.url}/2.0/whatever", timeout=TIMEOUT)
    assert_error(response, 404, "ResourceNotFoundError")


# --- §9.3 request-level validation --------------------------------------------------------


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b'"text"', b"", b'{"a": NaN}'])
def test_single_body_not_a_json_object_is_invalid_event(keen: KeenEmulator, raw: bytes) -> None:
    assert_error(post_event(keen, "s", None, raw=raw), 400, "InvalidEventError")


@pytest.mark.parametrize("raw", [b"not json", b"[]", b'{"s": {"a": 1}}', b'{"s": [], "t": 1}'])
def test_malformed_batch_is_invalid_batch(keen: KeenEmulator, raw: bytes) -> None:
    assert_error(post_batch(keen, None, raw=raw), 400, "InvalidBatchError")
    assert keen.events() == []


def test_malformed_batch_can_answer_200_like_real_keen_sometimes_did() -> None:
    with KeenEmulator(batch_malformed_returns_200=True) as keen:
        response = post_batch(keen, None, raw=b'{"s": [{"a": 1}], "t": 1}')
        assert (response.status_code, response.json()) == (200, {})
        assert keen.events() == []


def _event_of_size(size: int) -> bytes:
    """A valid event whose compact JSON is exactly ``size`` bytes."""
    event: dict[str, str] = {}
    i = 0
    while len(json.dumps(event, separators=(",", ":"))) < size - 9100:
        event[f"p{i}"] = "x" * 9000
        i += 1
    base = len(json.dumps({**event, "pad": ""}, separators=(",", ":")))
    event["pad"] = "y" * (size - base)
    raw = json.dumps(event, separators=(",", ":")).encode()
    assert len(raw) == size
    return raw


def test_single_event_up_to_900000_bytes_is_accepted(keen: KeenEmulator) -> None:
    assert post_event(keen, "s", None, raw=_event_of_size(900_000)).status_code == 201


def test_single_event_over_900000_bytes_is_413(keen: KeenEmulator) -> None:
    response = post_event(keen, "s", None, raw=_event_of_size(900_001))
    assert_error(response, 413, "EventTooLargeError")
    assert keen.events() == []


def test_batch_with_an_event_over_900000_bytes_is_413(keen: KeenEmulator) -> None:
    big = json.loads(_event_of_size(900_001))
    response = post_batch(keen, {"s": [{"a": 1}, big]})
    assert_error(response, 413, "EventTooLargeError")
    assert keen.events() == []


def test_request_over_10000000_bytes_is_413(keen: KeenEmulator) -> None:
    event = json.loads(_event_of_size(800_000))
    response = post_batch(keen, {"s": [event] * 13})
    assert_error(response, 413, "RequestEntityTooLargeError")
    assert keen.events() == []


@pytest.mark.parametrize("value", [1, "x", [1], None, True])
def test_keen_not_an_object_is_namespace_type_error(keen: KeenEmulator, value: t.Any) -> None:
    assert_error(post_event(keen, "s", {"keen": value}), 400, "NamespaceTypeError")


BAD_COLLECTIONS = ["a" * 65, "sign\u00e9ups", "has$dollar", "_private", ".leading", "trailing."]


@pytest.mark.parametrize("name", BAD_COLLECTIONS)
def test_bad_collection_name_single(keen: KeenEmulator, name: str) -> None:
    assert_error(post_event(keen, name, {"a": 1}), 400, "InvalidCollectionNameError")


def test_empty_collection_name_single(keen: KeenEmulator) -> None:
    assert_error(post_event(keen, "", {"a": 1}), 400, "InvalidCollectionNameError")


@pytest.mark.parametrize("name", BAD_COLLECTIONS)
def test_bad_collection_name_in_batch_fails_each_item(keen: KeenEmulator, name: str) -> None:
    body = post_batch(keen, {name: [{"a": 1}, {"a": 2}], "ok": [{"a": 3}]}).json()
    assert [r["error"]["name"] for r in body[name]] == ["InvalidCollectionNameError"] * 2
    assert body["ok"] == [{"success": True}]
    assert keen.collections() == ["ok"]


#: (event, error_code) for every event-level rule of §9.3 / §9.4.
INVALID_EVENTS: list[tuple[dict[str, t.Any], str]] = [
    ({"broken.purchase": 1}, "InvalidPropertyNameError"),
    ({"$price": 1}, "InvalidPropertyNameError"),
    ({"": 1}, "InvalidPropertyNameError"),
    ({"n" * 257: 1}, "InvalidPropertyNameError"),
    ({"outer": {"in.ner": 1}}, "InvalidPropertyNameError"),
    ({"outer": {"deep": {"$x": 1}}}, "InvalidPropertyNameError"),
    ({"items": [{"a.b": 1}]}, "InvalidPropertyNameError"),
    ({"s": "x" * 10_000}, "InvalidPropertyValueError"),
    ({"outer": {"s": "x" * 10_000}}, "InvalidPropertyValueError"),
    ({"list": ["ok", "x" * 10_000]}, "InvalidPropertyValueError"),
    ({"n": 2**63}, "InvalidPropertyValueError"),
    ({"n": -(2**63) - 1}, "InvalidPropertyValueError"),
    ({"list": [[2**64]]}, "InvalidPropertyValueError"),
    ({"n": 1e19}, "InvalidPropertyValueError"),
    ({"keen": {"uniqueness_token": "t" * 65}}, "InvalidKeenNamespaceProperty"),
    ({"keen": {"uniqueness_token": 12}}, "InvalidKeenNamespaceProperty"),
    ({"keen": {"favourite": 1}}, "InvalidKeenNamespaceProperty"),
    ({"keen": {"timestamp": "yesterday"}}, "InvalidPropertyValueError"),
    ({"keen": {"timestamp": "2024-02-30T00:00:00Z"}}, "InvalidPropertyValueError"),
    ({"keen": {"timestamp": 1714564800}}, "InvalidPropertyValueError"),
    (
        {"keen": {"addons": [{"name": "keen:nope", "input": {}, "output": "x"}]}},
        "InvalidKeenNamespaceProperty",
    ),
    ({"keen": {"addons": {"name": "keen:url_parser"}}}, "InvalidKeenNamespaceProperty"),
    ({"keen": {"location": {"coordinates": [500, 0]}}}, "InvalidKeenNamespaceProperty"),
    ({"keen": []}, "NamespaceTypeError"),
]


@pytest.mark.parametrize(("event", "code"), INVALID_EVENTS)
def test_invalid_single_event_is_400(
    keen: KeenEmulator, event: dict[str, t.Any], code: str
) -> None:
    assert_error(post_event(keen, "s", event), 400, code)
    assert keen.events() == []


@pytest.mark.parametrize(("event", "code"), INVALID_EVENTS)
def test_invalid_event_in_batch_is_an_item_error(
    keen: KeenEmulator, event: dict[str, t.Any], code: str
) -> None:
    response = post_batch(keen, {"s": [{"before": 1}, event, {"after": 1}]})
    assert response.status_code == 200
    first, bad, last = response.json()["s"]
    assert first == last == {"success": True}
    assert bad["success"] is False
    assert bad["error"]["name"] == code and bad["error"]["description"]
    assert [list(e)[0] for e in keen.events("s")] == ["before", "after"]


def test_property_name_message_is_keens(keen: KeenEmulator) -> None:
    body = assert_error(
        post_event(keen, "s", {"broken.purchase": 1}), 400, "InvalidPropertyNameError"
    )
    assert body["message"].startswith(
        "Property name is invalid. Must be <= 256 characters, "
        "cannot contain the '.' symbol anywhere"
    )
    assert body["message"].endswith("You specified: 'broken.purchase'.")


VALID_EDGES: list[dict[str, t.Any]] = [
    {"n" * 256: 1},
    {"s": "x" * 9_999},
    {"max": 2**63 - 1, "min": -(2**63)},
    {"float": 1.5, "bool": True, "null": None},
    {"items": [{"a": 1}, {"b": [1, 2]}]},
    {"nested": {"keen": {"anything": 1}}},
    {"dollar$inside": 1},
    {"keen": {"uniqueness_token": "t" * 64}},
    {"keen": {"location": {"coordinates": [-122.42, 37.77]}}},
]


@pytest.mark.parametrize("event", VALID_EDGES)
def test_edge_values_are_valid(keen: KeenEmulator, event: dict[str, t.Any]) -> None:
    assert post_event(keen, "s", event).status_code == 201


def test_property_name_limit_can_be_strict() -> None:
    with KeenEmulator(property_name_max=255) as keen:
        assert_error(post_event(keen, "s", {"n" * 256: 1}), 400, "InvalidPropertyNameError")
        assert post_event(keen, "s", {"n" * 255: 1}).status_code == 201


def test_strict_arrays_rejects_lists_of_non_primitives() -> None:
    with KeenEmulator(strict_arrays=True) as keen:
        for value in ([{"a": 1}], [[1]]):
            response = post_event(keen, "s", {"items": value})
            assert_error(response, 400, "ListsOfNonPrimitivesNotAllowedError")
        assert post_event(keen, "s", {"items": [1, "a", None]}).status_code == 201
        addons = [{"name": "keen:url_parser", "input": {"url": "u"}, "output": "p"}]
        assert (
            post_event(keen, "s", {"u": "http://a.b/", "keen": {"addons": addons}}).status_code
            == 201
        )


# --- server-side processing ---------------------------------------------------------------


def test_server_fields(keen: KeenEmulator) -> None:
    before = datetime.now(timezone.utc) - timedelta(seconds=1)
    post_event(keen, "s", {"a": 1})
    post_event(keen, "s", {"a": 2, "keen": {"created_at": "1999-01-01T00:00:00Z", "id": "mine"}})
    after = datetime.now(timezone.utc) + timedelta(seconds=1)
    first, second = keen.events("s")
    for event in (first, second):
        meta = event["keen"]
        assert ISO_MS_Z.fullmatch(meta["created_at"])
        created = datetime.fromisoformat(meta["created_at"].replace("Z", "+00:00"))
        assert before <= created <= after
        assert meta["timestamp"] == meta["created_at"]
        assert re.fullmatch(r"[0-9a-f]{24}", meta["id"])
    assert first["keen"]["id"] != second["keen"]["id"]
    assert second["keen"]["id"] != "mine"


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("2024-05-01T12:00:00.000Z", "2024-05-01T12:00:00.000Z"),
        ("2012-01-01T00:01:00-08:00", "2012-01-01T08:01:00.000Z"),
        ("2015-05-27T22:44:50.722-0800", "2015-05-28T06:44:50.722Z"),
        ("2024-01-02T03:04:05", "2024-01-02T03:04:05.000Z"),
        ("2024-01-02T03:04:05.123456+00:00", "2024-01-02T03:04:05.123Z"),
    ],
)
def test_client_timestamp_is_normalised_to_utc(keen: KeenEmulator, given: str, stored: str) -> None:
    post_event(keen, "s", {"keen": {"timestamp": given}})
    meta = keen.events("s")[0]["keen"]
    assert meta["timestamp"] == stored
    assert meta["created_at"] != stored


def test_uniqueness_token_is_kept_in_the_stored_event(keen: KeenEmulator) -> None:
    post_event(keen, "s", {"keen": {"uniqueness_token": "tok"}})
    assert keen.events("s")[0]["keen"]["uniqueness_token"] == "tok"


def test_placeholders_are_replaced(keen: KeenEmulator) -> None:
    event = {
        "ip": "${keen.ip}",
        "ua": "${keen.user_agent}",
        "nested": {"ip": "${keen.ip}", "list": ["${keen.user_agent}"]},
        "text": "not ${keen.ip} here",
    }
    post_event(keen, "s", event, headers={"User-Agent": "TestAgent/1.0"})
    [stored] = keen.events("s")
    assert stored["ip"] == "127.0.0.1"
    assert stored["ua"] == "TestAgent/1.0"
    assert stored["nested"] == {"ip": "127.0.0.1", "list": ["TestAgent/1.0"]}
    assert stored["text"] == "not ${keen.ip} here"


def test_events_returns_copies(keen: KeenEmulator) -> None:
    post_event(keen, "s", {"a": {"b": 1}})
    keen.events("s")[0]["a"]["b"] = 2
    assert keen.events("s")[0]["a"]["b"] == 1


# --- add-ons ------------------------------------------------------------------------------


def _with_addon(
    keen: KeenEmulator, props: dict[str, t.Any], *addons: dict[str, t.Any]
) -> dict[str, t.Any]:
    response = post_event(keen, "s", {**props, "keen": {"addons": list(addons)}})
    assert response.status_code == 201, response.text
    stored = keen.events("s")[-1]
    assert "addons" not in stored["keen"]
    return stored


def test_ip_to_geo(keen: KeenEmulator) -> None:
    addon = {"name": "keen:ip_to_geo", "input": {"ip": "ip_address"}, "output": "ip_geo_info"}
    stored = _with_addon(keen, {"ip_address": "192.168.0.1"}, addon)
    geo = stored["ip_geo_info"]
    assert set(geo) == {"city", "province", "country", "continent", "postal_code", "coordinates"}
    assert all(isinstance(geo[k], str) for k in ("city", "province", "country", "continent"))
    lon, lat = geo["coordinates"]
    assert -180 <= lon <= 180 and -90 <= lat <= 90
    again = _with_addon(keen, {"ip_address": "192.168.0.1"}, addon)
    assert again["ip_geo_info"] == geo  # deterministic
    assert stored["ip_address"] == "192.168.0.1"


def test_ip_to_geo_with_placeholder_loopback_and_remove_ip(keen: KeenEmulator) -> None:
    addon = {
        "name": "keen:ip_to_geo",
        "input": {"ip": "ip", "remove_ip_property": True},
        "output": "geo",
    }
    stored = _with_addon(keen, {"ip": "${keen.ip}"}, addon)
    assert stored["geo"] == dict.fromkeys(
        ("city", "province", "country", "continent", "postal_code", "coordinates")
    )
    assert "ip" not in stored


def test_ua_parser(keen: KeenEmulator) -> None:
    ua = (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 16_5 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Version/16.5 Mobile/15E148 Safari/604.1"
    )
    addon = {"name": "keen:ua_parser", "input": {"ua_string": "ua"}, "output": "parsed"}
    parsed = _with_addon(keen, {"ua": ua}, addon)["parsed"]
    assert parsed["device"] == {"family": "iPhone", "type": "mobile phone"}
    assert parsed["browser"] == {"family": "Mobile Safari", "major": 16, "minor": 5, "patch": None}
    assert parsed["os"]["family"] == "iOS" and parsed["os"]["major"] == 16
    assert set(parsed["os"]) == {"family", "major", "minor", "patch", "patch_minor"}


def test_ua_parser_desktop_chrome_via_placeholder(keen: KeenEmulator) -> None:
    ua = (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/120.0.6099.71 Safari/537.36"
    )
    addon = {"name": "keen:ua_parser", "input": {"ua_string": "ua"}, "output": "tech.parsed"}
    response = post_event(
        keen,
        "s",
        {"ua": "${keen.user_agent}", "keen": {"addons": [addon]}},
        headers={"User-Agent": ua},
    )
    assert response.status_code == 201
    parsed = keen.events("s")[0]["tech"]["parsed"]
    assert parsed["browser"]["family"] == "Chrome" and parsed["browser"]["major"] == 120
    assert parsed["os"]["family"] == "Windows" and parsed["os"]["major"] == 10
    assert parsed["device"]["type"] == "desktop"


def test_url_parser(keen: KeenEmulator) -> None:
    addon = {"name": "keen:url_parser", "input": {"url": "page_url"}, "output": "parsed_page_url"}
    url = "http://my-website.com/cool/link?source=twitter&foo=bar#title"
    parsed = _with_addon(keen, {"page_url": url}, addon)["parsed_page_url"]
    assert parsed == {
        "protocol": "http",
        "domain": "my-website.com",
        "path": "/cool/link",
        "anchor": "title",
        "query_string": {"source": "twitter", "foo": "bar"},
    }


@pytest.mark.parametrize(
    ("referrer", "page", "expected"),
    [
        (
            "https://www.google.com/search?q=keen+analytics",
            "http://mysite.com/landing",
            {"medium": "SEARCH", "source": "Google", "term": "keen analytics"},
        ),
        (
            "https://search-engine.com?search=analytics",
            "http://mysite.com/landing-page",
            {"medium": "SEARCH", "source": "Search Engine", "term": "analytics"},
        ),
        (
            "http://mysite.com/pricing",
            "http://mysite.com/landing",
            {"medium": "INTERNAL", "source": None, "term": None},
        ),
        (
            "https://mail.google.com/mail/u/0/",
            "http://mysite.com/landing",
            {"medium": "EMAIL", "source": "Gmail", "term": None},
        ),
        (
            "https://blog.example.org/post",
            "http://mysite.com/landing",
            {"medium": "UNKNOWN", "source": None, "term": None},
        ),
        ("not a url", "http://mysite.com/", {"medium": None, "source": None, "term": None}),
    ],
)
def test_referrer_parser(
    keen: KeenEmulator, referrer: str, page: str, expected: dict[str, t.Any]
) -> None:
    addon = {
        "name": "keen:referrer_parser",
        "input": {"referrer_url": "referrer.url", "page_url": "page.url"},
        "output": "referrer.info",
    }
    stored = _with_addon(keen, {"referrer": {"url": referrer}, "page": {"url": page}}, addon)
    assert stored["referrer"]["info"] == expected
    assert stored["referrer"]["url"] == referrer


def test_date_time_parser_reads_keen_timestamp(keen: KeenEmulator) -> None:
    addon = {
        "name": "keen:date_time_parser",
        "input": {"date_time": "keen.timestamp"},
        "output": "when",
    }
    response = post_event(
        keen, "s", {"keen": {"timestamp": "2012-12-14T20:24:01.123Z", "addons": [addon]}}
    )
    assert response.status_code == 201
    when = keen.events("s")[0]["when"]
    assert when["year"] == 2012 and when["month"] == 12 and when["day_of_month"] == 14
    assert (when["hour"], when["minute"], when["second"], when["millisecond"]) == (20, 24, 1, 123)
    assert when["day_of_week_string"] == "Friday" and when["day_of_week"] == 5


def test_addons_run_in_order(keen: KeenEmulator) -> None:
    first = {"name": "keen:url_parser", "input": {"url": "u"}, "output": "parsed"}
    second = {"name": "keen:ip_to_geo", "input": {"ip": "parsed.domain"}, "output": "geo"}
    stored = _with_addon(keen, {"u": "http://10.1.2.3/x"}, first, second)
    assert stored["parsed"]["domain"] == "10.1.2.3"
    assert isinstance(stored["geo"]["city"], str)


# --- uniqueness tokens --------------------------------------------------------------------


def test_duplicate_token_single_is_accepted_but_not_stored(keen: KeenEmulator) -> None:
    event = {"userId": "u1", "keen": {"uniqueness_token": "a" * 64}}
    first = post_event(keen, "signups", event)
    second = post_event(keen, "signups", {**event, "userId": "u1-again"})
    assert first.status_code == second.status_code == 201
    assert second.json() == {"created": True}
    assert [e["userId"] for e in keen.events("signups")] == ["u1"]
    assert keen.duplicates_rejected == 1


def test_tokens_are_scoped_per_collection(keen: KeenEmulator) -> None:
    event = {"keen": {"uniqueness_token": "same"}}
    post_event(keen, "a", event)
    post_event(keen, "b", event)
    assert len(keen.events()) == 2 and keen.duplicates_rejected == 0


def test_duplicate_token_in_batch(keen: KeenEmulator) -> None:
    post_event(keen, "signups", {"n": 0, "keen": {"uniqueness_token": "t0"}})
    batch = {
        "signups": [
            {"n": 1, "keen": {"uniqueness_token": "t0"}},  # seen before
            {"n": 2, "keen": {"uniqueness_token": "t1"}},
            {"n": 3, "keen": {"uniqueness_token": "t1"}},  # seen earlier in this batch
            {"n": 4},
        ]
    }
    body = post_batch(keen, batch).json()
    assert body["signups"] == [{"success": True}] * 4
    assert [e["n"] for e in keen.events("signups")] == [0, 2, 4]
    assert keen.duplicates_rejected == 2


def test_duplicate_token_can_answer_an_error() -> None:
    with KeenEmulator(duplicate_token_response="error") as keen:
        event = {"keen": {"uniqueness_token": "x"}}
        assert post_event(keen, "s", event).status_code == 201
        assert_error(post_event(keen, "s", event), 409, "DuplicateEventError")
        body = post_batch(keen, {"s": [event, {"a": 1}]}).json()
        assert body["s"][0]["error"]["name"] == "DuplicateEventError"
        assert body["s"][1] == {"success": True}
        assert len(keen.events("s")) == 2
        assert keen.duplicates_rejected == 2


def test_tokens_expire_after_31_days(keen: KeenEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    event = {"keen": {"uniqueness_token": "old"}}
    post_event(keen, "s", event)
    now = keen._app.clock()
    monkeypatch.setattr(keen._app, "clock", lambda: now + 30 * 86400)
    post_event(keen, "s", event)
    assert len(keen.events("s")) == 1
    monkeypatch.setattr(keen._app, "clock", lambda: now + 31 * 86400 + 1)
    post_event(keen, "s", event)
    assert len(keen.events("s")) == 2


def test_concurrent_duplicates_store_exactly_one(keen: KeenEmulator) -> None:
    barrier = threading.Barrier(8)
    statuses: list[int] = []

    def send() -> None:
        barrier.wait(timeout=TIMEOUT)
        statuses.append(post_event(keen, "s", {"keen": {"uniqueness_token": "race"}}).status_code)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=TIMEOUT)
    assert statuses == [201] * 8
    assert len(keen.events("s")) == 1
    assert keen.duplicates_rejected == 7


# --- queries ------------------------------------------------------------------------------


@pytest.fixture
def timeline(keen: KeenEmulator) -> datetime:
    """Four signups: now, 2 days ago, 10 days ago, and one in another collection."""
    now = datetime.now(timezone.utc)
    events = [
        {"user": {"id": "u1", "plan": "free"}, "age": 20, "keen": {"timestamp": iso(now)}},
        {
            "user": {"id": "u2", "plan": "pro"},
            "age": 40,
            "keen": {"timestamp": iso(now - timedelta(days=2))},
        },
        {"user": {"id": "u3"}, "age": 60, "keen": {"timestamp": iso(now - timedelta(days=10))}},
    ]
    assert (
        post_batch(keen, {"signups": events, "logins": [{"user": {"id": "u1"}}]}).status_code == 200
    )
    return now


@pytest.mark.parametrize(
    ("timeframe", "expected"),
    [
        (None, 3),
        ("this_5_minutes", 1),
        ("this_2_hours", 1),
        ("this_1_days", 1),
        ("this_day", 1),
        ("this_3_days", 2),
        ("this_30_days", 3),
        ("previous_7_days", 1),
        ("previous_30_days", 2),
        ("this_1_years", None),  # depends on the date: checked against extraction below
    ],
)
def test_count_with_timeframes(
    keen: KeenEmulator, timeline: datetime, timeframe: str | None, expected: int | None
) -> None:
    params = {"event_collection": "signups"}
    if timeframe:
        params["timeframe"] = timeframe
    count = query(keen, "count", **params).json()["result"]
    extracted = query(keen, "extraction", **params).json()["result"]
    assert count == len(extracted)
    if expected is not None:
        assert count == expected


def test_absolute_timeframe(keen: KeenEmulator, timeline: datetime) -> None:
    window = {"start": iso(timeline - timedelta(days=11)), "end": iso(timeline - timedelta(days=9))}
    result = query(keen, "extraction", event_collection="signups", timeframe=window).json()[
        "result"
    ]
    assert [e["user"]["id"] for e in result] == ["u3"]


@pytest.mark.parametrize(
    ("filters", "ids"),
    [
        ([{"property_name": "user.id", "operator": "eq", "property_value": "u2"}], ["u2"]),
        ([{"property_name": "user.id", "operator": "ne", "property_value": "u2"}], ["u1", "u3"]),
        (
            [{"property_name": "user.plan", "operator": "exists", "property_value": True}],
            ["u1", "u2"],
        ),
        ([{"property_name": "user.plan", "operator": "exists", "property_value": False}], ["u3"]),
        ([{"property_name": "age", "operator": "gt", "property_value": 20}], ["u2", "u3"]),
        ([{"property_name": "age", "operator": "lt", "property_value": 60}], ["u1", "u2"]),
        (
            [
                {"property_name": "age", "operator": "gt", "property_value": 20},
                {"property_name": "age", "operator": "lt", "property_value": 60},
            ],
            ["u2"],
        ),
        (
            [{"property_name": "user.id", "operator": "in", "property_value": ["u1", "u3"]}],
            ["u1", "u3"],
        ),
    ],
)
def test_filters(
    keen: KeenEmulator, timeline: datetime, filters: list[dict[str, t.Any]], ids: list[str]
) -> None:
    params = {"event_collection": "signups", "timeframe": "this_30_days", "filters": filters}
    result = query(keen, "extraction", **params).json()["result"]
    assert [e["user"]["id"] for e in result] == ids
    assert query(keen, "count", **params).json() == {"result": len(ids)}


def test_filter_on_keen_timestamp(keen: KeenEmulator, timeline: datetime) -> None:
    cutoff = iso(timeline - timedelta(days=5))
    filters = [{"property_name": "keen.timestamp", "operator": "gt", "property_value": cutoff}]
    assert query(keen, "count", event_collection="signups", filters=filters).json()["result"] == 2


def test_extraction_returns_stored_events(keen: KeenEmulator) -> None:
    post_event(keen, "signups", {"userId": "auth0|abc"})
    [event] = query(keen, "extraction", event_collection="signups").json()["result"]
    assert event == keen.events("signups")[0]
    assert query(keen, "extraction", event_collection="nothing").json() == {"result": []}


def test_query_without_event_collection_is_400(keen: KeenEmulator) -> None:
    assert_error(query(keen, "count"), 400, "MissingRequiredPropertyError")


@pytest.mark.parametrize("timeframe", ["last_week", "this_0_days", '{"start": "x"}', "{bad"])
def test_bad_timeframe_is_400(keen: KeenEmulator, timeframe: str) -> None:
    response = query(keen, "count", event_collection="s", timeframe=timeframe)
    assert_error(response, 400, "TimeframeDefinitionError")


@pytest.mark.parametrize("filters", ["nope", '[{"property_name": "a"}]', '{"a": 1}'])
def test_bad_filters_are_400(keen: KeenEmulator, filters: str) -> None:
    assert_error(
        query(keen, "count", event_collection="s", filters=filters), 400, "FilterDefinitionError"
    )


def test_visibility_delay_hides_new_events_from_queries_only() -> None:
    with KeenEmulator(visibility_delay=3600) as keen:
        post_event(keen, "s", {"a": 1})
        assert query(keen, "count", event_collection="s").json() == {"result": 0}
        assert len(keen.events("s")) == 1


def test_schema_and_delete(keen: KeenEmulator) -> None:
    post_batch(keen, {"s": [{"a": 1, "b": {"c": "x"}}, {"a": 2}], "t": [{"z": True}]})
    headers = {"Authorization": READ}
    schema = requests.get(
        f"{keen.url}/3.0/projects/{PID}/events/s", headers=headers, timeout=TIMEOUT
    )
    assert schema.json()["properties"]["a"] == "num"
    assert schema.json()["properties"]["b.c"] == "string"
    listing = requests.get(
        f"{keen.url}/3.0/projects/{PID}/events", headers=headers, timeout=TIMEOUT
    )
    assert [c["name"] for c in listing.json()] == ["s", "t"]
    url = f"{keen.url}/3.0/projects/{PID}/events/s"
    filters = json.dumps([{"property_name": "a", "operator": "eq", "property_value": 1}])
    denied = requests.delete(
        url, params={"filters": filters}, headers={"Authorization": WRITE}, timeout=TIMEOUT
    )
    assert_error(denied, 401, "AdminOnlyEndpointError")
    deleted = requests.delete(
        url, params={"filters": filters}, headers={"Authorization": MASTER}, timeout=TIMEOUT
    )
    assert deleted.status_code == 204
    assert [e["a"] for e in keen.events("s")] == [2]


def test_image_beacon(keen: KeenEmulator) -> None:
    import base64

    data = base64.b64encode(json.dumps({"user": "a?b>c~~~"}).encode()).decode()
    response = requests.get(
        f"{keen.url}/3.0/projects/{PID}/events/opens",
        params={"api_key": WRITE, "data": data},
        timeout=TIMEOUT,
    )
    assert response.status_code == 200 and response.headers["Content-Type"] == "image/gif"
    assert keen.events("opens")[0]["user"] == "a?b>c~~~"


# --- fault injection ----------------------------------------------------------------------


def test_fail_next_with_retry_after(keen: KeenEmulator) -> None:
    keen.fail_next(2, 503, retry_after=5)
    for _ in range(2):
        response = post_event(keen, "s", {"a": 1})
        assert_error(response, 503, "InternalServerError")
        assert response.headers["Retry-After"] == "5"
    assert post_event(keen, "s", {"a": 2}).status_code == 201
    assert [e["a"] for e in keen.events("s")] == [2]
    assert [r.status for r in keen.request_log] == [503, 503, 201]


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (429, "RateLimitExceededError"),
        (500, "InternalServerError"),
        (502, "InternalServerError"),
        (504, "InternalServerError"),
        (408, "RequestTimeoutError"),
    ],
)
def test_fail_next_error_codes(keen: KeenEmulator, status: int, code: str) -> None:
    keen.fail_next(1, status)
    assert_error(post_batch(keen, {"s": [{"a": 1}]}), status, code)
    assert keen.events() == []


def test_fail_next_http_date_retry_after_and_custom_code(keen: KeenEmulator) -> None:
    date = "Wed, 21 Oct 2026 07:28:00 GMT"
    keen.fail_next(1, 400, retry_after=date, error_code="InvalidPropertyNameError", message="no")
    response = post_event(keen, "s", {"a": 1})
    assert response.json() == {"message": "no", "error_code": "InvalidPropertyNameError"}
    assert response.headers["Retry-After"] == date


def test_fail_next_html(keen: KeenEmulator) -> None:
    keen.fail_next(1, 404, html=True)
    response = post_batch(keen, {"s": [{"a": 1}]})
    assert response.status_code == 404
    assert response.headers["Content-Type"].startswith("text/html")
    assert "<center>nginx</center>" in response.text
    with pytest.raises(ValueError):
        response.json()


def test_fail_events_fails_only_the_picked_events_of_a_batch(keen: KeenEmulator) -> None:
    keen.fail_events(lambda event: event.get("n") in (2, 4), count=2)
    batch = {"s": [{"n": n} for n in range(6)]}
    results = post_batch(keen, batch).json()["s"]
    assert [r["success"] for r in results] == [True, True, False, True, False, True]
    assert results[2]["error"]["name"] == "InternalServerError"
    assert "injected" in results[2]["error"]["description"]
    assert sorted(e["n"] for e in keen.events("s")) == [0, 1, 3, 5]
    # count=2 is used up: the same events now go through.
    assert all(r["success"] for r in post_batch(keen, {"s": [{"n": 2}, {"n": 4}]}).json()["s"])
    assert sorted(e["n"] for e in keen.events("s")) == [0, 1, 2, 3, 4, 5]


def test_fail_events_on_a_single_write_and_until_cleared(keen: KeenEmulator) -> None:
    keen.fail_events(lambda event: event["n"] == 1, error_code="InvalidPropertyValueError")
    for _ in range(3):
        assert_error(post_event(keen, "s", {"n": 1}), 400, "InvalidPropertyValueError")
    keen.fail_events(lambda event: event["n"] == 2)
    assert_error(post_event(keen, "s", {"n": 2}), 500, "InternalServerError")
    keen.clear_faults()
    assert post_event(keen, "s", {"n": 1}).status_code == 201
    assert [e["n"] for e in keen.events("s")] == [1]


def test_fail_events_over_http(keen: KeenEmulator) -> None:
    faults = f"{keen.url}/_emulator/faults"
    rule = {"where": {"userId": "auth0|b"}, "error_code": "InternalServerError", "count": 1}
    assert requests.post(faults, json={"fail_events": rule}, timeout=TIMEOUT).status_code == 200
    batch = {"s": [{"userId": "auth0|a"}, {"userId": "auth0|b"}]}
    assert [r["success"] for r in post_batch(keen, batch).json()["s"]] == [True, False]
    bad = requests.post(faults, json={"fail_events": {"userId": "x"}}, timeout=TIMEOUT)
    assert bad.status_code == 400 and "where" in bad.json()["message"]


def test_faults_apply_to_queries_too(keen: KeenEmulator) -> None:
    keen.fail_next(1, 502)
    assert query(keen, "count", event_collection="s").status_code == 502


def test_faults_are_consumed_in_order(keen: KeenEmulator) -> None:
    keen.fail_next(1, 500)
    keen.reset_next(1)
    keen.fail_next(1, 429)
    assert post_event(keen, "s", {}).status_code == 500
    with pytest.raises(requests.ConnectionError):
        post_event(keen, "s", {})
    assert post_event(keen, "s", {}).status_code == 429
    assert post_event(keen, "s", {}).status_code == 201


def test_latency_makes_a_short_timeout_client_time_out(keen: KeenEmulator) -> None:
    keen.add_latency(30, count=1)
    with pytest.raises(requests.exceptions.ReadTimeout):
        post_event(keen, "s", {"a": 1}, timeout=(TIMEOUT, 0.3))
    # The one delayed request is used up: the next is answered although the first still sleeps.
    assert post_event(keen, "s", {"a": 2}).status_code == 201
    keen.clear_faults()  # wakes the sleeping request, which then completes


def test_latency_without_count_lasts_until_cleared(keen: KeenEmulator) -> None:
    keen.add_latency(30)
    for _ in range(2):
        with pytest.raises(requests.exceptions.ReadTimeout):
            post_event(keen, "s", {}, timeout=(TIMEOUT, 0.3))
    keen.clear_faults()
    assert post_event(keen, "s", {}).status_code == 201


def test_reset_next_raises_connection_error(keen: KeenEmulator) -> None:
    keen.reset_next(2)
    for _ in range(2):
        with pytest.raises(requests.ConnectionError):
            post_event(keen, "s", {"a": 1})
    assert post_event(keen, "s", {"a": 2}).status_code == 201
    assert [r.status for r in keen.request_log] == [0, 0, 201]
    assert [e["a"] for e in keen.events("s")] == [2]


def test_set_down_resets_everything_until_up(keen: KeenEmulator) -> None:
    keen.set_down(True)
    for _ in range(3):
        with pytest.raises(requests.ConnectionError):
            post_batch(keen, {"s": [{"a": 1}]})
    # The control API still answers while Keen is "down".
    assert requests.get(f"{keen.url}/_emulator/events", timeout=TIMEOUT).status_code == 200
    keen.set_down(False)
    assert post_batch(keen, {"s": [{"a": 1}]}).status_code == 200
    assert len(keen.events()) == 1


def test_reset_clears_everything(keen: KeenEmulator) -> None:
    post_event(keen, "s", {"keen": {"uniqueness_token": "x"}})
    post_event(keen, "s", {"keen": {"uniqueness_token": "x"}})
    keen.fail_next(5, 500)
    keen.reset()
    assert keen.events() == [] and keen.request_log == [] and keen.duplicates_rejected == 0
    assert post_event(keen, "s", {"keen": {"uniqueness_token": "x"}}).status_code == 201
    assert len(keen.events()) == 1


# --- request log ----------------------------------------------------------------------------


def test_request_log(keen: KeenEmulator) -> None:
    post_event(keen, "signups", {"a": 1}, headers={"Keen-Sdk": "python-0.7.0"})
    [entry] = keen.request_log
    assert isinstance(entry, LoggedRequest)
    assert (entry.method, entry.path, entry.status) == (
        "POST",
        f"/3.0/projects/{PID}/events/signups",
        201,
    )
    assert entry.headers["Authorization"] == WRITE
    assert entry.headers["Keen-Sdk"] == "python-0.7.0"
    assert entry.json() == {"a": 1}
    assert entry.query == {}
    post_event(keen, "signups", {"a": 1}, key=None, params={"api_key": "k"})
    assert keen.request_log[-1].query == {"api_key": "k"}
    assert keen.request_log[-1].status == 401
    keen.clear_log()
    assert keen.request_log == []


def test_request_log_is_bounded() -> None:
    with KeenEmulator(request_log_limit=3) as keen:
        for i in range(5):
            post_event(keen, "s", {"i": i})
        assert [r.json()["i"] for r in keen.request_log] == [2, 3, 4]


def test_keys_never_reach_the_logs(keen: KeenEmulator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    post_event(keen, "s", {"a": 1}, key=None, params={"api_key": WRITE})
    post_event(keen, "s", {"a": 1}, key="wrong-secret")
    # The client's own urllib3 debug log shows its URL; the emulator (werkzeug) logs nothing.
    server_side = [r.getMessage() for r in caplog.records if not r.name.startswith("urllib3")]
    assert not any(WRITE in m or "wrong-secret" in m for m in server_side), server_side
    assert WRITE not in repr(keen)


# --- HTTP control endpoints -----------------------------------------------------------------


def control(keen: KeenEmulator, method: str, path: str, body: t.Any = None) -> requests.Response:
    return requests.request(method, f"{keen.url}/_emulator/{path}", json=body, timeout=TIMEOUT)


def test_control_faults_over_http(keen: KeenEmulator) -> None:
    assert control(
        keen, "POST", "faults", {"status": 503, "count": 2, "retry_after": 5}
    ).json() == {"ok": True}
    first = post_event(keen, "s", {})
    assert first.status_code == 503 and first.headers["Retry-After"] == "5"
    assert post_event(keen, "s", {}).status_code == 503
    assert post_event(keen, "s", {}).status_code == 201
    control(keen, "POST", "faults", {"status": 502, "html": True})
    assert "nginx" in post_event(keen, "s", {}).text
    control(keen, "POST", "faults", {"reset": 1})
    with pytest.raises(requests.ConnectionError):
        post_event(keen, "s", {})
    control(keen, "POST", "faults", {"latency": 30, "count": 1})
    with pytest.raises(requests.exceptions.ReadTimeout):
        post_event(keen, "s", {}, timeout=(TIMEOUT, 0.3))
    control(keen, "POST", "faults", {"down": True})
    with pytest.raises(requests.ConnectionError):
        post_event(keen, "s", {})
    assert control(keen, "DELETE", "faults").status_code == 200
    assert post_event(keen, "s", {}).status_code == 201


@pytest.mark.parametrize("body", [{}, {"nothing": 1}, {"status": "abc"}, [1]])
def test_control_faults_rejects_nonsense(keen: KeenEmulator, body: t.Any) -> None:
    assert control(keen, "POST", "faults", body).status_code == 400


def test_control_events_requests_and_reset(keen: KeenEmulator) -> None:
    post_batch(keen, {"a": [{"n": 1}], "b": [{"n": 2, "keen": {"uniqueness_token": "t"}}]})
    post_event(keen, "b", {"keen": {"uniqueness_token": "t"}})
    everything = control(keen, "GET", "events").json()
    assert [e["n"] for e in everything["events"]] == [1, 2]
    assert everything["collections"] == ["a", "b"]
    assert everything["duplicates_rejected"] == 1
    only_b = requests.get(
        f"{keen.url}/_emulator/events", params={"collection": "b"}, timeout=TIMEOUT
    )
    assert [e["n"] for e in only_b.json()["events"]] == [2]
    logged = control(keen, "GET", "requests").json()["requests"]
    assert [r["status"] for r in logged] == [200, 201]
    assert json.loads(logged[0]["body"])["a"] == [{"n": 1}]
    assert control(keen, "POST", "reset").status_code == 200
    assert keen.events() == [] and keen.request_log == []
    assert control(keen, "GET", "status").json()["project_id"] == PID


# --- persistence and lifecycle -----------------------------------------------------------


def test_sqlite_database_survives_restart(tmp_path: t.Any) -> None:
    database = str(tmp_path / "keen.sqlite3")
    with KeenEmulator(database=database) as first:
        post_event(first, "signups", {"u": 1, "keen": {"uniqueness_token": "u1"}})
        post_batch(first, {"logins": [{"u": 1}]})
    assert first.events("signups")[0]["u"] == 1  # still readable after stop
    with KeenEmulator(database=database) as second:
        assert [e["u"] for e in second.events("signups")] == [1]
        assert second.collections() == ["signups", "logins"]
        post_event(second, "signups", {"u": 1, "keen": {"uniqueness_token": "u1"}})
        assert len(second.events("signups")) == 1 and second.duplicates_rejected == 1
        assert query(second, "count", event_collection="signups").json() == {"result": 1}
        second.reset()
        assert second.events() == []


def test_sqlite_store_is_isolated_per_project(tmp_path: t.Any) -> None:
    database = str(tmp_path / "keen.sqlite3")
    with KeenEmulator(database=database) as one:
        post_event(one, "s", {"a": 1})
    with KeenEmulator(project_id="other", database=database) as other:
        assert other.events() == []


def test_stop_and_start_again(keen: KeenEmulator) -> None:
    post_event(keen, "s", {"a": 1})
    keen.stop()
    with pytest.raises(RuntimeError):
        _ = keen.url
    keen.start()
    assert post_event(keen, "s", {"a": 2}).status_code == 201
    assert len(keen.events("s")) == 2


def test_pytest_plugin_fixture(keen_signup_keen: KeenEmulator) -> None:
    assert post_event(keen_signup_keen, "s", {"a": 1}).status_code == 201
    assert keen_signup_keen.url.startswith("http://127.0.0.1:")
    assert not keen_signup_keen.url.endswith("/")


def test_bad_duplicate_token_response_is_refused() -> None:
    with pytest.raises(ValueError):
        KeenEmulator(duplicate_token_response="ignore")


def test_command_line(tmp_path: t.Any) -> None:
    database = tmp_path / "cli.sqlite3"
    argv = [
        sys.executable, "-m", "flask_keen_signup.testing.keen",
        "--host", "127.0.0.1", "--port", "0", "--project-id", "cli-project",
        "--write-key", "cli-write-secret", "--read-key", "cli-read-secret",
        "--database", str(database),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url), url
        response = requests.post(
            f"{url}/3.0/projects/cli-project/events/signups",
            json={"userId": "auth0|cli"},
            headers={"Authorization": "cli-write-secret"},
            timeout=TIMEOUT,
        )
        assert response.status_code == 201
        count = requests.get(
            f"{url}/3.0/projects/cli-project/queries/count",
            params={"event_collection": "signups"},
            headers={"Authorization": "cli-read-secret"},
            timeout=TIMEOUT,
        )
        assert count.json() == {"result": 1}
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    assert "secret" not in out + err
    with KeenEmulator(project_id="cli-project", database=str(database)) as again:
        assert again.events("signups")[0]["userId"] == "auth0|cli"
