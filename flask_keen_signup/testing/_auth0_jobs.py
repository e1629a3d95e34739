"""User export jobs: ``POST /api/v2/jobs/users-exports``, ``GET /api/v2/jobs/{id}``, the file.

As at Auth0 (Bulk User Exports): the job is created ``pending``, reports ``processing``
while it runs, then ``completed`` with a ``location``, a URL of another kind than the
Management API's (a presigned download link: no bearer token, valid 60 seconds, a fresh
one on every ``GET`` of the job). The file is gzipped and named after the tenant:

- ``json``: NDJSON, one object per user with the requested fields; a root field such as
  ``app_metadata`` carries the whole object, a dotted one (``app_metadata.signedUp``) a
  key of that name (or ``export_as``).
- ``csv``: a header row of the field names (``export_as`` when given), then one row per
  user. Strings are escaped against CSV injection as Auth0 does (OWASP): wrapped in double
  quotes, inner double quotes doubled, and a single quote prepended; Auth0's ISO-8601 dates,
  numbers and booleans are written as they are; a missing value is an empty cell.

The file is produced as a generator of gzip chunks, a few hundred users at a time, so a
tenant of 100,000+ users never becomes one string in memory.
"""

from __future__ import annotations

import json
import re
import secrets
import string
import time
import typing as t
import zlib
from dataclasses import dataclass
from dataclasses import field as dataclass_field

from ._auth0_users import UserError
from ._auth0_users import UserStore

#: Auth0 allows at most this many fields in a CSV export.
MAX_CSV_FIELDS = 30
#: Seconds a download link stays valid (Auth0: 60).
LINK_LIFETIME = 60.0
#: Users rendered per chunk of the download (one lock hold each).
CHUNK_USERS = 500
#: Fields exported when the request names none (Auth0's predefined set, abridged).
DEFAULT_FIELDS = (
    "user_id",
    "email",
    "email_verified",
    "name",
    "nickname",
    "created_at",
    "updated_at",
    "last_login",
    "logins_count",
)
#: Fields Auth0 generates as ISO-8601 dates, which its CSV writes unescaped.
DATE_FIELDS = frozenset({"created_at", "updated_at", "last_login", "last_password_reset"})
_CONNECTION_ID_RE = re.compile(r"^con_[A-Za-z0-9]{16}$")
_PATH_PART_RE = re.compile(r"^(?P<name>[^\[\]]+)(?:\[(?P<index>\d+)\])?$")


@dataclass
class ExportJob:
    """One users-export job and what the emulator needs to serve it."""

    id: str
    format: str
    fields: list[dict[str, str]]
    limit: int | None
    connection_id: str | None
    connection: str | None
    created_at: str
    #: ``GET`` answers left before the job reports ``completed`` (or ``failed``).
    polls_left: int
    #: When set, the job ends ``failed`` with these ``status_details``.
    failure: str | None = None
    gets: int = 0
    #: Download tokens handed out, token -> expiry (epoch seconds).
    links: dict[str, float] = dataclass_field(default_factory=dict)

    @property
    def status(self) -> str:
        if self.polls_left > 0:
            return "pending" if self.gets <= 1 else "processing"
        return "failed" if self.failure is not None else "completed"

    def describe(self) -> dict[str, t.Any]:
        """The job as ``POST``/``GET`` return it (without ``location``)."""
        body: dict[str, t.Any] = {
            "type": "users_export",
            "status": self.status,
            "id": self.id,
            "created_at": self.created_at,
            "format": self.format,
            "fields": [dict(f) for f in self.fields],
        }
        if self.limit is not None:
            body["limit"] = self.limit
        if self.connection_id is not None:
            body["connection_id"] = self.connection_id
            body["connection"] = self.connection
        return body


def new_job_id() -> str:
    alphabet = string.ascii_letters + string.digits
    return "job_" + "".join(secrets.choice(alphabet) for _ in range(16))


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _invalid(message: str) -> UserError:
    return UserError(f"Payload validation error: {message}", "invalid_body")


