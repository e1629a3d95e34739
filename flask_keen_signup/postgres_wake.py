"""Waking each process's sender when another process (or host) queued an event.

Two ways, chosen by the ``postgres`` outbox's ``wake_on_notify``:

* :class:`Listener`: ``LISTEN`` on ``KEEN_SIGNUP_DATABASE_LISTEN_URL``, a direct connection
  to PostgreSQL. ``LISTEN`` lives in a session: through a transaction pooler
  (PgBouncer's ``transaction`` mode) the server connection that listens serves other
  clients between transactions and the notifications go nowhere, so this never uses
  ``KEEN_SIGNUP_DATABASE_URL`` implicitly.
* :class:`Poller`: without that URL, when the sender's own polling is slower than a
  second (``KEEN_SIGNUP_FLUSH_INTERVAL`` > :data:`POLL_INTERVAL`), one indexed read every
  :data:`POLL_INTERVAL` wakes the sender when an event is due, so a signup is still on its
  way within a second. With the default interval (0.5 s) the sender's polling is enough
  and neither runs.

Both only shorten the wait: the sender still looks every ``KEEN_SIGNUP_FLUSH_INTERVAL``.
Each starts its thread in the calling process (:meth:`ensure_running`, from the sender's
claims), so a forked worker's sender starts its own.
"""

from __future__ import annotations

import logging
import os
import threading
import typing as t

import psycopg

from .exceptions import StoreError
from .postgres_pools import connect_options

if t.TYPE_CHECKING:  # pragma: no cover
    from .postgres import PostgresDatabase

logger = logging.getLogger(__name__)

#: Seconds between two looks of the :class:`Poller`.
POLL_INTERVAL = 0.5


class Waker:
    """A daemon thread per process that calls ``callback`` (the sender's ``wake``)."""

    name = "flask-keen-signup-wake"

    def __init__(self, callback: t.Callable[[], None]) -> None:
        self.callback = callback
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._stopped = threading.Event()
        #: Set while the thread is connected (listener) or has polled once (poller).
        self.connected = threading.Event()

    def ensure_running(self) -> None:
        thread = self._thread
        if thread is not None and self._pid == os.getpid() and thread.is_alive():
            return
        if self._stopped.is_set():
            return
        self._pid = os.getpid()
        self.connected = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class Listener(Waker):
    """One direct connection per process that ``LISTEN``\\s and calls back on each NOTIFY.

    NOTIFY is best effort (a listener that is reconnecting misses what was sent
    meanwhile), so the callback also runs after every (re)connect.
    """

    name = "flask-keen-signup-listen"

    def __init__(self, database: PostgresDatabase, callback: t.Callable[[], None]) -> None:
        super().__init__(callback)
        self.database = database

    def _run(self) -> None:
        database, delay = self.database, 0.5
        pid = os.getpid()
        while not self._stopped.is_set() and os.getpid() == pid:
            try:
                conninfo = t.cast(str, database.listen_conninfo)  # the outbox checked it
                with psycopg.connect(conninfo, **connect_options("listen")) as conn:
                    conn.execute(f"LISTEN {database.channel}")
                    self.connected.set()
                    delay = 0.5
                    self.callback()  # anything sent while we were not listening
                    while not self._stopped.is_set():
                        for _ in conn.notifies(timeout=1.0):
                            self.callback()
            except psycopg.Error as exc:
                self.connected.clear()
                logger.debug("LISTEN connection lost: %s", database.redact(str(exc)))
            except Exception:  # noqa: BLE001 - polling still delivers; never die loudly
                self.connected.clear()
                logger.exception("the PostgreSQL LISTEN thread failed; polling only")
            self._stopped.wait(delay)
            delay = min(delay * 2, 30.0)


class Poller(Waker):
    """Calls back whenever ``due()`` (one indexed read) says an event is due."""

    name = "flask-keen-signup-poll"

    def __init__(
        self,
        due: t.Callable[[], bool],
        callback: t.Callable[[], None],
        interval: float = POLL_INTERVAL,
    ) -> None:
        super().__init__(callback)
        self.due = due
        self.interval = interval

    def _run(self) -> None:
        pid = os.getpid()
        while not self._stopped.wait(self.interval) and os.getpid() == pid:
            try:
                due = self.due()
            except StoreError as exc:  # the sender reports outages; this only wakes it
                logger.debug("polling the outbox failed: %s", exc)
                continue
            except Exception:  # noqa: BLE001 - never die: the sender still polls
                logger.exception("the PostgreSQL polling thread failed")
                continue
            self.connected.set()
            if due:
                self.callback()

