"""``flask keen-signup migrate``: the day-one step for teams leaving the Auth0 Rule.

Until 2026-11-18 a Rule sent each signup to Keen: the seed's version set
``app_metadata.signedUp`` after Keen answered; Auth0's later template kept no marker. On
day one the extension must (a) never report the users the Rule already reported, and (b)
report, once and at their real signup time, the users who signed up while nothing ran.

This module reads every user of the tenant (the Management API, or a file from Auth0's user
export) and decides each one:

- created strictly before ``--reported-until``, or carrying the Rule's marker
  (``app_metadata.signedUp == true``): **marked** in the store, nothing sent;
- any other user whose marker does not exist yet: **reported**: a ``signup`` event with
  ``keen.timestamp`` = their ``created_at``, ``"backfilled": true`` and the same
  ``keen.uniqueness_token`` as a live signup, queued in the outbox *in the same atomic step*
  that marks them;
- a user the store already knows (marked by an earlier run, or signed up live since the
  app was deployed): **already known**, untouched.

Users are read as a stream and decided in chunks, each chunk written atomically, so a run
cut short (crash, Ctrl-C, an Auth0 error) leaves whole chunks behind, and running it again
finishes the job without reporting anyone twice. ``--dry-run`` only reads.

Bad input is refused before anything is written. Every record is checked
(:func:`user_from_record`: a usable ``user_id``, a real ``created_at`` no later than a day
from now), and a users file is read twice: :meth:`Migration.check` reads it to the end
(gzip's checksum, which only comes at the end, included) and keeps a digest of each chunk;
:meth:`Migration.run` then commits a chunk only if it is the very chunk that was checked.
A flipped byte, a bad date or an undecodable line therefore stops the run with its line
number and nothing marked, and a file changed between the two readings stops it before the
first chunk that differs.

Where marks go (:class:`MigrationLedger`) is the store backend's business: each builds its
own (``Parts.migration_ledger``, in :mod:`.backends`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import itertools
import typing as t
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence

from .delivery import QueuedEvent
from .events import build_signup_event
from .events import uniqueness_token
from .migrate_users import InvalidUserRecord
from .migrate_users import TenantUser
from .migrate_users import user_from_record
from .users_export import UsersFileError

if t.TYPE_CHECKING:  # pragma: no cover
    from .config import Settings

#: The fields migrate needs from each user (export jobs and paging ask for these only).
USER_FIELDS = ("user_id", "created_at", "name", "email", "nickname", "app_metadata")
#: Users decided and written per atomic step.
CHUNK_SIZE = 2000


@dataclasses.dataclass
class MigrationReport:
    """What a run did (or, dry, would do). The CLI prints it as a table."""

    marked: int = 0
    reported: int = 0
    already_known: int = 0
    #: Records without a ``user_id``: nothing can be done with them.
    unusable: int = 0

    def rows(self) -> list[tuple[str, int]]:
        rows = [
            ("marked", self.marked),
            ("reported", self.reported),
            ("already known", self.already_known),
        ]
        if self.unusable:
            rows.append(("no user_id (skipped)", self.unusable))
        return rows


class MigrationLedger(t.Protocol):
    """Where migrate reads and writes markers: beside the outbox, atomically with it.

    Each backend builds its own (``Parts.migration_ledger``): the SQLite file's ledger and
    outbox in one transaction per chunk, Redis's pipelines and scripts, one PostgreSQL
    statement per call.
    """

    def known(self, user_ids: Sequence[str]) -> set[str]:
        """The users among ``user_ids`` whose marker exists (any state)."""

    def mark(self, user_ids: Sequence[str]) -> set[str]:
        """Create confirmed markers where none exist; return the users actually marked."""

    def report(self, events: Sequence[QueuedEvent]) -> int:
        """For each event: create its user's confirmed marker and queue the event, both
        or neither; users whose marker appeared meanwhile are left alone. Returns how
        many were queued."""


#: Records as the readers give them: ``(line, record)``, the line ``None`` when there is none.
NumberedRecords = Iterable[tuple["int | None", Mapping[str, t.Any]]]


@dataclasses.dataclass
class Migration:
    """Decides and records every user of a tenant. See the module doc.

    :param reported_until: users created strictly before this instant were reported by
        the Rule (or are older than it): they are marked, never sent.
    :param on_marked: called with the users newly marked in each chunk (the CLI's
        ``--set-app-metadata`` patches them in Auth0).
    :param source: how a record's place is named in errors (``"the users file"``).
    """

    settings: Settings
    ledger: MigrationLedger
    _: dataclasses.KW_ONLY
    reported_until: dt.datetime
    dry_run: bool = False
    on_marked: t.Callable[[Sequence[str]], None] | None = None
    source: str = "the users export"
    #: The totals so far.
    report: MigrationReport = dataclasses.field(default_factory=MigrationReport, init=False)

    def check(self, records: NumberedRecords) -> list[bytes]:
        """Read every record to the end, writing nothing; raise on the first bad one.

        Returns one digest per chunk, in order: :meth:`run` compares each chunk with its
        digest before it writes it.
        """
        return [_digest(chunk) for chunk in self._chunks(records)]

    def run(
        self, records: NumberedRecords, *, checked: list[bytes] | None = None
    ) -> MigrationReport:
        """Decide every record; returns the totals (also kept in :attr:`report`).

        :param records: ``(line, record)`` pairs (see :meth:`UsersFile.numbered`).
        :param checked: what :meth:`check` saw of the same source: each chunk is written
            only if its digest is the one checked, so nothing unchecked is ever written.
        :raises InvalidUserRecord: a bad record, naming its line; the chunks before it
            are written (none, when ``checked`` was given: the check raised first).
        """
        for number, chunk in enumerate(self._chunks(records)):
            if checked is not None and (
                number >= len(checked) or _digest(chunk) != checked[number]
            ):
                raise UsersFileError(
                    f"{self.source} changed after it was checked: run migrate again"
                )
            self._run_chunk(chunk)
        return self.report

    def _chunks(self, records: NumberedRecords) -> Iterator[list[TenantUser | None]]:
        """The users of ``records`` in lists of at most :data:`CHUNK_SIZE`, read lazily (a
        whole tenant never in memory)."""
        users = self._users(records)
        while chunk := list(itertools.islice(users, CHUNK_SIZE)):
            yield chunk

    def _users(self, records: NumberedRecords) -> Iterator[TenantUser | None]:
        marker = self.settings.marker
        now = dt.datetime.now(dt.timezone.utc)
        for number, (line, record) in enumerate(records, 1):
            try:
                yield user_from_record(record, marker, now=now)
            except InvalidUserRecord as exc:
                where = f"line {line}" if line is not None else f"user {number}"
                raise InvalidUserRecord(f"{where} of {self.source}: {exc}", line=line) from None

    def _run_chunk(self, chunk: list[TenantUser | None]) -> None:
        report = self.report
        users: dict[str, TenantUser] = {}
        for user in chunk:
            if user is None:
                report.unusable += 1
            elif user.user_id in users:
                report.already_known += 1  # listed twice (a user signing up mid-export)
            else:
                users[user.user_id] = user
        known = self.ledger.known(list(users))
        report.already_known += len(known)
        to_mark: list[str] = []
        to_report: list[TenantUser] = []
        for user_id, user in users.items():
            if user_id in known:
                continue
            if user.rule_marked or user.created_at is None or user.created_at < self.reported_until:
                # (no created_at only when the Rule marked the user: see user_from_record)
                to_mark.append(user_id)
            else:
                to_report.append(user)
        if self.dry_run:
            report.marked += len(to_mark)
            report.reported += len(to_report)
            return
        # Events are built before anything is written: a user whose event cannot be
        # built stops the run here, not between the marks and the reports.
        events = [self._event(user) for user in to_report]
        marked = self.ledger.mark(to_mark)
        report.marked += len(marked)
        # Marked meanwhile by a live login on the same store: already known.
        report.already_known += len(to_mark) - len(marked)
        if marked and self.on_marked is not None:
            self.on_marked(sorted(marked))
        queued = self.ledger.report(events)
        report.reported += queued
        report.already_known += len(to_report) - queued

    def _event(self, user: TenantUser) -> QueuedEvent:
        settings = self.settings
        body = build_signup_event(
            {**user.profile, "sub": user.user_id},
            collection=settings.collection,
            ip=None,
            user_agent=None,
            claim_names=settings.claims,
            ip_mode="none",
            created_at=user.created_at,
            now=dt.datetime.now(dt.timezone.utc),
            extra={"backfilled": True},
        )
        return QueuedEvent(
            collection=settings.collection,
            user_id=user.user_id,
            uniqueness_token=uniqueness_token(settings.collection, user.user_id),
            body=body,
        )


def _digest(chunk: Sequence[TenantUser | None]) -> bytes:
    """A digest of everything a chunk's decisions and events are made of: each
    :class:`TenantUser` whole (or ``None``).

    The ``repr`` of a user (strings, a datetime, a boolean, a dict of strings) is
    unambiguous, and escapes what UTF-8 cannot encode.
    """
    digest = hashlib.sha256()
    for user in chunk:
        digest.update(repr(user).encode() + b"\n")
    return digest.digest()
