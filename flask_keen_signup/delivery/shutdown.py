"""Process life cycle of the senders: exit, SIGTERM and fork, in one place.

* **Exit.** One ``atexit`` hook flushes every live sender within its ``shutdown_timeout``
  and stops it. What is not sent by then stays in the outbox for the next run: never
  dropped, never a hang.
* **SIGTERM.** Python's default action for SIGTERM skips ``atexit``, and SIGTERM is how
  gunicorn, systemd and Kubernetes stop a process. The handler does the same bounded flush,
  then chains: it calls the previous Python handler, or, if the previous action was the
  default, restores it and re-sends SIGTERM so the process still dies of it. A handler can
  only be installed from the main thread; elsewhere this is skipped (``atexit`` still runs).
  The flush runs on a helper thread that the handler waits for with a deadline, so a lock
  held by the interrupted main thread can delay it but never hang the process. Under gevent
  the handler runs in the event loop, where nothing may block: it flushes in a greenlet.
* **Fork.** ``os.register_at_fork(after_in_child=...)`` calls every sender's public
  :meth:`Managed.after_fork_in_child` in the child (fresh thread, locks, lease owner and
  HTTP connections; the ones that were running restart: gunicorn ``--preload``,
  ``multiprocessing`` with fork). A server that forks without running Python's at-fork
  hooks is caught by the sender's own pid check on first use.
* **uWSGI.** Without ``--lazy-apps`` uWSGI loads the app in its master and forks the
  workers from C, without the GIL and without Python's at-fork hooks: a Python thread busy
  at that moment leaves the new worker waiting for a GIL nobody will release (uWSGI issues
  1149 and 1369). So in a process uWSGI will fork, :func:`forks_from_c` says so, no
  thread is started there, and uWSGI's ``post_fork_hook`` (chained the way
  ``uwsgidecorators.postfork`` does) does in each worker what Python's fork hooks would
  have done (new SQLite connections, then the senders restarted) as soon as it is forked.
  A uWSGI older than 2.0.27 started without ``--enable-threads`` lets no Python thread
  run while idle: :func:`starved_by_uwsgi` tells ``init_app``, which refuses it.

This is the one registry of the process's senders (held weakly, so it never keeps one
alive); the senders also read it to tell their own live leases from a dead one's. It
knows senders only through the small :class:`Managed` protocol: it imports nothing
from :mod:`.sender`, which imports it.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
import time
import typing as t
import weakref

# The database's at-fork hooks must be registered before ours: in a child, they must reset
# its SQLite gate before the senders we restart there touch SQLite.
from .. import database

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
_atexit_installed = False
_signal_installed = False
_previous_handler: t.Any = None
#: Extra seconds the signal handler waits beyond the longest shutdown_timeout.
_SIGNAL_GRACE = 1.0


def register(sender: Managed, *, signals: bool = True) -> None:
    """Track ``sender`` for exit, SIGTERM and fork; install the hooks on first use."""
    global _atexit_installed
    with _lock:
        _senders.add(sender)
        if not _atexit_installed:
            atexit.register(_at_exit)
            _atexit_installed = True
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


def shutdown_all(timeout: float | None = None) -> int:
    """Flush then stop every sender, sharing one deadline; return the events left queued.

    :param timeout: total seconds; default the longest ``shutdown_timeout`` of the senders.
    """
    senders = live_senders()
    if not senders:
        return 0
    if timeout is None:
        timeout = max(s.shutdown_timeout for s in senders)
    deadline = time.monotonic() + timeout
    left = 0
    for sender in senders:
        try:
            left += sender.shutdown(max(0.0, deadline - time.monotonic()))
        except Exception:  # noqa: BLE001 - exit must go on whatever happens
            logger.exception("flask-keen-signup: error while shutting down a sender")
    return left


def _at_exit() -> None:
    left = shutdown_all()
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
            target=shutdown_all, args=(timeout,), name="flask-keen-signup-shutdown", daemon=True
        )
        helper.start()
        helper.join(timeout + _SIGNAL_GRACE)
    previous = _previous_handler
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


def starved_by_uwsgi() -> bool:
    """Whether this is a uWSGI process whose Python threads cannot run while it is idle.

    uWSGI before 2.0.27 started without ``--enable-threads`` never releases the GIL from
    its C loop: an app's thread runs only in the slices of a request being served, so a
    signup would wait for the next visitor. From 2.0.27 threads are always enabled.
    """
    uwsgi: t.Any = sys.modules.get("uwsgi")
    return uwsgi is not None and not getattr(uwsgi, "has_threads", True)


def forks_from_c() -> bool:
    """Whether uWSGI will fork workers from this process without Python's fork hooks.

    True in a uWSGI master (or first process) that loaded the app without ``--lazy-apps``
    and spawns workers. Then the worker hook is installed (once) and the caller must not
    start a thread here: every worker starts its own right after the fork.
    """
    global _uwsgi_hooked
    uwsgi: t.Any = sys.modules.get("uwsgi")  # only ever present inside a uWSGI process
    if uwsgi is None or getattr(uwsgi, "worker_id", lambda: 1)() != 0:
        return False
    opt = getattr(uwsgi, "opt", {})
    if opt.get("lazy-apps") or opt.get("lazy"):
        return False
    if not (opt.get("master") or int(getattr(uwsgi, "numproc", 1)) > 1):
        return False
    with _lock:
        if not _uwsgi_hooked:
            previous = getattr(uwsgi, "post_fork_hook", None)
            master = os.getpid()

            def post_fork_hook() -> None:
                if callable(previous):
                    previous()
                if os.getpid() != master:  # what Python's own fork hooks would have done
                    database._before_fork()  # the copies in this child, not the master's
                    database._after_fork_in_child()
                _after_fork_in_child()

            uwsgi.post_fork_hook = post_fork_hook
            _uwsgi_hooked = True
    return True


_uwsgi_hooked = False


#: Set in a forked child that gevent has not patched yet (see :func:`threads_on_hold`).
_gevent_patch_pending = False


def threads_on_hold() -> bool:
    """Whether a sender must not start its thread in this process yet.

    * A uWSGI master that forks from C (:func:`forks_from_c`): each worker starts its own.
    * A forked child of a process that imported ``gevent.monkey`` without patching yet:
      gunicorn's gevent worker with ``--preload`` patches right after the fork, and a
      thread started before that is a native thread in a patched process (its exit then
      fails in ``threading``'s own bookkeeping), its locks and events native ones that
      block the whole worker when a greenlet waits on them. So the senders are rebuilt
      and restarted once gevent announces ``GeventDidPatchAllEvent``. Should no patch
      ever come, the master's sender still delivers every worker's signups from the
      shared outbox.
    """
    return _gevent_patch_pending or forks_from_c()


def _on_gevent_event(event: object) -> None:
    global _gevent_patch_pending
    if not _gevent_patch_pending or type(event).__name__ != "GeventDidPatchAllEvent":
        return
    _gevent_patch_pending = False
    gevent: t.Any = sys.modules["gevent"]
    gevent.spawn(_start_held)  # once the worker runs its loop, not inside patch_all


def _start_held() -> None:
    for sender in list(_senders):
        try:
            sender.after_fork_in_child()  # rebuilt with gevent's primitives, then restarted
        except Exception:  # noqa: BLE001 - never break the worker over analytics
            logger.exception("flask-keen-signup: could not start a sender after gevent patched")


def _after_fork_in_child() -> None:
    global _lock, _gevent_patch_pending
    _lock = threading.Lock()  # the parent's may have been held by another thread
    monkey: t.Any = sys.modules.get("gevent.monkey")
    if monkey is not None and not monkey.is_module_patched("threading"):
        try:
            from gevent import events  # type: ignore[import-untyped,unused-ignore]
        except ImportError:  # pragma: no cover - part of gevent
            pass
        else:
            # Rebuilt after the patch: locks and events made now would be native ones,
            # and a greenlet waiting on one would block the whole worker.
            _gevent_patch_pending = True
            if _on_gevent_event not in events.subscribers:
                events.subscribers.append(_on_gevent_event)
            return
    for sender in list(_senders):
        try:
            sender.after_fork_in_child()
        except Exception:  # noqa: BLE001 - never break the child over analytics
            logger.exception("flask-keen-signup: could not restart a sender after fork")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
