"""The local spool: signups the marker store could not take within the login's budget.

DESIGN guarantee 3: store work in a login has a hard budget, ``KEEN_SIGNUP_STORE_TIMEOUT``.
When the store cannot answer in time (another process holds SQLite's write lock, Redis
is paused or down), the login goes on at once and the *candidate* signup (the user, and
the event body built from this login's request) is appended here. The sender decides it
later, once the store answers again (:mod:`flask_keen_signup.spool_drain`): it claims the
marker, and queues the event only if the claim is won, so exactly-once holds and a
spooled returning user is simply dropped.

The files, their records and their durability: :mod:`.spool_files`.

Bounds and visibility. A process's file stops growing at :data:`MAX_FILE_BYTES` (the
signup is then logged as not recorded, as before the spool existed); the number of
spooled signups is ``spooled`` in ``health()`` and ``flask keen-signup status``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import threading
import time
import typing as t
import weakref

from . import lifecycle
from . import spool_files as files
from .delivery import QueuedEvent
from .exceptions import StoreError

logger = logging.getLogger(__name__)

#: A process's spool file stops growing at this size (about 300,000 signups).
MAX_FILE_BYTES = 256 * 1024 * 1024
#: Records decided per store transaction (or per round of Redis scripts) when draining.
DRAIN_CHUNK = 500


class SpoolFullError(StoreError):
    """This process's spool file reached :data:`MAX_FILE_BYTES`."""


@dataclasses.dataclass
class DrainReport:
    """What one :meth:`Spool.drain` did.

    :param queued: candidates whose claim was won: now in the outbox.
    :param dropped: candidates whose claim was lost: returning users, or signups queued
        meanwhile by another login or another process.
    :param ignored: torn or unreadable lines skipped.
    :param taken_over: files of dead processes drained by this one.
    """

    queued: int = 0
    dropped: int = 0
    ignored: int = 0
    taken_over: int = 0


#: ``decide(events) -> [won?]``: claim each event's user and queue the event if won.
Decide = t.Callable[[t.Sequence[QueuedEvent]], t.Sequence[bool]]


@dataclasses.dataclass
class _Held:
    """A spool file this process is draining: locked, read from ``offset`` on."""

    fd: int
    path: str
    offset: int = 0


