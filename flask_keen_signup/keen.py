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

import dataclasses
import enum
import json
import logging
import re
import time
import typing as t
from urllib.parse import quote

import requests
from requests.auth import AuthBase

from ._http import MAX_RETRY_AFTER
from ._http import USER_AGENT
from ._http import VERSION
from ._http import NoResponse
from ._http import SessionClient
from ._http import check_timeout
from ._http import excerpt as _excerpt
from ._http import header_value_problem
from ._http import new_session
from ._http import parse_retry_after
from ._http import redact
from ._http import send
from ._text import register_secret
from .config import DEFAULT_API_URL
from .config import DEFAULT_TIMEOUT
from .events import MAX_EVENT_BYTES
from .exceptions import KeenAPIError
from .exceptions import KeenConnectionError
from .exceptions import KeenRequestTooLargeError

if t.TYPE_CHECKING:  # pragma: no cover
    pass

logger = logging.getLogger(__name__)

#: Keen's cap on a batch request body, in bytes (413 above it). Third-party figure that
#: Keen's own docs do not contradict; the sender stays at or under it.
MAX_REQUEST_BYTES = 10_000_000
#: Bytes :func:`split_by_size` reserves for a one-collection batch envelope,
#: ``{"<collection>":[`` ... ``]}``: a valid collection name is at most 64 ASCII characters,
#: which JSON escapes to at most 6 bytes each.
BATCH_ENVELOPE_BYTES = 2 + (2 + 64 * 6) + 1 + 2

#: Per-event error names after which resending the *same* event can only fail again.
#:
#: The first three are the ones Keen's Java and iOS SDKs drop queued events for. The
#: others are also verdicts on the event's own content, so they are
#: deterministic too: ``NamespaceTypeError`` (``keen`` is not an object),
#: ``InvalidKeenNamespaceProperty`` (bad property inside ``keen``, e.g. a uniqueness token
#: over 64 characters), ``ListsOfNonPrimitivesNotAllowedError`` (arrays of objects under the
#: older rules), ``InvalidEventError`` (not a JSON object) and ``EventTooLargeError`` (the
#: emulator's name for an oversize event; Keen's own name is undocumented). Any other name,
#: including ones Keen may add later and ``InternalServerError``, is treated as retryable:
#: retrying an unknown error costs an attempt, dead-lettering it could cost the event.
#: Permanent failures are not lost either: the sender dead-letters them with the reason.
PERMANENT_EVENT_ERRORS: frozenset[str] = frozenset(
    {
        "InvalidCollectionNameError",
        "InvalidPropertyNameError",
        "InvalidPropertyValueError",
        "NamespaceTypeError",
        "InvalidKeenNamespaceProperty",
        "ListsOfNonPrimitivesNotAllowedError",
        "InvalidEventError",
        "EventTooLargeError",
    }
)

#: Error names that mean "this event's ``keen.uniqueness_token`` was already stored": the
#: event *is* in Keen (its first copy), so it counts as delivered. Keen's real answer to a
#: duplicate is undocumented (a plain success is the default guess); this is the name the
#: bundled emulator uses when configured to report duplicates as errors (409 for a single
#: write, a failed item in a batch). Retrying such an event could never succeed.
DUPLICATE_EVENT_ERRORS: frozenset[str] = frozenset({"DuplicateEventError"})

#: Whole-request statuses worth retrying: the server or something in front of it is
#: overloaded or briefly broken. Every other non-2xx is a verdict on the request itself.
RETRYABLE_STATUSES = frozenset({408, 429})

#: Sent as ``Keen-Sdk``, in the format of Keen's own SDKs (``python-0.7.0``), so Keen can
#: tell this client's traffic apart.
KEEN_SDK = f"flask-keen-signup-{VERSION}"

