"""No control or bidi characters in what Keen stores (issue 16, item 6; DESIGN §3).

``userId`` and ``name`` used to reach Keen with raw ESC sequences, OSC-52 clipboard writes,
U+202E and newlines: whoever later reads the collection in a terminal (an extraction, a CSV
export, ``jq``) or a spreadsheet got their screen recoloured, their clipboard written, or a
name shown backwards. Through a real login (Authlib against the Auth0 emulator) and
``track_claims``, into the Keen emulator, with claims, attribution and the app's
``event_properties`` (names and nested values included), and read back from what Keen stored.
"""

from __future__ import annotations

import logging
import re
import typing as t
from urllib.parse import quote

import pytest
from _flow import login
from _flow import quickstart_app
from flask import Flask

from flask_keen_signup import signup_state
from flask_keen_signup.testing import Auth0Emulator
from flask_keen_signup.testing import KeenEmulator

#: C0 controls but tab, DEL, C1, bidi embeddings/overrides and isolates.
UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
OSC52 = "\x1b]52;c;cm0gLXJmIH4=\x07"
HOSTILE_SUB = f"auth0|evil{OSC52}\x1b[2J\u202e\n"
HOSTILE_NAME = "Ada\nLovelace\r\n\x1b[31mred\x1b[0m\u202egnp.exe\u2066x\u2069\x85\x9b\x00\ttab"


def _strings(value: t.Any, path: str = "") -> t.Iterator[tuple[str, str]]:
    """Every (path, string) of a stored event, property names included."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield f"{path}.<name>", key
            yield from _strings(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}[{index}]")


def _assert_clean(event: dict[str, t.Any]) -> None:
    for path, text in _strings(event):
        assert not UNSAFE.search(text), (path, text)


@pytest.fixture
def app(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, tmp_path: t.Any
) -> t.Iterator[Flask]:
    app, signup = quickstart_app(
        keen_signup_auth0,
        keen_signup_keen,
        str(tmp_path / "k.sqlite3"),
        KEEN_MASTER_KEY=keen_signup_keen.master_key,
        KEEN_SIGNUP_CLAIMS=["name", "nickname", "address", "https://example.com/tags"],
    )
    assert signup is not None

    @signup.event_properties
    def extra(claims: t.Mapping[str, t.Any], request: t.Any) -> dict[str, t.Any]:
        return {
            "plan": f"pro{OSC52}",
            "bad\x1b[1mname\u202e": "value",
            "nested": {"deep": {"note": "line1\nline2\u2067"}, "list": ["a\x07", "b\u202d"]},
        }

    yield app
    signup_state(app).sender.shutdown(timeout=5)


def test_a_real_signup_reaches_keen_without_control_or_bidi_characters(
    app: Flask,
    keen_signup_auth0: Auth0Emulator,
    keen_signup_keen: KeenEmulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    keen_signup_auth0.add_user(
        email="evil@example.com", user_id=HOSTILE_SUB, name=HOSTILE_NAME
    )
    keen_signup_auth0.id_token_claims.update(
        {
            "nickname": f"nick{OSC52}",
            "address": {"street_address": "1 Main St\n\x1b[8mhidden", "country": "\u202eKU"},
            "https://example.com/tags": ["vip\x1b[5m", "x\u2066"],
        }
    )
    client = app.test_client()
    campaign = quote(f"launch{OSC52}\u202e", safe="")
    client.get(f"/?utm_source=news%0Aletter%1B%5B31m&utm_campaign={campaign}")
    login(client, keen_signup_auth0, "evil@example.com")
    assert signup_state(app).sender.flush(timeout=20) == 0

    [event] = keen_signup_keen.events("signups")
    _assert_clean(event)
    # Line breaks became a space, every other such character U+FFFD; tab is kept.
    assert event["userId"] == "auth0|evil\ufffd]52;c;cm0gLXJmIH4=\ufffd\ufffd[2J\ufffd "
    assert event["connection"] == "auth0"
    assert event["name"] == (
        "Ada Lovelace \ufffd[31mred\ufffd[0m\ufffdgnp.exe\ufffdx\ufffd \ufffd\ufffd\ttab"
    )
    assert event["nickname"] == "nick\ufffd]52;c;cm0gLXJmIH4=\ufffd"
    assert event["address"]["street_address"] == "1 Main St \ufffd[8mhidden"
    assert event["https://example_com/tags"] == ["vip\ufffd[5m", "x\ufffd"]
    assert event["plan"] == "pro\ufffd]52;c;cm0gLXJmIH4=\ufffd"
    assert event["bad\ufffd[1mname\ufffd"] == "value"
    assert event["nested"] == {
        "deep": {"note": "line1 line2\ufffd"},
        "list": ["a\ufffd", "b\ufffd"],
    }
    assert event["attribution"]["source"] == "news letter [31m"
    assert event["attribution"]["campaign"] == "launch ]52;c;cm0gLXJmIH4= \ufffd"
    # Said in the log by property name, never with the value.
    ours = [r.getMessage() for r in caplog.records if r.name == "flask_keen_signup.events"]
    assert any("'userId' changed: control or bidi characters replaced" in m for m in ours)
    assert any("'name' changed: control or bidi characters replaced" in m for m in ours)
    assert not any("Lovelace" in m or "cm0gLXJmIH4" in m for m in ours)


def test_forget_finds_the_event_of_a_sub_with_control_characters(
    app: Flask, keen_signup_keen: KeenEmulator
) -> None:
    """Keen holds the replaced ``userId``; ``forget``, given the raw ``sub``, deletes it."""
    state = signup_state(app)
    with app.test_request_context():
        state.tracker.track_claims({"sub": HOSTILE_SUB, "name": "Eve"}, ip=None, user_agent=None)
        state.tracker.track_claims({"sub": "auth0|other", "name": "Bob"}, ip=None, user_agent=None)
    assert state.sender.flush(timeout=20) == 0
    assert len(keen_signup_keen.events("signups")) == 2
    for event in keen_signup_keen.events("signups"):
        _assert_clean(event)

    result = app.test_cli_runner().invoke(args=["keen-signup", "forget", HOSTILE_SUB])
    assert result.exit_code == 0, result.output
    assert "their events were deleted" in result.output
    assert [e["userId"] for e in keen_signup_keen.events("signups")] == ["auth0|other"]
