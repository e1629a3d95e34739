"""User export jobs: create one, wait for it, stream its file one user at a time.

``POST /api/v2/jobs/users-exports``, then ``GET /api/v2/jobs/{id}`` until it completes,
then the file at its ``location`` is downloaded *without* the bearer token (it lives on a
storage host) and parsed as it arrives (:mod:`flask_keen_signup.users_export`), never held
whole. A refused or failed download asks the job for a fresh link and tries again.
"""

from __future__ import annotations

import logging
import math
import re
import typing as t
from collections.abc import Iterator
from collections.abc import Mapping
from urllib.parse import quote

import requests
import urllib3

from .._http import USER_AGENT
from .._http import NoResponse
from .._http import send
from ..exceptions import Auth0ConnectionError
from ..exceptions import Auth0Error
from ..users_export import iter_export_stream
from .transport import Transport
from .transport import _invalid_response

if t.TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Iterable
    from collections.abc import Sequence

logger = logging.getLogger(__package__)

#: Auth0's job ids, ``job_`` and 16 letters or digits.
_JOB_ID_RE = re.compile(r"^job_[A-Za-z0-9]{1,64}$")
#: Job statuses that mean "not finished yet".
_RUNNING = frozenset({"pending", "processing"})


class Auth0ExportError(Auth0Error):
    """A user export job failed, expired, timed out, or its file could not be downloaded."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message, retryable=retryable)


def _export_fields(fields: Iterable[t.Any]) -> list[dict[str, str]]:
    """Normalise ``"name"``, ``("name", "export_as")`` or ``{"name", "export_as"}``."""
    result: list[dict[str, str]] = []
    for field in [fields] if isinstance(fields, str) else fields:
        if isinstance(field, str):
            field = {"name": field}
        elif isinstance(field, tuple) and len(field) == 2:
            field = {"name": field[0], "export_as": field[1]}
        elif not isinstance(field, Mapping):
            raise TypeError("an export field is a name, a (name, export_as) pair or a mapping")
        name, export_as = field.get("name"), field.get("export_as")
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


class Exports(Transport):
    """The export-job calls of :class:`..ManagementClient`."""

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
        job = self._object("POST", path, json_body=body)
        job_id = job.get("id")
        if not isinstance(job_id, str) or not _JOB_ID_RE.match(job_id):
            raise _invalid_response(f"POST {path} returned no job id")
        logger.info("Auth0 user export job %s created", job_id)
        deadline = self._clock() + timeout
        yield from self._download(job_id, body["format"], poll_interval, deadline)

    def _wait_for_job(self, job_id: str, poll_interval: float, deadline: float) -> str:
        """Poll the job until it completes; return its download URL."""
        path = f"/api/v2/jobs/{quote(job_id, safe='')}"
        # Bounded by count too, so an injected clock that never moves cannot hang us.
        max_polls = int(max(deadline - self._clock(), 0) / max(poll_interval, 0.001)) + 2
        for _ in range(max_polls):
            job = self._object("GET", path)
            status = job.get("status")
            if status == "completed":
                location = str(job.get("location"))  # "None" when missing: refused too
                if not location.startswith(("https://", "http://")):
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
        self, job_id: str, format: str, poll_interval: float, deadline: float
    ) -> Iterator[dict[str, t.Any]]:
        """Wait for the job, then stream its file. A refused or failed download asks the
        job for a fresh link (Auth0's links live 60 seconds) and tries again, up to
        ``max_retries``."""
        for attempt in range(self.max_retries + 1):
            location = self._wait_for_job(job_id, poll_interval, deadline)
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
            elif answer.status_code != 200:
                failure = f"HTTP {answer.status_code}"
                answer.close()
            else:
                yield from self._read_download(job_id, answer, format)
                return
            if attempt == self.max_retries:
                break
            logger.warning(
                "Downloading the file of Auth0 user export job %s failed (%s); retry %d of %d",
                job_id,
                failure,
                attempt + 1,
                self.max_retries,
            )
            self._sleep(min(self._backoff(attempt), self.max_retry_wait))
        raise Auth0ExportError(
            f"could not download the file of user export job {job_id}: {failure}",
            retryable=True,
        )

    def _read_download(
        self, job_id: str, response: requests.Response, format: str
    ) -> Iterator[dict[str, t.Any]]:
        count = 0
        cut: str | None = None
        try:
            response.raw.decode_content = True  # undo a transport Content-Encoding only
            for user in iter_export_stream(response.raw, format):
                count += 1
                yield user
        except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
            cut = type(exc).__name__  # raised below, outside this block (see transport)
        finally:
            response.close()
        if cut is not None:
            raise Auth0ConnectionError(
                f"the download of user export job {job_id} was cut off after {count} users ({cut})"
            )
        logger.info("Read %d users from Auth0 user export job %s", count, job_id)
