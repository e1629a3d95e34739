"""The Management API v2 subset the extension uses: get, update, list and search users,
and user export jobs.

Paths, status codes, bodies and headers follow Auth0's Management API v2 reference:
errors are ``{"statusCode", "error", "message", "errorCode"}``, every answer carries the
``x-ratelimit-*`` headers, and the user id in the path is percent-decoded from the URL *as
sent*, so ``auth0%7Cabc%2Fx`` and ``auth0|abc/x`` are not confused.
"""

from __future__ import annotations

import copy
import re
import time
import typing as t
from http import HTTPStatus
from urllib.parse import unquote
from urllib.parse import urlsplit

from flask import Flask
from flask import Response
from flask import jsonify
from flask import request

from ._auth0_jobs import ExportJob
from ._auth0_jobs import export_chunks
from ._auth0_jobs import new_job_id
from ._auth0_jobs import new_link
from ._auth0_jobs import parse_export_request
from ._auth0_oidc import ManagementTokenError
from ._auth0_oidc import validate_management_token
from ._auth0_search import QueryError
from ._auth0_search import compile_query
from ._auth0_tenant import Tenant
from ._auth0_users import UserError
from ._auth0_users import format_timestamp
from ._auth0_users import project_fields

PREFIX = "/api/v2/"
#: The per-window request budget reported in ``x-ratelimit-limit`` (Auth0's paid-tier burst).
RATE_LIMIT = 50
MAX_PER_PAGE = 100
#: Offset paging of ``GET /api/v2/users`` serves only the first 1000 results.
PAGING_LIMIT = 1000
PAGING_LIMIT_MESSAGE = (
    "You can only page through the first 1000 records. See "
    "https://auth0.com/docs/users/search/v3/view-search-results-by-page#limitation"
)
#: Where completed exports are downloaded: no bearer token, like a presigned URL.
EXPORTS_PREFIX = "/user-exports/"


def management_error(
    status: int, message: str, error_code: str | None = None, headers: t.Any = None
) -> Response:
    """An Auth0 Management API error response."""
    body: dict[str, t.Any] = {
        "statusCode": status,
        "error": HTTPStatus(status).phrase,
        "message": message,
    }
    if error_code:
        body["errorCode"] = error_code
    response = jsonify(body)
    response.status_code = status
    if headers:
        response.headers.update(headers)
    return response


def rate_limit_headers(remaining: int, reset_in: int) -> dict[str, str]:
    return {
        "x-ratelimit-limit": str(RATE_LIMIT),
        "x-ratelimit-remaining": str(max(remaining, 0)),
        "x-ratelimit-reset": str(int(time.time()) + reset_in),
    }


def raw_path() -> str:
    """The request path exactly as the client sent it (still percent-encoded)."""
    raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI")
    if raw:
        return urlsplit(str(raw)).path
    return request.path


def _user_id_from_path() -> str | None:
    path = raw_path()
    if not path.startswith(PREFIX + "users/"):
        return None
    encoded = path[len(PREFIX + "users/") :]
    if not encoded or "/" in encoded:
        return None  # a sub-resource such as /users/{id}/roles: not emulated
    return unquote(encoded)


def _int_param(name: str, default: int) -> int:
    value = request.args.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise UserError(
            f"Query validation error: 'Expected type integer but found type string' on "
            f"property {name}.",
            "invalid_query_string",
        ) from None
    return number


_JOB_ID_RE = re.compile(r"^job_[A-Za-z0-9]{16}$")


