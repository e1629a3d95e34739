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

One job per module: :mod:`.token` caches the token, :mod:`.transport` sends (retries,
pacing, the 401 renewal, errors), :mod:`.users` reads and writes users, :mod:`.exports`
runs export jobs. This module assembles them into :class:`ManagementClient` and keeps
every public name importable from ``flask_keen_signup.auth0``.
"""

from __future__ import annotations

import typing as t

from .._http import USER_AGENT
from .exports import Auth0ExportError
from .transport import RETRYABLE_STATUSES as RETRYABLE_STATUSES
from .users import MAX_PER_PAGE as MAX_PER_PAGE
from .users import MIGRATION_FIELDS as MIGRATION_FIELDS
from .users import PAGINATION_LIMIT as PAGINATION_LIMIT
from .users import SEARCH_BATCH as SEARCH_BATCH
from .users import UserListing
from .users import Users

if t.TYPE_CHECKING:  # pragma: no cover
    from ..config import Settings

__all__ = [
    "USER_AGENT",
    "Auth0ExportError",
    "ManagementClient",
    "UserListing",
    "management_client_for",
]


class ManagementClient(Users):
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

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.base_url} client_id={self.client_id!r}>"


def management_client_for(settings: Settings, **options: t.Any) -> ManagementClient:
    """The Management API client of ``KEEN_SIGNUP_AUTH0_*``, with the app's timeouts and
    ``KEEN_SIGNUP_AUTH0_REQUESTS_PER_SECOND``; ``options`` go to :class:`ManagementClient`.

    :raises ConfigurationError: the credentials are missing.
    """
    from ..exceptions import ConfigurationError

    if not settings.has_management_api:
        raise ConfigurationError(
            "KEEN_SIGNUP_AUTH0_DOMAIN, KEEN_SIGNUP_AUTH0_CLIENT_ID and "
            "KEEN_SIGNUP_AUTH0_CLIENT_SECRET are required (a machine-to-machine app)"
        )
    # The domain was checked when the config was read (config.py), by the same rule.
    return ManagementClient(
        t.cast(str, settings.auth0_domain),
        t.cast(str, settings.auth0_client_id),
        t.cast(str, settings.auth0_client_secret),
        timeout=settings.timeout,
        max_requests_per_second=settings.auth0_requests_per_second,
        **options,
    )
