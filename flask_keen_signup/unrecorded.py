"""Signups the login path could not record at all: a count kept until someone looks.

When the store and the spool both fail (a full disk, a broken database), the signup is
logged (one ERROR with the user id) and the login goes on. Log lines scroll away, and
once the disk has space again nothing else would say that users were lost (issue 16:
197 of 200 signups "not recorded", then a verdict of ``ok``). So each one is also counted
here, and the count stays until an operator acknowledges it
(``flask keen-signup status --acknowledge``): ``not_recorded`` in :meth:`KeenSignup.health`
and ``status``, ``keen_signup_signups_total{outcome="not_recorded"}`` in the metrics.

The count lives in a small file beside the database (``<database>.unrecorded``), so that
``status`` (its own process) sees what every worker process counted. The file is made at
start-up at its full, fixed size and afterwards only overwritten in place, under an
``flock``: on a full disk the update still succeeds on file systems that overwrite in place
(ext4, XFS, tmpfs). Where it cannot be written at all, this process keeps the increments it
could not save and adds them to the file at the next write that works (its own
``health()`` includes them meanwhile).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import threading
import time
import typing as t

logger = logging.getLogger(__name__)

#: The file's one record: count, first and last time (epoch seconds, 0: none), padded.
_SIZE = 64
_FORMAT = "{:>20d} {:>20.3f} {:>20.3f}\n"


@dataclasses.dataclass(frozen=True)
class Tally:
    """:param count: signups not recorded since the last acknowledgement.
    :param first_at: when the first of them was lost (epoch seconds), or ``None``.
    :param last_at: when the last of them was lost, or ``None``.
    """

    count: int = 0
    first_at: float | None = None
    last_at: float | None = None


def _parse(data: bytes) -> Tally:
    try:
        count, first, last = data.decode("ascii").split()
        return Tally(int(count), float(first) or None, float(last) or None)
    except (UnicodeDecodeError, ValueError):
        return Tally()


def _encode(tally: Tally) -> bytes:
    text = _FORMAT.format(tally.count, tally.first_at or 0.0, tally.last_at or 0.0)
    return text.encode("ascii").ljust(_SIZE)[:_SIZE]


class Unrecorded:
    """The count of signups not recorded, in ``path`` (see the module doc).

    :param path: the file.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        #: Increments this process could not write to the file yet.
        self._unsaved = Tally()
        with contextlib.suppress(OSError, ValueError):  # the path is checked elsewhere
            self._update(lambda tally: tally)  # allocate the record now, while there is room

    def add(self) -> None:
        """One more signup not recorded. Never raises (it runs in a failing login)."""
        now = time.time()
        with self._lock:
            old = self._unsaved
            unsaved = self._unsaved = Tally(old.count + 1, old.first_at or now, now)
            try:
                self._update(lambda tally: _merge(tally, unsaved))
            except (OSError, ValueError) as exc:
                logger.debug("cannot save the count of signups not recorded: %s", exc)
                return
            self._unsaved = Tally()

    def read(self) -> Tally:
        """The count in the file plus what this process could not save."""
        with self._lock:
            saved = Tally()
            with contextlib.suppress(OSError, ValueError), open(self.path, "rb") as f:
                saved = _parse(f.read(_SIZE))
            return _merge(saved, self._unsaved)

    def acknowledge(self) -> Tally:
        """Someone has looked: start counting from zero. Returns what was counted."""
        with self._lock:
            seen, self._unsaved = self._unsaved, Tally()
            try:
                saved = self._update(lambda tally: Tally())
            except (OSError, ValueError) as exc:
                logger.warning("cannot reset the count of signups not recorded: %s", exc)
                saved = Tally()
            return _merge(saved, seen)

    def _update(self, change: t.Callable[[Tally], Tally]) -> Tally:
        """Replace the file's tally with ``change(tally)``, under the lock; return the old."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            old = _parse(os.pread(fd, _SIZE, 0))  # empty (new): no count yet
            if os.pwrite(fd, _encode(change(old)), 0) != _SIZE:
                raise OSError("short write")
        finally:
            os.close(fd)
        return old


def _merge(a: Tally, b: Tally) -> Tally:
    firsts = [x for x in (a.first_at, b.first_at) if x is not None]
    lasts = [x for x in (a.last_at, b.last_at) if x is not None]
    return Tally(
        a.count + b.count, min(firsts) if firsts else None, max(lasts) if lasts else None
    )
