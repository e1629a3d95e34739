"""Build and start one app's parts; turn their notifications into metrics and signals.

:func:`build_state` makes what ``init_app`` stores in ``app.extensions["keen_signup"]``:
the SQLite file's two views (the sender's, and the login path's with its bounded lock
wait), the spool, the Keen client, the backend's store and outbox (:mod:`.backends`),
the sender with its hooks, and the tracker. :func:`start` starts the sender and loads the
known users. :func:`notifier` is the ``notify(kind, payload)`` they all report through.
"""

from __future__ import annotations

import functools
import logging
import threading
import typing as t

from . import lifecycle
from . import metrics
from . import signals
from .database import Database
from .exceptions import ConfigurationError
from .state import SignupState
from .stores import MarkerStore
from .tracker import Tracker

if t.TYPE_CHECKING:  # pragma: no cover
    from flask import Flask

    from .config import Settings
    from .delivery.outcomes import Notify
    from .health import HealthThresholds

logger = logging.getLogger(__name__)


def start(app: Flask, state: SignupState, *, count: bool) -> None:
    """Start an enabled app's sender, counting its signups first when ``count`` (metrics
    on), and load the known users from the ledger."""
    if count:
        # Before the sender starts: its first pass may deliver what the outbox holds
        # (another process's signups, a recycled worker's) and must count it.
        metrics.start_counting(app)
    state.sender.start()
    if state.tracker.known is None:
        return
    if lifecycle.forks_from_c():
        load_known_users(state.tracker)  # a uWSGI master: no thread here (see shutdown)
    else:
        threading.Thread(
            target=load_known_users,
            args=(state.tracker,),
            name="flask-keen-signup-known-users",
            daemon=True,
        ).start()


def load_known_users(tracker: Tracker) -> None:
    """Fill the known-users cache (see :meth:`Tracker.load_known_users`); at ``init_app``,
    on its own daemon thread."""
    try:
        count = tracker.load_known_users()
    except Exception:  # noqa: BLE001 - only a cache: logins read the ledger instead
        logger.warning("could not load the known users from the ledger", exc_info=True)
    else:
        logger.debug("remembered %d known user(s) from the ledger", count)
        if tracker.settings.since is None and tracker.ledger_is_empty():
            # The day-one mistake: every existing user's next login would be a "signup".
            logger.warning(
                "no user is marked as signed up yet and KEEN_SIGNUP_SINCE is not set: "
                "every existing user's next login will be reported as a signup. Leaving the "
                "Auth0 Rule? Run `flask keen-signup migrate` first "
                "(docs/migrating-from-the-rule.md)."
            )


def notifier(app: Flask) -> Notify:
    """``notify(kind, payload)``: the metrics' counter (:mod:`.metrics`), then the signal."""
    counter_for = metrics.counter_for

    def notify(kind: str, payload: dict[str, t.Any]) -> None:
        count = counter_for(app)
        if count is not None:
            try:
                count(kind, payload)
            except Exception:  # noqa: BLE001 - metrics must not break a login or delivery
                logger.debug("counting a %s notification failed", kind, exc_info=True)
        signal = signals.BY_KIND.get(kind)  # "spooled" is counted, and has no signal
        if signal is None or not signal.receivers:
            return
        try:
            signal.send(app, **payload)
        except Exception:  # noqa: BLE001 - a broken subscriber must not break delivery
            logger.error("a %s receiver raised; ignored", signal.name, exc_info=True)

    return notify


def build_state(app: Flask, settings: Settings, thresholds: HealthThresholds) -> SignupState:
    """Build one app's parts: the backend's (:mod:`.backends`), then the sender, the spool
    and the tracker around them.

    :raises ConfigurationError: a start that could only fail later: a background sender
        under a uWSGI without threads, or an unusable ``KEEN_SIGNUP_DATABASE``.
    """
    from .backends import Wiring
    from .backends import parts_for
    from .delivery.sender import Sender
    from .hooks import MarkerHooks
    from .keen import KeenClient
    from .salvage import salvage
    from .spool import Spool
    from .spool_drain import SpoolDrainer
    from .unrecorded import Unrecorded

    if settings.enabled and settings.delivery == "background" and lifecycle.starved_by_uwsgi():
        raise ConfigurationError(
            "uWSGI runs without Python threads (a uWSGI older than 2.0.27 started "
            "without --enable-threads): the background sender would only run while a "
            "request is served, and a signup would wait for the next visitor. Add "
            "`enable-threads = true` to the uWSGI configuration, upgrade uWSGI to "
            '2.0.27 or later, or set KEEN_SIGNUP_DELIVERY = "sync".'
        )
    database = functools.partial(
        Database, settings.database, synchronous=settings.sqlite_synchronous, on_replaced=salvage
    )
    shared = database()
    spool = Spool(
        settings.database + ".spool",
        settings.collection,
        fsync=settings.sqlite_synchronous == "full",
    )
    client = KeenClient(
        settings.project_id or "disabled",
        settings.write_key or "disabled",
        api_url=settings.api_url,
        timeout=settings.timeout,
    )
    # In sync mode a pending marker older than a full Keen call belongs to a dead request.
    reclaim_after = sum(settings.timeout) + 5 if settings.delivery == "sync" else None
    # The login path has its own view of the same file: its lock waits are bounded.
    request_database = database(busy_timeout=settings.store_timeout)
    wiring = Wiring(settings, shared, request_database, reclaim_after)
    parts = parts_for(t.cast("str | MarkerStore", settings.store), wiring)
    notify = notifier(app)
    # Who looks created_at up for KEEN_SIGNUP_SINCE: the remote store itself; otherwise the
    # Management API when credentials are configured (on the sender thread).
    management = None
    if parts.remote is None and settings.since is not None and settings.has_management_api:
        from .auth0 import management_client_for

        management = management_client_for(settings)
    hooks = MarkerHooks(
        settings, ledger=parts.confirm_in, remote=parts.remote, management=management
    )
    drain = SpoolDrainer(
        spool,
        parts.drain_claimer,
        parts.outbox,
        notify,
        claim_and_enqueue_many=parts.claim_and_enqueue_many,
    )
    # The sender's numbers an app sets: Tuning's fields of the same name.
    numbers = ("flush_interval", "max_attempts", "retry_for", "shutdown_timeout", "retention")
    sender = Sender(
        parts.outbox,
        client,
        collection_batch_size=settings.batch_size,
        hooks=hooks,
        notify=notify,
        drain=drain,
        **{name: getattr(settings, name) for name in numbers},
    )
    tracker = Tracker(
        settings, parts=parts, client=client, sender=sender, notify=notify, spool=spool
    )
    if parts.wake_on_notify is not None:  # postgres: LISTEN/NOTIFY
        parts.wake_on_notify(sender.wake)
    if settings.enabled and parts.uses_database:
        # A directory, a non-SQLite file, a read-only or forbidden path: refuse to
        # start, naming the key, rather than fail in every login and flush.
        from .database_check import check_database

        check_database(shared)
    return SignupState(
        settings=settings,
        tracker=tracker,
        client=client,
        outbox=parts.outbox,
        database=shared,
        sender=sender,
        store=parts.store,
        parts=parts,
        spool=spool,
        unrecorded=Unrecorded(settings.database + ".unrecorded"),
        health_thresholds=thresholds,
    )
