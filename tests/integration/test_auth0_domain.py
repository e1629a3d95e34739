"""``KEEN_SIGNUP_AUTH0_DOMAIN``: a bare host for the real Auth0, a URL for the emulator
(issue 18, item 3).

A bare host means https (Auth0 serves nothing over plain http). The bundled emulator speaks
plain http, so a bare ``127.0.0.1:4000`` used to become ``https://127.0.0.1:4000``: ``migrate``
retried for 6 s and failed with a TLS error. A bare value that can only be a local server
(an IP address, ``localhost``, a port other than 443) now fails at ``init_app``, and so at
the start of every CLI command, with a message that says to add ``http://``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import typing as t

import pytest
from flask import Flask

from flask_keen_signup import KeenSignup
from flask_keen_signup import signup_state
from flask_keen_signup.auth0 import management_client_for
from flask_keen_signup.exceptions import ConfigurationError
from flask_keen_signup.testing import Auth0Emulator
from flask_keen_signup.testing import KeenEmulator


def _app(tmp_path: t.Any, keen: KeenEmulator, auth0: Auth0Emulator, domain: str) -> Flask:
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(
        KEEN_PROJECT_ID=keen.project_id,
        KEEN_WRITE_KEY=keen.write_key,
        KEEN_API_URL=keen.url,
        KEEN_SIGNUP_DATABASE=str(tmp_path / "d.sqlite3"),
        KEEN_SIGNUP_AUTH0_DOMAIN=domain,
        KEEN_SIGNUP_AUTH0_CLIENT_ID=auth0.m2m_client_id,
        KEEN_SIGNUP_AUTH0_CLIENT_SECRET=auth0.m2m_client_secret,
    )
    KeenSignup(app)
    return app


@pytest.mark.parametrize(
    "bare",
    ["{emulator}", "localhost:4000", "app.localhost:4000", "10.0.0.5", "[::1]:4000",
     "tenant.example.com:8443"],
)
def test_a_bare_local_looking_domain_fails_at_init_app_saying_add_http(
    bare: str,
    keen_signup_keen: KeenEmulator,
    keen_signup_auth0: Auth0Emulator,
    tmp_path: t.Any,
) -> None:
    domain = bare.format(emulator=keen_signup_auth0.domain)  # 127.0.0.1:PORT
    with pytest.raises(ConfigurationError) as raised:
        _app(tmp_path, keen_signup_keen, keen_signup_auth0, domain)
    message = str(raised.value)
    assert "KEEN_SIGNUP_AUTH0_DOMAIN" in message and "Add http://" in message
    assert domain not in message, "the value is not quoted back"
    assert not keen_signup_auth0.request_log, "refused before any request"


@pytest.mark.parametrize(
    ("domain", "base"),
    [
        ("your-tenant.eu.auth0.com", "https://your-tenant.eu.auth0.com"),
        (" your-tenant.eu.auth0.com/ ", "https://your-tenant.eu.auth0.com"),
        ("login.example.com:443", "https://login.example.com:443"),
        ("{url}", "{url}"),
        ("{url}/", "{url}"),
        ("HTTP://{domain}", "http://{domain}"),
        ("https://127.0.0.1:8443", "https://127.0.0.1:8443"),
    ],
)
def test_a_bare_host_means_https_and_a_url_is_kept(
    domain: str,
    base: str,
    keen_signup_keen: KeenEmulator,
    keen_signup_auth0: Auth0Emulator,
    tmp_path: t.Any,
) -> None:
    names = {"url": keen_signup_auth0.url, "domain": keen_signup_auth0.domain}
    app = _app(tmp_path, keen_signup_keen, keen_signup_auth0, domain.format(**names))
    try:
        with management_client_for(signup_state(app).settings) as client:
            assert client.base_url == base.format(**names)
    finally:
        signup_state(app).sender.shutdown(timeout=5)


APP_MODULE = """
from flask import Flask
from flask_keen_signup import KeenSignup

app = Flask(__name__)
app.config.from_prefixed_env()
KeenSignup(app)
"""


def _migrate(tmp_path: t.Any, keen: KeenEmulator, auth0: Auth0Emulator, domain: str) -> t.Any:
    """``flask keen-signup migrate`` in a child process, configured from the environment
    as a deployed app is (``FLASK_KEEN_SIGNUP_AUTH0_DOMAIN=...``)."""
    (tmp_path / "env_app.py").write_text(APP_MODULE)
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path),
        "FLASK_KEEN_PROJECT_ID": keen.project_id,
        "FLASK_KEEN_WRITE_KEY": keen.write_key,
        "FLASK_KEEN_API_URL": keen.url,
        "FLASK_KEEN_SIGNUP_DATABASE": str(tmp_path / "m.sqlite3"),
        "FLASK_KEEN_SIGNUP_SHUTDOWN_TIMEOUT": "5",
        "FLASK_KEEN_SIGNUP_AUTH0_DOMAIN": domain,
        "FLASK_KEEN_SIGNUP_AUTH0_CLIENT_ID": auth0.m2m_client_id,
        "FLASK_KEEN_SIGNUP_AUTH0_CLIENT_SECRET": auth0.m2m_client_secret,
    }
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "env_app", "keen-signup", "migrate",
         "--reported-until", "2026-01-01T00:00:00Z"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_migrate_with_a_bare_emulator_domain_fails_at_once_then_works_with_http(
    keen_signup_keen: KeenEmulator, keen_signup_auth0: Auth0Emulator, tmp_path: t.Any
) -> None:
    keen_signup_auth0.add_user(email="old@example.com", created_at="2020-01-01T00:00:00Z")
    refused = _migrate(tmp_path, keen_signup_keen, keen_signup_auth0, keen_signup_auth0.domain)
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0
    assert "KEEN_SIGNUP_AUTH0_DOMAIN" in output and "Add http://" in output
    assert "TLS handshake" not in output and "retry" not in output.lower()
    assert not keen_signup_auth0.request_log, "no request was tried"

    fixed = _migrate(
        tmp_path, keen_signup_keen, keen_signup_auth0, "http://" + keen_signup_auth0.domain
    )
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert keen_signup_auth0.request_log, "the Management API was read"
