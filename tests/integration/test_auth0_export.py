"""Whole tenants through the Management API: export jobs, the paging limit, batch search,
429s and client-side pacing, with ``ManagementClient`` against the Auth0 emulator over real
HTTP on 127.0.0.1.

Waits are the client's injected ``sleep`` (recorded, not slept) except in the pacing test,
which checks the emulator's own request timestamps: a lower bound that load cannot break.
"""

from __future__ import annotations

import gzip
import json
import threading
import typing as t
from datetime import datetime
from datetime import timezone

import pytest
import requests

from flask_keen_signup.auth0 import Auth0ExportError
from flask_keen_signup.auth0 import ManagementClient
from flask_keen_signup.auth0 import UserListing
from flask_keen_signup.exceptions import Auth0APIError
from flask_keen_signup.testing import Auth0Emulator

TENANT_SIZE = 2_500
CUTOFF = datetime(2026, 11, 18, tzinfo=timezone.utc)


class Sleeps:
    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def emulator() -> t.Iterator[Auth0Emulator]:
    with Auth0Emulator() as emu:
        yield emu


@pytest.fixture
def tenant(emulator: Auth0Emulator) -> list[str]:
    """2,500 users from 2020 to now, a third carrying the Rule's marker."""
    return emulator.load_users(
        TENANT_SIZE, created_from="2020-01-01", created_to="2026-11-30", marked=1 / 3, seed=7
    )


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def client(emulator: Auth0Emulator, sleeps: Sleeps) -> t.Iterator[ManagementClient]:
    with ManagementClient(
        emulator.url, emulator.m2m_client_id, emulator.m2m_client_secret, sleep=sleeps
    ) as mgmt:
        yield mgmt


def token(emulator: Auth0Emulator) -> str:
    response = requests.post(
        emulator.url + "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": emulator.m2m_client_id,
            "client_secret": emulator.m2m_client_secret,
            "audience": emulator.audience,
        },
        timeout=10,
    )
    return str(response.json()["access_token"])


