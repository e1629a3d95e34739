"""A small client for the Auth0 Management API v2, built on ``requests`` only.

The ``auth0`` marker store keeps the Rule's ``signedUp`` flag in ``app_metadata``,
``flask keen-signup migrate`` reads every user of a tenant, and the sender resolves users'
``created_at`` off the request path. That takes a handful of calls (read a user, merge into
its ``app_metadata``, count, page, search by ids, run a user export job and stream its file)
and a machine-to-machine token.
``auth0-python`` would pull in httpx, pydantic and aiohttp for that, and Authlib's
``OAuth2Session`` drops the ``audience`` when it renews a client-credentials token, so
this module implements the calls it needs, mirroring auth0-python's
behaviour:

- the token is fetched with the client-credentials grant, **always with the audience**,
  and cached until shortly before it expires; renewal is serialised by a lock so that
  many threads needing a token at once make one token request;
- a ``401`` with a cached token (revoked, rotated signing key) drops the cache, fetches
  one new token and retries once;
- ``429`` waits ``Retry-After``, else ``X-RateLimit-Reset``, else exponential backoff
  with jitter; ``408``, ``5xx``, connection errors and timeouts are retried the same way;
  every wait is capped and the number of retries bounded, so a call never hangs;
- user ids are always quoted with ``safe=""``: ``samlp|conn|ada@x/y`` must be one path
  segment, and quoted and escaped as Lucene phrases in search queries;
- ``max_requests_per_second`` paces Management API calls across threads, for tenants whose
  limit (2 per second on free plans) a batch job would otherwise exhaust;
- an export's file is downloaded without the bearer token (it lives on a storage host) and
  parsed as it arrives, never held whole;
- the client secret and access tokens never appear in URLs, logs, ``repr`` or exception
  text (``__context__`` and ``__cause__`` included: no exception is raised inside an
  ``except`` block that caught a ``requests`` error, which carries the prepared request).
  Exceptions are built from status codes and Auth0's own error text only.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import re
import threading
import time
import typing as t
from collections.abc import Iterator
from collections.abc import Mapping
from datetime import datetime
from datetime import timezone
from urllib.parse import quote

import requests
import urllib3

from ._credentials import auth0_base_url
from ._http import USER_AGENT
from ._http import NoResponse
from ._http import SessionClient
from ._http import excerpt
from ._http import new_session
from ._http import redact
from ._http import send
from ._http import server_wait
from ._text import register_secret
from .config import DEFAULT_TIMEOUT
from .exceptions import Auth0APIError
from .exceptions import Auth0ConnectionError
from .exceptions import Auth0Error
from .users_export import iter_export_stream

if t.TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable
    from collections.abc import Iterable
    from collections.abc import Sequence

    from .config import Settings

__all__ = [
    "USER_AGENT",
    "Auth0ExportError",
    "ManagementClient",
    "UserListing",
    "management_client_for",
]

logger = logging.getLogger(__name__)

#: Statuses worth retrying: rate limited, request timeout, server errors.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: First exponential-backoff delay in seconds, before jitter (Auth0's SDKs start at ~1 s).
BACKOFF_BASE = 1.0
#: Auth0 serves at most this many users per page of ``GET /api/v2/users``.
MAX_PER_PAGE = 100
#: Auth0 serves only the first 1000 users through page/per_page pagination; more need an
#: export job (``POST /api/v2/jobs/users-exports``).
PAGINATION_LIMIT = 1000
#: Longest excerpt of an error body kept in an exception message.
EXCERPT_LENGTH = 200
#: Used when a token response omits ``expires_in`` (Auth0 always sends it; be safe).
FALLBACK_EXPIRES_IN = 3600.0
#: User ids per search request in :meth:`ManagementClient.created_at_of`: one request for
#: up to 50 users keeps the query string far below Auth0's URL limit (414).
SEARCH_BATCH = 50
#: Auth0's job ids, ``job_`` and 16 letters or digits.
_JOB_ID_RE = re.compile(r"^job_[A-Za-z0-9]{1,64}$")
#: Job statuses that mean "not finished yet".
_RUNNING = frozenset({"pending", "processing"})
#: Default fields of :meth:`ManagementClient.all_users`: what ``migrate`` needs.
MIGRATION_FIELDS = ("user_id", "created_at", "app_metadata")


class Auth0ExportError(Auth0Error):
    """A user export job failed, expired, timed out, or its file could not be downloaded."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message, retryable=retryable)


