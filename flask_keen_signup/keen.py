"""The Keen write client: single and batch writes on one pooled ``requests.Session``.

This module only *talks* to Keen and *classifies* what it heard; deciding what to do about
it (retry with backoff, split, dead-letter) is the sender's job (``delivery/``). Two kinds
of failure exist, and they reach the caller differently:

* **The whole request failed** (no answer, or a non-2xx status). :meth:`KeenClient.add_event`
  and :meth:`KeenClient.add_events` raise:

  ===========================================  ============================================
  what happened                                raised
  ===========================================  ============================================
  connection refused/reset, DNS, TLS, timeout  :class:`~.KeenConnectionError` (retryable)
  408, 429, 5xx                                :class:`~.KeenAPIError`, ``retryable=True``,
                                               ``retry_after`` from ``Retry-After``
  413                                          :class:`~.KeenRequestTooLargeError`
                                               (split the batch, see :func:`split_by_size`)
  other 4xx *with Keen's error body*           :class:`~.KeenAPIError`, ``retryable=False``
  other 4xx without it (an HTML page from a    :class:`~.KeenAPIError`, ``retryable=True``
  proxy or load balancer, an empty or
  non-JSON body, JSON without ``error_code``)
  ===========================================  ============================================

  Only Keen's own verdict is final: a 4xx whose body is not Keen's
  ``{"message", "error_code"}`` comes from something in front of Keen (a proxy, a load
  balancer, a captive portal) and says nothing about the events, so it is retried with
  backoff like a 5xx. Dead-lettering on it would drop every event of a batch after one try.

* **Some events of a 200 batch failed.** Keen answers a batch with 200 and one result per
  event; :meth:`KeenClient.add_events` returns them as a :class:`BatchResult` in input
  order, each :attr:`Outcome.DELIVERED`, :attr:`Outcome.PERMANENT` (the event itself is
  invalid: retrying the same bytes can only fail again) or :attr:`Outcome.RETRYABLE`.

The write key is sent in the ``Authorization`` header only. It is never put in a URL,
a log line, a ``repr`` or an exception: every message is built here from status codes and
Keen's own (redacted, truncated) error text, and exceptions from ``requests`` (whose
``.request`` carries the headers) are never chained to the ones raised here.
"""

from __future__ import annotations

import json
import logging
import re
import time
import typing as t
from urllib.parse import quote

import requests
from requests.auth import AuthBase

from ._http import MAX_RETRY_AFTER as MAX_RETRY_AFTER
from ._http import USER_AGENT as USER_AGENT
from ._http import VERSION
from ._http import NoResponse
from ._http import SessionClient
from ._http import check_timeout
from ._http import excerpt
from ._http import header_value_problem
from ._http import new_session
from ._http import parse_retry_after as parse_retry_after
from ._http import send
from ._text import mask_secrets
from ._text import register_secret
from .config import DEFAULT_API_URL
from .config import DEFAULT_TIMEOUT
from .events import MAX_EVENT_BYTES as MAX_EVENT_BYTES
from .exceptions import KeenAPIError
from .exceptions import KeenConnectionError
from .exceptions import KeenRequestTooLargeError
from .keen_batch import BATCH_ENVELOPE_BYTES as BATCH_ENVELOPE_BYTES
from .keen_batch import DUPLICATE_EVENT_ERRORS as DUPLICATE_EVENT_ERRORS
from .keen_batch import MAX_REQUEST_BYTES as MAX_REQUEST_BYTES
from .keen_batch import PERMANENT_EVENT_ERRORS as PERMANENT_EVENT_ERRORS
from .keen_batch import BatchResult as BatchResult
from .keen_batch import EventResult as EventResult
from .keen_batch import Outcome as Outcome
from .keen_batch import assemble_batch as assemble_batch
from .keen_batch import batch_results
from .keen_batch import encode_batch as encode_batch
from .keen_batch import encode_event as encode_event
from .keen_batch import split_by_size as split_by_size

logger = logging.getLogger(__name__)

#: Whole-request statuses worth retrying: the server or something in front of it is
#: overloaded or briefly broken. Every other non-2xx is a verdict on the request itself.
RETRYABLE_STATUSES = frozenset({408, 429})

#: Sent as ``Keen-Sdk``, in the format of Keen's own SDKs (``python-0.7.0``), so Keen can
#: tell this client's traffic apart.
KEEN_SDK = f"flask-keen-signup-{VERSION}"

class _KeyAuth(AuthBase):
    """Put the raw key in ``Authorization``, Keen's header scheme.

    As ``auth=`` rather than a headers dict: no local variable of ours holds the key while
    a request runs, and ``requests`` does not look up ``.netrc`` credentials that would
    replace it. Its ``repr`` is object's, which shows no attribute.
    """

    def __init__(self, key: str) -> None:
        self._key = key

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = self._key
        return r