def api(emulator: Auth0Emulator, method: str, path: str, **kwargs: t.Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {token(emulator)}"}
    return requests.request(
        method, emulator.url + "/api/v2/" + path, headers=headers, timeout=10, **kwargs
    )


def expected(emulator: Auth0Emulator) -> dict[str, dict[str, t.Any]]:
    return {user["user_id"]: user for user in emulator.users()}


# -- export jobs through the client ---------------------------------------------------------


def test_json_export_reads_back_the_whole_tenant(
    client: ManagementClient, emulator: Auth0Emulator, tenant: list[str]
) -> None:
    users = list(
        client.export_users(
            ["user_id", "created_at", "app_metadata", {"name": "logins_count", "export_as": "n"}]
        )
    )
    truth = expected(emulator)
    assert len(users) == TENANT_SIZE
    assert {u["user_id"] for u in users} == set(tenant)
    for user in users:
        stored = truth[user["user_id"]]
        assert user == {
            "user_id": stored["user_id"],
            "created_at": stored["created_at"],
            "app_metadata": stored["app_metadata"],
            "n": stored["logins_count"],
        }
    marked = sum(1 for u in users if u["app_metadata"].get("signedUp") is True)
    assert 0.25 * TENANT_SIZE < marked < 0.42 * TENANT_SIZE


def test_csv_export_reads_back_the_whole_tenant(
    client: ManagementClient, emulator: Auth0Emulator, tenant: list[str]
) -> None:
    emulator.add_user(
        email="quote@example.com",
        user_id='auth0|quote"comma,x',
        name='=cmd|" /C calc"!A0',
        created_at="2021-06-01T12:00:00Z",
    )
    users = list(
        client.export_users(
            [
                "user_id",
                "created_at",
                "name",
                "app_metadata.signedUp",
                {"name": "identities[0].connection", "export_as": "provider"},
            ],
            format="csv",
        )
    )
    truth = expected(emulator)
    assert len(users) == TENANT_SIZE + 1
    for user in users:
        stored = truth[user["user_id"]]
        assert set(user) == {
            "user_id",
            "created_at",
            "name",
            "app_metadata.signedUp",
            "provider",
        }
        assert user["created_at"] == stored["created_at"]
        assert user["name"] == stored["name"]
        assert user["provider"] == "Username-Password-Authentication"
        marker = stored["app_metadata"].get("signedUp")
        assert user["app_metadata.signedUp"] == ("true" if marker else "")
    odd = next(u for u in users if u["user_id"] == 'auth0|quote"comma,x')
    assert odd["name"] == '=cmd|" /C calc"!A0'  # Auth0's "'" escaping undone


def test_export_limit_and_order(
    client: ManagementClient, emulator: Auth0Emulator, tenant: list[str]
) -> None:
    users = list(client.export_users(["user_id", "created_at"], limit=10))
    oldest = [u["user_id"] for u in emulator.users()[:10]]
    assert [u["user_id"] for u in users] == oldest


def test_export_polls_until_the_job_completes(
    client: ManagementClient, emulator: Auth0Emulator, tenant: list[str], sleeps: Sleeps
) -> None:
    emulator.export_polls = 4
    emulator.clear_log()
    users = client.export_users(["user_id"], poll_interval=1.5)
    assert len(list(users)) == TENANT_SIZE
    job_gets = [e for e in emulator.request_log if e.path.startswith("/api/v2/jobs/job_")]
    assert len(job_gets) == 5  # pending, processing x3, completed
    assert sleeps.waits == [1.5] * 4


def test_the_download_carries_no_bearer_token(
    client: ManagementClient, emulator: Auth0Emulator, tenant: list[str]
) -> None:
    emulator.clear_log()
    assert len(list(client.export_users(["user_id"]))) == TENANT_SIZE
    downloads = [e for e in emulator.request_log if e.path.startswith("/user-exports/")]
    api_calls = [e for e in emulator.request_log if e.path.startswith("/api/v2/")]
    assert len(downloads) == 1 and downloads[0].status == 200
    assert downloads[0].authorized is False
    assert api_calls and all(e.authorized for e in api_calls)


def test_the_download_is_a_stream_of_gzip(
    emulator: Auth0Emulator, tenant: list[str], client: ManagementClient
) -> None:
    emulator.export_polls = 0
    job = api(
        emulator,
        "POST",
        "jobs/users-exports",
        json={"format": "json", "fields": [{"name": "user_id"}]},
    ).json()
    done = api(emulator, "GET", f"jobs/{job['id']}").json()
    with requests.get(done["location"], stream=True, timeout=10) as response:
        assert response.status_code == 200
        assert "Content-Length" not in response.headers  # generated, not one big body
        body = response.raw.read()
    lines = gzip.decompress(body).decode().splitlines()
    assert len(lines) == TENANT_SIZE
    assert set(json.loads(lines[0])) == {"user_id"}


def test_a_failed_job_is_a_clear_error(
    client: ManagementClient, emulator: Auth0Emulator, tenant: list[str]
) -> None:
    emulator.fail_next_export("Export failed: connection timed out")
    with pytest.raises(Auth0ExportError, match="failed: Export failed: connection timed out"):
        list(client.export_users(["user_id"]))
    # Only the next job: the one after succeeds.
    assert len(list(client.export_users(["user_id"]))) == TENANT_SIZE


def test_an_expired_download_link_is_a_clear_error(
    client: ManagementClient, emulator: Auth0Emulator, tenant: list[str], sleeps: Sleeps
) -> None:
    emulator.export_link_lifetime = -1  # every link is already expired
    with pytest.raises(Auth0ExportError, match="could not download .*HTTP 403"):
        list(client.export_users(["user_id"]))
    # The client asked the job for a fresh link before each retry.
    assert len(sleeps.waits) >= client.max_retries


def test_a_job_that_never_completes_times_out(
    client: ManagementClient, emulator: Auth0Emulator
) -> None:
    emulator.export_polls = 1_000
    with pytest.raises(Auth0ExportError, match="did not complete in time"):
        list(client.export_users(["user_id"], poll_interval=10, timeout=60))


def test_export_arguments_are_checked_before_any_request(client: ManagementClient) -> None:
    with pytest.raises(ValueError):
        client.export_users(["user_id"], format="xml")
    with pytest.raises(ValueError):
        client.export_users([])
    with pytest.raises(ValueError):
        client.export_users(["user_id"], limit=0)


# -- all_users: paging or export --------------------------------------------------------------


def test_all_users_uses_an_export_job_past_1000_users(
    client: ManagementClient, emulator: Auth0Emulator, tenant: list[str]
) -> None:
    listing = client.all_users(["created_at", "app_metadata.signedUp"])
    assert isinstance(listing, UserListing)
    assert listing.total == TENANT_SIZE
    assert listing.source == "export"
    truth = expected(emulator)
    users = list(listing)
    assert len(users) == TENANT_SIZE
    for user in users:
        assert set(user) == {"user_id", "created_at", "app_metadata"}
        assert user["app_metadata"] == truth[user["user_id"]]["app_metadata"]


def test_all_users_pages_through_a_small_tenant(
    client: ManagementClient, emulator: Auth0Emulator
) -> None:
    ids = emulator.load_users(1_000, marked=0.5, seed=3)
    emulator.clear_log()
    listing = client.all_users()
    assert listing.source == "paging" and listing.total == 1_000
    users = list(listing)
    assert sorted(u["user_id"] for u in users) == sorted(ids)
    assert all(set(u) == {"user_id", "created_at", "app_metadata"} for u in users)
    assert not any(e.path.startswith("/api/v2/jobs") for e in emulator.request_log)


def test_all_users_switches_to_an_export_when_the_tenant_grows_meanwhile(
    client: ManagementClient, emulator: Auth0Emulator
) -> None:
    first = emulator.load_users(990, seed=4, created_to="2025-01-01")
    listing = client.all_users(["created_at"])
    users = iter(listing)
    seen = [next(users)["user_id"] for _ in range(500)]
    later = emulator.load_users(300, seed=5, created_from="2026-01-01")  # signups meanwhile
    seen += [user["user_id"] for user in users]
    assert listing.source == "export"
    assert sorted(seen) == sorted(first + later)  # everyone, nobody twice


# -- the paging limit -------------------------------------------------------------------------


def test_paging_past_1000_results_is_refused_like_auth0(
    emulator: Auth0Emulator, tenant: list[str]
) -> None:
    ok = api(emulator, "GET", "users", params={"page": 9, "per_page": 100})
    assert ok.status_code == 200 and len(ok.json()) == 100
    refused = api(emulator, "GET", "users", params={"page": 10, "per_page": 100})
    assert refused.status_code == 400
    assert refused.json() == {
        "statusCode": 400,
        "error": "Bad Request",
        "message": "You can only page through the first 1000 records. See "
        "https://auth0.com/docs/users/search/v3/view-search-results-by-page#limitation",
        "errorCode": "invalid_paging",
    }
    assert api(emulator, "GET", "users", params={"page": 20, "per_page": 50}).status_code == 400


def test_iter_users_stops_at_the_paging_limit(
    client: ManagementClient, emulator: Auth0Emulator, tenant: list[str]
) -> None:
    read = []
    with pytest.raises(Auth0APIError) as info:
        for user in client.iter_users():
            read.append(user)
    assert len(read) == 1_000
    assert info.value.error_code == "invalid_paging"


def test_count_users(client: ManagementClient, emulator: Auth0Emulator) -> None:
    assert client.count_users() == 0
    emulator.load_users(1_234, seed=9)
    assert client.count_users() == 1_234


# -- search -----------------------------------------------------------------------------------


def test_created_at_of_looks_users_up_in_batches(
    client: ManagementClient, emulator: Auth0Emulator, tenant: list[str]
) -> None:
    wanted = tenant[:120] + ["auth0|deleted-meanwhile"]
    emulator.clear_log()
    found = client.created_at_of(wanted)
    searches = [e for e in emulator.request_log if e.path == "/api/v2/users"]
    assert len(searches) == 3  # 50 + 50 + 21 ids
    assert all("search_engine=v3" in e.query for e in searches)
    assert "auth0|deleted-meanwhile" not in found
    truth = expected(emulator)
    assert len(found) == 120
    for user_id, moment in found.items():
        assert moment.tzinfo is not None
        text = truth[user_id]["created_at"]
        assert moment == datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_created_at_of_escapes_ids(client: ManagementClient, emulator: Auth0Emulator) -> None:
    odd = [
        'auth0|with"quote',
        "auth0|back\\slash",
        "samlp|corp|ada@example.com",
        "auth0|x OR user_id:*",
    ]
    for number, user_id in enumerate(odd):
        emulator.add_user(
            email=f"odd{number}@example.com", user_id=user_id, created_at="2022-02-02"
        )
    emulator.add_user(email="other@example.com", user_id="auth0|x", created_at="2023-03-03")
    found = client.created_at_of(odd)
    assert set(found) == set(odd)  # "auth0|x" is not matched by the injection attempt
    assert found[odd[0]] == datetime(2022, 2, 2, tzinfo=timezone.utc)
    assert client.created_at_of(["auth0|x"]) == {
        "auth0|x": datetime(2023, 3, 3, tzinfo=timezone.utc)
    }
    assert client.created_at_of([]) == {}


def test_search_syntax_of_the_emulator(emulator: Auth0Emulator, tenant: list[str]) -> None:
    one = api(
        emulator, "GET", "users", params={"q": f'user_id:"{tenant[0]}"', "search_engine": "v3"}
    )
    assert [u["user_id"] for u in one.json()] == [tenant[0]]
    in_2021 = api(
        emulator,
        "GET",
        "users",
        params={
            "q": "created_at:[2021-01-01 TO 2021-12-31]",
            "search_engine": "v3",
            "include_totals": "true",
            "per_page": 100,
        },
    ).json()
    truth = [u for u in emulator.users() if u["created_at"].startswith("2021")]
    assert in_2021["total"] == len(truth) > 0
    marked = api(
        emulator,
        "GET",
        "users",
        params={"q": "app_metadata.signedUp:true", "include_totals": "true", "per_page": 1},
    ).json()
    assert marked["total"] == sum(1 for u in emulator.users() if u["app_metadata"])


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"q": "just words", "search_engine": "v3"}, "invalid_query_string"),
        ({"q": 'user_id:"unterminated', "search_engine": "v3"}, "invalid_query_string"),
        ({"q": "created_at:[2020 2021]", "search_engine": "v3"}, "invalid_query_string"),
        ({"q": 'user_id:"a"', "search_engine": "v1"}, "operation_not_supported"),
    ],
)
def test_unsupported_queries_get_auth0s_400(
    emulator: Auth0Emulator, params: dict[str, str], code: str
) -> None:
    response = api(emulator, "GET", "users", params=params)
    assert response.status_code == 400
    body = response.json()
    assert body["statusCode"] == 400 and body["error"] == "Bad Request"
    assert body["errorCode"] == code
    assert body["message"]


