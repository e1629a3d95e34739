"""``flask keen-signup``: operators' view of the outbox (what is waiting, what died and
why), its two repairs (send now; replay dead letters after fixing their cause), ``schema``
and ``migrate``. ``prune`` and ``forget`` are in :mod:`.privacy`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import math
import sys
import time
import typing as t

import click
from flask.cli import AppGroup

from ._text import printable
from .health import health_of
from .privacy import forget_command
from .privacy import prune_command
from .state import app_for
from .state import signup_state

if t.TYPE_CHECKING:  # pragma: no cover
    from .migrate import Migration

cli = AppGroup(
    "keen-signup",
    help="Inspect and drive the Keen signup outbox.",
    commands=[prune_command, forget_command],
)


_COUNTS = ("pending", "due", "in_flight", "delivered", "skipped", "dead", "resends")


def _format_age(seconds: float | None) -> str:
    return "-" if seconds is None else str(dt.timedelta(seconds=round(seconds)))


@cli.command("status")
@click.option(
    "--acknowledge",
    is_flag=True,
    help="After printing, reset the count of signups not recorded (you have seen it, and "
    "the log's ERROR lines name the users).",
)
def status_command(acknowledge: bool) -> None:
    """Print pending, due, in-flight, delivered and dead counts, and the circuit state."""
    state = signup_state()
    status = health_of(state)
    lost, since = status["not_recorded"], status["not_recorded_since"]
    if lost and since:
        lost = f"{lost} (since {_format_age(time.time() - since)} ago; see the log)"
    replaced, unrecovered = status["database_replaced"], status["database_unrecovered"]
    reasons = "; ".join(status["reasons"])
    rows = [
        ("collection", state.settings.collection),
        ("delivery", state.settings.delivery),
        *((key, "-" if status[key] is None else status[key]) for key in _COUNTS),
        ("oldest pending", _format_age(status["oldest_pending_age"])),
        ("last error", printable(status["last_error"] or "-")),
        ("circuit", status["circuit"]),
        # Store trouble (issue 10): signups the login path could not hand to the store.
        ("spooled", f"{status['spooled']} (oldest {_format_age(status['oldest_spooled_age'])})"),
        ("not recorded", lost),
        ("database file", replaced and f"{replaced['how']} under the app; {replaced['salvaged']}"),
        ("NOT RECOVERED", unrecovered and unrecovered["summary"]),
        ("ok", "yes" if status["ok"] else "no"),
        ("verdict", status["verdict"] + (f" ({reasons})" if reasons else "")),
    ]
    for label, value in rows:
        if value is not None:  # the two lines of a damaged file only when it happened
            click.echo(f"{label + ':':<19}{value}")
    if acknowledge:
        seen = state.unrecorded.acknowledge()
        click.echo(f"acknowledged:      {seen.count} signup(s) not recorded; counting from 0")
    if status["store_error"]:
        # Exit non-zero: a monitoring check running `status` must see the trouble.
        raise click.ClickException(
            f"the outbox cannot be read ({printable(state.database.path, limit=200)}): "
            f"{printable(status['store_error'])}"
        )


@cli.command("schema")
@click.option(
    "--schema",
    default=None,
    help="Schema name (default: KEEN_SIGNUP_DATABASE_SCHEMA).",
)
def schema_command(schema: str | None) -> None:
    """Print the SQL that creates the postgres store's tables (for DBAs; idempotent)."""
    from .postgres_schema import schema_sql

    name = schema or signup_state().settings.database_schema
    try:
        click.echo(schema_sql(name), nl=False)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--schema") from None