class _KeenProject(SessionClient):
    """What the write and the delete clients share: one project, one key (checked, kept in
    :class:`_KeyAuth` only), the base URL, the timeout, the pooled session, and
    :meth:`_request`, which sends and classifies. ``key_name`` names the key in messages."""

    def __init__(
        self,
        project_id: str,
        key: str,
        key_name: str,
        api_url: str,
        timeout: tuple[float, float],
        session: requests.Session | None = None,
        pool_maxsize: int = 10,
        user_agent: str | None = None,
    ) -> None:
        # The messages name the problem, never the key or the URL (a malformed URL may
        # hold a key); the key is registered to be masked everywhere (._text).
        if not project_id:
            raise ValueError("project_id is required")
        if not key:
            raise ValueError(f"{key_name} is required")
        problem = header_value_problem(key)
        if problem is not None:
            raise ValueError(f"{key_name} cannot be sent in an HTTP header: it {problem}")
        register_secret(key)
        if not re.match(r"^https?://[^/\s?#@]+(/[^\s?#]*)?$", api_url):
            raise ValueError(
                "api_url must be an http(s) base URL without credentials, query or fragment "
                "(the value is not shown: it may hold a key)"
            )
        self.project_id = project_id
        self.api_url = api_url.rstrip("/")
        self.timeout: tuple[float, float] = check_timeout(timeout)
        self._auth = _KeyAuth(key)
        self._headers = {"Keen-Sdk": KEEN_SDK, "User-Agent": user_agent or USER_AGENT}
        self._owns_session = session is None
        self._pool_maxsize = pool_maxsize
        self._session = session if session is not None else new_session(pool_maxsize)
        self._events_url = f"{self.api_url}/3.0/projects/{quote(project_id, safe='')}/events"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} project_id={self.project_id!r} api_url={self.api_url!r}>"

    def event_url(self, collection: str) -> str:
        """The single-write (and delete) URL of ``collection``, percent-encoded (``a/b`` ->
        ``a%2Fb``)."""
        return f"{self._events_url}/{quote(collection, safe='')}"

    def _request(
        self, method: str, url: str, *, request_bytes: int = 0, **kwargs: t.Any
    ) -> requests.Response:
        """Send one request to Keen and return its 2xx response; raise for anything else.

        Exceptions are raised here, outside any ``except`` block (:func:`._http.send`), and
        the response, whose ``.request`` carries the key, is dropped before: nothing chains
        a ``requests`` exception or keeps the key in the traceback's frames.

        :raises KeenConnectionError: no answer.
        :raises KeenAPIError: a non-2xx answer (see the module doc for which are retryable).
        """
        started = time.monotonic()
        answer = send(
            self._session,
            method,
            url,
            timeout=self.timeout,
            auth=self._auth,
            allow_redirects=False,
            headers=self._headers,
            **kwargs,
        )
        shown = mask_secrets(url)
        if isinstance(answer, NoResponse):
            logger.debug(
                "%s %s: no answer from Keen: %s (%d bytes)",
                method,
                shown,
                answer.reason,
                request_bytes,
            )
            where = mask_secrets(self.api_url)
            raise KeenConnectionError(f"No answer from Keen ({where}): {answer.reason}")
        elapsed_ms = (time.monotonic() - started) * 1000
        status = answer.status_code
        logger.debug(
            "%s %s -> %d (%d bytes, %.0f ms)", method, shown, status, request_bytes, elapsed_ms
        )
        if 200 <= status < 300:
            return answer
        error = _api_error(answer, self._auth._key, request_bytes)
        del answer
        raise error


# --------------------------------------------------------------------------- the client


