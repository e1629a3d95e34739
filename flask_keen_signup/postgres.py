"""PostgreSQL plumbing shared by the ``postgres`` marker store and outbox.

The store (:mod:`.stores.postgres`) and the outbox (:mod:`.delivery.postgres_outbox`)
share one :class:`PostgresDatabase`: its pools (:mod:`.postgres_pools`, fork-safe), its
schema (:mod:`.postgres_schema`, created on first use, versioned) and its error handling
(a password never appears in a message). Neither of them opens connections itself.

Poolers (PgBouncer in ``transaction`` or ``session`` mode, the hosted poolers that behave
like it). A server connection may serve another client between two transactions, so
nothing here outlives a transaction: no prepared statements, no ``SET``: each statement
runs as ``BEGIN; SET LOCAL statement_timeout; <statement>; COMMIT`` sent in one pipeline,
still one round trip. ``LISTEN`` needs a session of its own: it uses
``KEEN_SIGNUP_DATABASE_LISTEN_URL`` (a direct URL) when given (:mod:`.postgres_wake`).
A pooler that has lost its server keeps a client waiting (PgBouncer's
``query_wait_timeout``: 120 s): a statement that outlives its budget by far has its
connection closed from this side (:mod:`.postgres_deadlines`), so a login never waits.

This module imports psycopg at the top on purpose: it is only imported with
``KEEN_SIGNUP_STORE = "postgres"``, and a missing package then fails at ``init_app`` with
:class:`~flask_keen_signup.exceptions.MissingDependencyError` and the install hint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import typing as t

from ._text import mask_secrets
from .config import DEFAULT_STORE_TIMEOUT
from .exceptions import MissingDependencyError
from .exceptions import StoreError
from .postgres_deadlines import Guard
from .postgres_deadlines import deadlines
from .postgres_schema import DEFAULT_SCHEMA
from .postgres_schema import SCHEMA_VERSION
from .postgres_schema import apply_migrations
from .postgres_schema import check_schema_name
from .postgres_schema import schema_version

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

# Only now: it imports psycopg_pool, whose absence the block above reports.
from .postgres_pools import POOL_SIZES
from .postgres_pools import REQUEST
from .postgres_pools import WORKER
from .postgres_pools import Pools

logger = logging.getLogger(__name__)

#: Statement limit of the ``worker`` pool (the sender, the CLI), in seconds.
WORKER_TIMEOUT = 30.0
#: A statement still unanswered this long after its ``statement_timeout`` (as a share of
#: it, plus a constant) is abandoned: its connection is closed from this side.
DEADLINE_GRACE = (0.5, 0.05)

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
        create_schema: bool = True,
        listen_url: str | None = None,
    ) -> None:
        params = parse_url(url)
        self.schema = check_schema_name(schema)
        self.timeout = float(timeout)
        self.create_schema = create_schema
        self.pools = Pools(psycopg.conninfo.make_conninfo(url.strip()), self.timeout)
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
        #: The NOTIFY channel that wakes every host's sender.
        self.channel = f"{self.schema}_outbox"
        self._schema_ready = False

    def __repr__(self) -> str:
        return f"<PostgresDatabase {self._where} schema={self.schema!r}>"

    def table(self, name: str) -> str:
        """``schema.name`` for SQL text (the schema name was checked to need no quoting)."""
        return f"{self.schema}.{name}"

    def redact(self, text: str) -> str:
        """``text`` with the connection's password(s) masked."""
        return mask_secrets(text, self._secrets)

    def pool(self, role: str = REQUEST) -> ConnectionPool[t.Any]:
        """This process's pool for ``role`` (``request`` or ``worker``), opened lazily."""
        return self.pools.get(role)

    def _budget(self, role: str) -> float:
        return self.timeout if role == REQUEST else max(WORKER_TIMEOUT, self.timeout)

    def close(self) -> None:
        """Close this process's pools (the extension's teardown, tests). Idempotent."""
        self.pools.close()

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
        failure: BaseException | None = None
        for attempt in range(POOL_SIZES[role] + 1):
            conn: psycopg.Connection[t.Any] | None = None
            try:
                self.ensure_schema(role)
                with self._connection(role, what) as (conn, _):
                    cursor = self._in_transaction(conn, role, query, params)
                    if fetch == "one":
                        return cursor.fetchone()
                    if fetch == "all":
                        return cursor.fetchall()
                    return cursor.rowcount
            except PoolTimeout as exc:
                self.pools.refresh(role)
                failure = exc
            except PoolClosed:
                continue  # replaced by _refresh meanwhile: take the new one
            except psycopg.OperationalError as exc:
                lost = conn is not None and (conn.broken or conn.closed)
                if lost and attempt < POOL_SIZES[role]:
                    logger.debug("PostgreSQL dropped a pooled connection; trying another")
                    continue
                failure = exc
            except psycopg.Error as exc:
                failure = exc
            break
        raise self._wrap(what, t.cast(BaseException, failure))

    @contextlib.contextmanager
    def _connection(
        self, role: str, what: str
    ) -> t.Iterator[tuple[psycopg.Connection[t.Any], Guard]]:
        """A pooled connection whose statements run under a client-side deadline
        (:mod:`.postgres_deadlines`); one cut off by it fails as a :class:`StoreError`."""
        with self.pool(role).connection() as conn:
            with deadlines.guard(conn, self._deadline(role)) as guard:
                try:
                    yield conn, guard
                except psycopg.OperationalError:
                    if guard.fired:
                        raise StoreError(
                            f"cannot {what} in PostgreSQL: no answer from {self._where} "
                            f"within {self._deadline(role):.2f} s (connection closed)"
                        ) from None
                    raise

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
        with self._connection(role, "read the schema version") as (conn, guard):
            with conn.transaction():
                conn.execute(self._set_timeout(role))
                version = schema_version(conn, self.schema)
            if version < SCHEMA_VERSION:
                guard.extend(self._deadline(WORKER))
                self._migrate(conn)
        self._schema_ready = True

    def _migrate(self, conn: psycopg.Connection[t.Any]) -> None:
        for attempt in range(3):
            try:
                version = apply_migrations(conn, self.schema, self._set_timeout(WORKER))
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

    def schema_version(self) -> int:
        """The version the database is at (0: no tables yet)."""
        try:
            with self.pool(WORKER).connection() as conn:
                return schema_version(conn, self.schema)
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

