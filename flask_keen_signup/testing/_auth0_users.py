"""The Auth0 emulator's user directory: Auth0-shaped user objects, in memory, thread-safe.

The shapes and the update rules follow the Management API (``GET/PATCH /api/v2/users``), so
that code tested against the emulator sees what a real tenant would send: ISO-8601 timestamps
with milliseconds and ``Z``, ``identities[]``, ``app_metadata`` merged on the first level only,
``null`` deleting a key, ``{}`` clearing the whole object.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import secrets
import threading
import typing as t
from dataclasses import dataclass
from datetime import datetime
from datetime import timezone

#: Root attributes that ``PATCH /api/v2/users/{id}`` accepts (Auth0's schema for the endpoint).
PATCHABLE_ATTRIBUTES = frozenset(
    {
        "app_metadata",
        "blocked",
        "client_id",
        "connection",
        "email",
        "email_verified",
        "family_name",
        "given_name",
        "name",
        "nickname",
        "password",
        "phone_number",
        "phone_verified",
        "picture",
        "user_metadata",
        "username",
        "verify_email",
        "verify_phone_number",
        "verify_password",
    }
)
#: Accepted in a PATCH body but not stored on the user (they steer side effects in Auth0).
_NOT_STORED = frozenset(
    {
        "client_id",
        "connection",
        "password",
        "verify_email",
        "verify_phone_number",
        "verify_password",
    }
)
#: Identity providers whose users Auth0 marks ``isSocial: false``.
_NON_SOCIAL = frozenset({"auth0", "email", "sms", "samlp", "waad", "adfs", "ad", "oidc", "okta"})
DEFAULT_CONNECTION = "Username-Password-Authentication"


class UserError(ValueError):
    """A request the Management API would refuse with 400; ``message`` is Auth0's wording."""

    def __init__(self, message: str, error_code: str = "invalid_body") -> None:
        super().__init__(message)
        self.message = message
        self.error_code = error_code


def format_timestamp(value: datetime | str | None = None) -> str:
    """Auth0's timestamp format, ``2026-11-26T10:00:00.000Z`` (UTC, milliseconds).

    A naive :class:`~datetime.datetime` is taken as UTC; a string is parsed and normalised so
    that a test can pass ``"2020-01-01"`` or ``"2020-01-01T00:00:00Z"`` alike.
    """
    if value is None:
        moment = datetime.now(timezone.utc)
    elif isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    else:
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        parsed = datetime.fromisoformat(text)
        moment = parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _hash_password(password: str, salt: bytes | None = None) -> str:
    # A fast PBKDF2: these are throw-away test credentials, and a test suite signs up many users.
    # Hashing (rather than keeping the plain text) still keeps passwords out of reprs and logs.
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 1000)
    return f"{salt.hex()}${digest.hex()}"


def _check_password(password: str, stored: str) -> bool:
    salt_hex, _, _ = stored.partition("$")
    return hmac.compare_digest(_hash_password(password, bytes.fromhex(salt_hex)), stored)


def _picture_for(email: str, name: str) -> str:
    # What Auth0 gives database users: a Gravatar URL with Auth0's initials avatar as fallback.
    md5 = hashlib.md5(email.strip().lower().encode(), usedforsecurity=False).hexdigest()
    initials = "".join(part[0] for part in name.split()[:2] if part).lower() or "u"
    return (
        f"https://s.gravatar.com/avatar/{md5}?s=480&r=pg"
        f"&d=https%3A%2F%2Fcdn.auth0.com%2Favatars%2F{initials[:2]}.png"
    )


@dataclass
class _Record:
    user: dict[str, t.Any]
    password_hash: str | None