class KeenClient(_KeenProject):
    """Write events to one Keen project.

    Thread-safety: one client may be shared by the sender thread and request threads
    (``sync`` delivery). After ``__init__`` it never mutates its ``requests.Session``: the
    key and headers are passed per request, adapters are mounted once. What it relies on is
    that urllib3's connection pool hands each connection to one thread at a time and that
    the session's cookie jar locks itself, which is how ``requests`` is used by threaded
    apps everywhere (``requests`` itself does not promise more). Do not call :meth:`close`
    while other threads still send.

    :param project_id: the Keen project id.
    :param write_key: a Write Key, Master Key or Access Key with ``writes``.
    :param api_url: base URL, ``https://api.keen.io`` or an emulator's ``.url``.
    :param timeout: ``(connect, read)`` seconds, both required: a login must never wait on
        a silent Keen (Keen's own Python client defaults to 305 s).
    :param session: a session to use instead of the client's own. It is used as given (no
        adapter mounted) and not closed by :meth:`close`.
    :param pool_maxsize: connections kept per host, at least the number of threads that
        send at once; more threads still work but open short-lived extra connections.
    :param user_agent: ``User-Agent`` to send instead of the default.
    """

    def __init__(
        self,
        project_id: str,
        write_key: str,
        *,
        api_url: str = DEFAULT_API_URL,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        session: requests.Session | None = None,
        pool_maxsize: int = 10,
        user_agent: str | None = None,
    ) -> None:
        args = (api_url, timeout, session, pool_maxsize, user_agent)
        super().__init__(project_id, write_key, "write_key", *args)
        self._headers["Content-Type"] = "application/json"

    def reset_after_fork(self) -> None:
        """Give a forked child its own connection pool (pooled sockets must not be shared).

        The parent's session is abandoned, not closed: its pool lock may have been held by
        a thread that does not exist in the child. A session passed in by the caller is
        the caller's to manage and is left alone.
        """
        if self._owns_session:
            self._session = new_session(self._pool_maxsize)

    # ----------------------------------------------------------------------- writes

    def add_event(self, collection: str, event: t.Mapping[str, t.Any]) -> None:
        """Write one event (``POST /3.0/projects/{pid}/events/{collection}``).

        Keen answers ``201 {"created": true}``; any 2xx counts, like Keen's own SDKs. So
        does a ``409`` naming a :data:`DUPLICATE_EVENT_ERRORS` error: the first copy of the
        event is already stored.

        :raises KeenConnectionError: no answer (retryable).
        :raises KeenRequestTooLargeError: 413.
        :raises KeenAPIError: any other non-2xx; ``.retryable`` says whether to try again.
        :raises ValueError, TypeError: the event cannot be encoded (:func:`encode_event`).
        """
        try:
            body = encode_event(event)
            self._request("POST", self.event_url(collection), request_bytes=len(body), data=body)
        except KeenAPIError as exc:
            if exc.status_code == 409 and exc.error_code in DUPLICATE_EVENT_ERRORS:
                logger.debug(
                    "duplicate event in %r: already stored, counted as delivered", collection
                )
                return
            raise

    def add_events(
        self,
        batch: t.Mapping[str, t.Sequence[t.Mapping[str, t.Any]]],
        *,
        body: bytes | None = None,
    ) -> BatchResult:
        """Write a batch (``POST /3.0/projects/{pid}/events``) and read each event's result.

        A 2xx answer always yields one result per input event. Where the answer does not
        say clearly what became of an event (not JSON, a collection missing, an item that
        is not ``{"success": ...}``; and for *every* event of a collection whose count of
        results differs from the events sent: results pair by position only) that event is
        :attr:`Outcome.RETRYABLE` with a description saying why: sending it again is safe
        (its ``keen.uniqueness_token`` makes Keen keep one copy) and assuming it landed
        could lose it.

        :param batch: ``{collection: [event, ...]}``. Used to know how many results to
            expect; encoded unless ``body`` is given.
        :param body: the already encoded body (:func:`encode_batch` or
            :func:`assemble_batch` of the same events), so the sender need not encode
            twice.
        :raises: as :meth:`add_event`, for a failed request as a whole.
        """
        if body is None:
            body = encode_batch(batch)
        response = self._request("POST", self._events_url, request_bytes=len(body), data=body)
        results = batch_results(batch, response, self._auth._key)
        return BatchResult(results=results, request_bytes=len(body))


def _api_error(response: requests.Response, key: str, request_bytes: int) -> KeenAPIError:
    """The exception for a non-2xx answer, with Keen's error code and message when the body
    is Keen's own error shape (a JSON object with a string ``error_code``), else the status
    as the code (as Keen's Python client does for an nginx or load-balancer page) and an
    excerpt of what came back. Every text is an :func:`._http.excerpt` with ``key`` masked,
    should a server or proxy ever echo it back.
    """
    status = response.status_code
    secrets = (key,)
    text = response.content.decode("utf-8", errors="replace")
    try:
        data: t.Any = json.loads(text)
    except ValueError:
        data = None
    from_keen = isinstance(data, dict) and isinstance(data.get("error_code"), str)
    if from_keen and data["error_code"]:
        message = data.get("message")
        error_code = excerpt(data["error_code"], 100, secrets=secrets)
        message = excerpt(message if isinstance(message, str) else "", secrets=secrets)
    else:
        from_keen = False
        reason = response.reason if isinstance(response.reason, str) else ""
        reason = excerpt(reason, 100, secrets=secrets)
        body = excerpt(text, secrets=secrets)
        if data is None:
            kind = response.headers.get("Content-Type", "no content type").split(";")[0]
            what = f"(not a Keen error body, {kind})" + (f": {body}" if body else " (empty body)")
        else:
            what = f"(unexpected JSON error body): {body}"
        error_code = str(status)
        message = excerpt(f"{reason} {what}".strip(), secrets=secrets)
    if status == 413:
        return KeenRequestTooLargeError(error_code, message, request_bytes=request_bytes)
    # Not Keen's verdict (see the module doc): transient, whatever the status.
    retryable = status in RETRYABLE_STATUSES or 500 <= status < 600 or not from_keen
    retry_after = parse_retry_after(response.headers.get("Retry-After")) if retryable else None
    return KeenAPIError(status, error_code, message, retryable=retryable, retry_after=retry_after)
