"""The Auth0 emulator for a team's first hour: users from an export file, HTTPS like Auth0."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import typing as t

import pytest
import requests

from flask_keen_signup.testing import Auth0Emulator

NDJSON = (
    '{"user_id": "auth0|old", "email": "old@example.com", "created_at": '
    '"2026-03-02T09:00:00.000Z", "logins_count": 12, "app_metadata": {"signedUp": true}}\n'
    '{"user_id": "google-oauth2|7", "name": "No Mail", "created_at": "2026-11-25T08:30:00.000Z"}\n'
)
# Auth0's CSV export: a header of the requested fields, strings quoted and escaped with "'".
CSV = (
    "user_id,email,created_at,logins_count,app_metadata.signedUp\n"
    "\"'auth0|csv1\",\"'a@example.com\",2026-01-01T00:00:00.000Z,3,true\n"
    "\"'auth0|csv2\",\"'b@example.com\",2026-11-30T10:00:00.000Z,0,\n"
)


def test_add_users_from_an_ndjson_export(tmp_path: t.Any) -> None:
    path = tmp_path / "users.ndjson.gz"
    path.write_bytes(gzip.compress(NDJSON.encode()))
    with Auth0Emulator() as auth0:
        assert auth0.add_users_from_file(str(path)) == 2
        old = auth0.get_user("auth0|old")
        social = auth0.get_user("google-oauth2|7")
        assert auth0.add_users_from_file(str(path)) == 0  # already there: skipped
    assert old is not None and social is not None
    assert old["created_at"] == "2026-03-02T09:00:00.000Z"
    assert old["app_metadata"] == {"signedUp": True}
    assert old["logins_count"] == 12
    assert social["email"] == "google-oauth2.7@users.invalid"
    assert social["identities"][0]["provider"] == "google-oauth2"


def test_add_users_from_a_csv_export(tmp_path: t.Any) -> None:
    path = tmp_path / "users.csv"
    path.write_text(CSV)
    with Auth0Emulator() as auth0:
        assert auth0.add_users_from_file(str(path)) == 2
        first, second = auth0.get_user("auth0|csv1"), auth0.get_user("auth0|csv2")
    assert first is not None and second is not None
    assert first["email"] == "a@example.com"
    assert first["app_metadata"] == {"signedUp": True}
    assert first["logins_count"] == 3
    assert second["app_metadata"] == {}
    assert second["created_at"] == "2026-11-30T10:00:00.000Z"


@pytest.mark.slow
def test_cli_users_file_serves_them_through_the_management_api(tmp_path: t.Any) -> None:
    path = tmp_path / "users.ndjson"
    path.write_text(NDJSON)
    process = subprocess.Popen(
        [sys.executable, "-m", "flask_keen_signup.testing.auth0", "--port", "0",
         "--users-file", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().rsplit(" ", 1)[1].strip()
        info = json.loads(process.stdout.readline())
        token = requests.post(
            url + "/oauth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": "demo-m2m-client-id",
                "client_secret": "demo-m2m-client-secret",
                "audience": info["audience"],
            },
            timeout=10,
        ).json()["access_token"]
        user = requests.get(
            url + "/api/v2/users/auth0%7Cold",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        ).json()
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
    assert user["created_at"] == "2026-03-02T09:00:00.000Z"
    assert user["app_metadata"] == {"signedUp": True}


def test_tls_serves_https_that_only_its_ca_verifies() -> None:
    with Auth0Emulator(tls=True) as auth0:
        assert auth0.url.startswith("https://127.0.0.1:")
        assert auth0.ca_bundle is not None
        meta = requests.get(auth0.server_metadata_url, verify=auth0.ca_bundle, timeout=10)
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(auth0.server_metadata_url, timeout=10)  # the system's CAs: no
        assert meta.json()["issuer"] == auth0.url + "/"
    assert meta.json()["token_endpoint"].startswith("https://")


def test_without_tls_there_is_no_ca() -> None:
    with Auth0Emulator() as auth0:
        assert auth0.url.startswith("http://")
        assert auth0.ca_bundle is None