# -- job endpoints' errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"format": "xml"}, "No enum match"),
        ({"format": "csv", "limit": 0}, "Too small"),
        ({"format": "json", "fields": "user_id"}, "Expected type array"),
        ({"format": "json", "fields": [{"export_as": "x"}]}, "Missing required property: name"),
        ({"connection_id": "Username-Password-Authentication"}, "does not match pattern"),
        ({"format": "json", "colour": "blue"}, "Additional properties not allowed: colour"),
        ({"format": "csv", "fields": [{"name": f"f{n}"} for n in range(31)]}, "too long"),
    ],
)
def test_bad_export_bodies(emulator: Auth0Emulator, body: dict[str, t.Any], fragment: str) -> None:
    response = api(emulator, "POST", "jobs/users-exports", json=body)
    assert response.status_code == 400
    assert response.json()["errorCode"] == "invalid_body"
    assert fragment in response.json()["message"]


def test_job_endpoints(emulator: Auth0Emulator, tenant: list[str]) -> None:
    created = api(
        emulator,
        "POST",
        "jobs/users-exports",
        json={"format": "csv", "limit": 5, "connection_id": emulator.connection_id},
    )
    assert created.status_code == 201
    job = created.json()
    assert job["type"] == "users_export" and job["status"] == "pending"
    assert job["id"].startswith("job_") and len(job["id"]) == 20
    assert job["connection"] == "Username-Password-Authentication"
    assert {"name": "user_id"} in job["fields"]  # Auth0's default fields
    first = api(emulator, "GET", f"jobs/{job['id']}").json()
    assert first["status"] == "pending" and "location" not in first
    done = api(emulator, "GET", f"jobs/{job['id']}").json()
    assert done["status"] == "completed" and done["location"].endswith(".csv.gz")
    lines = gzip.decompress(requests.get(done["location"], timeout=10).content).splitlines()
    assert len(lines) == 1 + 5  # header + limit

    missing = api(emulator, "GET", "jobs/job_0000000000000000")
    assert missing.status_code == 404
    assert missing.json()["errorCode"] == "inexistent_job"
    malformed = api(emulator, "GET", "jobs/nope")
    assert malformed.status_code == 400
    unknown = api(
        emulator, "POST", "jobs/users-exports", json={"connection_id": "con_0000000000000000"}
    )
    assert unknown.status_code == 400
    anonymous = requests.post(emulator.url + "/api/v2/jobs/users-exports", json={}, timeout=10)
    assert anonymous.status_code == 401
    forged = done["location"].rsplit("/", 2)
    wrong = requests.get(f"{forged[0]}/not-the-token/{forged[2]}", timeout=10)
    assert wrong.status_code == 403


