"""The process's senders: their registry, and their part of exit, SIGTERM and fork.

* **Exit.** The ``"senders"`` step of :mod:`..lifecycle` flushes every live sender within
  its ``shutdown_timeout`` and stops it. What is not sent by then stays in the outbox for
  the next run: never dropped, never a hang.
* **SIGTERM.** Python's default action for SIGTERM skips ``atexit``, and SIGTERM is how
  gunicorn, systemd and Kubernetes stop a process. The handler does the same bounded flush,
  then chains: it calls the previous Python handler, or, if the previous action was the
  default, restores it and re-sends SIGTERM so the process still dies of it. A handler can
  only be installed from the main thread; elsewhere this is skipped (exit still flushes).
  The flush runs on a helper thread that the handler waits for with a deadline, so a lock
  held by the interrupted main thread can delay it but never hang the process. Under gevent
  the handler runs in the event loop, where nothing may block: it flushes in a greenlet.
* **Fork.** In the child, the same step calls every sender's public
  :meth:`Managed.after_fork_in_child` (fresh thread, locks, lease owner and HTTP
  connections; the ones that were running restart: gunicorn ``--preload``,
  ``multiprocessing`` with fork, uWSGI's workers). A server that forks without running
  Python's at-fork hooks is caught by the sender's own pid check on first use.

This is the one registry of the process's senders (held weakly, so it never keeps one
alive); the senders also read it to tell their own live leases from a dead one's. It
knows senders only through the small :class:`Managed` protocol: it imports nothing
from :mod:`.sender`, which imports it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import typing as t
import weakref

from .. import lifecycle

if t.TYPE_CHECKING:  # pragma: no cover
    from types import FrameType

logger = logging.getLogger(__name__)


class Managed(t.Protocol):
    """What this module needs of a sender (:class:`~.sender.Sender` is one)."""

    @property
    def shutdown_timeout(self) -> float:
        """Seconds exit and SIGTERM may spend flushing it."""

    @property
    def running(self) -> bool:
        """Whether its thread runs in this process."""

    @property
    def owner(self) -> str:
        """Its lease owner in this process (``host/pid/nonce``)."""

    def shutdown(self, timeout: float | None = None) -> int:
        """Flush within ``timeout``, then stop; return the events left."""

    def after_fork_in_child(self) -> None:
        """Rebuild its per-process state in a forked child (restart if it ran)."""


_senders: weakref.WeakSet[Managed] = weakref.WeakSet()
_lock = threading.Lock()
_signal_installed = False
_previous_handler: t.Any = None
#: Extra seconds the signal handler waits beyond the longest shutdown_timeout.
_SIGNAL_GRACE = 1.0


def register(sender: Managed, *, signals: bool = True) -> None:
    """Track ``sender`` for exit, SIGTERM and fork; install the SIGTERM handler on first use."""
    with _lock:
        _senders.add(sender)
    lifecycle.exit_first()
    if signals:
        install_signal_handler()


def unregister(sender: Managed) -> None:
    """Forget ``sender`` (it has shut down)."""
    with _lock:
        _senders.discard(sender)


def live_senders() -> list[Managed]:
    """The senders of this process (for ``status`` and tests)."""
    with _lock:
        return list(_senders)


def live_owners() -> set[str]:
    """The lease owners of the senders whose thread runs in this process.

    A lease of this pid whose owner is not in here is an orphan (a sender stopped or
    crashed without giving its rows back): see :func:`.leases.is_orphan`.
    """
    return {sender.owner for sender in live_senders() if sender.running}


def shutdown_all() -> None:
    """Flush then stop every sender, sharing one deadline: the longest
    ``shutdown_timeout`` of them. What is left stays queued for the next run."""
    senders = live_senders()
    if not senders:
        return
    deadline = time.monotonic() + max(s.shutdown_timeout for s in senders)
    left = 0
    for sender in senders:
        try:
            left += sender.shutdown(max(0.0, deadline - time.monotonic()))
        except Exception:  # noqa: BLE001 - exit must go on whatever happens
            logger.exception("flask-keen-signup: error while shutting down a sender")
    if left:
        logger.info("flask-keen-signup: %d event(s) left in the outbox for the next run", left)


def install_signal_handler() -> bool:
    """Install the SIGTERM flush-and-chain handler once. Returns whether it is installed.

    Only possible from the main thread of the main interpreter; a no-op elsewhere, and when
    SIGTERM is ignored (``SIG_IGN``) or handled outside Python (nothing to chain to).
    """
    global _signal_installed, _previous_handler
    if _signal_installed:
        return True
    if threading.current_thread() is not threading.main_thread():
        logger.debug("flask-keen-signup: not on the main thread; SIGTERM handler not installed")
        return False
    try:
        previous = signal.getsignal(signal.SIGTERM)
        if previous is signal.SIG_IGN or previous is None:
            return False
        signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # not the main interpreter, or no signals here
        return False
    _previous_handler = previous
    _signal_installed = True
    return True


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    gevent: t.Any = sys.modules.get("gevent")
    if gevent is not None and gevent.getcurrent() is gevent.get_hub():
        # A monkey-patched process (gunicorn -k gevent) runs signal handlers in the event
        # loop, where nothing may block: flush in a greenlet, as gunicorn's gevent worker
        # does for its own handlers.
        gevent.spawn(_flush_then_chain, signum, frame)
        return
    _flush_then_chain(signum, frame)


def _flush_then_chain(signum: int, frame: FrameType | None) -> None:
    senders = live_senders()
    timeout = max((s.shutdown_timeout for s in senders), default=0.0)
    if senders:
        helper = threading.Thread(
            target=shutdown_all, name="flask-keen-signup-shutdown", daemon=True
        )
        helper.start()
        helper.join(timeout + _SIGNAL_GRACE)
    previous = _previous_handler
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # the parent's may have been held by another thread
    for sender in list(_senders):
        try:
            sender.after_fork_in_child()
        except Exception:  # noqa: BLE001 - never break the child over analytics
            logger.exception("flask-keen-signup: could not restart a sender after fork")


lifecycle.register("senders", after_in_child=_after_fork_in_child, at_exit=shutdown_all)
