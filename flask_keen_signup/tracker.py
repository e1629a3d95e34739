"""Is this login a signup, and how is it recorded? One :class:`Tracker` per app.

Pure of Flask request globals: the extension hands in the claims and the request facts.
The rule itself is :func:`.decision.decide`; each path here feeds it what it knows and does
what the verdict asks. Background mode (the default) does local work only: a user this
process knows (:class:`~.known_users.KnownUsers`) costs a hash, any other login one ledger
read; a new user's event is built (the app's code runs here, outside any write lock), then
claimed and queued in one atomic step (:attr:`.backends.Parts.claim_and_enqueue`), so the
signup can neither be lost nor queued twice. Sync mode is the Rule's semantics: the POST
happens in the request, the marker is confirmed only after Keen accepted the event, and
released on failure so the next login retries (the event is also queued in the outbox,
which retries it durably; Keen's uniqueness token keeps one).
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import typing as t

from .decision import Verdict
from .decision import created_at_from_claims
from .decision import decide
from .delivery import QueuedEvent
from .events import build_signup_event
from .events import format_timestamp
from .events import uniqueness_token
from .events import user_id_of
from .exceptions import KeenError
from .exceptions import RemoteError
from .exceptions import StoreError
from .known_users import KnownUsers as KnownUsers
from .stores import MarkerState
from .stores import MarkerStore

if t.TYPE_CHECKING:  # pragma: no cover
    from .backends import Parts
    from .config import Settings
    from .delivery.outcomes import Notify
    from .delivery.sender import Sender
    from .keen import KeenClient
    from .spool import Spool

logger = logging.getLogger(__name__)

#: Returns ``(ip, user_agent)`` of the current request. Called only for a new user, so a
#: returning user pays nothing for reading request headers.
RequestFacts = t.Callable[[], tuple[str | None, str | None]]

#: Extra event properties, or a callable producing them for a new user only.
ExtraProperties = t.Mapping[str, t.Any] | t.Callable[[], t.Mapping[str, t.Any] | None] | None


class TrackOutcome(enum.Enum):
    """What :meth:`Tracker.track_claims` did with a login."""

    #: ``KEEN_SIGNUP_ENABLED`` is off.
    DISABLED = "disabled"
    #: The user was already tracked (or is being tracked right now by another request).
    RETURNING = "returning"
    #: Created before ``KEEN_SIGNUP_SINCE``: marked, not reported.
    MARKED_ONLY = "marked_only"
    #: Background mode: claimed and durably queued.
    QUEUED = "queued"
    #: Sync mode: Keen accepted the event in this request.
    DELIVERED = "delivered"
    #: Sync mode: the POST failed; released for the next login and queued for retry.
    FAILED = "failed"
    #: The store did not answer within ``KEEN_SIGNUP_STORE_TIMEOUT``: the candidate signup
    #: is in the local spool; the sender decides it later (see :mod:`.spool`).
    SPOOLED = "spooled"


class Tracker:
    """Records signups for one app. Thread-safe: one instance serves every request.

    :param parts: the backend's parts (:mod:`.backends`): the login path uses its
        ``claimer``, ``request_outbox``, ``remote``, ``claim_and_enqueue``,
        ``in_transaction`` and ``recent_user_ids``.
    :param notify: ``notify(kind, payload)``, turned into signals by the extension.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        parts: Parts,
        client: KeenClient,
        sender: Sender,
        notify: Notify,
        clock: t.Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc),
        spool: Spool | None = None,
    ) -> None:
        self.settings = settings
        self.parts = parts
        self.outbox = parts.request_outbox
        self.client = client
        self.sender = sender
        self.notify = notify
        self.clock = clock
        #: Where a login's candidate signup goes when the store does not answer in time.
        self.spool = spool
        self.remote = parts.remote
        # The store whose claim is atomic and local: the ledger in front of a remote store.
        self.claimer: MarkerStore = parts.claimer
        self.known: KnownUsers | None = KnownUsers() if self.claimer.remembered else None
        self._background = settings.delivery != "sync"
        # KEEN_SIGNUP_SINCE without a created_at claim: the sender asks the Management API
        # (:class:`~.hooks.MarkerHooks`), so such a candidate always waits in the outbox.
        self._resolved_later = (
            settings.since is not None and self.remote is None and settings.has_management_api
        )
        self._warned_no_created_at = False

    def _unknown(
        self, claims: t.Mapping[str, t.Any]
    ) -> tuple[str, dt.datetime | None] | TrackOutcome:
        """The user id and creation time of a login that memory and the ID token do not
        answer already; else the outcome (disabled, or returning)."""
        if not self.settings.enabled:
            return TrackOutcome.DISABLED
        # The claims are read once, here; everything below decides on these values and
        # hands them to the event builder (one trip down: tracker, then events).
        user_id = user_id_of(claims)
        known, marker_claim = self.known, self.settings.marker_claim
        if (known is not None and user_id in known) or (marker_claim and claims.get(marker_claim)):
            return TrackOutcome.RETURNING
        return user_id, self._created_at(claims)

    def track_claims(
        self,
        claims: t.Mapping[str, t.Any],
        *,
        ip: str | None = None,
        user_agent: str | None = None,
        facts: RequestFacts | None = None,
        extra: ExtraProperties = None,
    ) -> TrackOutcome:
        """Record ``claims``' user if this login is their signup. See the module doc.

        :param facts: read the request's IP and User-Agent lazily (only for a new user);
            overrides ``ip`` and ``user_agent``.
        :param extra: extra event properties, or a callable returning them, called only for
            a new user (the app's ``@event_properties`` callback).
        """
        unknown = self._unknown(claims)
        if isinstance(unknown, TrackOutcome):
            return unknown
        user_id, created_at = unknown
        since = self.settings.since
        try:
            marker = self.claimer.lookup(user_id)
            # Background: pending means durably queued. Sync: it may belong to a request
            # that died mid-send; the claim decides below whether it is stale.
            verdict = decide(
                since=since,
                created_at=created_at,
                marker=marker,
                pending_is_final=self._background,
            )
            if verdict is Verdict.MARKED_ONLY:
                self.claimer.confirm(user_id)
                logger.info("user created before KEEN_SIGNUP_SINCE: marked, not reported")
        except StoreError as exc:
            if self.spool is None:
                raise
            if decide(since=since, created_at=created_at) is Verdict.MARKED_ONLY:
                return TrackOutcome.MARKED_ONLY  # not reported; marked at a later login
            # The store did not answer in time: keep the candidate for the sender to
            # decide. The event is built now, from this request (its IP, User-Agent, the
            # app's properties); whether it is a signup is decided later (claim, then
            # queue if won). No signal fires here: ``recorded`` fires on the sender thread
            # once the claim is won, and a spooled returning user produces none.
            request_ip, request_user_agent = facts() if facts is not None else (ip, user_agent)
            event = self._build(user_id, claims, created_at, request_ip, request_user_agent, extra)
            return self._spool_event(user_id, event, exc)
        if verdict is not Verdict.SIGNUP:
            self._remember(user_id)
            return TrackOutcome(verdict.value)  # RETURNING or MARKED_ONLY
        self.notify("detected", {"user_id": user_id, "claims": claims})
        # Built only now that this login is a candidate signup: the request facts and
        # the app's properties are read for it only.
        request_ip, request_user_agent = facts() if facts is not None else (ip, user_agent)
        event = self._build(user_id, claims, created_at, request_ip, request_user_agent, extra)
        try:
            if self._background or (created_at is None and self._resolved_later):
                return self._track_background(user_id, event)
            return self._track_sync(user_id, event)
        except StoreError as exc:
            # Not in time: keep the event this login built (the app's callback ran once).
            return self._spool_event(user_id, event, exc)

    def _spool_event(
        self, user_id: str, event: dict[str, t.Any], error: StoreError
    ) -> TrackOutcome:
        """Append an event already built in this login to the spool. If even the spool
        cannot take it, the store's error propagates (logged as "not recorded",
        ``signup_failed``)."""
        if self.spool is None:
            raise error
        try:
            self.spool.append(self._queued(user_id, event), error)
        except StoreError:
            raise error from None
        # Counted (metrics), not signalled: it may yet prove a returning user.
        self.notify("spooled", {"user_id": user_id, "event": event})
        return TrackOutcome.SPOOLED

    def _created_at(self, claims: t.Mapping[str, t.Any]) -> dt.datetime | None:
        """The ID token's creation time; says once per process when SINCE cannot use it."""
        settings = self.settings
        created_at = created_at_from_claims(claims, settings.created_at_claim)
        if (
            created_at is None
            and settings.since is not None
            and not self._resolved_later
            and self.remote is None
            and not self._warned_no_created_at
        ):
            self._warned_no_created_at = True
            logger.warning(
                "KEEN_SIGNUP_SINCE is set but this ID token carries no %s claim, and no "
                "Management API credentials are configured to look it up: such users are "
                "reported as new. Is the post-login Action of docs/migrating-from-the-rule.md "
                "deployed? (said once per process)",
                settings.created_at_claim or "created_at",
            )
        return created_at

    def _build(
        self,
        user_id: str,
        claims: t.Mapping[str, t.Any],
        created_at: dt.datetime | None,
        ip: str | None,
        user_agent: str | None,
        extra: ExtraProperties,
    ) -> dict[str, t.Any]:
        settings = self.settings
        return build_signup_event(
            claims,
            collection=settings.collection,
            ip=ip,
            user_agent=user_agent,
            claim_names=settings.claims,
            ip_mode=settings.ip_mode,
            addons=settings.addons,
            created_at=created_at,
            now=self.clock(),
            extra=extra() if callable(extra) else extra,
            user_id=user_id,  # checked by user_id_of already: not again
        )

    def load_known_users(self) -> int:
        """Remember the users the SQLite ledger already holds, most recent first.

        Run once per app at start, off the request path (the extension starts it on a
        daemon thread at ``init_app``); forked workers inherit what was loaded. Only
        permanent markers count (pending ones only in background mode, where pending means
        durably queued). Returns how many users were added; 0 for other stores.
        """
        known, recent = self.known, self.parts.recent_user_ids
        if known is None or recent is None:
            return 0
        states = ("confirmed", "pending") if self._background else ("confirmed",)
        return known.add_many(recent(states, known.maximum))

    def ledger_is_empty(self) -> bool:
        """True when the ledger (SQLite or PostgreSQL) holds no marker at all (a first deploy)."""
        recent = self.parts.recent_user_ids
        if recent is None:
            return False
        return not recent(("pending", "confirmed"), 1)

    def _remember(self, user_id: str) -> None:
        if self.known is not None:
            self.known.add(user_id)

    def _queued(self, user_id: str, event: dict[str, t.Any]) -> QueuedEvent:
        return QueuedEvent(
            collection=self.settings.collection,
            user_id=user_id,
            # build_signup_event already derived it (DESIGN §2.1); recompute only if absent.
            uniqueness_token=event.get("keen", {}).get("uniqueness_token")
            or uniqueness_token(self.settings.collection, user_id),
            body=event,
        )

    def _track_background(self, user_id: str, event: dict[str, t.Any]) -> TrackOutcome:
        # The claim and the queued event are written together or not at all.
        won = self.parts.claim_and_enqueue(user_id, self._queued(user_id, event))
        self._remember(user_id)
        if not won:
            return TrackOutcome.RETURNING
        self.sender.wake()
        self.notify("recorded", {"user_id": user_id, "event": event})
        return TrackOutcome.QUEUED

    def track_in_transaction(
        self,
        claims: t.Mapping[str, t.Any],
        connection: t.Any,
        *,
        facts: RequestFacts | None = None,
        extra: ExtraProperties = None,
    ) -> TrackOutcome:
        """:meth:`track_claims` on the app's own PostgreSQL connection, in its transaction.

        The marker read, the claim and the queued event use ``connection`` (psycopg 3, or
        a SQLAlchemy ``Connection``), so the signup commits or rolls back with the app's
        writes; the outbox's NOTIFY wakes the senders at commit. Always queued (even in
        sync mode: nothing may reach Keen before the app commits). A user claimed here is
        not remembered in memory: the transaction may still roll back.

        :raises ConfigurationError: the store is not ``postgres``.
        """
        from .exceptions import ConfigurationError

        transaction = self.parts.in_transaction
        if transaction is None:
            raise ConfigurationError(
                "track_claims(connection=...) needs KEEN_SIGNUP_STORE = 'postgres'"
            )
        unknown = self._unknown(claims)
        if isinstance(unknown, TrackOutcome):
            return unknown
        user_id, created_at = unknown
        if decide(since=self.settings.since, created_at=created_at) is Verdict.MARKED_ONLY:
            transaction.confirm(user_id)  # outside the app's transaction: true whatever it does
            self._remember(user_id)
            return TrackOutcome.MARKED_ONLY

        def in_savepoint() -> TrackOutcome:
            # The read and the claim share one savepoint of the app's transaction; any
            # marker there is final (the app's transaction queued it, or it is confirmed).
            marker = t.cast("MarkerState | None", transaction.lookup(connection, user_id))
            if decide(since=None, marker=marker) is Verdict.RETURNING:
                return TrackOutcome.RETURNING
            self.notify("detected", {"user_id": user_id, "claims": claims})
            ip, user_agent = facts() if facts is not None else (None, None)
            event = self._build(user_id, claims, created_at, ip, user_agent, extra)
            if not transaction.claim_and_enqueue(connection, user_id, self._queued(user_id, event)):
                return TrackOutcome.RETURNING
            self.notify("recorded", {"user_id": user_id, "event": event})
            return TrackOutcome.QUEUED

        return transaction.run(connection, in_savepoint)

    def _track_sync(self, user_id: str, event: dict[str, t.Any]) -> TrackOutcome:
        claimer = self.claimer
        if not claimer.claim(user_id):
            return TrackOutcome.RETURNING
        try:
            if self.remote is not None:
                facts = self.remote.user_facts(user_id)
                verdict = decide(
                    since=self.settings.since, created_at=facts.created_at, known=facts.marked
                )
                if verdict is not Verdict.SIGNUP:
                    if verdict is Verdict.MARKED_ONLY:
                        self.remote.confirm(user_id)
                    claimer.confirm(user_id)
                    self._remember(user_id)
                    return TrackOutcome(verdict.value)
                if facts.created_at is not None:
                    event["keen"]["timestamp"] = format_timestamp(facts.created_at)
            self.notify("recorded", {"user_id": user_id, "event": event})
            self.client.add_event(self.settings.collection, event)
        except RemoteError as exc:
            claimer.release(user_id)
            level = logging.WARNING if isinstance(exc, KeenError) else logging.ERROR
            logger.log(level, "signup not delivered in the request (%s); queued for retry", exc)
            self.notify("failed", {"user_id": user_id, "event": event, "error": exc, "attempts": 1})
            self.outbox.enqueue(self._queued(user_id, event))
            self.sender.wake()
            return TrackOutcome.FAILED
        except BaseException:
            claimer.release(user_id)
            raise
        claimer.confirm(user_id)
        if self.remote is not None:
            try:
                self.remote.confirm(user_id)
            except RemoteError as exc:
                # Keen has the event; the local ledger is confirmed; the next login on
                # another host may re-send, which Keen's uniqueness token absorbs.
                logger.warning("signup delivered but app_metadata not updated: %s", exc)
        self._remember(user_id)
        self.notify("delivered", {"user_id": user_id, "event": event, "attempts": 1})
        return TrackOutcome.DELIVERED
