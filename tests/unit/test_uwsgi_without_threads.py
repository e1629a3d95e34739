"""uWSGI older than 2.0.27, started without ``--enable-threads``: refused at ``init_app``.

Such a uWSGI never releases the GIL from its C loop, so the background sender would run only
in the slices of a request being served, and a new user's signup would wait for the next
visitor (seen with uWSGI 2.0.26: an app thread ticks once per request, never while idle).
The ``test`` extra installs uWSGI 2.0.27 or later, where threads are always on and
``tests/system/test_wsgi_servers.py`` runs the app under it for real; the old behaviour
cannot run here, so a stand-in ``uwsgi`` module (what uWSGI injects into its processes:
``has_threads`` is 0 without ``--enable-threads``) plays it.
"""

from __future__ import annotations

import sys
import types
import typing as t

import pytest
from flask import Flask

from flask_keen_signup import KeenSignup
from flask_keen_signup.exceptions import ConfigurationError


def make_app(tmp_path: t.Any, **config: t.Any) -> Flask:
    app = Flask(__name__)
    app.config.update(
        KEEN_PROJECT_ID="demo-project",
        KEEN_WRITE_KEY="demo-write-key",
        KEEN_API_URL="http://127.0.0.1:9",
        KEEN_SIGNUP_DATABASE=str(tmp_path / "keen_signup.sqlite3"),
        **config,
    )
    return app


def fake_uwsgi(monkeypatch: pytest.MonkeyPatch, has_threads: int) -> None:
    module = types.ModuleType("uwsgi")
    module.has_threads = has_threads  # type: ignore[attr-defined]
    module.opt = {}  # type: ignore[attr-defined]
    module.worker_id = lambda: 1  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "uwsgi", module)


def test_background_delivery_under_uwsgi_without_threads_is_refused_naming_the_fix(
    tmp_path: t.Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_uwsgi(monkeypatch, has_threads=0)
    app = make_app(tmp_path)
    with pytest.raises(ConfigurationError) as info:
        KeenSignup(app)
    message = str(info.value)
    assert "enable-threads = true" in message
    assert "2.0.27" in message
    assert 'KEEN_SIGNUP_DELIVERY = "sync"' in message
    assert "keen_signup" not in app.extensions


@pytest.mark.parametrize(
    ("has_threads", "config"),
    [(1, {}), (0, {"KEEN_SIGNUP_DELIVERY": "sync"}), (0, {"KEEN_SIGNUP_ENABLED": False})],
    ids=["threads-enabled", "sync-delivery", "disabled"],
)
def test_uwsgi_with_threads_or_without_a_background_sender_starts(
    tmp_path: t.Any, monkeypatch: pytest.MonkeyPatch, has_threads: int, config: dict[str, t.Any]
) -> None:
    fake_uwsgi(monkeypatch, has_threads)
    app = make_app(tmp_path, **config)
    KeenSignup(app)
    state = app.extensions["keen_signup"]
    if state.sender is not None:
        state.sender.shutdown(timeout=2)
