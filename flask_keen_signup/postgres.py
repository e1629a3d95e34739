"""PostgreSQL plumbing shared by the ``postgres`` marker store and outbox.

Why a module of its own: the store (:mod:`.stores.postgres`) and the outbox
(:mod:`.delivery.postgres_outbox`) share one :class:`PostgresDatabase`: its connection
pools, its schema (created on first use, versioned), its error handling (a password never
appears in a message) and its fork safety. Neither of them opens connections itself.

Pools. Two small psycopg pools per process, opened lazily by the first query of that
process: ``request`` (login requests: waiting for a connection and each statement are
bounded by ``KEEN_SIGNUP_STORE_TIMEOUT``) and ``worker`` (the sender, the CLI, the
start-up load of known users: generous timeouts).

Poolers (PgBouncer in ``transaction`` or ``session`` mode, the hosted poolers that behave
like it). A server connection may serve another client between two transactions, so
nothing here outlives a transaction: no server-side prepared statements
(``prepare_threshold=None`` on every connection), no ``SET`` and no startup ``options``
(PgBouncer refuses them): each statement runs as ``BEGIN; SET LOCAL statement_timeout;
<statement>; COMMIT`` sent in one pipeline, still one round trip. Schema creation takes a
transaction-scoped advisory lock. ``LISTEN`` needs a session of its own: it uses
``KEEN_SIGNUP_DATABASE_LISTEN_URL`` (a direct URL) when given (:mod:`.postgres_wake`).
A pooler that has lost its server keeps a client waiting (PgBouncer's
``query_wait_timeout``: 120 s): a statement that outlives its budget by far has its
connection closed from this side (:mod:`.postgres_deadlines`), so a login never waits for it.

Fork safety (gunicorn ``--preload``). A pooled connection must never be used by two
processes: its socket would carry two conversations. Every pool belongs to the pid that
opened it; a child (detected by pid and by an at-fork hook) forgets the parent's pools
*without closing them* (closing would send a Terminate message on the parent's socket;
psycopg itself never finishes a connection from another pid) and opens its own.

This module imports psycopg at the top on purpose: it is only imported with
``KEEN_SIGNUP_STORE = "postgres"``, and a missing package then fails at ``init_app`` with
:class:`~flask_keen_signup.exceptions.MissingDependencyError` and the install hint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import threading
import time
import typing as t
import weakref

from .exceptions import MissingDependencyError
from .exceptions import StoreError
from .postgres_deadlines import Guard
from .postgres_deadlines import deadlines

try:
    import psycopg
    import psycopg.conninfo
    from psycopg_pool import ConnectionPool
    from psycopg_pool import PoolClosed
    from psycopg_pool import PoolTimeout
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise MissingDependencyError(
        "KEEN_SIGNUP_STORE = 'postgres' needs psycopg 3 and its pool: "
        "pip install flask-keen-signup[postgres]"
    ) from exc

logger = logging.getLogger(__name__)

#: The schema the tables live in unless ``KEEN_SIGNUP_DATABASE_SCHEMA`` says otherwise: a
#: schema of their own keeps them apart from the app's tables (and easy to grant or drop).
DEFAULT_SCHEMA = "keen_signup"
#: A schema name this package accepts: a plain lower-case SQL identifier, never quoted.
SCHEMA_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
#: Default request-path budget when the config gives none (``KEEN_SIGNUP_STORE_TIMEOUT``).
DEFAULT_STORE_TIMEOUT = 0.1
#: Connections per process: login requests, and the sender/CLI.
REQUEST_POOL_SIZE = 4
WORKER_POOL_SIZE = 2
#: libpq counts ``connect_timeout`` in whole seconds and treats anything below 2 as 2.
#: Pool workers connect off the request path, so this bounds their attempts, not a login.
CONNECT_TIMEOUT = 3
#: Statement limit of the ``worker`` pool (the sender, the CLI), in seconds.
WORKER_TIMEOUT = 30.0
#: How long the sender or the CLI waits for a ``worker`` connection, in seconds: short, so
#: that an exit flush with PostgreSQL down stays near ``KEEN_SIGNUP_SHUTDOWN_TIMEOUT``.
WORKER_POOL_WAIT = 3.0
#: A pool that could not give a connection in time is replaced, at most this often (s).
REFRESH_AFTER = 1.0
#: A statement still unanswered this long after its ``statement_timeout`` (as a share of
#: it, plus a constant) is abandoned: its connection is closed from this side.
DEADLINE_GRACE = (0.5, 0.05)

REQUEST = "request"
WORKER = "worker"

# -- the schema ------------------------------------------------------------------------

_BOOTSTRAP = """
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.schema_version (
    version    integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""

#: One script per schema version, applied in order; each ends by recording its version.
#: Never edit a released one: add the next.
MIGRATIONS: tuple[str, ...] = (
    """
-- version 1: the marker ledger, the outbox, its dead letters and counters.
CREATE TABLE IF NOT EXISTS {s}.markers (
    collection   text NOT NULL,
    user_id      text NOT NULL,
    state        text NOT NULL CHECK (state IN ('pending', 'confirmed')),
    claimed_at   double precision NOT NULL,
    confirmed_at double precision,
    PRIMARY KEY (collection, user_id)
);
CREATE TABLE IF NOT EXISTS {s}.outbox (
    id               bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    collection       text NOT NULL,
    user_id          text NOT NULL,
    uniqueness_token text NOT NULL,
    body             text NOT NULL,
    state            text NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'confirming', 'delivered', 'skipped')),
    attempts         integer NOT NULL DEFAULT 0,
    created_at       double precision NOT NULL,
    next_attempt_at  double precision NOT NULL,
    lease_owner      text,
    last_attempt_at  double precision,
    last_error       text,
    done_at          double precision
);
CREATE INDEX IF NOT EXISTS outbox_due
    ON {s}.outbox (next_attempt_at, id) WHERE state IN ('pending', 'confirming');
CREATE INDEX IF NOT EXISTS outbox_done
    ON {s}.outbox (done_at) WHERE state IN ('delivered', 'skipped');
CREATE TABLE IF NOT EXISTS {s}.dead_letters (
    id               bigint PRIMARY KEY,
    collection       text NOT NULL,
    user_id          text NOT NULL,
    uniqueness_token text NOT NULL,
    body             text NOT NULL,
    attempts         integer NOT NULL,
    created_at       double precision NOT NULL,
    reason           text NOT NULL,
    error_code       text,
    died_at          double precision NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.outbox_meta (
    key   text PRIMARY KEY,
    count bigint NOT NULL DEFAULT 0,
    note  text
);
INSERT INTO {s}.outbox_meta (key)
    VALUES ('delivered'), ('skipped'), ('resends'), ('last_error') ON CONFLICT DO NOTHING;
INSERT INTO {s}.schema_version (version) VALUES (1) ON CONFLICT DO NOTHING;
""",
    """
-- version 2: retention finds delivered rows that still hold a body without a scan.
CREATE INDEX IF NOT EXISTS outbox_bodies
    ON {s}.outbox (done_at) WHERE state IN ('delivered', 'skipped') AND body <> '';
INSERT INTO {s}.schema_version (version) VALUES (2) ON CONFLICT DO NOTHING;
""",
    """
-- version 3: when each row first failed (KEEN_SIGNUP_RETRY_FOR is counted from it).
ALTER TABLE {s}.outbox ADD COLUMN IF NOT EXISTS first_failed_at double precision;
INSERT INTO {s}.schema_version (version) VALUES (3) ON CONFLICT DO NOTHING;
""",
)

#: The schema version this code needs.
SCHEMA_VERSION = len(MIGRATIONS)


def check_schema_name(schema: str) -> str:
    """``schema`` if it is a plain lower-case identifier, else :class:`ValueError`."""
    if not isinstance(schema, str) or not SCHEMA_NAME_RE.match(schema):
        raise ValueError(
            "must be a plain lower-case SQL identifier (letters, digits, _; at most 63)"
        )
    return schema


def schema_sql(schema: str = DEFAULT_SCHEMA) -> str:
    """Every statement that creates the current schema, for DBAs who create it themselves.

    Idempotent (``IF NOT EXISTS``): running it on a database that has the tables changes
    nothing. ``flask keen-signup schema`` prints it.
    """
    check_schema_name(schema)
    parts = [_BOOTSTRAP.format(s=schema).strip()]
    parts += [script.format(s=schema).strip() for script in MIGRATIONS]
    return (
        f"-- flask-keen-signup schema version {SCHEMA_VERSION}, in schema {schema}\n"
        + "\n\n".join(parts)
        + "\n"
    )


# -- connection strings ------------------------------------------------------------------


def parse_url(url: str) -> dict[str, t.Any]:
    """``url`` (``postgresql://…`` or ``key=value`` conninfo) as libpq's parameters.

    :raises ValueError: with a message that never quotes the URL (it may hold a password).
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError("is empty")
    text = url.strip()
    if "://" in text and not text.startswith(("postgresql://", "postgres://")):
        raise ValueError("must start with postgresql:// (or be a key=value conninfo string)")
    try:
        params = psycopg.conninfo.conninfo_to_dict(text)
    except psycopg.Error:
        # libpq's message may echo the string, password included: say only what is wrong.
        raise ValueError("is not a valid PostgreSQL URL or conninfo string") from None
    return params


def describe(params: t.Mapping[str, t.Any]) -> str:
    """Where a connection goes, for reprs and messages: host, port, database; no secret."""
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port") or "5432"
    dbname = params.get("dbname") or params.get("user") or "-"
    return f"{host}:{port}/{dbname}"


class PostgresDatabase:
    """One PostgreSQL database as the store and outbox use it (see the module doc).

    :param url: ``KEEN_SIGNUP_DATABASE_URL``. Never logged, never in a repr or an error.
    :param schema: ``KEEN_SIGNUP_DATABASE_SCHEMA``: where the tables live.
    :param timeout: ``KEEN_SIGNUP_STORE_TIMEOUT``: how long a login request may wait for a
        pooled connection, and each of its statements may run, in seconds.
    :param create_schema: create or upgrade the tables on first use (default). ``False``
        for databases whose DBA runs ``flask keen-signup schema`` and grants no ``CREATE``.
    :param listen_url: ``KEEN_SIGNUP_DATABASE_LISTEN_URL``: where ``LISTEN`` connects
        (never through a transaction pooler). Never logged either.

    :raises ValueError: a malformed URL or schema name (``init_app`` reports it as a
        :class:`~flask_keen_signup.exceptions.ConfigurationError`).
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str = DEFAULT_SCHEMA,
        timeout: float = DEFAULT_STORE_TIMEOUT,
        request_pool_size: int = REQUEST_POOL_SIZE,
        worker_pool_size: int = WORKER_POOL_SIZE,
        create_schema: bool = True,
        listen_url: str | None = None,
    ) -> None:
        params = parse_url(url)
        self.schema = check_schema_name(schema)
        self.timeout = float(timeout)
        self.create_schema = create_schema
        self._conninfo = psycopg.conninfo.make_conninfo(url.strip())
        secret_params = [params]
        #: ``KEEN_SIGNUP_DATABASE_LISTEN_URL``: a direct connection for ``LISTEN`` (a
        #: transaction pooler cannot keep one), or ``None``: the senders poll.
        self.listen_conninfo: str | None = None
        if listen_url:
            secret_params.append(parse_url(listen_url))
            self.listen_conninfo = psycopg.conninfo.make_conninfo(listen_url.strip())
        self._secrets = tuple(
            str(p[key]) for p in secret_params for key in ("password", "sslpassword") if p.get(key)
        )
        self._where = describe(params)
        self._sizes = {REQUEST: request_pool_size, WORKER: worker_pool_size}
        #: The NOTIFY channel that wakes every host's sender.
        self.channel = f"{self.schema}_outbox"
        self._schema_ready = False
        self._closed = False
        self._reset_process_state()
        _databases.add(self)

    def __repr__(self) -> str:
        return f"<PostgresDatabase {self._where} schema={self.schema!r}>"

    def table(self, name: str) -> str:
        """``schema.name`` for SQL text (the schema name was checked to need no quoting)."""
        return f"{self.schema}.{name}"

    def redact(self, text: str) -> str:
        """``text`` with the connection's password(s) replaced by ``***``."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    # -- pools, per process ----------------------------------------------------------

    def _reset_process_state(self) -> None:
        """Forget this process's pools without closing them (see the module doc)."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._pools: dict[str, ConnectionPool[t.Any]] = {}
        self._opened_at: dict[str, float] = {}

    def pool(self, role: str = REQUEST) -> ConnectionPool[t.Any]:
        """This process's pool for ``role`` (``request`` or ``worker``), opened lazily."""
        if self._pid != os.getpid():
            self._reset_process_state()
        pool = self._pools.get(role)
        if pool is not None:
            return pool
        if self._closed:
            raise StoreError("the PostgreSQL store is closed")
        with self._lock:
            pool = self._pools.get(role)
            if pool is None:
                pool = self._open_pool(role)
                self._pools[role] = pool
                self._opened_at[role] = time.monotonic()
        return pool

    def _budget(self, role: str) -> float:
        return self.timeout if role == REQUEST else max(WORKER_TIMEOUT, self.timeout)

    def _open_pool(self, role: str) -> ConnectionPool[t.Any]:
        # The URL's own options (``?options=-c%20search_path%3Dapp``) are the URL's: none of
        # ours, since a pooler refuses them and would not keep them per client anyway.
        pool: ConnectionPool[t.Any] = ConnectionPool(
            self._conninfo,
            min_size=1,
            max_size=max(1, self._sizes[role]),
            open=False,
            timeout=self.timeout if role == REQUEST else max(WORKER_POOL_WAIT, self.timeout),
            name=f"keen-signup-{role}-{os.getpid()}",
            kwargs={
                "autocommit": True,
                "prepare_threshold": None,  # no server-side prepared statements: poolers
                "connect_timeout": CONNECT_TIMEOUT,
                "application_name": f"flask-keen-signup {role}",
            },
        )
        pool.open(wait=False)
        return pool

    def _refresh(self, role: str) -> None:
        """Replace a pool that timed out by a new one, at most once per ``REFRESH_AFTER`` s.

        psycopg's pool retries a failed connection with an exponential backoff that grows
        to minutes during a long outage, so after PostgreSQL comes back logins could keep
        failing for that long. A fresh pool connects at once; the old one is closed a little
        later on a helper thread (never on the request's time).
        """
        if self._pid != os.getpid():
            return
        with self._lock:
            opened = self._opened_at.get(role, 0.0)
            if time.monotonic() - opened < REFRESH_AFTER or self._closed:
                return
            old = self._pools.pop(role, None)
            self._opened_at[role] = time.monotonic()
        if old is not None:
            # Later, so that threads already waiting on it time out instead of failing.
            closer = threading.Timer(
                max(WORKER_POOL_WAIT, self.timeout) + 1.0, old.close, kwargs={"timeout": 1.0}
            )
            closer.daemon = True
            closer.start()

    def close(self) -> None:
        """Close this process's pools (the extension's teardown, tests). Idempotent."""
        self._closed = True
        if self._pid != os.getpid():
            self._reset_process_state()
            return
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            with contextlib.suppress(Exception):
                pool.close(timeout=1.0)

    # -- running statements ----------------------------------------------------------

    def error(self, what: str, exc: BaseException) -> StoreError:
        """A :class:`StoreError` for ``exc`` whose message holds no password."""
        if isinstance(exc, PoolTimeout):
            detail = f"no connection to {self._where} in time ({type(exc).__name__})"
        else:
            detail = f"{type(exc).__name__}: {str(exc).strip()}"
        return StoreError(f"cannot {what} in PostgreSQL: {self.redact(detail)}")

    def _wrap(self, what: str, exc: BaseException) -> StoreError:
        error = self.error(what, exc)
        if not any(secret in str(exc) for secret in self._secrets):
            error.__cause__ = exc  # the driver's own error, for the traceback
        return error

    def run(
        self,
        query: str,
        params: t.Any = None,
        *,
        what: str,
        role: str = REQUEST,
        fetch: str = "none",
    ) -> t.Any:
        """Run one statement on a pooled connection: ``fetch`` is ``none``, ``one``, ``all``.

        A connection the server dropped (a restart, a failover) fails once; the statement
        is then tried again on another one (the pool discards the broken one). Should the
        server have committed it just before the drop, the repeat is harmless: a claim
        loses (its event was queued once), a marker write is idempotent, and a plain
        enqueue queues a second row with the same uniqueness token, which Keen drops.
        """
        # A restart leaves every idle pooled connection broken: each fails once, at most.
        for attempt in range(1, self._sizes.get(role, 1) + 2):
            failure: BaseException | None = None
            conn: psycopg.Connection[t.Any] | None = None
            guard: Guard | None = None
            try:
                self.ensure_schema(role)
                with self.pool(role).connection() as conn:
                    with deadlines.guard(conn, self._deadline(role)) as guard:
                        cursor = self._in_transaction(conn, role, query, params)
                    if fetch == "one":
                        return cursor.fetchone()
                    if fetch == "all":
                        return cursor.fetchall()
                    return cursor.rowcount
            except PoolTimeout as exc:
                self._refresh(role)
                failure = exc
            except PoolClosed:
                continue  # replaced by _refresh meanwhile: take the new one
            except psycopg.OperationalError as exc:
                if guard is not None and guard.fired:
                    raise StoreError(
                        f"cannot {what} in PostgreSQL: no answer from {self._where} within "
                        f"{self._deadline(role):.2f} s (connection closed)"
                    ) from None
                lost = conn is not None and (conn.broken or conn.closed)
                if lost and attempt <= self._sizes.get(role, 1):
                    logger.debug("PostgreSQL dropped a pooled connection; trying another")
                    continue
                failure = exc
            except psycopg.Error as exc:
                failure = exc
            if failure is not None:
                break
        raise self._wrap(what, t.cast(BaseException, failure))

    def _deadline(self, role: str) -> float:
        share, constant = DEADLINE_GRACE
        return self._budget(role) * (1 + share) + constant

    def _set_timeout(self, role: str) -> str:
        return f"SET LOCAL statement_timeout = {max(1, math.ceil(self._budget(role) * 1000))}"

    def _in_transaction(
        self, conn: psycopg.Connection[t.Any], role: str, query: str, params: t.Any
    ) -> psycopg.Cursor[t.Any]:
        """``query`` in its own transaction with the role's ``statement_timeout``: four
        statements in one pipeline, so one round trip, as a lone statement would be.

        Nothing outlives the transaction, which is what a transaction pooler needs. A
        statement's failure is rolled back by the pool (on leaving ``connection()``); a
        lost connection (no SQLSTATE, or class 08) is closed here, so that the pool
        discards it: a pooler may close a client without libpq noticing at once.
        """
        try:
            with conn.pipeline():
                conn.execute("BEGIN")
                conn.execute(self._set_timeout(role))
                cursor = conn.execute(query, params)
                conn.execute("COMMIT")
        except psycopg.OperationalError as exc:
            if exc.sqlstate is None or exc.sqlstate.startswith("08"):
                conn.close()
            raise
        return cursor

    # -- the schema ------------------------------------------------------------------

    def ensure_schema(self, role: str = REQUEST) -> None:
        """Create or upgrade the tables once per process (idempotent, versioned, locked).

        Reads ``schema_version`` (within the role's budget); only when it is missing or
        older does it take a transaction-scoped advisory lock (so that hosts starting
        together queue up; a session lock could outlive the transaction behind a pooler),
        check again and apply the missing migrations, with ``WORKER_TIMEOUT`` even on the
        request path: this happens once per database, usually at start-up on the sender's
        or the known-users thread.
        """
        if self._schema_ready or not self.create_schema:
            return
        with self.pool(role).connection() as conn:
            with deadlines.guard(conn, self._deadline(role)) as guard:
                try:
                    self._migrate(conn, role, guard)
                except psycopg.OperationalError:
                    if guard.fired:
                        raise StoreError(
                            f"cannot read the schema version in PostgreSQL: no answer from "
                            f"{self._where} in time (connection closed)"
                        ) from None
                    raise
        self._schema_ready = True

    def _migrate(self, conn: psycopg.Connection[t.Any], role: str, guard: Guard) -> None:
        with conn.transaction():
            conn.execute(self._set_timeout(role))
            version = self._version(conn)
        if version >= SCHEMA_VERSION:
            return
        guard.extend(self._deadline(WORKER))
        for attempt in range(3):
            try:
                version = self._apply_migrations(conn)
                break
            except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateObject):
                # Another host created an object while this one waited for the lock, and
                # an advisory lock does not refresh the catalog cache (relation locks do):
                # a new transaction sees it, and IF NOT EXISTS then skips it.
                if attempt == 2:
                    raise
        logger.info(
            "PostgreSQL schema %s is at version %d (was %d)", self.schema, SCHEMA_VERSION, version
        )

    def _apply_migrations(self, conn: psycopg.Connection[t.Any]) -> int:
        """Bootstrap and the missing migrations, in one transaction under the lock; returns
        the version found under the lock."""
        with conn.transaction():
            conn.execute(self._set_timeout(WORKER))
            lock = f"keen_signup:{self.schema}"
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (lock,))
            conn.execute(_BOOTSTRAP.format(s=self.schema))
            version = self._version(conn)
            for number, script in enumerate(MIGRATIONS, start=1):
                if number > version:
                    conn.execute(script.format(s=self.schema))
        return version

    def _version(self, conn: psycopg.Connection[t.Any]) -> int:
        row = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL", (self.table("schema_version"),)
        ).fetchone()
        if not row or not row[0]:
            return 0
        row = conn.execute(f"SELECT coalesce(max(version), 0) FROM {self.table('schema_version')}")
        found = row.fetchone()
        return int(found[0]) if found else 0

    def schema_version(self) -> int:
        """The version the database is at (0: no tables yet)."""
        try:
            with self.pool(WORKER).connection() as conn:
                return self._version(conn)
        except psycopg.Error as exc:
            raise self._wrap("read the schema version", exc) from None


def driver_error(exc: BaseException) -> BaseException | None:
    """The database driver's error behind ``exc`` (psycopg's, or one SQLAlchemy wraps),
    or ``None`` if ``exc`` is not a database error."""
    if isinstance(exc, psycopg.Error):
        return exc
    original = getattr(exc, "orig", None)  # sqlalchemy.exc.DBAPIError
    if isinstance(original, BaseException) and type(exc).__module__.startswith("sqlalchemy"):
        return original
    if type(exc).__module__.split(".")[0] in ("sqlalchemy", "psycopg2"):
        return exc
    return None


_databases: weakref.WeakSet[PostgresDatabase] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    pid = os.getpid()
    for database in list(_databases):
        # A sender restarted by an earlier hook may have opened this child's pool already.
        if database._pid != pid:
            database._reset_process_state()


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_after_fork_in_child)


__all__ = [
    "DEFAULT_SCHEMA",
    "MIGRATIONS",
    "PostgresDatabase",
    "SCHEMA_VERSION",
    "check_schema_name",
    "parse_url",
    "schema_sql",
]