def parse_export_request(body: t.Any) -> tuple[str, list[dict[str, str]], int | None, str | None]:
    """Validate a ``POST /api/v2/jobs/users-exports`` body like Auth0 (``invalid_body``).

    Returns ``(format, fields, limit, connection_id)``.
    """
    if not isinstance(body, dict):
        raise _invalid(f"'Expected type object but found type {_json_type(body)}'.")
    allowed = {"connection_id", "format", "limit", "fields"}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise _invalid(f"'Additional properties not allowed: {unknown[0]}'.")
    format_ = body.get("format", "json")
    if format_ not in ("json", "csv"):
        raise _invalid(
            f"'No enum match for: {json.dumps(format_)}' on property format "
            "(Format of the file. Must be json or csv)."
        )
    limit = body.get("limit")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise _invalid(
                f"'Expected type integer but found type {_json_type(limit)}' on property limit "
                "(Limit the number of records)."
            )
        if limit < 1:
            raise _invalid("'Too small: must be at least 1' on property limit.")
    connection_id = body.get("connection_id")
    if connection_id is not None:
        if not isinstance(connection_id, str):
            raise _invalid(
                f"'Expected type string but found type {_json_type(connection_id)}' on "
                "property connection_id."
            )
        if not _CONNECTION_ID_RE.match(connection_id):
            raise _invalid(
                "'String does not match pattern ^con_[A-Za-z0-9]{16}$' on property "
                "connection_id (connection_id of the connection from which users will be "
                "exported)."
            )
    raw_fields = body.get("fields")
    fields: list[dict[str, str]] = []
    if raw_fields is None:
        fields = [{"name": name} for name in DEFAULT_FIELDS]
    elif not isinstance(raw_fields, list):
        raise _invalid(
            f"'Expected type array but found type {_json_type(raw_fields)}' on property "
            "fields (List of fields to be included in the CSV or JSON)."
        )
    else:
        if not raw_fields:
            raise _invalid("'Array is too short (0), minimum 1' on property fields.")
        for index, item in enumerate(raw_fields):
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise _invalid(f"'Missing required property: name' on property fields[{index}].")
            extra = sorted(set(item) - {"name", "export_as"})
            if extra:
                raise _invalid(
                    f"'Additional properties not allowed: {extra[0]}' on property "
                    f"fields[{index}]."
                )
            entry = {"name": item["name"]}
            export_as = item.get("export_as")
            if export_as is not None:
                if not isinstance(export_as, str) or not export_as:
                    raise _invalid(
                        "'Expected type string but found type "
                        f"{_json_type(export_as)}' on property fields[{index}].export_as."
                    )
                entry["export_as"] = export_as
            if not entry["name"]:
                raise _invalid(f"'String is too short (0 chars), minimum 1' on fields[{index}].")
            fields.append(entry)
    if format_ == "csv" and len(fields) > MAX_CSV_FIELDS:
        raise _invalid(
            f"'Array is too long ({len(fields)}), maximum {MAX_CSV_FIELDS}' on property fields."
        )
    return format_, fields, limit, connection_id


# -- rendering ----------------------------------------------------------------------------------

_MISSING = object()


def field_of(user: dict[str, t.Any], path: str) -> t.Any:
    """The value at ``path`` (``app_metadata.signedUp``, ``identities[0].connection``)."""
    current: t.Any = user
    for part in path.split("."):
        match = _PATH_PART_RE.match(part)
        if match is None or not isinstance(current, dict):
            return _MISSING
        current = current.get(match["name"], _MISSING)
        if current is _MISSING:
            return _MISSING
        if match["index"] is not None:
            index = int(match["index"])
            if not isinstance(current, list) or index >= len(current):
                return _MISSING
            current = current[index]
    return current


def csv_cell(name: str, value: t.Any) -> str:
    """One CSV cell as Auth0 writes it (see the module doc)."""
    if value is _MISSING or value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, str) and name.rsplit(".", 1)[-1] in DATE_FIELDS:
        return value
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return '"' + "'" + text.replace('"', '""') + '"'


def render_lines(
    users: list[dict[str, t.Any]], format_: str, fields: list[dict[str, str]]
) -> t.Iterator[str]:
    """The lines of the export for ``users`` (each ending in a newline)."""
    if format_ == "csv":
        for user in users:
            cells = (csv_cell(f["name"], field_of(user, f["name"])) for f in fields)
            yield ",".join(cells) + "\n"
        return
    for user in users:
        out: dict[str, t.Any] = {}
        for f in fields:
            value = field_of(user, f["name"])
            if value is not _MISSING:
                out[f.get("export_as") or f["name"]] = value
        yield json.dumps(out, separators=(",", ":")) + "\n"


def export_chunks(
    store: UserStore, job: ExportJob, connection_name: str | None
) -> t.Iterator[bytes]:
    """The gzipped export file of ``job``, as a stream of compressed chunks."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: a gzip container
    if job.format == "csv":
        header = ",".join(f.get("export_as") or f["name"] for f in job.fields) + "\n"
        yield compressor.compress(header.encode())
    users = store.sorted_users("created_at:1")  # a snapshot of references, not copies
    if connection_name is not None:
        users = [u for u in users if _connection(u) == connection_name]
    if job.limit is not None:
        users = users[: job.limit]
    for start in range(0, len(users), CHUNK_USERS):
        with store.lock:  # a PATCH cannot change a user while its line is written
            text = "".join(render_lines(users[start : start + CHUNK_USERS], job.format, job.fields))
        data = compressor.compress(text.encode())
        if data:
            yield data
    yield compressor.flush()


def _connection(user: dict[str, t.Any]) -> t.Any:
    return (user.get("identities") or [{}])[0].get("connection")


def new_link(job: ExportJob, lifetime: float = LINK_LIFETIME) -> str:
    token = secrets.token_urlsafe(24)
    now = time.time()
    job.links = {k: v for k, v in job.links.items() if v > now}
    job.links[token] = now + lifetime
    return token
