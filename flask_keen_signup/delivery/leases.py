"""Lease ownership: who holds which outbox rows, for how long, and who is dead.

A claim leases rows to an *owner*, ``host/pid/nonce``: other processes and hosts skip
them until the lease runs out. Three things keep that honest:

* :class:`Leases` names this process's owner (a fresh one after a fork) and knows the
  rows it holds;
* a claim may run ahead on a helper thread (:meth:`Leases.prefetch`) while the previous batch
  is on the wire;
* a keeper thread (:meth:`Leases.renewing`) extends those leases every third of
  ``lease_seconds`` while a batch is on the wire, so a slow request is not resent by
  another sender meanwhile;
* :func:`is_orphan` tells a dead owner's leases from a live one's (same host only: a
  pid that is gone or a zombie, or a nonce of this process that no running sender
  holds), so :meth:`Leases.expire_orphans` hands a crashed process's rows over at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import socket
import threading
import time
import typing as t
import uuid
from concurrent.futures import Future

from . import Outbox
from . import OutboxRow
from . import shutdown

logger = logging.getLogger(__name__)

HOSTNAME = socket.gethostname()


def is_orphan(owner: str) -> bool:
    """Whether a lease owner (``host/pid/nonce``) is certainly dead. Same host only.

    When the owner is this very pid, a nonce that no running sender holds
    (:func:`.shutdown.live_owners`) is a stopped or crashed sender's.
    """
    match = re.fullmatch(r"(.*)/([0-9]+)/[^/]*", owner, re.DOTALL)
    if match is None or match[1] != HOSTNAME:
        return False
    pid = int(match[2])
    if pid == os.getpid():
        return owner not in shutdown.live_owners()
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:  # a killed child not yet reaped by its parent is a zombie: dead for us
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


@dataclasses.dataclass(eq=False)
class Leases:
    """This process's lease owner, the rows it holds, their renewal and orphan expiry.

    :param outbox: where the leases are.
    :param lease_seconds: how long a claim hides rows from other senders.
    :param name: the sender's name, for the keeper thread and log lines.
    """

    outbox: Outbox
    lease_seconds: float
    name: str

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """A new owner and nothing held: at construction and in a forked child."""
        self.nonce = uuid.uuid4().hex[:12]
        #: ``host/pid/nonce``: what the outbox records as the holder of a lease.
        self.owner = f"{HOSTNAME}/{os.getpid()}/{self.nonce}"
        self._held: set[int] = set()
        self._held_lock = threading.Lock()
        self._next_orphan_check = 0.0
        #: A claim running ahead on a helper thread: ``result()`` waits for its rows.
        self._prefetched: Future[list[OutboxRow]] | None = None

    # ------------------------------------------------------------ claims

    def claim(self, limit: int, flush_since: float | None) -> list[OutboxRow]:
        """Lease up to ``limit`` due rows to this owner and hold them."""
        rows = self.outbox.claim_due(
            limit,
            now=time.time(),
            lease_seconds=self.lease_seconds,
            owner=self.owner,
            flush_since=flush_since,
        )
        if rows:
            with self._held_lock:
                self._held.update(row.id for row in rows)
        return rows

    def let_go(self, rows: t.Iterable[OutboxRow]) -> None:
        """Stop renewing ``rows``: their outcome is recorded (or their lease may lapse)."""
        with self._held_lock:
            self._held.difference_update(row.id for row in rows)

    def release(self, rows: t.Sequence[OutboxRow]) -> None:
        """Give claimed but unsent rows back to the outbox at once."""
        self.let_go(rows)
        if rows:
            self.outbox.release([row.id for row in rows])

    def prefetch(self, limit: int, flush_since: float | None) -> None:
        """:meth:`claim` on a helper thread, while the current batch is on the wire; the
        rows are :meth:`take_prefetched` by the next round, or :meth:`release_prefetched`.

        A plain daemon thread rather than an executor: executor workers are joined before
        ``atexit`` runs, and the exit-time flush must still be able to claim.
        """
        future: Future[list[OutboxRow]] = Future()
        self._prefetched = future

        def run() -> None:
            try:
                future.set_result(self.claim(limit, flush_since))
            except BaseException as exc:  # noqa: BLE001 - re-raised by result()
                future.set_exception(exc)

        threading.Thread(target=run, name="flask-keen-signup-prefetch", daemon=True).start()

    def take_prefetched(self) -> list[OutboxRow] | None:
        """The rows of the last :meth:`prefetch` (waiting for them), or ``None``."""
        prefetch, self._prefetched = self._prefetched, None
        return None if prefetch is None else prefetch.result()

    def release_prefetched(self) -> None:
        """Give back the rows prefetched for a round that will not run."""
        self.release(self.take_prefetched() or [])

    # ------------------------------------------------------------ renewal

    @contextlib.contextmanager
    def renewing(self) -> t.Iterator[None]:
        """Renew the held leases every third of the lease while a batch is on the wire
        (a daemon thread): a request slower than the lease (a slow proxy, Keen answering
        after minutes, 413 splits) would let another sender claim and resend the rows."""
        stop = threading.Event()

        def run() -> None:
            while not stop.wait(self.lease_seconds / 3):
                self.renew()

        threading.Thread(target=run, name=f"{self.name}-leases", daemon=True).start()
        try:
            yield
        finally:
            stop.set()

    def renew(self) -> None:
        """Extend the lease of every held row by ``lease_seconds`` from now."""
        with self._held_lock:
            ids = list(self._held)
        if not ids:
            return
        try:
            self.outbox.renew_leases(
                ids, owner=self.owner, now=time.time(), lease_seconds=self.lease_seconds
            )
        except Exception:  # noqa: BLE001 - the lease may run out; Keen dedupes a resend
            logger.warning("%s: could not renew leases", self.name, exc_info=True)

    # ------------------------------------------------------------ orphans

    def expire_orphans(self, *, force: bool = False) -> None:
        """Expire the leases of dead owners, at most every ``min(30, lease/4)`` seconds."""
        now = time.monotonic()
        if now < self._next_orphan_check and not force:
            return
        self._next_orphan_check = now + min(30.0, self.lease_seconds / 4)
        count = self.outbox.expire_leases(is_orphan)
        if count:
            logger.info("%s: took over %d event(s) leased by a dead process", self.name, count)
