"""The Management API v2 subset the extension uses: get, update and list users.

Paths, status codes, bodies and headers follow Auth0 (reference ``authlib-auth0.md`` C2-C5):
errors are ``{"statusCode", "error", "message", "errorCode"}``, every answer carries the
``x-ratelimit-*`` headers, and the user id in the path is percent-decoded from the URL *as
sent*, so ``auth0%7Cabc%2Fx`` and ``auth0|abc/x`` are not confused.
"""

from __future__ import annotations

import time
import typing as t
from http import HTTPStatus
from urllib.parse import unquote
from urllib.parse import urlsplit

from flask import Flask
from flask import Response
from flask import jsonify
from flask import request

from ._auth0_oidc import ManagementTokenError
from ._auth0_oidc import validate_management_token
from ._auth0_tenant import Tenant
from ._auth0_users import UserError
from ._auth0_users import project_fields

PREFIX = "/api/v2/"
#: The per-window request budget reported in ``x-ratelimit-limit`` (Auth0's paid-tier burst).
RATE_LIMIT = 50
MAX_PER_PAGE = 100


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


def register_management_api(app: Flask, tenant: Tenant) -> None:
    """Add the ``/api/v2/users`` endpoints to the emulator's app."""

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
        users = tenant.users.all(request.args.get("sort") or "created_at:1")
        start = page * per_page
        chunk = [
            project_fields(user, request.args.get("fields"), request.args.get("include_fields"))
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
