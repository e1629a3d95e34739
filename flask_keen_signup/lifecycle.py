"""What this process does at a fork and at exit: every step, in one explicit order.

Five parts keep per-process state that a fork or the interpreter's exit must deal with.
Each registers its step here under its name in :data:`ORDER`; this module installs one
``os.register_at_fork`` hook and one ``atexit`` hook (when it is first imported) and runs
the steps in that order, whatever the order their modules happened to be imported in:

1. ``"sqlite"`` (:mod:`.database_fork_gate`): before a fork, wait until no thread is
   inside SQLite and close every connection; in the child, a fresh gate. At exit, close
   the connections of this thread and of ended threads.
2. ``"metrics"`` (:mod:`.metrics`): before a fork, take the lock around every increment
   (after the SQLite gate: a thread inside SQLite may still be counting a delivery).
3. ``"spool"`` (:mod:`.spool`): in the child, close the parent's spool files; the child
   appends to a file of its own.
4. ``"postgres"`` (:mod:`.postgres_pools`): in the child, drop the parent's connection
   pools unused (their sockets are the parent's; the child opens its own) and reset the
   statement deadlines' watch (:mod:`.postgres_deadlines`: its thread is the parent's).
5. ``"senders"`` (:mod:`.delivery.shutdown`): in the child, restart the senders that ran
   in the parent (last: they use all of the above); at exit, flush and stop them.

Before a fork and in the child after it the steps run top to bottom; in the parent after
a fork and at exit, bottom to top, each undoing what it did: the senders flush before the
connections they flush through are closed. A step that raises is logged and the others
still run (as separate at-fork hooks would).

Two servers fork in ways Python's hooks do not cover:

* **uWSGI** without ``--lazy-apps`` loads the app in its master and forks the workers
  from C, without the GIL and without Python's at-fork hooks: a Python thread busy at that
  moment leaves the new worker waiting for a GIL nobody will release (uWSGI issues 1149
  and 1369). So in a process uWSGI will fork, :func:`forks_from_c` says so, no thread is
  started there, and uWSGI's ``post_fork_hook`` (chained the way
  ``uwsgidecorators.postfork`` does) runs the child's steps in each worker as soon as it
  is forked. A uWSGI older than 2.0.27 started without ``--enable-threads`` lets no Python
  thread run while idle: :func:`starved_by_uwsgi` tells ``init_app``, which refuses it.
* **gevent**: a forked child of a process that imported ``gevent.monkey`` without patching
  yet (gunicorn's gevent worker with ``--preload`` patches right after the fork) must not
  start a thread before the patch: it would be a native thread in a patched process (its
  exit then fails in ``threading``'s own bookkeeping), its locks and events native ones
  that block the whole worker when a greenlet waits on them. So the ``"senders"`` step
  waits for gevent's ``GeventDidPatchAllEvent``. Should no patch ever come, the master's
  sender still delivers every worker's signups from the shared outbox.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import sys
import threading
import typing as t

logger = logging.getLogger(__name__)

#: The steps, from the lowest layer to the highest (see the module doc).
ORDER = ("sqlite", "metrics", "spool", "postgres", "senders")

Step = t.Callable[[], object]
_steps: dict[str, dict[str, Step]] = {name: {} for name in ORDER}
#: Set in a forked child that gevent has not patched yet (see :func:`threads_on_hold`).
_gevent_patch_pending = False
_uwsgi_hooked = False
_uwsgi_lock = threading.Lock()


def register(name: str, **phases: Step) -> None:
    """Set the step ``name`` (one of :data:`ORDER`): a function for any of the phases
    ``before``, ``after_in_parent``, ``after_in_child`` and ``at_exit``."""
    unknown = set(phases) - {"before", "after_in_parent", "after_in_child", "at_exit"}
    if name not in _steps or unknown:
        raise ValueError(f"unknown step {name!r} or phase(s) {sorted(unknown)}")
    _steps[name] = phases


def _run(phase: str, names: t.Iterable[str]) -> None:
    for name in names:
        step = _steps[name].get(phase)
        if step is None:
            continue
        try:
            step()
        except Exception:  # noqa: BLE001 - the other steps must still run
            logger.exception("flask-keen-signup: the %r step failed (%s)", name, phase)


_before_fork = functools.partial(_run, "before", ORDER)
_after_fork_in_parent = functools.partial(_run, "after_in_parent", ORDER[::-1])
_at_exit = functools.partial(_run, "at_exit", ORDER[::-1])


def _after_fork_in_child() -> None:
    global _gevent_patch_pending
    _run("after_in_child", ORDER[:-1])
    monkey: t.Any = sys.modules.get("gevent.monkey")
    if monkey is not None and not monkey.is_module_patched("threading"):
        from gevent import events  # type: ignore[import-untyped,unused-ignore]

        _gevent_patch_pending = True
        if _on_gevent_event not in events.subscribers:
            events.subscribers.append(_on_gevent_event)
        return
    _run("after_in_child", ORDER[-1:])


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)
atexit.register(_at_exit)


def exit_first() -> None:
    """Run the exit steps before every ``atexit`` hook registered so far (``atexit`` runs
    the last registered first). A sender calls it as it starts: its flush then runs before
    the exit hooks of whatever the app set up before it (a logging or error-reporting
    client it may still need), and after those set up later."""
    atexit.unregister(_at_exit)
    atexit.register(_at_exit)


def _on_gevent_event(event: object) -> None:
    global _gevent_patch_pending
    if not _gevent_patch_pending or type(event).__name__ != "GeventDidPatchAllEvent":
        return
    _gevent_patch_pending = False
    gevent: t.Any = sys.modules["gevent"]
    # Once the worker runs its loop, not inside patch_all; rebuilt with gevent's primitives.
    gevent.spawn(_run, "after_in_child", ORDER[-1:])


def threads_on_hold() -> bool:
    """Whether a sender must not start its thread in this process yet: a uWSGI master
    that forks from C (each worker starts its own), or a forked child gevent has not
    patched yet (see the module doc)."""
    return _gevent_patch_pending or forks_from_c()


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
    with _uwsgi_lock:
        if not _uwsgi_hooked:
            previous = getattr(uwsgi, "post_fork_hook", None)
            master = os.getpid()

            def post_fork_hook() -> None:
                if callable(previous):
                    previous()
                if os.getpid() != master:  # what Python's own fork hooks would have done
                    _after_fork_in_child()
                else:  # the first process serves too: its senders start now
                    _run("after_in_child", ORDER[-1:])

            uwsgi.post_fork_hook = post_fork_hook
            _uwsgi_hooked = True
    return True