class Spool:
    """This app's spool directory: append on the login path, drain on the sender thread.

    :param directory: where the files live (created 0700 on first use).
    :param collection: records are per collection; the file names carry its hash so two
        apps sharing a directory never drain each other's files.
    :param fsync: ``fsync`` every record (see the module doc).
    """

    def __init__(
        self,
        directory: str,
        collection: str,
        *,
        fsync: bool = False,
        max_file_bytes: int = MAX_FILE_BYTES,
    ) -> None:
        self.directory = directory
        self.collection = collection
        self.fsync = fsync
        self.max_file_bytes = max_file_bytes
        self.prefix = hashlib.sha256(collection.encode("utf-8")).hexdigest()[:12] + "-"
        self._init_process_state()
        _spools.add(self)

    def _init_process_state(self) -> None:
        self._lock = threading.Lock()
        self._drain_lock = threading.Lock()
        self._fd: int | None = None
        self._path: str | None = None
        self._bytes = 0
        self._held: list[_Held] = []
        #: Wall-clock start of the current degraded episode of this process, or None.
        self.degraded_since: float | None = None
        self._episode_spooled = 0
        self._episode_decided = [0, 0]  # queued, dropped
        self._episode_error = ""

    def __repr__(self) -> str:
        return f"<Spool {self.directory!r}>"

    # -- the login path ------------------------------------------------------------

    def append(self, event: QueuedEvent, error: BaseException) -> None:
        """Keep ``event`` durably until the sender decides it; ``error`` is why.

        The first record of an episode logs one error line; the rest of the episode is
        quiet (the sender logs its end, with how many were decided).

        :raises StoreError: the spool cannot take it either (disk full, spool full).
        """
        data = files.encode(event)
        with self._lock:
            try:
                fd = self._fd if self._fd is not None else self._open_own()
                if self._bytes + len(data) > self.max_file_bytes:
                    raise SpoolFullError(
                        f"the spool file {self._path} reached {self.max_file_bytes} bytes"
                    )
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if self.fsync:
                    os.fsync(fd)
            except OSError as exc:
                raise StoreError(f"cannot write to the spool {self.directory}: {exc}") from exc
            self._bytes += len(data)
            self._episode_spooled += 1
            starting = self.degraded_since is None
            if starting:
                self.degraded_since = time.time()
                self._episode_error = f"{type(error).__name__}: {error}"
        if starting:
            logger.error(
                "flask-keen-signup: the marker store did not answer within the login's "
                "budget (%s); logins go on and new signups are kept in the local spool %s "
                "until it answers again (pid %d; logged once per episode)",
                self._episode_error,
                self.directory,
                os.getpid(),
            )

    def _open_own(self) -> int:
        fd, path = files.create_own(self.directory, self.prefix, fsync=self.fsync)
        self._fd, self._path, self._bytes = fd, path, 0
        return fd

    # -- the sender ----------------------------------------------------------------

    def drain(self, decide: Decide) -> DrainReport | None:
        """Decide every record this process can lock: its own, and dead processes' files.

        Returns ``None`` when there was nothing to do (the cheap, usual case: one
        ``listdir``). A ``decide`` that raises (the store still cannot answer) stops the
        drain; what was decided stays decided and the rest is tried next time.
        """
        if not self._drain_lock.acquire(blocking=False):
            return None  # another thread of this process is draining
        try:
            return self._drain(decide)
        finally:
            self._drain_lock.release()

    def _drain(self, decide: Decide) -> DrainReport | None:
        with self._lock:
            if self._fd is not None and self._bytes > 0 and self._path is not None:
                # New records go to a new file from now on; this one is read to the end.
                self._held.append(_Held(self._fd, self._path))
                self._fd, self._path, self._bytes = None, None, 0
            own_path = self._path
        report = DrainReport()
        self._take_orphans(own_path, report)
        if not self._held:  # nothing of its own, nothing taken over
            self._end_episode(report)
            return None
        started = time.monotonic()
        try:
            for held in list(self._held):
                self._drain_file(held, decide, report)
                self._held.remove(held)
                try:
                    os.unlink(held.path)
                except FileNotFoundError:
                    pass
                finally:
                    os.close(held.fd)
        except Exception:
            self._end_episode(report)  # counts what was decided; the episode goes on
            if report.queued + report.dropped:
                logger.info(
                    "flask-keen-signup: decided %d spooled signup(s) before the store failed "
                    "again",
                    report.queued + report.dropped,
                )
            raise
        logger.debug(
            "spool drained in %.3fs: %d queued, %d dropped, %d ignored",
            time.monotonic() - started,
            report.queued,
            report.dropped,
            report.ignored,
        )
        self._end_episode(report)
        return report

    def _take_orphans(self, own_path: str | None, report: DrainReport) -> None:
        held_paths = {h.path for h in self._held}
        for path in files.list_files(self.directory, self.prefix):
            if path == own_path or path in held_paths:
                continue
            fd = files.take_over(path)
            if fd is None:
                continue
            self._held.append(_Held(fd, path))
            report.taken_over += 1
            logger.warning(
                "flask-keen-signup: taking over the spool file %s of a process that exited",
                os.path.basename(path),
            )

    def _drain_file(self, held: _Held, decide: Decide, report: DrainReport) -> None:
        events: list[QueuedEvent] = []
        end = held.offset
        for end, line in files.lines(held.fd, held.offset):
            event = self._parse(line, held.path)
            if event is None:
                report.ignored += line.strip() != b""
            else:
                events.append(event)
            if len(events) == DRAIN_CHUNK:
                _decide(decide, events, report)
                held.offset, events = end, []  # decided: never read again
        if events:
            _decide(decide, events, report)
        held.offset = end
        torn = os.fstat(held.fd).st_size - end
        if os.pread(held.fd, files.READ_BLOCK, end).strip():  # spaces: an erased last record
            report.ignored += 1
            logger.warning(
                "flask-keen-signup: ignored a torn record (%d bytes) at the end of the spool "
                "file %s (a crash in the middle of a write)",
                torn,
                os.path.basename(held.path),
            )

    def _parse(self, line: bytes, path: str) -> QueuedEvent | None:
        if not line.strip():
            return None
        try:
            event = files.decode(line)
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning(
                "flask-keen-signup: ignored an unreadable record in the spool file %s: %s",
                os.path.basename(path),
                type(exc).__name__,
            )
            return None
        return event if event.collection == self.collection else None

    def _end_episode(self, report: DrainReport) -> None:
        with self._lock:
            decided = self._episode_decided
            decided[0] += report.queued
            decided[1] += report.dropped
            since = self.degraded_since
            if since is None or self._bytes > 0 or self._held:
                return
            self.degraded_since = None
            spooled, self._episode_spooled = self._episode_spooled, 0
            self._episode_decided = [0, 0]
        logger.warning(
            "flask-keen-signup: the marker store answers again after %.1fs; the %d signup(s) "
            "spooled by this process (pid %d) are decided: %d queued, %d dropped as already "
            "known",
            time.time() - since,
            spooled,
            os.getpid(),
            decided[0],
            decided[1],
        )

    # -- erasure -------------------------------------------------------------------

    def erase(self, user_id: str) -> int:
        """Overwrite ``user_id``'s records in every spool file of this app (every
        process's) with spaces, in place; return how many were erased.

        In place, so the file's other records keep their offsets: a drain in progress (its
        own process's, or a taker-over's) reads on from where it was, and an appending
        owner appends after them. The blanked bytes include the record's newline, so the
        spaces become leading white space of the next record (JSON allows it) and the
        record count (``stats()``) stays right. Only complete lines are touched.
        """
        erased = 0
        for path in files.list_files(self.directory, self.prefix):
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                for end, line in files.lines(fd, 0):
                    if files.field(line, self.collection, "u") == user_id:
                        os.pwrite(fd, b" " * (len(line) + 1), end - len(line) - 1)
                        erased += 1
                if erased and self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        return erased

    # -- status --------------------------------------------------------------------

    def depth(self) -> int:
        """Records still to decide, in every file of this app's spool (all processes)."""
        return self.stats()[0]

    def stats(self) -> tuple[int, float | None]:
        """``(records still to decide, wall-clock time of the oldest or None)``, over every
        file of this app's spool (every process's: ``flask keen-signup status`` runs in its
        own). Reads the files: cheap while the spool is empty, which is the usual case."""
        offsets = {h.path: h.offset for h in list(self._held)}
        total, oldest = 0, None
        for path in files.list_files(self.directory, self.prefix):
            try:
                with open(path, "rb") as f:
                    f.seek(offsets.get(path, 0))
                    first = True
                    while block := f.read(files.READ_BLOCK):
                        if first:
                            first = False
                            at = files.field(block.split(b"\n", 1)[0], self.collection, "at")
                            if isinstance(at, (int, float)) and (oldest is None or at < oldest):
                                oldest = float(at)
                        total += block.count(b"\n")
            except FileNotFoundError:
                continue
        return total, oldest

    def close(self) -> None:
        """Close this process's descriptors (their files stay, to be drained later).

        In a forked child (the at-fork hook), the parent keeps its files and their locks:
        closing our copies of the descriptors does not release them (``flock`` belongs to
        the open file description).
        """
        with self._lock:
            fds = [h.fd for h in self._held] + ([self._fd] if self._fd is not None else [])
            self._held, self._fd, self._path, self._bytes = [], None, None, 0
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


_spools: weakref.WeakSet[Spool] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for spool in list(_spools):
        spool._lock = threading.Lock()  # the parent's may have been held
        spool.close()
        spool._init_process_state()


lifecycle.register("spool", after_in_child=_after_fork_in_child)


def _decide(decide: Decide, events: list[QueuedEvent], report: DrainReport) -> None:
    won = decide(events)
    queued = sum(1 for w in won if w)
    report.queued += queued
    report.dropped += len(events) - queued


__all__ = ["DrainReport", "MAX_FILE_BYTES", "Spool", "SpoolFullError"]
