"""``flask keen-signup status | flush | retry-dead | backfill``.

Operators' view of the outbox: what is waiting, what died and why; and the two repairs:
send now, and replay dead letters after fixing their cause.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
import typing as t

import click
from flask import current_app
from flask.cli import AppGroup

if t.TYPE_CHECKING:  # pragma: no cover
    from .backfill import BackfillLedger
    from .extension import _AppState

cli = AppGroup("keen-signup", help="Inspect and drive the Keen signup outbox.")


def _state() -> _AppState:
    from .extension import _state as state_of

    return state_of(current_app._get_current_object())  # type: ignore[attr-defined]


def _format_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return str(dt.timedelta(seconds=round(seconds)))


@cli.command("status")
def status_command() -> None:
    """Print pending, due, in-flight, delivered and dead counts, and the circuit state."""
    from .extension import health_of

    state = _state()
    status = health_of(state)
    click.echo(f"collection:        {state.settings.collection}")
    click.echo(f"delivery:          {state.settings.delivery}")
    for key in ("pending", "due", "in_flight", "delivered", "skipped", "dead", "resends"):
        click.echo(f"{key + ':':<19}{status.get(key, 0)}")
    click.echo(f"oldest pending:    {_format_age(status.get('oldest_pending_age'))}")
    click.echo(f"last error:        {status.get('last_error') or '-'}")
    click.echo(f"circuit:           {status.get('circuit', '-')}")


@cli.command("schema")
@click.option(
    "--schema",
    "schema",
    default=None,
    help="Schema name (default: KEEN_SIGNUP_DATABASE_SCHEMA).",
)
def schema_command(schema: str | None) -> None:
    """Print the SQL that creates the postgres store's tables (for DBAs; idempotent)."""
    from .postgres import schema_sql

    name = schema or _state().settings.database_schema
    try:
        click.echo(schema_sql(name), nl=False)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--schema") from None


@cli.command("flush")
@click.option("--timeout", default=60.0, show_default=True, help="Give up after this many seconds.")
def flush_command(timeout: float) -> None:
    """Send everything queued now. Exits non-zero if anything is left."""
    state = _state()
    if state.sender is None:
        raise click.ClickException("no sender is configured")
    total = state.outbox.pending_count()
    deadline = time.monotonic() + timeout
    left = total
    with click.progressbar(length=total, label="Sending signups", file=sys.stderr) as bar:
        while left and time.monotonic() < deadline:
            remaining = state.sender.flush(timeout=min(5.0, max(0.1, deadline - time.monotonic())))
            bar.update(max(0, left - remaining))
            if remaining >= left and remaining:
                # No progress this round: Keen is failing. Wait for backoff, within limits.
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            left = remaining
    if left:
        last_error = state.sender.status().last_error
        raise click.ClickException(
            f"{left} signup(s) still queued; last error: {last_error or '-'}"
        )
    click.echo(f"sent {total} signup(s); nothing left")


@cli.command("retry-dead")
@click.option(
    "--id", "ids", type=int, multiple=True, help="Dead letter id (repeatable). Default: all."
)
def retry_dead_command(ids: tuple[int, ...]) -> None:
    """Move dead letters back to the outbox (after fixing what made Keen refuse them)."""
    state = _state()
    moved = state.outbox.retry_dead(list(ids) or None)
    if state.sender is not None:
        state.sender.wake()
    click.echo(f"moved {moved} dead letter(s) back to the outbox")
    if ids and moved < len(ids):
        raise click.ClickException(f"{len(ids) - moved} id(s) were not dead letters")


@cli.command("dead")
@click.option("--limit", default=50, show_default=True)
def dead_command(limit: int) -> None:
    """List dead letters with the reason Keen gave."""
    for letter in _state().outbox.dead_letters(limit=limit):
        click.echo(f"{letter.id}\t{letter.user_id}\t{letter.error_code or '-'}\t{letter.reason}")


@cli.command("backfill")
@click.option(
    "--before",
    default=None,
    help="Report users created before this ISO-8601 instant (default: KEEN_SIGNUP_SINCE).",
)
@click.option("--dry-run", is_flag=True, help="Count what would be queued; queue nothing.")
def backfill_command(before: str | None, dry_run: bool) -> None:
    """Report pre-existing Auth0 users once, with their real created_at.

    Needs the Management API credentials (KEEN_SIGNUP_AUTH0_DOMAIN, _CLIENT_ID,
    _CLIENT_SECRET) with read:users. Events go through the outbox like live signups.
    """
    from .auth0 import ManagementClient
    from .backfill import backfill
    from .config import _as_datetime
    from .exceptions import ConfigurationError
    from .exceptions import KeenSignupError

    state = _state()
    settings = state.settings
    if not (settings.auth0_domain and settings.auth0_client_id and settings.auth0_client_secret):
        raise click.ClickException(
            "backfill needs KEEN_SIGNUP_AUTH0_DOMAIN, KEEN_SIGNUP_AUTH0_CLIENT_ID and "
            "KEEN_SIGNUP_AUTH0_CLIENT_SECRET (a machine-to-machine app with read:users)"
        )
    try:
        cutoff = _as_datetime("--before", before) if before else settings.since
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc), param_hint="--before") from None
    if cutoff is None:
        raise click.ClickException("set KEEN_SIGNUP_SINCE or pass --before")
    ledger = _backfill_ledger(state)
    try:
        with ManagementClient(
            settings.auth0_domain,
            settings.auth0_client_id,
            settings.auth0_client_secret,
            timeout=settings.timeout,
        ) as management:
            report = backfill(settings, management, ledger, before=cutoff, dry_run=dry_run)
    except KeenSignupError as exc:
        raise click.ClickException(f"backfill stopped: {exc}") from None
    verb = "would queue" if dry_run else "queued"
    click.echo(
        f"{verb} {report.queued} user(s) created before {cutoff.isoformat()}; "
        f"{report.already_done} already backfilled, {report.too_recent} newer, "
        f"{report.no_created_at} without created_at"
    )
    if state.sender is not None and report.queued and not dry_run:
        state.sender.wake()


def _backfill_ledger(state: _AppState) -> BackfillLedger:
    """Where this app records backfilled users: beside its outbox (SQLite or Redis)."""
    from .backfill import RedisBackfillLedger
    from .backfill import SQLiteBackfillLedger
    from .delivery.sqlite_outbox import SQLiteOutbox
    from .stores.sqlite import SQLiteStore

    if isinstance(state.outbox, SQLiteOutbox):
        ledger = state.tracker.claimer
        if not isinstance(ledger, SQLiteStore):  # session or custom store: the file's ledger
            ledger = SQLiteStore(state.database, state.settings.collection)
        return SQLiteBackfillLedger(ledger, state.outbox)
    if type(state.outbox).__name__ == "RedisOutbox":
        from .delivery.redis_outbox import RedisOutbox
        from .stores.redis import RedisStore

        return RedisBackfillLedger(
            t.cast(RedisStore, state.store), t.cast(RedisOutbox, state.outbox)
        )
    raise click.ClickException("backfill needs the SQLite or the Redis outbox")