class _Seconds(click.FloatRange):
    """Seconds from 0 to a week; NaN (which every range check lets through) refused."""

    name = "seconds"

    def convert(
        self, value: t.Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> t.Any:
        seconds = super().convert(value, param, ctx)
        if math.isnan(seconds):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return seconds


#: Bounds of the numeric options: out of range is a usage error, never an OverflowError.
_SECONDS = _Seconds(0, 7 * 86400)
_COUNT = click.IntRange(1, 1_000_000)
_ROW_ID = click.IntRange(1, 2**63 - 1)  # SQLite's and PostgreSQL's bigint


@cli.command("flush")
@click.option(
    "--timeout",
    type=_SECONDS,
    default=60.0,
    show_default=True,
    help="Give up after this many seconds (at most a week).",
)
def flush_command(timeout: float) -> None:
    """Send what is queued now, paced like the sender. Exits non-zero if anything is left.

    Asking does not bypass the backoff or the circuit breaker: while Keen fails, the
    command waits out the circuit's cool-down between tries, so it never spends an
    event's retries (``KEEN_SIGNUP_RETRY_FOR``) faster than the sender would. It reports
    what this command delivered, what it moved to dead letters, and what is still queued.
    """
    from . import signals

    state = signup_state()
    sender = state.sender
    app = app_for()
    counts = {"delivered": 0, "dead": 0}

    def count(kind: str, _: object, **__: object) -> None:
        counts[kind] += 1

    left = total = state.outbox.pending_count()
    deadline = time.monotonic() + timeout
    with contextlib.ExitStack() as stack:
        for kind in counts:
            receiver = functools.partial(count, kind)
            stack.enter_context(signals.BY_KIND[kind].connected_to(receiver, sender=app))
        bar = stack.enter_context(
            click.progressbar(length=total, label="Sending signups", file=sys.stderr)
        )
        while left and time.monotonic() < deadline:
            remaining = sender.flush(timeout=max(0.1, deadline - time.monotonic()))
            bar.update(max(0, left - remaining))
            if remaining >= left and remaining:
                # No progress: Keen is failing. Wait for the circuit, as the sender would.
                pause = max(1.0, sender.next_due_in())
                time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            left = remaining
    summary = f"delivered {counts['delivered']} signup(s)"
    if counts["dead"]:
        summary += f"; {counts['dead']} moved to dead letters (see `flask keen-signup dead`)"
    if left:
        last_error = sender.status().last_error
        raise click.ClickException(
            f"{summary}; {left} signup(s) still queued, retried by the sender for up to "
            f"KEEN_SIGNUP_RETRY_FOR; last error: {printable(last_error or '-')}"
        )
    click.echo(f"{summary}; nothing left")


@cli.command("retry-dead")
@click.option(
    "--id", "ids", type=_ROW_ID, multiple=True, help="Dead letter id (repeatable). Default: all."
)
def retry_dead_command(ids: tuple[int, ...]) -> None:
    """Move dead letters back to the outbox (after fixing what made Keen refuse them)."""
    state = signup_state()
    moved = state.outbox.retry_dead(list(ids) or None)
    state.sender.wake()
    click.echo(f"moved {moved} dead letter(s) back to the outbox")
    if ids and moved < len(ids):
        raise click.ClickException(f"{len(ids) - moved} id(s) were not dead letters")


@cli.command("dead")
@click.option("--limit", type=_COUNT, default=50, show_default=True)
def dead_command(limit: int) -> None:
    """List dead letters with the reason Keen gave.

    One line per letter, tab-separated: id, user, error code, reason. The user id and Keen's
    texts come from outside, so they are escaped (a newline cannot forge a row, an escape
    sequence cannot reach the terminal) and cut to a readable length.
    """
    for letter in signup_state().outbox.dead_letters(limit=limit):
        click.echo(
            f"{letter.id}\t{printable(letter.user_id, limit=120)}\t"
            f"{printable(letter.error_code or '-', limit=60)}\t{printable(letter.reason)}"
        )


@cli.command("migrate")
@click.option(
    "--reported-until",
    required=True,
    metavar="ISO",
    help="The instant the Rule stopped reporting signups (e.g. 2026-11-18T00:00:00Z). "
    "Users created strictly before it, or carrying the Rule's signedUp marker, are marked "
    "and never sent; later users not yet known are reported once, with their created_at.",
)
@click.option(
    "--users-file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="A file from Auth0's user export (NDJSON or CSV, plain or gzipped) instead of "
    "the Management API.",
)
@click.option("--dry-run", is_flag=True, help="Read everything, write nothing, print the table.")
@click.option(
    "--set-app-metadata",
    is_flag=True,
    help="Also set app_metadata.<marker> in Auth0 for every user marked here (one PATCH per "
    "user, paced to KEEN_SIGNUP_AUTH0_REQUESTS_PER_SECOND: hours for a large tenant).",
)
@click.option(
    "--flush-timeout",
    type=_SECONDS,
    default=30.0,
    show_default=True,
    help="Seconds to spend sending the reported users before exiting; what is left is "
    "delivered by the app's sender.",
)
def migrate_command(
    reported_until: str,
    users_file: str | None,
    dry_run: bool,
    set_app_metadata: bool,
    flush_timeout: float,
) -> None:
    """Take over from the Auth0 Rule: mark the users it reported, report the gap once.

    Safe to run twice, or again after an interruption: nobody is reported twice. May run
    while the app serves on the same store. See docs/migrating-from-the-rule.md.
    """
    from ._config_values import _as_datetime
    from ._dry_run import remove_created_database
    from .exceptions import ConfigurationError
    from .exceptions import KeenSignupError
    from .migrate import USER_FIELDS
    from .migrate import Migration

    state = signup_state()
    settings = state.settings
    try:
        cutoff = _as_datetime("--reported-until", reported_until)
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc), param_hint="--reported-until") from None
    assert cutoff is not None
    needs_api = users_file is None or set_app_metadata
    if needs_api and not settings.has_management_api:
        raise click.ClickException(
            "migrate reads the tenant's users through the Management API: set "
            "KEEN_SIGNUP_AUTH0_DOMAIN, KEEN_SIGNUP_AUTH0_CLIENT_ID and "
            "KEEN_SIGNUP_AUTH0_CLIENT_SECRET (a machine-to-machine app with read:users"
            + (", update:users_app_metadata" if set_app_metadata else "")
            + "), or pass --users-file with a file from Auth0's user export"
        )
    build_ledger = state.parts.migration_ledger  # beside the outbox: the backend says how
    if build_ledger is None:
        raise click.ClickException("migrate needs the SQLite, Redis or PostgreSQL outbox")
    ledger = build_ledger()
    management = None
    if needs_api:
        from .auth0 import management_client_for

        try:
            management = management_client_for(settings)
        except ConfigurationError as exc:
            raise click.ClickException(str(exc)) from None
    on_marked = None
    if set_app_metadata and not dry_run and management is not None:

        def on_marked(user_ids: t.Sequence[str]) -> None:
            for user_id in user_ids:
                management.update_app_metadata(user_id, {settings.marker: True})

    stopped = None
    with contextlib.nullcontext() if management is None else management:
        migration = Migration(
            settings,
            ledger,
            reported_until=cutoff,
            dry_run=dry_run,
            on_marked=on_marked,
            source="the users file" if users_file is not None else "Auth0's user listing",
        )
        try:
            if users_file is not None:
                where = f"file {printable(users_file, limit=200)}"
                _migrate_file(migration, users_file)
            else:
                assert management is not None
                listing = management.all_users(USER_FIELDS)
                where = f"Auth0 ({listing.source})"
                _with_progress(
                    "Migrating users",
                    ((None, user) for user in listing),
                    listing.total or 0,
                    lambda count: count,
                    migration.run,
                )
        except KeenSignupError as exc:
            stopped = exc
            early = dry_run or any(count for _, count in migration.report.rows())
            where = "stopped early: what was done so far" if early else "stopped: nothing written"
    where += f"; reported until {cutoff.isoformat()}"
    click.echo(f"dry run, nothing written ({where})" if dry_run else f"migrate ({where})")
    rows = migration.report.rows()
    width = max(len(name) for name, _ in rows)
    click.echo(f"{'':<{width}}  users")
    for name, count in rows:
        click.echo(f"{name:<{width}}  {count:>5}")
    if dry_run:  # a dry run writes nothing: remove the SQLite file init_app created for it
        remove_created_database(state)
    if stopped is not None:
        raise click.ClickException(f"migrate stopped: {printable(str(stopped))}")
    queued = migration.report.reported
    if queued and not dry_run:
        left = state.sender.flush(timeout=flush_timeout)
        click.echo(
            f"sent {queued - min(left, queued)} of {queued} reported signup(s) now"
            + (f"; {left} still queued, delivered by the app's sender" if left else "")
        )


