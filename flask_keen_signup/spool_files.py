"""The local spool's files: their names, their records, and who may read them.

Files. One directory per app, ``<KEEN_SIGNUP_DATABASE>.spool/``, mode 0700. Each process
appends to its own file, ``<collection hash>-<host>-<pid>-<nonce>.jsonl`` (mode 0600),
and holds an exclusive ``flock`` on it for as long as the process lives; nobody else
writes to it, so no request ever waits for another process here. A file whose lock is
free belongs to a process that died (``kill -9``, a crash): any sender of the same app
takes it over by locking it (:func:`take_over`), drains it and deletes it. A fork gives
the child its own file (the parent's descriptors are closed in the child; the parent
keeps its lock).

Records. One JSON object per line (``{"v": 1, "at": ..., "c": collection, "u": user,
"t": uniqueness token, "b": body}``), written with a single ``write(2)`` of the whole
line on an ``O_APPEND`` descriptor. A line cut short by a crash in the middle of a write
has no newline: it is ignored (and logged), never fatal; so is a line that is not JSON.

Durability. ``write(2)`` hands the record to the kernel before the login returns: it
survives the process being killed, like a committed SQLite transaction with
``synchronous=NORMAL``. With ``KEEN_SIGNUP_SQLITE_SYNCHRONOUS = "full"`` each record is
also ``fsync``-ed (and the directory when a file is created), so it survives a power
loss too, at the cost of one disk flush per spooled login.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
import typing as t
import uuid

from .delivery import QueuedEvent

SUFFIX = ".jsonl"
READ_BLOCK = 1 << 20
_HOST = socket.gethostname().replace("-", "_").replace("/", "_") or "host"


def list_files(directory: str, prefix: str) -> list[str]:
    """The paths of the spool files in ``directory`` whose names start with ``prefix``
    (one app's: every process's), sorted."""
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    return [
        os.path.join(directory, name)
        for name in names
        if name.startswith(prefix) and name.endswith(SUFFIX)
    ]


def create_own(directory: str, prefix: str, *, fsync: bool) -> tuple[int, str]:
    """A new spool file for this process, locked: ``(descriptor, path)``."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    name = f"{prefix}{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}{SUFFIX}"
    path = os.path.join(directory, name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else has it
        if fsync:
            directory_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(directory_fd)
            finally:
                os.close(directory_fd)
    except BaseException:
        os.close(fd)
        raise
    return fd, path


def take_over(path: str) -> int | None:
    """``path`` locked for this process, or None: a live process's own file, or one being
    drained (or already drained and deleted) by another."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if isinstance(exc, BlockingIOError):  # EWOULDBLOCK: another process holds it
            return None
        raise
    if os.fstat(fd).st_nlink == 0:  # drained and deleted while we were locking it
        os.close(fd)
        return None
    return fd


def lines(fd: int, offset: int) -> t.Iterator[tuple[int, bytes]]:
    """The complete lines of ``fd`` from ``offset`` on, each with the offset past its
    newline (a torn last line, without one, is not among them)."""
    pending = b""
    while block := os.pread(fd, READ_BLOCK, offset + len(pending)):
        pending += block
        *complete, pending = pending.split(b"\n")
        for line in complete:
            offset += len(line) + 1
            yield offset, line


def encode(event: QueuedEvent) -> bytes:
    """``event`` as one record line."""
    head = json.dumps(
        {"v": 1, "at": time.time(), "c": event.collection, "u": event.user_id},
        ensure_ascii=False,
        separators=(",", ":"),
    )
    token = json.dumps(event.uniqueness_token)
    return f'{head[:-1]},"t":{token},"b":{event.body_json}}}\n'.encode()


def decode(line: bytes) -> QueuedEvent:
    """The event on a record line; raises ValueError, KeyError or TypeError if unreadable."""
    record = json.loads(line)
    return QueuedEvent(
        collection=str(record["c"]),
        user_id=str(record["u"]),
        uniqueness_token=str(record["t"]),
        body=record["b"],
    )


def field(line: bytes, collection: str, key: str) -> t.Any:
    """``key`` of the record on ``line`` if it is one of ``collection``'s, else None."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("c") != collection:
        return None
    return record.get(key)
