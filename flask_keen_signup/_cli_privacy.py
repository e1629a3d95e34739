"""``flask keen-signup prune | forget``: retention and erasure from the command line.

Plain click commands, added to the ``keen-signup`` group by :mod:`.cli` (this module does
not import it: no cycle); the work is in :mod:`.privacy`.
"""

from __future__ import annotations

import click
from flask.cli import with_appcontext

from ._text import printable
from .exceptions import ConfigurationError
from .exceptions import KeenSignupError
from .state import signup_state


def _duration(seconds: float) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds:g} s"


@click.command("prune")
@with_appcontext
@click.option(
    "--older-than",
    default=None,
    help="Drop bodies of events delivered longer ago than this ('7 days', '12h', '0'). "
    "Default: KEEN_SIGNUP_RETENTION.",
)
def prune_command(older_than: str | None) -> None:
    """Drop the bodies (personal data) of delivered events now; keep id, user, outcome."""
    from ._config_values import _as_duration
    from .config import MAX_RETENTION
    from .privacy import prune

    state = signup_state()
    retention = None
    if older_than is not None:
        try:
            retention = _as_duration("--older-than", older_than, maximum=MAX_RETENTION)
        except ConfigurationError as exc:
            raise click.BadParameter(str(exc), param_hint="--older-than") from None
    try:
        dropped = prune(state, retention)
    except KeenSignupError as exc:
        raise click.ClickException(f"prune failed: {printable(str(exc))}") from None
    seconds = state.settings.retention if retention is None else retention
    click.echo(
        f"dropped the body of {dropped} delivered event(s) older than {_duration(seconds)}"
    )


@click.command("forget")
@with_appcontext
@click.argument("sub")
@click.option(
    "--local-only",
    is_flag=True,
    help="Erase locally only; do not ask Keen to delete the user's events.",
)
def forget_command(sub: str, local_only: bool) -> None:
    """Erase one user's personal data: locally, and in Keen with KEEN_MASTER_KEY.

    SUB is the user's Auth0 id (the ID token's ``sub``, e.g. ``auth0|abc``). Locally the
    marker stays, as a hash of SUB, so the user is never reported again; the outbox
    rows lose their body and SUB, and dead letters are deleted. In Keen, their events
    in the collection are deleted through Keen's delete API (filter ``userId`` = SUB).
    """
    from .privacy import forget

    state = signup_state()
    shown = printable(sub, limit=120)
    try:
        report = forget(state, sub, keen=not local_only)
    except KeenSignupError as exc:
        raise click.ClickException(
            f"could not erase {shown} locally: {printable(str(exc))}"
        ) from None
    click.echo(f"erased {shown} in collection {state.settings.collection!r}")
    if report.marker_hashed:
        marker = f"kept as {report.erased_id[:19]}… (their next login is a returning user)"
    else:
        marker = "no raw user id in the marker store"
    click.echo(f"  marker:  {marker}")
    if report.outbox is None:
        click.echo("  outbox:  this outbox cannot erase: its rows are unchanged")
    else:
        rows = report.outbox
        click.echo(
            f"  outbox:  {rows.erased} finished row(s) erased, {rows.skipped} queued row(s) "
            f"skipped (never sent), {rows.dead_letters} dead letter(s) deleted"
        )
    if report.keen == "deleted":
        click.echo("  Keen:    their events were deleted (Keen's delete-events API)")
    elif report.keen == "failed":
        raise click.ClickException(
            "Keen still holds this user's events: the delete failed: "
            f"{printable(report.keen_error or '-')}. Run forget again."
        )
    elif local_only:
        click.echo("  Keen:    not asked (--local-only): Keen still holds this user's events")
    else:
        click.echo(
            "  Keen:    NOT deleted: Keen still holds this user's events. Set "
            "KEEN_MASTER_KEY and run forget again to delete them through Keen's API."
        )
