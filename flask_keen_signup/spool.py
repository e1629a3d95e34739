"""The local spool: signups the marker store could not take within the login's budget.

DESIGN guarantee 3: store work in a login has a hard budget, ``KEEN_SIGNUP_STORE_TIMEOUT``.
When the store cannot answer in time (another process holds SQLite's write lock, Redis
is paused or down), the login goes on at once and the *candidate* signup (the user, and
the event body built from this login's request) is appended here. The sender decides it
later, once the store answers again (:mod:`flask_keen_signup.spool_drain`): it claims the
marker, and queues the event only if the claim is won, so exactly-once holds and a
spooled returning user is simply dropped.

Files. One directory per app, ``<KEEN_SIGNUP_DATABASE>.spool/``, mode 0700. Each process
appends to its own file, ``<collection hash>-<host>-<pid>-<nonce>.jsonl`` (mode 0600),
and holds an exclusive ``flock`` on it for as long as the process lives; nobody else
writes to it, so no request ever waits for another process here. A file whose lock is
free belongs to a process that died (``kill -9``, a crash): any sender of the same app
takes it over by locking it, drains it and deletes it. A fork gives the child its own
file (the parent's descriptors are closed in the child; the parent keeps its lock).

Records. One JSON object per line (``{"v": 1, "at": ..., "c": collection, "u": user,
"t": uniqueness token, "b": body}``), written with a single ``write(2)`` of the whole
line on an ``O_APPEND`` descriptor. A line cut short by a crash in the middle of a write
has no newline: it is ignored (and logged), never fatal; so is a line that is not JSON.

Durability. ``write(2)`` hands the record to the kernel before the login returns: it
survives the process being killed, like a committed SQLite transaction with
``synchronous=NORMAL``. With ``KEEN_SIGNUP_SQLITE_SYNCHRONOUS = "full"`` each record is
also ``fsync``-ed (and the directory when a file is created), so it survives a power
loss too, at the cost of one disk flush per spooled login.

Bounds and visibility. A process's file stops growing at :data:`MAX_FILE_BYTES` (the
signup is then logged as not recorded, as before the spool existed); the number of
spooled signups is ``spooled`` in ``health()`` and ``flask keen-signup status``.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import os
import socket
import threading
import time
import typing as t
import uuid
import weakref

from . import lifecycle
from .delivery import QueuedEvent
from .exceptions import StoreError

logger = logging.getLogger(__name__)

#: A process's spool file stops growing at this size (about 300,000 signups).
MAX_FILE_BYTES = 256 * 1024 * 1024
#: Records decided per store transaction (or per round of Redis scripts) when draining.
DRAIN_CHUNK = 500
_SUFFIX = ".jsonl"
_READ_BLOCK = 1 << 20


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
    :param complete: every file this process could lock was drained to the end.
    """

    queued: int = 0
    dropped: int = 0
    ignored: int = 0
    taken_over: int = 0
    complete: bool = True

    @property
    def decided(self) -> int:
        return self.queued + self.dropped


#: ``decide(events) -> [won?]``: claim each event's user and queue the event if won.
Decide = t.Callable[[t.Sequence[QueuedEvent]], t.Sequence[bool]]


