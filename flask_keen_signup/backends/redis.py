"""``KEEN_SIGNUP_STORE = "redis"``: many hosts, markers and outbox in one Redis.

A marker is claimed with ``SET NX`` in the same Lua script that queues the event. The
login path has its own client whose socket timeouts are the budget
(``KEEN_SIGNUP_STORE_TIMEOUT``); the sender's client keeps the URL's own timeouts.
Every key starts with ``KEEN_SIGNUP_REDIS_PREFIX``; a Redis Cluster
(``redis+cluster://``) needs a ``{…}`` hash tag in it, checked here, at ``init_app``.
"""

from __future__ import annotations

import functools
import re
import typing as t

from .._credentials import check_url_port
from .._credentials import url_error  # the message masks the URL's pieces
from ..exceptions import ConfigurationError
from .parts import Parts
from .parts import Wiring

if t.TYPE_CHECKING:  # pragma: no cover
    from ..config import Settings
    from ..delivery import QueuedEvent
    from ..delivery.redis_outbox import RedisOutbox
    from ..stores.redis import RedisStore


def validate(settings: Settings) -> None:
    """``KEEN_SIGNUP_REDIS_URL`` is required: a ``redis://``, ``rediss://`` or ``unix://``
    URL, or ``redis+cluster://`` / ``rediss+cluster://`` for a Redis Cluster. The message
    never repeats it: it usually carries a password."""
    url = settings.redis_url
    if url is not None and not re.match(r"^(rediss?(\+cluster)?|unix)://", url, re.IGNORECASE):
        raise ConfigurationError(
            "KEEN_SIGNUP_REDIS_URL must be a redis://, rediss://, unix:// URL, or "
            "redis+cluster:// (rediss+cluster://) for a Redis Cluster "
            "(the value is not shown: it may contain a password)"
        )
    if url is not None:
        check_url_port("KEEN_SIGNUP_REDIS_URL", url)
    if settings.enabled and not url:
        raise ConfigurationError(
            "KEEN_SIGNUP_REDIS_URL is required with KEEN_SIGNUP_STORE = 'redis'"
        )


class MigrationLedger:
    """``flask keen-signup migrate``'s marks: one MGET or pipeline per chunk of migrate's
    (:data:`~flask_keen_signup.migrate.CHUNK_SIZE` users), a Lua script per report."""

    def __init__(self, store: RedisStore, outbox: RedisOutbox) -> None:
        self.store = store
        self.outbox = outbox

    def known(self, user_ids: t.Sequence[str]) -> set[str]:
        from ..stores.redis import store_errors

        keys = [self.store.key(user_id) for user_id in user_ids]
        with store_errors("read markers"):
            values = self.store.client.mget(keys) if keys else []  # MGET needs a key
        return {u for u, v in zip(user_ids, values, strict=True) if v is not None}

    def mark(self, user_ids: t.Sequence[str]) -> set[str]:
        from ..stores.redis import _confirmed  # the store writes its stamp in one place
        from ..stores.redis import store_errors

        stamp = _confirmed()
        pipe = self.store.client.pipeline(transaction=False)
        for user_id in user_ids:
            pipe.set(self.store.key(user_id), stamp, nx=True)
        with store_errors("write markers"):
            done = pipe.execute()
        return {u for u, ok in zip(user_ids, done, strict=True) if ok}

    def report(self, events: t.Sequence[QueuedEvent]) -> int:
        queued = 0
        for event in events:
            # Claim and enqueue in one script, then confirm: a crash in between leaves a
            # pending marker, which in background mode means "queued" and is never reclaimed.
            if self.outbox.claim_and_enqueue(self.store, event.user_id, event):
                self.store.confirm(event.user_id)
                queued += 1
        return queued


def build(wiring: Wiring) -> Parts:
    from ..delivery.redis_outbox import RedisOutbox
    from ..stores.redis import RedisStore
    from ..stores.redis import check_prefix
    from ..stores.redis import connect

    settings = wiring.settings
    url = t.cast(str, settings.redis_url)
    prefix = settings.redis_prefix
    try:
        client = connect(url)
        # The budget wins over timeouts in the URL's query string (those are the sender's).
        request_client = connect(url, budget=settings.store_timeout)
    except ValueError as exc:
        raise url_error("KEEN_SIGNUP_REDIS_URL", exc, url) from None
    try:
        check_prefix(client, prefix, name="KEEN_SIGNUP_REDIS_PREFIX")
    except ValueError as exc:
        raise ConfigurationError(f"{exc} (KEEN_SIGNUP_REDIS_URL is a Redis Cluster)") from None

    def store_and_outbox(client: t.Any) -> tuple[RedisStore, RedisOutbox]:
        return RedisStore(
            client,
            settings.collection,
            prefix=prefix,
            reclaim_after=wiring.reclaim_after,
            close_client=True,
        ), RedisOutbox(client, prefix=prefix, keep_delivered=settings.keep_delivered)

    store, outbox = store_and_outbox(client)
    request_store, request_outbox = store_and_outbox(request_client)
    return Parts(
        store=store,
        claimer=request_store,
        outbox=outbox,
        request_outbox=request_outbox,
        confirm_in=store,
        drain_claimer=store,
        claim_and_enqueue=functools.partial(request_outbox.claim_and_enqueue, request_store),
        claim_and_enqueue_many=functools.partial(outbox.claim_and_enqueue_many, store),
        migration_ledger=lambda: MigrationLedger(store, outbox),
        uses_database=False,
    )