__all__ = [
    "BATCH_ENVELOPE_BYTES",
    "DUPLICATE_EVENT_ERRORS",
    "KEEN_SDK",
    "MAX_EVENT_BYTES",
    "MAX_REQUEST_BYTES",
    "MAX_RETRY_AFTER",
    "PERMANENT_EVENT_ERRORS",
    "RETRYABLE_STATUSES",
    "USER_AGENT",
    "BatchResult",
    "EventResult",
    "KeenClient",
    "Outcome",
    "assemble_batch",
    "encode_batch",
    "encode_event",
    "parse_retry_after",
    "split_by_size",
]


class Outcome(enum.Enum):
    """What became of one event of a batch."""

    #: Keen stored it (or, with a uniqueness token already seen, kept the first copy).
    DELIVERED = "delivered"
    #: Not stored, for a reason that may go away: send it again later.
    RETRYABLE = "retryable"
    #: Not stored, and the same event would be refused again: dead-letter it.
    PERMANENT = "permanent"


@dataclasses.dataclass(frozen=True)
class EventResult:
    """Keen's verdict on one event of a batch.

    :param outcome: delivered, retryable or permanent.
    :param error_name: Keen's ``error.name`` (e.g. ``InvalidPropertyNameError``), if any.
    :param description: Keen's ``error.description``, or why this client could not read a
        result for the event.
    """

    outcome: Outcome
    error_name: str | None = None
    description: str | None = None

    @property
    def delivered(self) -> bool:
        return self.outcome is Outcome.DELIVERED


_DELIVERED = EventResult(Outcome.DELIVERED)


@dataclasses.dataclass(frozen=True)
class BatchResult:
    """The per-event results of one batch request.

    :param results: for each collection of the request, one :class:`EventResult` per
        event, in the order the events were given.
    :param request_bytes: the size of the request body that was sent.
    """

    results: dict[str, list[EventResult]]
    request_bytes: int

    def __len__(self) -> int:
        return sum(len(items) for items in self.results.values())

    @property
    def delivered_count(self) -> int:
        return self.count(Outcome.DELIVERED)

    @property
    def all_delivered(self) -> bool:
        return all(r.delivered for items in self.results.values() for r in items)

    def count(self, outcome: Outcome) -> int:
        """How many events ended with ``outcome``."""
        return sum(r.outcome is outcome for items in self.results.values() for r in items)

    def indices(self, outcome: Outcome) -> dict[str, list[int]]:
        """Input positions of the events that ended with ``outcome``, per collection.

        Collections with none are left out, so ``result.indices(Outcome.RETRYABLE)`` is
        exactly what to send again.
        """
        found: dict[str, list[int]] = {}
        for collection, items in self.results.items():
            positions = [i for i, r in enumerate(items) if r.outcome is outcome]
            if positions:
                found[collection] = positions
        return found

    @property
    def failed(self) -> list[tuple[str, int, EventResult]]:
        """``(collection, index, result)`` of every event that was not delivered."""
        return [
            (collection, i, r)
            for collection, items in self.results.items()
            for i, r in enumerate(items)
            if not r.delivered
        ]


# --------------------------------------------------------------------------- encoding


def encode_event(event: t.Mapping[str, t.Any]) -> bytes:
    """Encode one event the way it goes on the wire: compact UTF-8 JSON.

    The sender measures and stores these bytes, so sizes are exact and a batch can be
    assembled from them (:func:`assemble_batch`) without encoding twice.

    :raises ValueError: for NaN or infinite floats (not JSON; Keen would refuse the whole
        request) and for strings that are not valid Unicode (lone surrogates).
    :raises TypeError: for values JSON cannot represent.
    """
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def _encode_collection(collection: str) -> bytes:
    return json.dumps(collection, ensure_ascii=False).encode("utf-8")


def assemble_batch(encoded: t.Mapping[str, t.Sequence[bytes]]) -> bytes:
    """Build a batch body from events already encoded with :func:`encode_event`."""
    parts = [
        _encode_collection(collection) + b":[" + b",".join(events) + b"]"
        for collection, events in encoded.items()
    ]
    return b"{" + b",".join(parts) + b"}"