class UserListing:
    """Every user of a tenant, iterable once, from :meth:`ManagementClient.all_users`.

    :attr:`total` is the count Auth0 reported before the walk began (``None`` when it
    did not say); users signing up meanwhile may make the walk yield a few more.
    :attr:`source` is ``"paging"`` (``GET /api/v2/users``, tenants of at most 1,000
    users) or ``"export"`` (a user export job); it becomes ``"export"`` when a paged walk
    had to switch because the tenant grew past the paging limit during the walk.
    """

    def __init__(
        self, users: Iterator[dict[str, t.Any]], *, total: int | None, source: str
    ) -> None:
        self._users = users
        self.total = total
        self.source = source

    def __iter__(self) -> Iterator[dict[str, t.Any]]:
        return self._users

    def __repr__(self) -> str:
        return f"<UserListing source={self.source} total={self.total}>"


class _Pacer:
    """Spaces requests at least ``1 / rate`` seconds apart, across all threads.

    Each caller reserves the next free slot under a lock and sleeps outside it, so N
    threads calling at once leave at ``0, 1/rate, 2/rate, ...`` seconds.
    """

    def __init__(self, rate: float, sleep: Callable[[float], None]) -> None:
        self.interval = 1.0 / rate
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next = 0.0

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            self._sleep(slot - now)

    def defer(self, seconds: float) -> None:
        """Nobody sends before ``seconds`` from now (Auth0 said it is rate limiting us)."""
        with self._lock:
            self._next = max(self._next, time.monotonic() + seconds)


