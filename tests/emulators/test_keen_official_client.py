"""Keen's official Python client (``keen==0.7.0``) works against the emulator unchanged.

If the emulator were only "close to" Keen, the product's own client could pass against it and
still fail in production. The official SDK was written against the live API, so it working
here, errors included, is evidence the emulator speaks Keen's protocol.
"""

from __future__ import annotations

import typing as t
from datetime import datetime
from datetime import timezone

import pytest
import requests
from keen.client import KeenClient
from keen.exceptions import KeenApiError

from flask_keen_signup.testing import KeenEmulator


@pytest.fixture
def emulator() -> t.Iterator[KeenEmulator]:
    with KeenEmulator(project_id="official", write_key="wk", read_key="rk", master_key="mk") as emu:
        yield emu


def client(emulator: KeenEmulator, **overrides: t.Any) -> t.Any:
    options: dict[str, t.Any] = {
        "project_id": "official",
        "write_key": "wk",
        "read_key": "rk",
        "master_key": "mk",
        "base_url": emulator.url,
        "get_timeout": 30,
        "post_timeout": 30,
    }
    options.update(overrides)
    return KeenClient(**options)


def test_add_event(emulator: KeenEmulator) -> None:
    when = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    assert client(emulator).add_event("sign ups", {"userId": "auth0|abc"}, timestamp=when) is None
    [event] = emulator.events("sign ups")
    assert event["userId"] == "auth0|abc"
    assert event["keen"]["timestamp"] == "2024-05-01T12:00:00.000Z"
    [logged] = emulator.request_log
    assert logged.path == "/3.0/projects/official/events/sign ups"
    assert logged.headers["Authorization"] == "wk"
    assert logged.headers["Keen-Sdk"] == "python-0.7.0"


def test_add_events_returns_per_event_results(emulator: KeenEmulator) -> None:
    result = client(emulator).add_events(
        {"signups": [{"n": 1}, {"bad.name": 2}], "logins": [{"n": 3}]}
    )
    assert result["signups"][0] == {"success": True}
    assert result["signups"][1]["success"] is False
    assert result["signups"][1]["error"]["name"] == "InvalidPropertyNameError"
    assert result["logins"] == [{"success": True}]
    assert [e["n"] for e in emulator.events()] == [1, 3]


def test_count_and_extraction(emulator: KeenEmulator) -> None:
    c = client(emulator)
    c.add_events({"signups": [{"plan": "free"}, {"plan": "pro"}, {"plan": "pro"}]})
    assert c.count("signups", timeframe="this_2_hours") == 3
    pro = [{"property_name": "plan", "operator": "eq", "property_value": "pro"}]
    assert c.count("signups", timeframe="this_2_hours", filters=pro) == 2
    extracted = c.extraction("signups", timeframe="this_2_hours", filters=pro)
    assert [e["plan"] for e in extracted] == ["pro", "pro"]
    window = {"start": "2000-01-01T00:00:00Z", "end": "2100-01-01T00:00:00Z"}
    assert c.count("signups", timeframe=window) == 3


def test_wrong_write_key_raises_keen_api_error(emulator: KeenEmulator) -> None:
    with pytest.raises(KeenApiError) as raised:
        client(emulator, write_key="not-the-key").add_event("signups", {"a": 1})
    assert raised.value.api_error["error_code"] == "InvalidApiKeyError"
    assert emulator.events() == []


def test_invalid_event_raises_keen_api_error(emulator: KeenEmulator) -> None:
    with pytest.raises(KeenApiError) as raised:
        client(emulator).add_event("signups", {"broken.purchase": 1})
    assert raised.value.api_error["error_code"] == "InvalidPropertyNameError"


def test_injected_html_error_is_handled_like_keens(emulator: KeenEmulator) -> None:
    emulator.fail_next(1, 502, html=True)
    with pytest.raises(KeenApiError) as raised:
        client(emulator).add_event("signups", {"a": 1})
    assert raised.value.api_error["error_code"] == "502"
    assert "did not respond with JSON" in raised.value.api_error["message"]


def test_reset_surfaces_as_a_requests_connection_error(emulator: KeenEmulator) -> None:
    emulator.reset_next(1)
    with pytest.raises(requests.ConnectionError):
        client(emulator).add_event("signups", {"a": 1})


def test_unknown_project_raises(emulator: KeenEmulator) -> None:
    with pytest.raises(KeenApiError) as raised:
        client(emulator, project_id="riker").add_event("signups", {"a": 1})
    assert raised.value.api_error["error_code"] == "ResourceNotFoundError"


def test_schema_and_delete(emulator: KeenEmulator) -> None:
    c = client(emulator)
    c.add_events({"signups": [{"plan": "free"}, {"plan": "pro"}]})
    assert c.get_collection("signups")["properties"]["plan"] == "string"
    assert [coll["name"] for coll in c.get_all_collections()] == ["signups"]
    free = [{"property_name": "plan", "operator": "eq", "property_value": "free"}]
    assert c.delete_events("signups", filters=free) is True
    assert [e["plan"] for e in emulator.events("signups")] == ["pro"]
