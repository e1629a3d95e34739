"""Retention and erasure of the personal data the extension keeps (DESIGN §9), and their
commands ``flask keen-signup prune | forget`` (added to the group by :mod:`.cli`).

A queued event's body holds personal data (name, IP, user agent, attribution). It is
needed until Keen has the event; after that only the fact matters: who signed up, when,
and how it ended. So:

* **Retention** — ``prune``: the bodies of delivered (and skipped) events older than
  ``KEEN_SIGNUP_RETENTION`` are dropped; the row keeps its id, user id, outcome and times.
  The sender does it by itself at most once a minute; ``flask keen-signup prune`` does it
  now.
* **Erasure** — ``forget``: one user's personal data leaves the marker ledger, the
  outbox and the dead letters, and, with ``KEEN_MASTER_KEY``, Keen itself (Keen's
  delete-events API, filtered on ``userId``). The marker stays, under
  :func:`~.stores.erased_user_id` (a SHA-256 of the collection and the user id, the same
  scheme as ``keen.uniqueness_token``), so the user's next login is a returning user and
  is never reported again.
"""

from __future__ import annotations

import click
from flask.cli import with_appcontext

from ._text import printable
from .exceptions import ConfigurationError
from .exceptions import KeenError
from .exceptions import KeenSignupError
from .state import signup_state
from .stores import erased_user_id

#: The event property that carries the user id (DESIGN §3), used to find their events.
USER_ID_PROPERTY = "userId"


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

    state = signup_state()
    seconds = state.settings.retention
    if older_than is not None:
        try:
            seconds = _as_duration("--older-than", older_than, maximum=MAX_RETENTION)
        except ConfigurationError as exc:
            raise click.BadParameter(str(exc), param_hint="--older-than") from None
    try:
        dropped = state.outbox.drop_delivered_bodies(seconds)
    except KeenSignupError as exc:
        raise click.ClickException(f"prune failed: {printable(str(exc))}") from None
    click.echo(f"dropped the body of {dropped} delivered event(s) older than {_duration(seconds)}")


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

    Local first: the outbox rows still to be sent are skipped before Keen is asked, so a
    queued event cannot land after the deletion (one already on the wire at that instant
    can; running ``forget`` again deletes it).
    """
    state = signup_state()
    settings = state.settings
    collection = settings.collection
    shown = printable(sub, limit=120)
    erased = erased_user_id(collection, sub)
    try:
        try:
            rows = state.outbox.forget_user(collection, sub, erased_id=erased)
        except NotImplementedError:
            rows = None
        hashed = state.tracker.claimer.forget(sub)
        if state.tracker.claimer is not state.store:
            hashed = state.store.forget(sub) or hashed
        # A signup of theirs still in the local spool would be dropped when drained (the
        # marker above exists now, so the drain's claim loses); its bytes go now.
        state.spool.erase(sub)
    except KeenSignupError as exc:
        raise click.ClickException(
            f"could not erase {shown} locally: {printable(str(exc))}"
        ) from None
    click.echo(f"erased {shown} in collection {collection!r}")
    if hashed:
        marker = f"kept as {erased[:19]}… (their next login is a returning user)"
    else:
        marker = "no raw user id in the marker store"
    click.echo(f"  marker:  {marker}")
    if rows is None:
        click.echo("  outbox:  this outbox cannot erase: its rows are unchanged")
    else:
        click.echo(
            f"  outbox:  {rows.erased} finished row(s) erased, {rows.skipped} queued row(s) "
            f"skipped (never sent), {rows.dead_letters} dead letter(s) deleted"
        )
    if local_only:
        click.echo("  Keen:    not asked (--local-only): Keen still holds this user's events")
        return
    if not settings.master_key:
        click.echo(
            "  Keen:    NOT deleted: Keen still holds this user's events. Set "
            "KEEN_MASTER_KEY and run forget again to delete them through Keen's API."
        )
        return
    from .keen_admin import KeenAdminClient

    with KeenAdminClient(
        settings.project_id, settings.master_key, api_url=settings.api_url, timeout=settings.timeout
    ) as admin:
        try:
            admin.delete_user_events(collection, sub, property_name=USER_ID_PROPERTY)
        except KeenError as exc:
            raise click.ClickException(
                "Keen still holds this user's events: the delete failed: "
                f"{printable(str(exc) or '-')}. Run forget again."
            ) from None
    click.echo("  Keen:    their events were deleted (Keen's delete-events API)")