class _Held:
    """A spool file this process is draining: locked, read from ``offset`` on."""

    __slots__ = ("fd", "path", "offset", "own")

    def __init__(self, fd: int, path: str, *, own: bool) -> None:
        self.fd = fd
        self.path = path
        self.offset = 0
        self.own = own


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
        self._pid = os.getpid()
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
        data = _record(event)
        with self._lock:
            if self._pid != os.getpid():  # pragma: no cover - the at-fork hook does this
                self._init_process_state()
            try:
                fd = self._fd if self._fd is not None else self._open_own()
                if self._bytes + len(data) > self.max_file_bytes:
                    raise SpoolFullError(
                        f"the spool file {self._path} reached {self.max_file_bytes} bytes"
                    )
                _write_all(fd, data)
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
                self._pid,
            )

    def _open_own(self) -> int:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        name = f"{self.prefix}{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}{_SUFFIX}"
        path = os.path.join(self.directory, name)
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else has it
            if self.fsync:
                _fsync_directory(self.directory)
        except BaseException:
            os.close(fd)
            raise
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
                self._held.append(_Held(self._fd, self._path, own=True))
                self._fd, self._path, self._bytes = None, None, 0
            own_path = self._path
        report = DrainReport()
        self._take_orphans(own_path, report)
        if not self._held:
            self._end_episode(report)
            return None if report.taken_over == 0 else report
        started = time.monotonic()
        try:
            for held in list(self._held):
                self._drain_file(held, decide, report)
                self._held.remove(held)
                _unlink_and_close(held)
        except Exception:
            report.complete = False
            self._end_episode(report)  # counts what was decided; the episode goes on
            if report.decided:
                logger.info(
                    "flask-keen-signup: decided %d spooled signup(s) before the store failed "
                    "again",
                    report.decided,
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
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return
        held_paths = {h.path for h in self._held}
        for name in sorted(names):
            if not (name.startswith(self.prefix) and name.endswith(_SUFFIX)):
                continue
            path = os.path.join(self.directory, name)
            if path == own_path or path in held_paths:
                continue
            try:
                fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
            except FileNotFoundError:
                continue  # drained and deleted meanwhile by another process
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    continue  # a live process's own file, or being drained
                raise
            if os.fstat(fd).st_nlink == 0:  # drained and deleted while we were locking it
                os.close(fd)
                continue
            self._held.append(_Held(fd, path, own=False))
            report.taken_over += 1
            logger.warning(
                "flask-keen-signup: taking over the spool file %s of a process that exited",
                name,
            )

    def _drain_file(self, held: _Held, decide: Decide, report: DrainReport) -> None:
        pending = b""
        while True:
            block = os.pread(held.fd, _READ_BLOCK, held.offset + len(pending))
            if not block:
                break
            pending += block
            *lines, rest = pending.split(b"\n")
            events: list[QueuedEvent] = []
            for line in lines:
                event = self._parse(line, held.path)
                if event is None:
                    report.ignored += line.strip() != b""
                else:
                    events.append(event)
            for start in range(0, len(events), DRAIN_CHUNK):
                chunk = events[start : start + DRAIN_CHUNK]
                won = decide(chunk)
                queued = sum(1 for w in won if w)
                report.queued += queued
                report.dropped += len(chunk) - queued
            # Everything up to the last newline is decided: never read again.
            held.offset += len(pending) - len(rest)
            pending = rest
        if pending.strip():  # spaces only: an erased last record (see erase())
            report.ignored += 1
            logger.warning(
                "flask-keen-signup: ignored a torn record (%d bytes) at the end of the spool "
                "file %s (a crash in the middle of a write)",
                len(pending),
                os.path.basename(held.path),
            )

    def _parse(self, line: bytes, path: str) -> QueuedEvent | None:
        if not line.strip():
            return None
        try:
            record = json.loads(line)
            event = QueuedEvent(
                collection=str(record["c"]),
                user_id=str(record["u"]),
                uniqueness_token=str(record["t"]),
                body=record["b"],
            )
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning(
                "flask-keen-signup: ignored an unreadable record in the spool file %s: %s",
                os.path.basename(path),
                type(exc).__name__,
            )
            return None
        if event.collection != self.collection:
            return None
        return event

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
            self._pid,
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
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return 0
        erased = 0
        for name in names:
            if name.startswith(self.prefix) and name.endswith(_SUFFIX):
                erased += self._erase_in(os.path.join(self.directory, name), user_id)
        return erased

    def _erase_in(self, path: str, user_id: str) -> int:
        try:
            fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            return 0
        erased = 0
        try:
            offset, pending = 0, b""
            while block := os.pread(fd, _READ_BLOCK, offset + len(pending)):
                pending += block
                *lines, rest = pending.split(b"\n")
                for line in lines:
                    if line.strip() and self._user_of(line) == user_id:
                        os.pwrite(fd, b" " * (len(line) + 1), offset)
                        erased += 1
                    offset += len(line) + 1
                pending = rest
            if erased and self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        return erased

    def _user_of(self, line: bytes) -> str | None:
        try:
            record = json.loads(line)
        except ValueError:
            return None
        if not isinstance(record, dict) or record.get("c") != self.collection:
            return None
        user = record.get("u")
        return user if isinstance(user, str) else None

    # -- status --------------------------------------------------------------------

    def depth(self) -> int:
        """Records still to decide, in every file of this app's spool (all processes)."""
        return self.stats()[0]

    def stats(self) -> tuple[int, float | None]:
        """``(records still to decide, wall-clock time of the oldest or None)``, over every
        file of this app's spool (every process's: ``flask keen-signup status`` runs in its
        own). Reads the files: cheap while the spool is empty, which is the usual case."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return 0, None
        offsets = {h.path: h.offset for h in list(self._held)}
        total, oldest = 0, None
        for name in names:
            if not (name.startswith(self.prefix) and name.endswith(_SUFFIX)):
                continue
            path = os.path.join(self.directory, name)
            try:
                with open(path, "rb") as f:
                    f.seek(offsets.get(path, 0))
                    first = True
                    while block := f.read(_READ_BLOCK):
                        if first:
                            first = False
                            at = _time_of(block.split(b"\n", 1)[0])
                            if at is not None and (oldest is None or at < oldest):
                                oldest = at
                        total += block.count(b"\n")
            except FileNotFoundError:
                continue
        return total, oldest

    def close(self) -> None:
        """Close this process's descriptors (their files stay, to be drained later)."""
        with self._lock:
            fds = [h.fd for h in self._held] + ([self._fd] if self._fd is not None else [])
            self._held, self._fd, self._path, self._bytes = [], None, None, 0
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass

    def _after_fork_in_child(self) -> None:
        # The parent keeps its files and their locks; closing our copies of the
        # descriptors does not release them (flock belongs to the open file description).
        fds = [h.fd for h in self._held] + ([self._fd] if self._fd is not None else [])
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._init_process_state()


_HOST = socket.gethostname().replace("-", "_").replace("/", "_") or "host"
_spools: weakref.WeakSet[Spool] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for spool in list(_spools):
        spool._after_fork_in_child()


lifecycle.register("spool", after_in_child=_after_fork_in_child)


def _record(event: QueuedEvent) -> bytes:
    head = json.dumps(
        {"v": 1, "at": time.time(), "c": event.collection, "u": event.user_id},
        ensure_ascii=False,
        separators=(",", ":"),
    )
    token = json.dumps(event.uniqueness_token)
    return f'{head[:-1]},"t":{token},"b":{event.body_json}}}\n'.encode()


def _time_of(line: bytes) -> float | None:
    try:
        at = json.loads(line).get("at")
    except (ValueError, AttributeError):
        return None
    return float(at) if isinstance(at, (int, float)) else None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_and_close(held: _Held) -> None:
    try:
        os.unlink(held.path)
    except FileNotFoundError:
        pass
    finally:
        os.close(held.fd)


__all__ = ["DrainReport", "MAX_FILE_BYTES", "Spool", "SpoolFullError"]