def _migrate_file(migration: Migration, path: str) -> None:
    """A users file is read twice: checked to the end (gzip's checksum included), then
    migrated chunk by chunk, each chunk written only if it is the one checked. A dry run
    writes nothing and needs one reading."""
    from .users_export import iter_users_file

    checked = None
    if not migration.dry_run:
        with iter_users_file(path) as source:
            checked = _with_progress(
                "Checking users",
                source.numbered(),
                source.size,
                lambda count: source.position,
                migration.check,
            )
    with iter_users_file(path) as again:
        _with_progress(
            "Migrating users",
            again.numbered(),
            again.size,
            lambda count: again.position,
            lambda records: migration.run(records, checked=checked),
        )


Numbered = tuple["int | None", t.Mapping[str, t.Any]]
R = t.TypeVar("R")


def _with_progress(
    label: str,
    records: t.Iterable[Numbered],
    length: int,
    position: t.Callable[[int], int],
    work: t.Callable[[t.Iterable[Numbered]], R],
) -> R:
    """``work(records)`` with a progress bar on a terminal (stderr), plainly otherwise."""
    if not (sys.stderr.isatty() and length):
        return work(records)
    with click.progressbar(length=length, label=label, file=sys.stderr) as bar:

        def advancing() -> t.Iterator[Numbered]:
            for count, record in enumerate(records, 1):
                if count % 1000 == 0:
                    bar.update(min(position(count), length) - bar.pos)
                yield record

        result = work(advancing())
        bar.update(length - bar.pos)
    return result
