"""One user of the tenant as ``flask keen-signup migrate`` needs it: normalised and checked.

A record from a users file or the Management API becomes a :class:`TenantUser`, or an
:class:`InvalidUserRecord` error that names the field and the problem, never the value.
Migrate checks every record before it writes anything (see :mod:`.migrate`): a user it
cannot decide with certainty stops the run rather than being marked or reported by guess.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import typing as t
from collections.abc import Mapping

from .events import parse_created_at
from .events import user_id_of
from .exceptions import InvalidClaimsError
from .users_export import UsersFileError

#: Claims a backfilled event may carry (still filtered by ``KEEN_SIGNUP_CLAIMS``).
PROFILE_CLAIMS = ("name", "email", "nickname")
#: Values that mean "true" for the Rule's marker in a CSV export (strings there).
_TRUE_TEXT = frozenset({"true", "1", "yes"})
#: A ``created_at`` later than now plus this is refused: no user is created in the future,
#: and a clock a little ahead (or a time zone slip) must not stop a migration.
FUTURE_TOLERANCE = dt.timedelta(days=1)


class InvalidUserRecord(UsersFileError):
    """A user record migrate cannot decide: a bad ``user_id`` or ``created_at``.

    Its message names the field and the problem (and the line, once known), never the
    value: that is personal data.
    """


@dataclasses.dataclass(frozen=True)
class TenantUser:
    """One user of the tenant, as migrate needs it."""

    user_id: str
    created_at: dt.datetime | None
    #: The Rule's ``app_metadata.<marker>`` is true: the Rule reported this user.
    rule_marked: bool
    profile: Mapping[str, t.Any]


def user_from_record(
    record: Mapping[str, t.Any], marker: str, *, now: dt.datetime | None = None
) -> TenantUser | None:
    """Normalise one exported or listed user; ``None`` when it has no ``user_id`` at all.

    Accepts the Management API's nested ``app_metadata`` object and an export's flattened
    ``app_metadata.<marker>`` column (``"true"`` in a CSV, ``true`` in NDJSON).

    :param now: the present, for the "not in the future" check (default: the clock).
    :raises InvalidUserRecord: a ``user_id`` that cannot be a marker's key or an event's
        ``userId``; a ``created_at`` that is not a real instant (``2026-02-30``,
        ``yesterday``) or lies more than :data:`FUTURE_TOLERANCE` ahead; no ``created_at``
        on a user the Rule did not mark (Auth0 always has one: its absence means the export
        lacks the field, and guessing would either lose a gap user or count a Rule-era
        user twice).
    """
    user_id = record.get("user_id")
    if user_id is None or (isinstance(user_id, str) and not user_id.strip()):
        return None
    if not isinstance(user_id, str):
        raise InvalidUserRecord(f"user_id is a {type(user_id).__name__}, not a string")
    try:
        user_id_of({"sub": user_id})
    except InvalidClaimsError as exc:
        raise InvalidUserRecord(str(exc).replace("claim 'sub'", "user_id")) from None
    metadata = record.get("app_metadata")
    value: object = metadata.get(marker) if isinstance(metadata, Mapping) else None
    if value is None:
        value = record.get(f"app_metadata.{marker}")
    rule_marked = value is True or (isinstance(value, str) and value.strip().lower() in _TRUE_TEXT)
    profile = {
        name: record[name]
        for name in PROFILE_CLAIMS
        if isinstance(record.get(name), str) and record[name]
    }
    return TenantUser(
        user_id=user_id,
        created_at=_created_at(record.get("created_at"), rule_marked, now),
        rule_marked=rule_marked,
        profile=profile,
    )


def _created_at(value: object, rule_marked: bool, now: dt.datetime | None) -> dt.datetime | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if rule_marked:
            return None  # the Rule's marker decides: marked, whenever created
        raise InvalidUserRecord(
            "has no created_at: migrate cannot tell whether the Rule reported this user "
            "(export the created_at field)"
        )
    moment = parse_created_at(value) if isinstance(value, (str, int, float)) else None
    if moment is None:
        raise InvalidUserRecord("created_at is not a valid date and time")
    latest = (now or dt.datetime.now(dt.timezone.utc)) + FUTURE_TOLERANCE
    if moment > latest:
        raise InvalidUserRecord(
            f"created_at is in the future (more than {FUTURE_TOLERANCE.days} day from now)"
        )
    return moment
