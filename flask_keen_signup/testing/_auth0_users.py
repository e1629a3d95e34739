"""The Auth0 emulator's user directory: Auth0-shaped user objects, thread-safe, in memory or
in a SQLite file.

The shapes and the update rules follow the Management API (``GET/PATCH /api/v2/users``), so
that code tested against the emulator sees what a real tenant would send: ISO-8601 timestamps
with milliseconds and ``Z``, ``identities[]``, ``app_metadata`` merged on the first level only,
``null`` deleting a key, ``{}`` clearing the whole object.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import random
import secrets
import sqlite3
import threading
import typing as t
from dataclasses import dataclass
from datetime import datetime
from datetime import timedelta
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


def build_user(
    *,
    email: str,
    name: str | None = None,
    user_id: str | None = None,
    created_at: datetime | str | None = None,
    app_metadata: dict[str, t.Any] | None = None,
    connection: str = DEFAULT_CONNECTION,
    logins_count: int = 0,
    **extra: t.Any,
) -> dict[str, t.Any]:
    """An Auth0-shaped user object (not stored); see :meth:`Auth0Emulator.add_user`."""
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
    return user


def generated_users(
    count: int,
    *,
    created_from: datetime,
    created_to: datetime,
    marked: float | t.Callable[[dict[str, t.Any]], bool],
    seed: int,
    marker: str,
    connection: str = DEFAULT_CONNECTION,
) -> t.Iterator[dict[str, t.Any]]:
    """``count`` synthetic database users, reproducible from ``seed``, built cheaply.

    Ids are ``auth0|`` + 24 hex digits drawn from the seeded generator; ``created_at`` is
    uniform between the two instants (milliseconds); ``logins_count`` 0-40; the Rule's
    marker (``app_metadata[marker] = True``) on a ``marked`` fraction of them, or on those
    the predicate picks (it gets the user dict, ``created_at`` already set).
    """
    rng = random.Random(seed)
    start_ms = int(created_from.timestamp() * 1000)
    span_ms = max(int(created_to.timestamp() * 1000) - start_ms, 0)
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    for number in range(count):
        hex_id = f"{rng.getrandbits(96):024x}"
        moment = epoch + timedelta(milliseconds=start_ms + rng.randint(0, span_ms))
        created = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
        logins = rng.randint(0, 40)
        email = f"user-{hex_id[:16]}@example.com"
        user: dict[str, t.Any] = {
            "user_id": f"auth0|{hex_id}",
            "email": email,
            "email_verified": True,
            "name": f"User {number}",
            "nickname": f"user-{hex_id[:16]}",
            "created_at": created,
            "updated_at": created,
            "identities": [
                {
                    "provider": "auth0",
                    "user_id": hex_id,
                    "connection": connection,
                    "isSocial": False,
                }
            ],
            "app_metadata": {},
            "user_metadata": {},
            "logins_count": logins,
        }
        if logins:
            user["last_login"] = created
        if callable(marked):
            is_marked = bool(marked(user))
        else:
            is_marked = rng.random() < marked
        if is_marked:
            user["app_metadata"][marker] = True
        yield user


def _connection_of(user: dict[str, t.Any]) -> str:
    identities = user.get("identities") or [{}]
    return str(identities[0].get("connection", DEFAULT_CONNECTION))


def _email_key(email: t.Any, connection: str) -> tuple[str, str]:
    return (str(email or "").strip().lower(), connection)


class _UserDatabase:
    """Write-through persistence of the users in one SQLite file (``database=``).

    The connection is closed when the emulator stops (Python 3.13 warns about a connection
    left to the garbage collector) and opened again on the next use (a restart).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._open()

    def _open(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is None:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS users (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                "user_id TEXT NOT NULL UNIQUE, data TEXT NOT NULL, password_hash TEXT)"
            )
            self._conn = conn
        return conn

    @property
    def _db(self) -> sqlite3.Connection:
        return self._open()

    def load(self) -> list[_Record]:
        rows = self._db.execute("SELECT data, password_hash FROM users ORDER BY seq")
        return [_Record(json.loads(data), pw_hash) for data, pw_hash in rows]

    def save(self, records: t.Iterable[_Record]) -> None:
        rows = ((r.user["user_id"], json.dumps(r.user), r.password_hash) for r in records)
        self._db.execute("BEGIN")
        try:
            self._db.executemany(
                "INSERT INTO users (user_id, data, password_hash) VALUES (?, ?, ?) "
                "ON CONFLICT(user_id) DO UPDATE SET data = excluded.data, "
                "password_hash = excluded.password_hash",
                rows,
            )
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def clear(self) -> None:
        self._db.execute("DELETE FROM users")

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __del__(self) -> None:
        self.close()  # never left to the garbage collector (Python 3.13 warns about it)


class UserStore:
    """All users of the emulated tenant, guarded by one lock (the server is threaded).

    Lookups by id and by email are dictionary lookups, so a tenant of 100,000+ users
    (:meth:`add_many`) stays fast; sorted views are computed once per change and shared
    by the paging, search and export endpoints. Every public read returns deep copies, so
    a caller can never mutate stored state by accident. With ``database=`` every change is
    also written to a SQLite file, and the users are read back from it at start.
    """

    def __init__(self, database: str | None = None) -> None:
        self.lock = threading.RLock()
        self._records: dict[str, _Record] = {}
        self._emails: dict[tuple[str, str], str] = {}
        self._version = 0
        self._sorted: dict[str, tuple[int, list[_Record]]] = {}
        self._db = _UserDatabase(database) if database else None
        if self._db is not None:
            for record in self._db.load():
                self._index(record)

    def _index(self, record: _Record) -> None:
        user = record.user
        self._records[user["user_id"]] = record
        key = _email_key(user.get("email"), _connection_of(user))
        self._emails.setdefault(key, user["user_id"])
        self._version += 1

    def _changed(self, *records: _Record) -> None:
        self._version += 1
        if self._db is not None:
            self._db.save(records)

    def __len__(self) -> int:
        return len(self._records)

    # -- creation and lookup -------------------------------------------------------------

    def add(self, *, password: str | None = "password", **fields: t.Any) -> dict[str, t.Any]:
        """Create a user; see :meth:`Auth0Emulator.add_user`."""
        user = build_user(**fields)
        pw_hash = _hash_password(password) if password is not None else None
        with self.lock:
            record = self._insert(user, pw_hash)
            if self._db is not None:
                self._db.save([record])
            return copy.deepcopy(user)

    def _insert(self, user: dict[str, t.Any], pw_hash: str | None) -> _Record:
        user_id = user["user_id"]
        if user_id in self._records:
            raise UserError("The user already exists.", "auth0_idp_error")
        if _email_key(user.get("email"), _connection_of(user)) in self._emails:
            raise UserError("The user already exists.", "auth0_idp_error")
        record = _Record(user, pw_hash)
        self._index(record)
        return record

    def add_many(self, users: t.Iterable[dict[str, t.Any]]) -> int:
        """Store prepared user objects (from :func:`build_user`) in one step, unhashed.

        No password hashing and no copies: the bulk loader for tenants of 100,000+
        users. All or nothing: a duplicate id or email stores none of them.
        """
        with self.lock:
            added: list[_Record] = []
            try:
                for user in users:
                    added.append(self._insert(user, None))
            except BaseException:
                for record in added:
                    self._forget(record)
                raise
            if self._db is not None and added:
                self._db.save(added)
            return len(added)

    def _forget(self, record: _Record) -> None:
        user = record.user
        self._records.pop(user["user_id"], None)
        key = _email_key(user.get("email"), _connection_of(user))
        if self._emails.get(key) == user["user_id"]:
            del self._emails[key]
        self._version += 1

    def get(self, user_id: str) -> dict[str, t.Any] | None:
        with self.lock:
            record = self._records.get(user_id)
            return copy.deepcopy(record.user) if record else None

    def get_many(self, user_ids: t.Iterable[str]) -> list[dict[str, t.Any]]:
        """The stored user objects (not copies) of those ids that exist, for the handlers."""
        with self.lock:
            return [self._records[uid].user for uid in user_ids if uid in self._records]

    def sorted_users(self, sort: str = "created_at:1") -> list[dict[str, t.Any]]:
        """Every stored user object (not copies), sorted like ``sort=field:1|-1``.

        Cached until the next change. Handlers serialise what they take from it while
        holding :attr:`lock` or right away; they never mutate it.
        """
        field, _, direction = sort.partition(":")
        field = field.strip() or "created_at"
        key = f"{field}:{direction.strip()}"
        with self.lock:
            cached = self._sorted.get(key)
            if cached is not None and cached[0] == self._version:
                return [r.user for r in cached[1]]
            records = list(self._records.values())
            # Insertion order breaks ties (sort is stable), so equal times stay in order.
            records.sort(
                key=lambda r: str(r.user.get(field, "")), reverse=direction.strip() == "-1"
            )
            self._sorted = {key: (self._version, records)}
            return [r.user for r in records]

    def all(self, sort: str = "created_at:1") -> list[dict[str, t.Any]]:
        """Every user (deep copies), sorted like ``GET /api/v2/users?sort=field:1|-1``."""
        with self.lock:
            return copy.deepcopy(self.sorted_users(sort))

    def _find_email(self, email: str, connection: str) -> _Record | None:
        user_id = self._emails.get(_email_key(email, connection))
        return self._records.get(user_id) if user_id is not None else None

    def find_by_email(self, email: str) -> dict[str, t.Any] | None:
        with self.lock:
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
        with self.lock:
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
            self._changed(record)
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
        with self.lock:
            record = self._records.get(user_id)
            if record is None:
                return None
            user = record.user
            old_email_key = _email_key(user.get("email"), _connection_of(user))
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
            new_email_key = _email_key(user.get("email"), _connection_of(user))
            if new_email_key != old_email_key:
                if self._emails.get(old_email_key) == user_id:
                    del self._emails[old_email_key]
                self._emails.setdefault(new_email_key, user_id)
            self._changed(record)
            return copy.deepcopy(user)

    def clear(self) -> None:
        with self.lock:
            self._records.clear()
            self._emails.clear()
            self._version += 1
            if self._db is not None:
                self._db.clear()

    def close(self) -> None:
        with self.lock:
            if self._db is not None:
                self._db.close()


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