def encode_batch(batch: t.Mapping[str, t.Sequence[t.Mapping[str, t.Any]]]) -> bytes:
    """Encode a batch body, ``{"collection": [event, ...], ...}``, compact UTF-8 JSON.

    :raises ValueError, TypeError: as :func:`encode_event`.
    """
    return assemble_batch(
        {collection: [encode_event(e) for e in events] for collection, events in batch.items()}
    )


def split_by_size(
    encoded_events: t.Sequence[bytes],
    max_bytes: int = MAX_REQUEST_BYTES,
    *,
    max_events: int | None = None,
    envelope_bytes: int = BATCH_ENVELOPE_BYTES,
) -> list[range]:
    """Cut a run of encoded events into consecutive chunks that each fit in one request.

    Each chunk, sent as a one-collection batch (``{"c":[e1,e2,...]}``), makes a body of at
    most ``max_bytes``: the events, one comma between each two, and ``envelope_bytes`` for
    the rest. The sender uses it to cap batches before sending, and after a 413 with
    ``max_bytes=error.request_bytes // 2`` (Keen's real limit is then lower than assumed).

    An event that alone does not fit gets a chunk of its own: it cannot be sent at this
    size, and it must not hold up the others. A 413 on a one-event request is therefore
    final for that event.

    :param max_events: also cap the number of events per chunk (the batch size).
    :returns: index ranges into ``encoded_events``, in order, covering every index once.
    """
    if max_bytes <= 0:
        raise ValueError("max_bytes must be positive")
    if max_events is not None and max_events < 1:
        raise ValueError("max_events must be at least 1")
    budget = max_bytes - envelope_bytes
    chunks: list[range] = []
    start = 0
    size = 0
    for i, event in enumerate(encoded_events):
        cost = len(event) + (1 if i > start else 0)  # the comma before it
        full = max_events is not None and i - start >= max_events
        if i > start and (size + cost > budget or full):
            chunks.append(range(start, i))
            start, size, cost = i, 0, len(event)
        size += cost
    if start < len(encoded_events):
        chunks.append(range(start, len(encoded_events)))
    return chunks


# --------------------------------------------------------------------------- responses


def check_key(name: str, key: str) -> None:
    """Refuse a key that is missing or cannot travel in the ``Authorization`` header, and
    register it to be masked everywhere (:func:`._text.register_secret`).

    :raises ValueError: naming ``name`` and the problem, never the key.
    """
    if not key:
        raise ValueError(f"{name} is required")
    problem = header_value_problem(key)
    if problem is not None:
        raise ValueError(f"{name} cannot be sent in an HTTP header: it {problem}")
    register_secret(key)


def check_api_url(api_url: str) -> None:
    """Refuse an ``api_url`` that is not an http(s) base URL without credentials, query or
    fragment. The message does not quote it: a malformed URL may hold a key."""
    if not re.match(r"^https?://[^/\s?#@]+(/[^\s?#]*)?$", api_url):
        raise ValueError(
            "api_url must be an http(s) base URL without credentials, query or fragment "
            "(the value is not shown: it may hold a key)"
        )


class _KeyAuth(AuthBase):
    """Put the raw key in ``Authorization``, Keen's header scheme.

    As ``auth=`` rather than a headers dict: no local variable of ours holds the key while
    a request runs, and ``requests`` does not look up ``.netrc`` credentials that would
    replace it.
    """

    def __init__(self, key: str) -> None:
        self._key = key

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = self._key
        return r

    def __repr__(self) -> str:
        return "<KeyAuth ***>"


# --------------------------------------------------------------------------- the client


