"""Drive a real login through the Auth0 emulator from a test, without a browser.

Usable without pytest. The pytest plugin wraps these as ``keen_signup_login`` and
``keen_signup_deliver``.
"""

from __future__ import annotations

import typing as t
from urllib.parse import urlsplit

import requests

if t.TYPE_CHECKING:  # pragma: no cover
    from flask import Flask
    from flask.testing import FlaskClient
    from werkzeug.test import TestResponse


def login(
    client: FlaskClient,
    email: str,
    password: str = "password",
    *,
    name: str | None = None,
    login_path: str = "/login",
    headers: t.Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> TestResponse:
    """Log in (or sign up) ``email`` through the app's login route and the Auth0 emulator.

    ``client`` is the app's Flask test client; the app's login route must redirect to the
    emulator (``authorize_redirect``). The emulator's form is posted over real HTTP, exactly
    as a browser would; an unknown email signs up. Returns the app's callback response.
    """
    start = client.get(login_path)
    if start.status_code not in (301, 302, 303, 307) or not start.location:
        raise AssertionError(f"{login_path} did not redirect to the identity provider")
    form = {"email": email, "password": password}
    if name is not None:
        form["name"] = name
    answer = requests.post(start.location, data=form, allow_redirects=False, timeout=timeout)
    if answer.status_code != 302:
        raise AssertionError(f"the emulator refused the login ({answer.status_code})")
    back = urlsplit(answer.headers["Location"])
    return client.get(f"{back.path}?{back.query}", headers=dict(headers or {}))


def deliver(app: Flask, timeout: float = 30.0) -> None:
    """Send everything the app's outbox holds now; fail if anything is left."""
    from ..state import signup_state

    left = signup_state(app).sender.flush(timeout=timeout)
    if left:
        raise AssertionError(f"{left} signup(s) still queued after {timeout} s")
