"""The post-login Action shipped in docs/actions/, run by Node.js as Auth0 would run it, and
its claims honoured by the app through a real login.

Node.js is needed (Auth0 Actions are JavaScript). Missing on CI it is a failure, not a skip.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import typing as t
from pathlib import Path

import pytest
from _flow import login
from _flow import quickstart_app
from _paths import ROOT

from flask_keen_signup import signup_state
from flask_keen_signup.testing import Auth0Emulator
from flask_keen_signup.testing import KeenEmulator

ACTION = Path(ROOT) / "docs" / "actions" / "keen-signup-claims.js"
NAMESPACE = "https://example.com/"

# Loads the Action as a CommonJS module and calls it with Auth0's (event, api) shapes.
HARNESS = """
const action = require(process.argv[1]);
const user = JSON.parse(require("fs").readFileSync(0, "utf8"));
const claims = {};
const api = { idToken: { setCustomClaim: (name, value) => { claims[name] = value; } } };
action.onExecutePostLogin({ user, stats: { logins_count: 1 } }, api)
  .then(() => process.stdout.write(JSON.stringify(claims)));
"""


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI"):
            pytest.fail("Node.js is required to test the Auth0 Action (apt-get install nodejs)")
        pytest.skip("Node.js is not installed")
    return node


def run_action(user: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    """The ID-token claims the Action adds for ``user``."""
    done = subprocess.run(
        [_node(), "-e", HARNESS, str(ACTION)],
        input=json.dumps(dict(user)),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    claims: dict[str, t.Any] = json.loads(done.stdout)
    return claims


def test_the_action_adds_created_at_and_the_rules_marker() -> None:
    plain = run_action({"user_id": "auth0|a", "created_at": "2021-01-01T00:00:00.000Z"})
    assert plain == {f"{NAMESPACE}created_at": "2021-01-01T00:00:00.000Z"}
    marked = run_action(
        {
            "user_id": "auth0|b",
            "created_at": "2026-11-20T00:00:00.000Z",
            "app_metadata": {"signedUp": True},
        }
    )
    assert marked[f"{NAMESPACE}signedUp"] is True


def test_the_apps_day_one_with_the_actions_claims(
    keen_signup_auth0: Auth0Emulator, keen_signup_keen: KeenEmulator, tmp_path: t.Any
) -> None:
    auth0 = keen_signup_auth0
    action = functools.lru_cache(maxsize=None)(
        lambda user_json: run_action(json.loads(user_json))
    )

    def claim(name: str) -> t.Callable[[dict[str, t.Any]], t.Any]:
        return lambda user: action(json.dumps(user, sort_keys=True, default=str)).get(name)

    auth0.id_token_claims = {
        f"{NAMESPACE}created_at": claim(f"{NAMESPACE}created_at"),
        f"{NAMESPACE}signedUp": claim(f"{NAMESPACE}signedUp"),
    }
    auth0.add_user(email="old@x.io", created_at="2021-06-01T00:00:00.000Z")
    auth0.add_user(
        email="late@x.io",
        created_at="2026-11-19T12:00:00.000Z",  # after SINCE: the marker decides
        app_metadata={"signedUp": True},
    )
    app, _ = quickstart_app(
        auth0,
        keen_signup_keen,
        str(tmp_path / "action.sqlite3"),
        KEEN_SIGNUP_SINCE="2026-11-18T00:00:00Z",
        KEEN_SIGNUP_CREATED_AT_CLAIM=f"{NAMESPACE}created_at",
        KEEN_SIGNUP_MARKER_CLAIM=f"{NAMESPACE}signedUp",
    )
    try:
        for email in ("old@x.io", "late@x.io", "new@x.io"):
            login(app.test_client(), auth0, email, name=email.split("@")[0])
        assert signup_state(app).sender.flush(timeout=30) == 0
        assert [e["name"] for e in keen_signup_keen.events("signups")] == ["new"]
    finally:
        signup_state(app).sender.shutdown(timeout=5)