class UserStore:
    """All users of the emulated tenant, guarded by one lock (the server is threaded).

    Every method returns deep copies, so a caller can never mutate stored state by accident.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._records: dict[str, _Record] = {}

    # -- creation and lookup -------------------------------------------------------------

    def add(
        self,
        *,
        email: str,
        password: str | None = "password",
        name: str | None = None,
        user_id: str | None = None,
        created_at: datetime | str | None = None,
        app_metadata: dict[str, t.Any] | None = None,
        connection: str = DEFAULT_CONNECTION,
        logins_count: int = 0,
        **extra: t.Any,
    ) -> dict[str, t.Any]:
        """Create a user; see :meth:`Auth0Emulator.add_user`."""
        if not email or "@" not in email:
            raise UserError(
                "Payload validation error: 'Object didn't pass validation for "
                "format email: " + repr(email) + "' on property email."
            )
        user_id = user_id or f"auth0|{secrets.token_hex(12)}"
        provider, sep, provider_user_id = user_id.partition("|")
        if not sep:
            provider, provider_user_id = "auth0", user_id
            user_id = f"auth0|{user_id}"
        if connection == DEFAULT_CONNECTION and provider != "auth0":
            connection = provider
        created = format_timestamp(created_at)
        display_name = name or email
        user: dict[str, t.Any] = {
            "user_id": user_id,
            "email": email,
            "email_verified": False,
            "name": display_name,
            "nickname": email.split("@", 1)[0],
            "picture": _picture_for(email, display_name),
            "created_at": created,
            "updated_at": created,
            "identities": [
                {
                    "provider": provider,
                    "user_id": provider_user_id,
                    "connection": connection,
                    "isSocial": provider not in _NON_SOCIAL,
                }
            ],
            "app_metadata": copy.deepcopy(app_metadata) if app_metadata else {},
            "user_metadata": {},
            "logins_count": logins_count,
        }
        if logins_count:
            user["last_login"] = created
        for key, value in extra.items():
            if key == "last_login" and value is not None:
                value = format_timestamp(value)
            user[key] = copy.deepcopy(value)
        with self._lock:
            if user_id in self._records:
                raise UserError("The user already exists.", "auth0_idp_error")
            if self._find_email(email, connection) is not None:
                raise UserError("The user already exists.", "auth0_idp_error")
            pw_hash = _hash_password(password) if password is not None else None
            self._records[user_id] = _Record(user, pw_hash)
            return copy.deepcopy(user)

    def get(self, user_id: str) -> dict[str, t.Any] | None:
        with self._lock:
            record = self._records.get(user_id)
            return copy.deepcopy(record.user) if record else None

    def all(self, sort: str = "created_at:1") -> list[dict[str, t.Any]]:
        """Every user, sorted like ``GET /api/v2/users?sort=field:1|-1``."""
        field, _, direction = sort.partition(":")
        with self._lock:
            users = [copy.deepcopy(r.user) for r in self._records.values()]
        # Insertion order breaks ties, so users created in the same millisecond stay stable.
        users.sort(
            key=lambda u: str(u.get(field or "created_at", "")), reverse=direction.strip() == "-1"
        )
        return users

    def _find_email(self, email: str, connection: str | None = None) -> _Record | None:
        wanted = email.strip().lower()
        for record in self._records.values():
            if str(record.user.get("email", "")).lower() != wanted:
                continue
            if connection is None or record.user["identities"][0]["connection"] == connection:
                return record
        return None

    def find_by_email(self, email: str) -> dict[str, t.Any] | None:
        with self._lock:
            record = self._find_email(email, DEFAULT_CONNECTION)
            return copy.deepcopy(record.user) if record else None

    # -- the login form ------------------------------------------------------------------

    def login_or_signup(
        self, email: str, password: str, name: str | None = None, ip: str | None = None
    ) -> tuple[dict[str, t.Any] | None, bool, str | None]:
        """Authenticate a database-connection user, creating them if the email is new.

        Returns ``(user, created, error)``. Auth0 counts a login *before* anything else runs,
        so ``logins_count`` is 1 on the login that follows a signup.
        """
        email = email.strip()
        if not email or "@" not in email:
            return None, False, "Please enter a valid email address."
        if not password:
            return None, False, "Please enter your password."
        with self._lock:
            record = self._find_email(email, DEFAULT_CONNECTION)
            created = False
            if record is None:
                user = self.add(email=email, password=password, name=name or None)
                record = self._records[user["user_id"]]
                created = True
            elif record.password_hash is None or not _check_password(
                password, record.password_hash
            ):
                return None, False, "Wrong email or password."
            if record.user.get("blocked"):
                return None, False, "user is blocked"
            now = format_timestamp()
            record.user["logins_count"] = int(record.user.get("logins_count", 0)) + 1
            record.user["last_login"] = now
            record.user["updated_at"] = now
            if ip:
                record.user["last_ip"] = ip
            return copy.deepcopy(record.user), created, None

    # -- the Management API ---------------------------------------------------------------

    def update(self, user_id: str, body: t.Any) -> dict[str, t.Any] | None:
        """Apply a ``PATCH /api/v2/users/{id}`` body; ``None`` if the user does not exist.

        Root attributes are replaced; ``app_metadata`` and ``user_metadata`` are merged on the
        first level, a ``null`` value deletes that key and ``{}`` removes all of it (C3).
        """
        if not isinstance(body, dict):
            raise UserError(
                "Payload validation error: 'Expected type object but found type "
                f"{_json_type(body)}'."
            )
        if not body:
            raise UserError(
                "Payload validation error: 'Too few properties defined (0), minimum 1'."
            )
        unknown = sorted(set(body) - PATCHABLE_ATTRIBUTES)
        if unknown:
            raise UserError(
                f"Payload validation error: 'Additional properties not allowed: {unknown[0]}'."
            )
        for key in ("app_metadata", "user_metadata"):
            if key in body and not isinstance(body[key], dict):
                raise UserError(
                    "Payload validation error: 'Expected type object but found type "
                    f"{_json_type(body[key])}' on property {key}."
                )
        with self._lock:
            record = self._records.get(user_id)
            if record is None:
                return None
            user = record.user
            for key, value in body.items():
                if key in ("app_metadata", "user_metadata"):
                    if not value:
                        user[key] = {}
                        continue
                    merged = dict(user.get(key) or {})
                    for meta_key, meta_value in value.items():
                        if meta_value is None:
                            merged.pop(meta_key, None)
                        else:
                            merged[meta_key] = copy.deepcopy(meta_value)
                    user[key] = merged
                elif key == "password":
                    if not isinstance(value, str) or not value:
                        raise UserError(
                            "Payload validation error: 'Expected type string "
                            f"but found type {_json_type(value)}' on property password."
                        )
                    record.password_hash = _hash_password(value)
                elif key in _NOT_STORED:
                    continue
                elif value is None:
                    user.pop(key, None)
                else:
                    user[key] = copy.deepcopy(value)
            user["updated_at"] = format_timestamp()
            return copy.deepcopy(user)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def project_fields(
    user: dict[str, t.Any], fields: str | None, include_fields: str | None
) -> dict[str, t.Any]:
    """Apply the ``fields`` / ``include_fields`` query parameters of the users endpoints."""
    if not fields:
        return user
    names = {name.strip() for name in fields.split(",") if name.strip()}
    include = (include_fields or "true").lower() != "false"
    if include:
        return {key: value for key, value in user.items() if key in names}
    return {key: value for key, value in user.items() if key not in names}