# -- 429s and pacing --------------------------------------------------------------------------


def test_429s_on_the_export_endpoints_are_waited_out(
    client: ManagementClient, emulator: Auth0Emulator, tenant: list[str], sleeps: Sleeps
) -> None:
    client.count_users()  # token fetched first: the 429s hit the jobs endpoints
    emulator.rate_limit_next(2, reset_in=3, path_prefix="/api/v2/jobs")
    emulator.clear_log()
    users = client.export_users(["user_id"])
    assert len(list(users)) == TENANT_SIZE
    limited = [e for e in emulator.request_log if e.status == 429]
    assert len(limited) == 2 and all(e.path.startswith("/api/v2/jobs") for e in limited)
    assert all(0 < wait <= 3.5 for wait in sleeps.waits[:2])  # X-RateLimit-Reset honoured


def test_429s_on_search_are_waited_out(
    client: ManagementClient, emulator: Auth0Emulator, tenant: list[str], sleeps: Sleeps
) -> None:
    client.count_users()
    emulator.rate_limit_next(2, retry_after=2)
    found = client.created_at_of(tenant[:60])
    assert len(found) == 60
    assert sleeps.waits[:2] == [2.0, 2.0]


def test_429s_on_the_download_are_retried(
    client: ManagementClient, emulator: Auth0Emulator, tenant: list[str]
) -> None:
    emulator.rate_limit_next(1, path_prefix="/user-exports/")
    assert len(list(client.export_users(["user_id"]))) == TENANT_SIZE


def test_pacing_spaces_requests_across_threads(emulator: Auth0Emulator) -> None:
    emulator.add_user(email="ada@example.com", user_id="auth0|ada")
    with ManagementClient(
        emulator.url,
        emulator.m2m_client_id,
        emulator.m2m_client_secret,
        max_requests_per_second=5,
    ) as paced:
        paced.count_users()  # the token request is not paced, nor counted below
        emulator.clear_log()
        threads = [threading.Thread(target=paced.get_user, args=("auth0|ada",)) for _ in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    times = sorted(e.time for e in emulator.request_log if e.path.startswith("/api/v2/"))
    assert len(times) == 10
    # At 5 per second, 10 requests span at least 9 intervals of 0.2 s: never within 1 s.
    assert times[-1] - times[0] >= 1.0


def test_pacing_is_validated() -> None:
    for bad in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError):
            ManagementClient("tenant.auth0.com", "id", "secret", max_requests_per_second=bad)
