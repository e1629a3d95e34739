"""How the Management API client talks to Auth0: retries, pacing, the token, errors.

- the token is fetched with the client-credentials grant, **always with the audience**,
  and cached (:mod:`.token`); a ``401`` with a cached token (revoked, rotated signing
  key) drops the cache, fetches one new token and retries once;
- ``429`` waits ``Retry-After``, else ``X-RateLimit-Reset``, else exponential backoff
  with jitter; ``408``, ``5xx``, connection errors and timeouts are retried the same way;
  every wait is capped and the number of retries bounded, so a call never hangs;
- ``max_requests_per_second`` paces Management API calls across threads (:class:`_Pacer`);
- exceptions are built from status codes and Auth0's own error text only, never inside an
  ``except`` block that caught a ``requests`` error (which carries the prepared request,
  and the token request's body holds the client secret).

urllib3's ``Retry`` would not do here: every wait must go through the injectable
``sleep`` (tests record them), a 429 must also defer the shared pacer, and the 401
renewal needs the token cache.
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
import typing as t
from collections.abc import Mapping

import requests

from .._credentials import auth0_base_url
from .._http import USER_AGENT
from .._http import NoResponse
from .._http import SessionClient
from .._http import excerpt
from .._http import new_session
from .._http import send
from .._http import server_wait
from .._text import mask_secrets as redact
from .._text import register_secret
from ..config import DEFAULT_TIMEOUT
from ..exceptions import Auth0APIError
from ..exceptions import Auth0ConnectionError
from .token import FALLBACK_EXPIRES_IN
from .token import TokenCache

if t.TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable

#: One logger for the whole client, as when it was one module.
logger = logging.getLogger(__package__)

#: Statuses worth retrying: rate limited, request timeout, server errors.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: First exponential-backoff delay in seconds, before jitter (Auth0's SDKs start at ~1 s).
BACKOFF_BASE = 1.0
#: Longest excerpt of an error body kept in an exception message.
EXCERPT_LENGTH = 200


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


def _invalid_response(message: str, status: int = 200) -> Auth0APIError:
    """Auth0 answered, but not with what the call expects: retryable (a proxy, a glitch)."""
    return Auth0APIError(status, "invalid_response", message, retryable=True)


class Transport(SessionClient):
    """Retries, pacing, the token and error handling of :class:`..ManagementClient`
    (its constructor's parameters are documented there)."""

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
        # A bare domain means https; a full URL (the emulator) is kept as given. One rule
        # with KEEN_SIGNUP_AUTH0_DOMAIN's; the message does not quote the value.
        #: Base URL without a trailing slash, e.g. ``https://tenant.eu.auth0.com``.
        self.base_url = auth0_base_url(domain, "the Auth0 domain")
        #: The Management API audience sent with every token request.
        self.audience = audience or f"{self.base_url}/api/v2/"
        #: The M2M application's client id (not a secret).
        self.client_id = client_id
        self._client_secret = client_secret
        register_secret(client_secret)
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self._sleep = sleep
        self._clock = clock
        self._owns_session = session is None
        self._session = session if session is not None else new_session()
        self._random = random.Random()
        self._tokens = TokenCache(self._fetch_token, clock, token_leeway)
        #: Client-side pacing of Management API calls (``None``: only 429s slow us down).
        self.max_requests_per_second = max_requests_per_second
        self._pacer = (
            _Pacer(max_requests_per_second, sleep) if max_requests_per_second is not None else None
        )

    def close(self) -> None:
        """Forget the token and close the HTTP session if this client created it."""
        self._tokens.current = None
        super().close()

    # -- token ------------------------------------------------------------------------

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

    def _call(self, method: str, path: str, **request: t.Any) -> t.Any:
        """A Management API call with a bearer token; one token renewal on a 401.
        ``request`` is :meth:`_send`'s ``params`` or ``json_body``."""
        token, fetched_now = self._tokens.get()
        try:
            return self._send(method, path, token=token, **request)
        except Auth0APIError as exc:
            if exc.status_code != 401 or fetched_now:
                raise
        # The cached token was refused (revoked, signing key rotated, ...): renew it once.
        logger.warning("Auth0 refused the cached Management API token; fetching a new one")
        self._tokens.drop(token)
        token, _ = self._tokens.get()
        return self._send(method, path, token=token, **request)

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
            if token is not None and self._pacer is not None:
                self._pacer.wait()
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
            last = retry >= self.max_retries
            if isinstance(response, NoResponse):
                if not response.transient or last:
                    raise self._no_response(response, method, path)
                why, wait = response.reason, self._backoff(retry)
            else:
                status = response.status_code
                logger.debug("Auth0 %s %s -> %d", method, path, status)
                if 200 <= status < 300:
                    return self._json(response, method, path)
                error = self._error(response, token)
                if status not in RETRYABLE_STATUSES or last:
                    if status == 429 and error.retry_after is None:
                        # Tell the caller how long to back off even without Auth0's hint.
                        error.retry_after = self._backoff(retry)
                    level = logging.WARNING if error.retryable else logging.DEBUG
                    code = error.error_code
                    logger.log(level, "Auth0 %s %s failed: %d %s", method, path, status, code)
                    raise error
                hint = error.retry_after
                wait = min(self._backoff(retry) if hint is None else hint, self.max_retry_wait)
                if status == 429 and self._pacer is not None:
                    self._pacer.defer(wait)
                why = f"{status} {error.error_code}"
            retry += 1
            logger.warning(
                "Auth0 %s %s failed (%s); retry %d of %d in %.2fs",
                method,
                path,
                why,
                retry,
                self.max_retries,
                wait,
            )
            self._sleep(wait)

    def _no_response(self, response: NoResponse, method: str, path: str) -> Auth0ConnectionError:
        where = redact(self.base_url)
        if response.transient:
            failure = f"no response from Auth0 at {where} for {method} {path}"
        else:
            failure = f"could not send {method} {path} to Auth0 at {where}"
        return Auth0ConnectionError(f"{failure}: {response.reason}")

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

    def _object(self, method: str, path: str, **options: t.Any) -> dict[str, t.Any]:
        """:meth:`_call` for an answer that must be a JSON object."""
        result = self._call(method, path, **options)
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
        try:
            body = response.json()
        except ValueError:
            body = None
        fields: dict[str, t.Any] = body if isinstance(body, dict) else {}
        code = fields.get("errorCode") or fields.get("error") or fields.get("code")
        message = fields.get("error_description") or fields.get("message") or fields.get("error")
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