class KeenClient(SessionClient):
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
        if not project_id:
            raise ValueError("project_id is required")
        check_key("write_key", write_key)
        check_api_url(api_url)
        self.project_id = project_id
        self.api_url = api_url.rstrip("/")
        self.timeout: tuple[float, float] = check_timeout(timeout)
        self._auth = _KeyAuth(write_key)
        self._headers = {
            "Content-Type": "application/json",
            "Keen-Sdk": KEEN_SDK,
            "User-Agent": user_agent or USER_AGENT,
        }
        self._owns_session = session is None
        self._pool_maxsize = pool_maxsize
        self._session = session if session is not None else self._new_session()
        base = f"{self.api_url}/3.0/projects/{quote(project_id, safe='')}/events"
        self._batch_url = base
        self._event_url_prefix = base + "/"

    def __repr__(self) -> str:
        return f"<KeenClient project_id={self.project_id!r} api_url={self.api_url!r}>"

    def _new_session(self) -> requests.Session:
        # No urllib3 retries: the sender owns retrying, with backoff and Retry-After.
        return new_session(self._pool_maxsize)

    def reset_after_fork(self) -> None:
        """Give a forked child its own connection pool (pooled sockets must not be shared).

        The parent's session is abandoned, not closed: its pool lock may have been held by
        a thread that does not exist in the child. A session passed in by the caller is
        the caller's to manage and is left alone.
        """
        if self._owns_session:
            self._session = self._new_session()

    def event_url(self, collection: str) -> str:
        """The single-write URL of ``collection``, percent-encoded (``a/b`` -> ``a%2Fb``)."""
        return self._event_url_prefix + quote(collection, safe="")

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
            self._post(self.event_url(collection), encode_event(event))
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
        response = self._post(self._batch_url, body)
        return BatchResult(
            results=_parse_batch_results(batch, response, self._auth._key), request_bytes=len(body)
        )

    def _post(self, url: str, body: bytes) -> requests.Response:
        return request(
            self._session,
            "POST",
            url,
            auth=self._auth,
            timeout=self.timeout,
            api_url=self.api_url,
            request_bytes=len(body),
            data=body,
            headers=self._headers,
        )


def request(
    session: requests.Session,
    method: str,
    url: str,
    *,
    auth: _KeyAuth,
    timeout: tuple[float, float],
    api_url: str,
    request_bytes: int = 0,
    **kwargs: t.Any,
) -> requests.Response:
    """Send one request to Keen and return its 2xx response; raise for anything else.

    Shared by :class:`KeenClient` and :class:`~.keen_admin.KeenAdminClient`. Exceptions
    are raised here, outside any ``except`` block (:func:`._http.send`), and the response,
    whose ``.request`` carries the key, is dropped before: nothing chains a ``requests``
    exception or keeps the key in the traceback's frames.

    :raises KeenConnectionError: no answer.
    :raises KeenAPIError: a non-2xx answer (see the module doc for which are retryable).
    """
    started = time.monotonic()
    answer = send(session, method, url, timeout=timeout, auth=auth, allow_redirects=False, **kwargs)
    if isinstance(answer, NoResponse):
        logger.debug(
            "%s %s: no answer from Keen: %s (%d bytes)",
            method,
            redact(url),
            answer.reason,
            request_bytes,
        )
        raise KeenConnectionError(f"No answer from Keen ({redact(api_url)}): {answer.reason}")
    elapsed_ms = (time.monotonic() - started) * 1000
    status = answer.status_code
    logger.debug(
        "%s %s -> %d (%d bytes, %.0f ms)", method, redact(url), status, request_bytes, elapsed_ms
    )
    if 200 <= status < 300:
        return answer
    error = _api_error(answer, auth._key, request_bytes)
    del answer
    raise error


def _api_error(response: requests.Response, key: str, request_bytes: int) -> KeenAPIError:
    status = response.status_code
    error_code, message, from_keen = _read_error_body(response, key)
    if status == 413:
        return KeenRequestTooLargeError(error_code, message, request_bytes=request_bytes)
    retryable = (
        status in RETRYABLE_STATUSES
        or 500 <= status < 600
        # Not Keen's verdict (see the module doc): transient, whatever the status.
        or not from_keen
    )
    retry_after = parse_retry_after(response.headers.get("Retry-After")) if retryable else None
    return KeenAPIError(status, error_code, message, retryable=retryable, retry_after=retry_after)