def _lucene_phrase(value: str) -> str:
    """``value`` as a quoted Lucene phrase: backslashes and double quotes escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _parse_created_at(value: t.Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def _export_fields(fields: Iterable[t.Any]) -> list[dict[str, str]]:
    """Normalise ``"name"``, ``("name", "export_as")`` or ``{"name", "export_as"}``."""
    result: list[dict[str, str]] = []
    for field in [fields] if isinstance(fields, str) else fields:
        name: t.Any
        export_as: t.Any
        if isinstance(field, str):
            name, export_as = field, None
        elif isinstance(field, Mapping):
            name, export_as = field.get("name"), field.get("export_as")
        elif isinstance(field, tuple) and len(field) == 2:
            name, export_as = field
        else:
            raise TypeError("an export field is a name, a (name, export_as) pair or a mapping")
        if not isinstance(name, str) or not name:
            raise ValueError("an export field needs a non-empty name")
        entry = {"name": name}
        if export_as is not None:
            if not isinstance(export_as, str) or not export_as:
                raise ValueError("export_as must be a non-empty string")
            entry["export_as"] = export_as
        result.append(entry)
    if not result:
        raise ValueError("at least one export field is required")
    return result


def _root_fields(fields: Iterable[str]) -> list[str]:
    """``app_metadata.signedUp`` -> ``app_metadata``; always with ``user_id``, no repeats."""
    roots: list[str] = ["user_id"]
    for field in [fields] if isinstance(fields, str) else fields:
        root = re.split(r"[.\[]", field, maxsplit=1)[0]
        if root and root not in roots:
            roots.append(root)
    return roots




@dataclasses.dataclass(frozen=True)
class _Token:
    """A cached access token. Kept as one object so a reader never sees a torn update."""

    value: str = dataclasses.field(repr=False)
    #: When Auth0 says the token expires (our clock).
    expires_at: float
    #: When we stop using it and fetch a new one (``expires_at - token_leeway``).
    renew_at: float


def _base_url(domain: str) -> str:
    """Turn ``tenant.eu.auth0.com`` or ``http://127.0.0.1:PORT`` into a base URL.

    A bare domain means https: Auth0 serves nothing over plain http. A full URL is kept
    as given so tests and the offline demo can point at the local emulator. One rule
    with ``KEEN_SIGNUP_AUTH0_DOMAIN``'s (:func:`._credentials.auth0_base_url`); the message
    does not quote the value.
    """
    return auth0_base_url(domain, "the Auth0 domain")


def _fields_param(fields: Sequence[str] | None) -> dict[str, str]:
    if fields is None:
        return {}
    names = [fields] if isinstance(fields, str) else list(fields)
    if not names:
        return {}
    return {"fields": ",".join(names), "include_fields": "true"}


def _user_path(user_id: str) -> str:
    # An empty id would turn GET /users/{id} into the user *listing*: refuse it.
    if not isinstance(user_id, str) or not user_id:
        raise ValueError("user_id must be a non-empty string")
    return f"/api/v2/users/{quote(user_id, safe='')}"


def _invalid_response(message: str, status: int = 200) -> Auth0APIError:
    """Auth0 answered, but not with what the call expects: retryable (a proxy, a glitch)."""
    return Auth0APIError(status, "invalid_response", message, retryable=True)


def _copy_error(exc: Auth0Error) -> Auth0Error:
    """A fresh exception equal to ``exc``, so threads never share one traceback."""
    if isinstance(exc, Auth0APIError):
        return Auth0APIError(
            exc.status_code or 0,
            exc.error_code,
            exc.api_message,
            retryable=exc.retryable,
            retry_after=exc.retry_after,
        )
    if isinstance(exc, Auth0ConnectionError):
        return Auth0ConnectionError(str(exc))
    return Auth0Error(
        str(exc),
        retryable=exc.retryable,
        retry_after=exc.retry_after,
        status_code=exc.status_code,
    )


class ManagementClient(SessionClient):
    """Auth0 Management API client for the machine-to-machine application.

    Thread-safe: one instance is meant to be shared by every thread of a process (the
    token cache is the point). Not fork-safe by itself: the owner creates one per process.

    :param domain: the tenant domain, ``tenant.eu.auth0.com`` (https is implied), or a
        full base URL such as ``http://127.0.0.1:PORT`` for the emulator. Use the
        tenant's canonical domain, not a custom domain: the Management API audience is
        always ``https://{canonical domain}/api/v2/``.
    :param client_id: the M2M application's client id.
    :param client_secret: its client secret. Sent in the token request body only.
    :param audience: the Management API identifier; defaults to ``{base}/api/v2/``.
        Always sent: without it Auth0 may hand out a token the Management API refuses.
    :param timeout: ``(connect, read)`` timeout of every HTTP call, in seconds.
    :param session: a ``requests.Session`` to use (proxies, custom CA). The client
        closes only a session it created itself.
    :param max_retries: retries after the first attempt for 408, 429, 5xx, connection
        errors and timeouts. ``0`` fails fast.
    :param max_retry_wait: cap of every single wait between attempts, in seconds.
    :param token_leeway: renew the token this many seconds before it expires, so a
        token never expires between our check and Auth0's.
    :param sleep: how to wait; injectable so tests can record the waits asked for.
    :param clock: epoch seconds; injectable for tests of expiry and rate-limit resets.
    :param max_requests_per_second: space Management API calls at least this far apart,
        across every thread using the client (Auth0's free tenants allow 2 per second).
        ``None`` (the default) sends at once and relies on 429 handling alone.
    """

    def __init__(
        self,
        domain: str,
        client_id: str,
        client_secret: str,
        *,
        audience: str | None = None,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        session: requests.Session | None = None,
        max_retries: int = 3,
        max_retry_wait: float = 10.0,
        token_leeway: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        max_requests_per_second: float | None = None,
    ) -> None:
        if not client_id:
            raise ValueError("client_id is required")
        if not client_secret:
            raise ValueError("client_secret is required")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if max_retry_wait < 0:
            raise ValueError("max_retry_wait must be >= 0")
        if token_leeway < 0:
            raise ValueError("token_leeway must be >= 0")
        if max_requests_per_second is not None and not (
            math.isfinite(max_requests_per_second) and max_requests_per_second > 0
        ):
            raise ValueError("max_requests_per_second must be a positive number or None")
        #: Base URL without a trailing slash, e.g. ``https://tenant.eu.auth0.com``.
        self.base_url = _base_url(domain)
        #: The Management API audience sent with every token request.
        self.audience = audience or f"{self.base_url}/api/v2/"
        #: The M2M application's client id (not a secret).
        self.client_id = client_id
        self._client_secret = client_secret
        register_secret(client_secret)
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self.token_leeway = token_leeway
        self._sleep = sleep
        self._clock = clock
        self._owns_session = session is None
        self._session = session if session is not None else new_session()
        self._random = random.Random()
        self._token_lock = threading.Lock()
        self._token: _Token | None = None
        #: Token requests completed (success or failure); lets waiters share one result.
        self._token_fetches = 0
        self._token_error: Auth0Error | None = None
        #: Client-side pacing of Management API calls (``None``: only 429s slow us down).
        self.max_requests_per_second = max_requests_per_second
        self._pacer = (
            _Pacer(max_requests_per_second, sleep) if max_requests_per_second is not None else None
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.base_url} client_id={self.client_id!r}>"

    def close(self) -> None:
        """Forget the token and close the HTTP session if this client created it."""
        with self._token_lock:
            self._token = None
        super().close()

    # -- public API -------------------------------------------------------------------

    def get_user(self, user_id: str, fields: Sequence[str] | None = None) -> dict[str, t.Any]:
        """Read one user (``GET /api/v2/users/{id}``, immediately consistent).

        :param user_id: the user's id, e.g. ``auth0|abc`` (the ID token's ``sub``).
        :param fields: only these fields, e.g. ``["app_metadata", "created_at"]``:
            smaller responses, and no profile data the caller does not need.
        :raises Auth0APIError: ``404`` with ``error_code == "inexistent_user"`` when
            the user does not exist; ``retryable`` tells whether a later retry may help.
        :raises Auth0ConnectionError: no response from Auth0.
        """
        path = _user_path(user_id)
        result = self._call("GET", path, params=_fields_param(fields))
        return self._expect_object(result, "GET", path)

    def update_app_metadata(self, user_id: str, values: Mapping[str, t.Any]) -> dict[str, t.Any]:
        """Merge ``values`` into the user's ``app_metadata`` and return the updated user.

        Auth0 merges ``app_metadata`` at the top level only: keys not in ``values``
        are kept, a key set to ``None`` is deleted, and a nested object replaces the
        old one as a whole. The same call is therefore safe to repeat.

        :raises ValueError: ``values`` is empty. ``{"app_metadata": {}}`` tells Auth0
            to delete *all* of the user's app_metadata, which is never what a caller of
            a "merge" means.
        """
        if not isinstance(values, Mapping):
            raise TypeError("values must be a mapping")
        if not values:
            raise ValueError(
                "refusing to send an empty app_metadata: Auth0 would delete all of the "
                "user's app_metadata"
            )
        path = _user_path(user_id)
        result = self._call("PATCH", path, json_body={"app_metadata": dict(values)})
        return self._expect_object(result, "PATCH", path)

    def iter_users(
        self, *, per_page: int = MAX_PER_PAGE, fields: Sequence[str] | None = None
    ) -> Iterator[dict[str, t.Any]]:
        """Yield every user of the tenant, page by page (for ``backfill``).

        Pages are requested lazily, sorted by ``created_at`` so that users signing up
        during the walk do not shift the pages already read. Auth0 serves only the
        first 1000 users this way; with more, a warning is logged and Auth0's ``400``
        for the page past the limit is raised: use a user export job instead.

        :param per_page: users per request, 1 to 100.
        :param fields: only these fields of each user (include ``user_id``).
        """
        if not 1 <= per_page <= MAX_PER_PAGE:
            raise ValueError(f"per_page must be between 1 and {MAX_PER_PAGE}")
        params = {
            "per_page": str(per_page),
            "include_totals": "true",
            "sort": "created_at:1",
            **_fields_param(fields),
        }
        return self._iter_pages(params, per_page)

    def count_users(self) -> int:
        """How many users the tenant has (``include_totals`` of one small page)."""
        body = self._call(
            "GET",
            "/api/v2/users",
            params={
                "page": "0",
                "per_page": "1",
                "include_totals": "true",
                "fields": "user_id",
                "include_fields": "true",
            },
        )
        total = body.get("total") if isinstance(body, dict) else None
        if isinstance(total, bool) or not isinstance(total, int) or total < 0:
            raise _invalid_response("GET /api/v2/users?include_totals=true did not return a total")
        return total

    def all_users(
        self,
        fields: Sequence[str] = MIGRATION_FIELDS,
        *,
        poll_interval: float = 2.0,
        timeout: float = 3600.0,
    ) -> UserListing:
        """Every user of the tenant, whatever its size, one dict at a time.

        Up to 1,000 users are paged through ``GET /api/v2/users``; a bigger tenant needs a
        user export job (:meth:`export_users`, JSON format). Either way each user is a
        dict with the *root* fields asked for: ``app_metadata.signedUp`` asks for the whole
        ``app_metadata`` object, so both sources give ``user["app_metadata"]["signedUp"]``.
        ``user_id`` is always included.

        Nothing is requested until the listing is iterated, except the count.
        """
        roots = _root_fields(fields)
        total = self.count_users()
        if total > PAGINATION_LIMIT:
            users = self.export_users(
                roots, format="json", poll_interval=poll_interval, timeout=timeout
            )
            return UserListing(users, total=total, source="export")
        listing = UserListing(iter(()), total=total, source="paging")
        listing._users = self._page_or_export(listing, roots, poll_interval, timeout)
        return listing

    def _page_or_export(
        self, listing: UserListing, roots: list[str], poll_interval: float, timeout: float
    ) -> Iterator[dict[str, t.Any]]:
        """Page through the users; if the tenant grew past the paging limit meanwhile,
        finish with an export job, skipping the users already yielded."""
        seen: set[str] = set()
        pages = self.iter_users(fields=roots)
        while True:
            try:
                user = next(pages)
            except StopIteration:
                return
            except Auth0APIError as exc:
                if exc.status_code == 400 and len(seen) >= PAGINATION_LIMIT - MAX_PER_PAGE:
                    break  # the page past the limit: switch, outside this except block
                raise
            user_id = user.get("user_id")
            if isinstance(user_id, str):
                seen.add(user_id)
            yield user
        logger.info(
            "The tenant grew past %d users during the walk; finishing with an export job",
            PAGINATION_LIMIT,
        )
        listing.source = "export"
        for user in self.export_users(
            roots, format="json", poll_interval=poll_interval, timeout=timeout
        ):
            if user.get("user_id") not in seen:
                yield user

    def created_at_of(self, user_ids: Sequence[str]) -> dict[str, datetime]:
        """The creation time of each user, by user id, in few requests.

        One search request (``q=user_id:("a" OR "b" ...)``, search engine v3, only
        ``user_id`` and ``created_at``) per 50 ids; ids are quoted and escaped for Lucene,
        so ``|``, spaces or quotes in an id cannot change the query. Users that do not
        exist (deleted since) are absent from the result; an unparseable ``created_at``
        too. Times are timezone-aware, UTC.
        """
        if isinstance(user_ids, str):
            raise TypeError("user_ids must be a sequence of ids, not one string")
        wanted = list(dict.fromkeys(uid for uid in user_ids if isinstance(uid, str) and uid))
        found: dict[str, datetime] = {}
        for start in range(0, len(wanted), SEARCH_BATCH):
            chunk = wanted[start : start + SEARCH_BATCH]
            if len(chunk) == 1:
                query = "user_id:" + _lucene_phrase(chunk[0])
            else:
                query = "user_id:(" + " OR ".join(_lucene_phrase(uid) for uid in chunk) + ")"
            body = self._call(
                "GET",
                "/api/v2/users",
                params={
                    "q": query,
                    "search_engine": "v3",
                    "fields": "user_id,created_at",
                    "include_fields": "true",
                    "page": "0",
                    "per_page": str(SEARCH_BATCH),
                },
            )
            users = body.get("users") if isinstance(body, dict) else body
            if not isinstance(users, list):
                raise _invalid_response("GET /api/v2/users did not return a list of users")
            members = set(chunk)
            for user in users:
                if not isinstance(user, dict) or user.get("user_id") not in members:
                    continue
                moment = _parse_created_at(user.get("created_at"))
                if moment is None:
                    logger.warning("Auth0 returned a user without a usable created_at")
                    continue
                found[user["user_id"]] = moment
        return found

    def export_users(
        self,
        fields: Sequence[t.Any],
        *,
        format: str = "json",
        limit: int | None = None,
        connection_id: str | None = None,
        poll_interval: float = 2.0,
        timeout: float = 3600.0,
    ) -> Iterator[dict[str, t.Any]]:
        """Export users with a job and yield them one by one, never holding the file.

        ``POST /api/v2/jobs/users-exports``, then ``GET /api/v2/jobs/{id}`` every
        ``poll_interval`` seconds until it completes (429s honoured as for every call),
        then the file at its ``location`` is downloaded as a stream *without* the
        ``Authorization`` header (it is a presigned URL on another host), gunzipped on
        the fly and parsed line by line (:mod:`flask_keen_signup.users_export`).

        :param fields: names (``"created_at"``, ``"app_metadata"``,
            ``"identities[0].connection"``), ``(name, export_as)`` pairs or
            ``{"name", "export_as"}`` mappings.
        :param format: ``"json"`` (NDJSON, nested objects kept) or ``"csv"`` (strings;
            Auth0's ``'`` escaping undone).
        :param limit: at most this many users; ``None`` exports all.
        :param connection_id: only this connection's users (``con_...``).
        :param timeout: give up waiting for the job after this many seconds.
        :raises Auth0ExportError: the job failed, did not finish in time, or its file
            could not be downloaded; ``Auth0APIError`` for a refused request.
        """
        if format not in ("json", "csv"):
            raise ValueError("format must be 'json' or 'csv'")
        if limit is not None and (isinstance(limit, bool) or limit < 1):
            raise ValueError("limit must be a positive integer or None")
        if not (poll_interval >= 0 and math.isfinite(poll_interval)):
            raise ValueError("poll_interval must be a finite number >= 0")
        if not (timeout > 0):
            raise ValueError("timeout must be > 0")
        body: dict[str, t.Any] = {"format": format, "fields": _export_fields(fields)}
        if limit is not None:
            body["limit"] = limit
        if connection_id is not None:
            body["connection_id"] = connection_id
        return self._export(body, poll_interval, timeout)

    def _export(
        self, body: dict[str, t.Any], poll_interval: float, timeout: float
    ) -> Iterator[dict[str, t.Any]]:
        path = "/api/v2/jobs/users-exports"
        job = self._expect_object(self._call("POST", path, json_body=body), "POST", path)
        job_id = job.get("id")
        if not isinstance(job_id, str) or not _JOB_ID_RE.match(job_id):
            raise _invalid_response(f"POST {path} returned no job id")
        logger.info("Auth0 user export job %s created", job_id)
        deadline = self._clock() + timeout
        location = self._wait_for_job(job_id, poll_interval, deadline)
        yield from self._download(job_id, location, body["format"], poll_interval, deadline)

    def _wait_for_job(self, job_id: str, poll_interval: float, deadline: float) -> str:
        """Poll the job until it completes; return its download URL."""
        path = f"/api/v2/jobs/{quote(job_id, safe='')}"
        # Bounded by count too, so an injected clock that never moves cannot hang us.
        max_polls = int(max(deadline - self._clock(), 0) / max(poll_interval, 0.001)) + 2
        for _ in range(max_polls):
            job = self._expect_object(self._call("GET", path), "GET", path)
            status = job.get("status")
            if status == "completed":
                location = job.get("location")
                if not isinstance(location, str) or not location.startswith(
                    ("https://", "http://")
                ):
                    raise Auth0ExportError(
                        f"the user export job {job_id} completed without a download location"
                    )
                return location
            if status == "failed":
                details = job.get("status_details")
                why = self._redact(details, None) if isinstance(details, str) else "no details"
                raise Auth0ExportError(f"the user export job {job_id} failed: {why}")
            if status not in _RUNNING:
                shown = self._redact(str(status), None, 40)
                raise Auth0ExportError(
                    f"the user export job {job_id} is {shown!r}, not pending or completed"
                )
            if self._clock() + poll_interval > deadline:
                break
            logger.debug("Auth0 user export job %s is %s", job_id, status)
            self._sleep(poll_interval)
        raise Auth0ExportError(
            f"the user export job {job_id} did not complete in time", retryable=True
        )

    def _download(
        self,
        job_id: str,
        location: str,
        format: str,
        poll_interval: float,
        deadline: float,
    ) -> Iterator[dict[str, t.Any]]:
        """Stream the export file. A refused or failed download asks the job for a fresh
        link (Auth0's links live 60 seconds) and tries again, up to ``max_retries``."""
        attempt = 0
        while True:
            failure: str | None = None
            response: requests.Response | None = None
            answer = send(
                self._session,
                "GET",
                location,
                # None removes a header a shared session might add: the bearer token
                # must never reach the storage host.
                headers={"User-Agent": USER_AGENT, "Authorization": None},
                auth=None,
                stream=True,
                timeout=self.timeout,
                allow_redirects=True,
            )
            if isinstance(answer, NoResponse):
                failure = f"no response ({answer.reason})"
            else:
                response = answer
            if response is not None and response.status_code != 200:
                failure = f"HTTP {response.status_code}"
                response.close()
                response = None
            if response is not None:
                break
            if attempt >= self.max_retries:
                raise Auth0ExportError(
                    f"could not download the file of user export job {job_id}: {failure}",
                    retryable=True,
                )
            attempt += 1
            logger.warning(
                "Downloading the file of Auth0 user export job %s failed (%s); retry %d of %d",
                job_id,
                failure,
                attempt,
                self.max_retries,
            )
            self._sleep(min(self._backoff(attempt - 1), self.max_retry_wait))
            location = self._wait_for_job(job_id, poll_interval, deadline)
        yield from self._read_download(job_id, response, format)

    def _read_download(
        self, job_id: str, response: requests.Response, format: str
    ) -> Iterator[dict[str, t.Any]]:
        count = 0
        cut: str | None = None
        try:
            response.raw.decode_content = True  # undo a transport Content-Encoding only
            users = iter_export_stream(response.raw, format)
            while True:
                try:
                    user = next(users)
                except StopIteration:
                    break
                except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
                    cut = type(exc).__name__
                    break
                count += 1
                yield user
        finally:
            response.close()
        if cut is not None:
            raise Auth0ConnectionError(
                f"the download of user export job {job_id} was cut off after {count} "
                f"users ({cut})"
            )
        logger.info("Read %d users from Auth0 user export job %s", count, job_id)

    # -- pagination -------------------------------------------------------------------

    def _iter_pages(self, params: dict[str, str], per_page: int) -> Iterator[dict[str, t.Any]]:
        page = 0
        seen = 0
        while True:
            body = self._call("GET", "/api/v2/users", params={**params, "page": str(page)})
            if isinstance(body, list):  # include_totals ignored: a bare list of users
                users: t.Any = body
                total = None
            elif isinstance(body, dict):
                users = body.get("users")
                total = body.get("total")
            else:
                users = None
                total = None
            if not isinstance(users, list):
                raise _invalid_response("GET /api/v2/users did not return a list of users")
            if page == 0 and isinstance(total, int) and total > PAGINATION_LIMIT:
                logger.warning(
                    "Auth0 reports %d users; the Management API pages through the first %d "
                    "only: use a user export job for the rest",
                    total,
                    PAGINATION_LIMIT,
                )
            for user in users:
                if isinstance(user, dict):
                    yield user
            seen += len(users)
            logger.debug("Auth0 users page %d: %d users (%d so far)", page, len(users), seen)
            if len(users) < per_page or (isinstance(total, int) and seen >= total):
                return
            page += 1

    # -- token ------------------------------------------------------------------------

    def _get_token(self) -> tuple[str, bool]:
        """Return ``(access_token, fetched_by_this_call)``.

        Fast path without the lock; otherwise one thread fetches while the others wait
        on the lock and then use its token, or its error when the fetch failed while
        they waited (so a broken token endpoint is not hit once per waiting thread).
        """
        token = self._token
        if token is not None and self._clock() < token.renew_at:
            return token.value, False
        fetches_seen = self._token_fetches
        with self._token_lock:
            token = self._token
            now = self._clock()
            if token is not None and now < token.renew_at:
                return token.value, False
            if self._token_fetches != fetches_seen:
                # Another thread fetched while we waited: use its result, even when a
                # tiny lifetime already puts the token inside the leeway.
                if self._token_error is not None:
                    raise _copy_error(self._token_error)
                if token is not None and now < token.expires_at:
                    return token.value, False
            try:
                value, expires_in = self._fetch_token()
            except Auth0Error as exc:
                self._token_error = exc
                self._token_fetches += 1
                raise
            now = self._clock()
            self._token = _Token(
                value=value,
                expires_at=now + expires_in,
                renew_at=now + expires_in - self.token_leeway,
            )
            self._token_error = None
            self._token_fetches += 1
            return value, True

    def _drop_token(self, value: str) -> None:
        """Forget ``value`` if it is still the cached token (another thread may have
        replaced it already, and that newer token must survive)."""
        with self._token_lock:
            if self._token is not None and self._token.value == value:
                self._token = None

    def _fetch_token(self) -> tuple[str, float]:
        logger.debug(
            "Requesting a Management API token from %s for %s", self.base_url, self.audience
        )
        body = self._send(
            "POST",
            "/oauth/token",
            form={
                "grant_type": "client_credentials",
                "client_id": self.client_id,
                "client_secret": self._client_secret,
                "audience": self.audience,
            },
        )
        access_token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(access_token, str) or not access_token:
            raise _invalid_response("the token response has no access_token")
        register_secret(access_token, transient=True)
        expires_in = body.get("expires_in") if isinstance(body, dict) else None
        if isinstance(expires_in, bool) or not isinstance(expires_in, (int, float)):
            expires_in = FALLBACK_EXPIRES_IN
        logger.debug("Got a Management API token valid for %ss", expires_in)
        return access_token, float(expires_in)

    # -- HTTP -------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Mapping[str, t.Any] | None = None,
    ) -> t.Any:
        """A Management API call with a bearer token; one token renewal on a 401."""
        token, fetched_now = self._get_token()
        try:
            return self._send(method, path, token=token, params=params, json_body=json_body)
        except Auth0APIError as exc:
            if exc.status_code != 401 or fetched_now:
                raise
        # The cached token was refused (revoked, signing key rotated, ...): renew it once.
        logger.warning("Auth0 refused the cached Management API token; fetching a new one")
        self._drop_token(token)
        token, _ = self._get_token()
        return self._send(method, path, token=token, params=params, json_body=json_body)

    def _send(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        params: Mapping[str, str] | None = None,
        json_body: Mapping[str, t.Any] | None = None,
        form: Mapping[str, str] | None = None,
    ) -> t.Any:
        """Send one request, retrying 408/429/5xx and network errors; return the JSON."""
        url = self.base_url + path
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        retry = 0
        while True:
            if token is not None:
                self._pace()
            # ``send`` never raises: the requests exception would become the new one's
            # ``__context__``, and it carries the prepared request (the token request's
            # body holds the client secret).
            response = send(
                self._session,
                method,
                url,
                params=params,
                json=json_body,
                data=form,
                headers=headers,
                timeout=self.timeout,
                allow_redirects=False,
            )
            if isinstance(response, NoResponse):
                if response.transient and retry < self.max_retries:
                    self._wait_to_retry(method, path, response.reason, retry, self._backoff(retry))
                    retry += 1
                    continue
                where = redact(self.base_url)
                if response.transient:
                    failure = f"no response from Auth0 at {where} for {method} {path}"
                else:
                    failure = f"could not send {method} {path} to Auth0 at {where}"
                raise Auth0ConnectionError(f"{failure}: {response.reason}")

            status = response.status_code
            logger.debug("Auth0 %s %s -> %d", method, path, status)
            if 200 <= status < 300:
                return self._json(response, method, path)
            error = self._error(response, token)
            if status in RETRYABLE_STATUSES and retry < self.max_retries:
                hint = error.retry_after
                wait = min(self._backoff(retry) if hint is None else hint, self.max_retry_wait)
                if status == 429 and self._pacer is not None:
                    self._pacer.defer(wait)
                self._wait_to_retry(method, path, f"{status} {error.error_code}", retry, wait)
                retry += 1
                continue
            if status == 429 and error.retry_after is None:
                # Tell the caller how long to back off even when Auth0 gave no hint.
                error.retry_after = self._backoff(retry)
            logger.log(
                logging.WARNING if error.retryable else logging.DEBUG,
                "Auth0 %s %s failed: %d %s",
                method,
                path,
                status,
                error.error_code,
            )
            raise error

    def _wait_to_retry(self, method: str, path: str, why: str, retry: int, wait: float) -> None:
        logger.warning(
            "Auth0 %s %s failed (%s); retry %d of %d in %.2fs",
            method,
            path,
            why,
            retry + 1,
            self.max_retries,
            wait,
        )
        self._sleep(wait)

    def _pace(self) -> None:
        if self._pacer is not None:
            self._pacer.wait()

    def _json(self, response: requests.Response, method: str, path: str) -> t.Any:
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            pass  # raised below, outside the except block (see _send)
        raise _invalid_response(
            f"{method} {path} returned a body that is not JSON", response.status_code
        )

    @staticmethod
    def _expect_object(result: t.Any, method: str, path: str) -> dict[str, t.Any]:
        if not isinstance(result, dict):
            raise _invalid_response(f"{method} {path} did not return a JSON object")
        return result

    # -- errors and waits -------------------------------------------------------------

    def _redact(self, text: str, token: str | None, limit: int = EXCERPT_LENGTH) -> str:
        """Remote text made safe for an exception message: the client secret and
        ``token`` masked, one line, at most ``limit`` characters (:func:`._http.excerpt`)."""
        return excerpt(text, limit, secrets=(self._client_secret, token))

    def _error(self, response: requests.Response, token: str | None) -> Auth0APIError:
        """Build the exception for an error response.

        Management API bodies are ``{statusCode, error, message, errorCode?}`` and the
        Authentication API's are ``{error, error_description}``; the code is taken from
        ``errorCode``, then ``error``, then ``code`` (auth0-python's order), then the
        status. Anything else (an HTML page from a proxy) becomes a short excerpt.
        """
        status = response.status_code
        code: t.Any = None
        message: t.Any = None
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            code = body.get("errorCode") or body.get("error") or body.get("code")
            message = body.get("error_description") or body.get("message") or body.get("error")
        if not isinstance(code, str) or not code:
            code = str(status)
        if isinstance(message, (dict, list)):
            message = json.dumps(message)
        if not isinstance(message, str) or not message:
            text = response.text if body is None else ""
            message = text or response.reason or "no error message"
        retryable = status in RETRYABLE_STATUSES
        return Auth0APIError(
            status,
            self._redact(code, token, 64),
            self._redact(message, token),
            retryable=retryable,
            retry_after=self._server_wait(response) if retryable else None,
        )

    def _server_wait(self, response: requests.Response) -> float | None:
        """The wait Auth0 asked for (``Retry-After``, else ``X-RateLimit-Reset``), capped;
        ``None`` without a usable hint (:func:`._http.server_wait`)."""
        return server_wait(response.headers, now=self._clock())

    def _backoff(self, retry: int) -> float:
        """Exponential backoff with "equal" jitter: half fixed, half random, so clients
        rate-limited together do not retry together. ``retry`` 0 gives 0.5-1 s."""
        delay = min(self.max_retry_wait, BACKOFF_BASE * 2.0**retry)
        return delay / 2 + self._random.uniform(0, delay / 2)


def management_client_for(settings: Settings, **options: t.Any) -> ManagementClient:
    """The Management API client of ``KEEN_SIGNUP_AUTH0_*``, with the app's timeouts and
    ``KEEN_SIGNUP_AUTH0_REQUESTS_PER_SECOND``; ``options`` go to :class:`ManagementClient`.

    :raises ConfigurationError: the credentials are missing or the domain is not usable.
    """
    from .exceptions import ConfigurationError

    if not settings.has_management_api:
        raise ConfigurationError(
            "KEEN_SIGNUP_AUTH0_DOMAIN, KEEN_SIGNUP_AUTH0_CLIENT_ID and "
            "KEEN_SIGNUP_AUTH0_CLIENT_SECRET are required (a machine-to-machine app)"
        )
    options = {
        "timeout": settings.timeout,
        "max_requests_per_second": settings.auth0_requests_per_second,
        **options,
    }
    try:
        return ManagementClient(
            t.cast(str, settings.auth0_domain),
            t.cast(str, settings.auth0_client_id),
            t.cast(str, settings.auth0_client_secret),
            **options,
        )
    except ValueError as exc:
        raise ConfigurationError(f"KEEN_SIGNUP_AUTH0_DOMAIN is not usable: {exc}") from None