def _storage_error(code: str, message: str) -> Response:
    """What a storage host answers for a refused or expired presigned URL (XML, 403)."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    )
    return Response(body, status=403, mimetype="application/xml")


def register_management_api(app: Flask, tenant: Tenant) -> None:
    """Add the ``/api/v2/users`` and ``/api/v2/jobs`` endpoints to the emulator's app."""

    def authorize(*scopes: str) -> Response | None:
        try:
            claims = validate_management_token(tenant, request.headers.get("Authorization"))
        except ManagementTokenError as error:
            return management_error(error.status, error.message, error.error_code)
        granted = set(str(claims.get("scope", "")).split())
        if scopes and not granted.intersection(scopes):
            return management_error(
                403,
                f"Insufficient scope, expected any of: {','.join(scopes)}",
                "insufficient_scope",
            )
        return None

    @app.get("/api/v2/users")
    def list_users() -> Response:
        denied = authorize("read:users")
        if denied is not None:
            return denied
        try:
            page = _int_param("page", 0)
            per_page = _int_param("per_page", 50)
        except UserError as error:
            return management_error(400, error.message, error.error_code)
        if page < 0 or per_page < 0 or per_page > MAX_PER_PAGE:
            return management_error(
                400,
                "Query validation error: 'Too big: must be less than or equal to "
                f"{MAX_PER_PAGE}' on property per_page (Number of results per page).",
                "invalid_query_string",
            )
        if (page + 1) * per_page > PAGING_LIMIT and per_page > 0:
            return management_error(400, PAGING_LIMIT_MESSAGE, "invalid_paging")
        sort = request.args.get("sort") or "created_at:1"
        try:
            users = _search(request.args.get("q"), request.args.get("search_engine"), sort)
        except QueryError as error:
            return management_error(
                400,
                f"Query validation error: 'Invalid query string: {error}' on property q "
                "(Query in Lucene query string syntax).",
                "invalid_query_string",
            )
        except UserError as error:
            return management_error(400, error.message, error.error_code)
        start = page * per_page
        with tenant.users.lock:  # copies, so a concurrent PATCH cannot tear a response
            chunk = [
                project_fields(
                    copy.deepcopy(user),
                    request.args.get("fields"),
                    request.args.get("include_fields"),
                )
                for user in users[start : start + per_page]
            ]
        if (request.args.get("include_totals") or "").lower() == "true":
            return jsonify(
                {
                    "start": start,
                    "limit": per_page,
                    "length": len(chunk),
                    "total": len(users),
                    "users": chunk,
                }
            )
        return jsonify(chunk)

    def _search(q: str | None, engine: str | None, sort: str) -> list[dict[str, t.Any]]:
        if engine and engine != "v3":
            raise UserError(
                f"You are not allowed to use search_engine={engine}.", "operation_not_supported"
            )
        if not q:
            return tenant.users.sorted_users(sort)
        query = compile_query(q)
        if query.user_ids is not None:
            # Looked up by id: O(1) per id, even in a tenant of 100,000 users.
            field, _, direction = sort.partition(":")
            found = tenant.users.get_many(sorted(query.user_ids))
            found.sort(
                key=lambda u: str(u.get(field.strip() or "created_at", "")),
                reverse=direction.strip() == "-1",
            )
            return found
        return [user for user in tenant.users.sorted_users(sort) if query.matches(user)]

    @app.post("/api/v2/jobs/users-exports")
    def create_export() -> Response:
        denied = authorize("read:users")
        if denied is not None:
            return denied
        body = request.get_json(silent=True)
        if body is None:
            return management_error(
                400, "Payload validation error: 'Invalid JSON'.", "invalid_body"
            )
        try:
            format_, fields, limit, connection_id = parse_export_request(body)
        except UserError as error:
            return management_error(400, error.message, error.error_code)
        connection = None
        if connection_id is not None:
            connection = tenant.connection_ids.get(connection_id)
            if connection is None:
                return management_error(
                    400, "The connection does not exist.", "inexistent_connection"
                )
        with tenant.lock:
            job = ExportJob(
                id=new_job_id(),
                format=format_,
                fields=fields,
                limit=limit,
                connection_id=connection_id,
                connection=connection,
                created_at=format_timestamp(),
                polls_left=tenant.export_polls,
                failure=tenant.export_failure,
            )
            tenant.export_failure = None
            tenant.jobs[job.id] = job
        response = jsonify(job.describe())
        response.status_code = 201
        return response

    @app.get("/api/v2/jobs/<job_id>")
    def get_job(job_id: str) -> Response:
        denied = authorize("read:users", "create:users")
        if denied is not None:
            return denied
        if not _JOB_ID_RE.match(job_id):
            return management_error(
                400,
                "Path validation error: 'String does not match pattern "
                "^job_[a-zA-Z0-9]{16}$' on property id (The id of the job).",
                "invalid_uri",
            )
        with tenant.lock:
            job = tenant.jobs.get(job_id)
            if job is None:
                return management_error(404, "The job does not exist.", "inexistent_job")
            job.gets += 1
            if job.polls_left > 0 and job.gets > 1:
                job.polls_left -= 1
            body = job.describe()
            if job.polls_left > 0:
                body["percentage_done"] = 0 if job.gets <= 1 else 50
            if body["status"] == "completed":
                token = new_link(job, tenant.export_link_lifetime)
                name = tenant.base_url.split("://", 1)[-1].replace(":", "-")
                suffix = "json" if job.format == "json" else "csv"
                body["location"] = (
                    f"{tenant.base_url}{EXPORTS_PREFIX}{job.id}/{token}/{name}.{suffix}.gz"
                )
                body["percentage_done"] = 100
                body["time_left_seconds"] = 0
            elif body["status"] == "failed":
                body["status_details"] = job.failure
        return jsonify(body)

    @app.get(EXPORTS_PREFIX + "<job_id>/<token>/<filename>")
    def download_export(job_id: str, token: str, filename: str) -> Response:
        with tenant.lock:
            job = tenant.jobs.get(job_id)
            expires = job.links.get(token) if job is not None else None
        if job is None or expires is None:
            return _storage_error("AccessDenied", "Access Denied")
        if time.time() > expires:
            return _storage_error("AccessDenied", "Request has expired")
        connection = job.connection
        return Response(
            export_chunks(tenant.users, job, connection),
            status=200,
            mimetype="application/gzip",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )

    @app.route("/api/v2/users/<path:_user_path>", methods=["GET", "PATCH"])
    def user_by_id(_user_path: str) -> Response:
        denied = (
            authorize("read:users")
            if request.method == "GET"
            else authorize("update:users", "update:users_app_metadata")
        )
        if denied is not None:
            return denied
        user_id = _user_id_from_path()
        if user_id is None:
            return management_error(404, "Not Found")
        if request.method == "GET":
            user = tenant.users.get(user_id)
        else:
            body = request.get_json(silent=True)
            if body is None:
                return management_error(
                    400, "Payload validation error: 'Invalid JSON'.", "invalid_body"
                )
            try:
                user = tenant.users.update(user_id, body)
            except UserError as error:
                return management_error(400, error.message, error.error_code)
        if user is None:
            return management_error(404, "The user does not exist.", "inexistent_user")
        return jsonify(
            project_fields(user, request.args.get("fields"), request.args.get("include_fields"))
        )