def _read_error_body(response: requests.Response, key: str) -> tuple[str, str, bool]:
    """Keen's ``(error_code, message, True)``, or ``(str(status), excerpt, False)``.

    Every text is an :func:`._http.excerpt` with ``key`` masked, should a server or proxy
    ever echo it back.

    The fallback mirrors Keen's Python client, which uses the status as the code when an
    nginx or load-balancer page comes back instead of Keen's JSON. The flag says whether
    the body was Keen's own error shape (a JSON object with a string ``error_code``).
    """
    secrets = (key,)
    text = response.content.decode("utf-8", errors="replace")
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error_code"), str) and data["error_code"]:
        message = data.get("message")
        return (
            _excerpt(data["error_code"], 100, secrets=secrets),
            _excerpt(message if isinstance(message, str) else "", secrets=secrets),
            True,
        )
    status = str(response.status_code)
    reason = response.reason if isinstance(response.reason, str) else ""
    reason = _excerpt(reason, 100, secrets=secrets)
    excerpt = _excerpt(text, secrets=secrets)
    if data is None:
        kind = response.headers.get("Content-Type", "no content type").split(";")[0]
        shown = f": {excerpt}" if excerpt else " (empty body)"
        text = f"{reason} (not a Keen error body, {kind}){shown}".strip()
        return status, _excerpt(text, secrets=secrets), False
    text = f"{reason} (unexpected JSON error body): {excerpt}".strip()
    return status, _excerpt(text, secrets=secrets), False


def _parse_batch_results(
    batch: t.Mapping[str, t.Sequence[t.Mapping[str, t.Any]]],
    response: requests.Response,
    key: str,
) -> dict[str, list[EventResult]]:
    """Match a 2xx batch answer to the input, event by event, without ever guessing success."""
    try:
        data: t.Any = json.loads(response.content.decode("utf-8"))
    except ValueError:
        data = None
    if not isinstance(data, dict):
        unclear = EventResult(
            Outcome.RETRYABLE,
            description=f"Keen answered {response.status_code} without a JSON object of results",
        )
        logger.debug("batch answer is not a JSON object: %s", _excerpt(response.text, 120))
        return {collection: [unclear] * len(events) for collection, events in batch.items()}

    results: dict[str, list[EventResult]] = {}
    for collection, events in batch.items():
        items = data.get(collection)
        if not isinstance(items, list):
            missing = EventResult(
                Outcome.RETRYABLE, description="Keen's answer has no results for this collection"
            )
            results[collection] = [missing] * len(events)
            continue
        if len(items) != len(events):
            # Results pair with events by position only: with a count that differs, no
            # result can be paired with its event. Every event of the collection is sent
            # again (its uniqueness token keeps one copy), never assumed delivered.
            logger.debug(
                "batch answer for %r has %d results for %d events",
                collection,
                len(items),
                len(events),
            )
            unpaired = EventResult(
                Outcome.RETRYABLE,
                description=f"Keen's answer has {len(items)} results for {len(events)} events",
            )
            results[collection] = [unpaired] * len(events)
            continue
        results[collection] = [_event_result(item, key) for item in items]
    return results


def _event_result(item: t.Any, key: str) -> EventResult:
    if not isinstance(item, dict) or not isinstance(item.get("success"), bool):
        return EventResult(
            Outcome.RETRYABLE, description="Keen's result for this event is not understood"
        )
    if item["success"]:
        return _DELIVERED
    error = item.get("error")
    name = error.get("name") if isinstance(error, dict) else None
    description = error.get("description") if isinstance(error, dict) else None
    name = _excerpt(name, 100, secrets=(key,)) if isinstance(name, str) else None
    description = _excerpt(description, secrets=(key,)) if isinstance(description, str) else None
    if name in DUPLICATE_EVENT_ERRORS:
        return EventResult(
            Outcome.DELIVERED,
            error_name=name,
            description=description or "already stored: its uniqueness token was seen before",
        )
    if not name and not description:
        description = "Keen reported a failure without saying why"
    outcome = Outcome.PERMANENT if name in PERMANENT_EVENT_ERRORS else Outcome.RETRYABLE
    return EventResult(outcome, error_name=name, description=description)
