"""Read the files of Auth0's user export: NDJSON or CSV, plain or gzipped, as a stream.

``flask keen-signup migrate`` reads every user of a tenant, and a real tenant has hundreds
of thousands of them. Whether the data comes from a user export job's download
(:meth:`flask_keen_signup.auth0.ManagementClient.export_users`) or from a file a team
exported from the dashboard (``--users-file``), it is read here, one user at a time, so
memory stays flat whatever the size.

Auth0's two formats:

- ``json`` is NDJSON: one JSON object per line. Blank lines are skipped; a line that is
  not a JSON object raises :class:`UsersFileError` naming the line *number* only (the line
  itself is personal data and stays out of logs and tracebacks).
- ``csv`` has a header row with the requested field names (``export_as`` when given, else
  the name: ``app_metadata.signedUp``). Auth0 escapes every *string* against CSV injection
  (OWASP): wrapped in double quotes, inner quotes doubled, and a single quote ``'``
  prepended. The reader undoes that quote; Auth0's own ISO-8601 dates, numbers and
  booleans are not escaped. Values stay strings (``"true"``, ``"42"``, ``""`` for an empty
  or missing value): the caller knows which fields it asked for and normalises them.

Nested fields: a JSON export of ``app_metadata`` carries the whole object; use
:func:`field_value` to read ``app_metadata.signedUp`` from either shape (a nested object
or a flat ``"app_metadata.signedUp"`` key / CSV column).

This module has no Flask and no network code.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import os
import re
import sys
import typing as t
import zlib
from collections.abc import Iterator

from .exceptions import KeenSignupError

if t.TYPE_CHECKING:  # pragma: no cover
    from types import TracebackType

__all__ = [
    "UsersFile",
    "UsersFileError",
    "field_value",
    "iter_export_stream",
    "iter_users_file",
]

#: The first two bytes of every gzip stream.
GZIP_MAGIC = b"\x1f\x8b"
#: Formats by name; ``ndjson``/``jsonl`` are accepted as spellings of Auth0's ``json``.
FORMATS = {"json": "json", "ndjson": "json", "jsonl": "json", "csv": "csv"}
#: How far into the (decompressed) data the format sniffer looks.
SNIFF_BYTES = 4096
_INDEX_RE = re.compile(r"^(?P<name>[^\[\]]+)\[(?P<index>\d+)\]$")


class UsersFileError(KeenSignupError, ValueError):
    """A users file or export stream cannot be read (bad line, unknown format, bad gzip).

    :param line: the 1-based line number of the offending line, when there is one.
    """

    def __init__(self, message: str, *, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


def _normalise_format(format: str) -> str:
    try:
        return FORMATS[format.strip().lower()]
    except (KeyError, AttributeError):
        raise UsersFileError(
            f"unknown users export format {format!r}: expected 'json' or 'csv'"
        ) from None


# -- parsing ------------------------------------------------------------------------------------


def _iter_ndjson(stream: t.BinaryIO) -> Iterator[dict[str, t.Any]]:
    number = 0
    for number, line in enumerate(stream, start=1):  # noqa: B007 - used after the loop
        if not line.strip():
            continue
        error: str | None = None
        try:
            user = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            user = None
            error = "is not valid JSON"
        if error is None and not isinstance(user, dict):
            error = "is not a JSON object"
        if error is not None:
            # Raised outside the except block: the decoder's error quotes the line.
            raise UsersFileError(f"line {number} of the users export {error}", line=number)
        yield t.cast("dict[str, t.Any]", user)


def unescape_csv_value(value: str) -> str:
    """Undo Auth0's CSV-injection escaping of one (already CSV-parsed) value.

    Every string was prefixed with ``'``; a value without it (a date, number or
    boolean) is returned unchanged.
    """
    return value[1:] if value.startswith("'") else value


def _iter_csv(stream: t.BinaryIO) -> Iterator[dict[str, t.Any]]:
    # utf-8-sig: a file saved by a spreadsheet may start with a byte order mark.
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    # Exported values can be long (a JSON object as text): lift the csv module's cap.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        yield from _iter_csv_rows(csv.reader(text, strict=True))
    finally:
        text.detach()


def _iter_csv_rows(reader: t.Any) -> Iterator[dict[str, t.Any]]:
    header: list[str] | None = None
    failure: str | None = None
    line = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except (csv.Error, UnicodeDecodeError):
            failure = "is not valid CSV"
            line = reader.line_num + 1
            break
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [unescape_csv_value(name.strip()) for name in row]
            if not all(header) or len(set(header)) != len(header):
                failure = "(the header) has empty or repeated column names"
                break
            continue
        if len(row) != len(header):
            failure = f"has {len(row)} columns where the header has {len(header)}"
            break
        yield {name: unescape_csv_value(value) for name, value in zip(header, row, strict=True)}
    if failure is not None:
        raise UsersFileError(f"line {line} of the users export {failure}", line=line)


class _RawReader(io.RawIOBase):
    """A raw reader over any object with ``read(n)``: an HTTP response body, a socket file.

    ``io.BufferedReader`` (for ``peek``) refuses a raw object that says it is closed, and
    urllib3's response says so as soon as its body is exhausted, before our buffer is.
    """

    def __init__(self, source: t.Any) -> None:
        self._source = source

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: t.Any) -> int:
        data = self._source.read(len(buffer))
        size = len(data)
        buffer[:size] = data
        return size


def _buffered(stream: t.Any) -> io.BufferedReader:
    if isinstance(stream, io.BufferedReader):
        return stream
    if isinstance(stream, gzip.GzipFile):
        return t.cast("io.BufferedReader", stream)
    return io.BufferedReader(_RawReader(stream), buffer_size=64 * 1024)


def _maybe_gunzip(stream: io.BufferedReader) -> io.BufferedReader:
    if stream.peek(2)[:2] == GZIP_MAGIC:
        return _buffered(gzip.GzipFile(fileobj=stream, mode="rb"))
    return stream


def _sniff(stream: io.BufferedReader) -> str | None:
    """``json`` when the data starts with ``{``, ``csv`` with anything else, ``None``
    when there is nothing to look at."""
    try:
        head = stream.peek(SNIFF_BYTES)[:SNIFF_BYTES]
    except (OSError, EOFError, gzip.BadGzipFile):
        raise UsersFileError("the users export is not a readable gzip file") from None
    head = head.removeprefix(codecs.BOM_UTF8).lstrip()
    if not head:
        return None
    return "json" if head.startswith(b"{") else "csv"


def iter_export_stream(stream: t.Any, format: str | None = None) -> Iterator[dict[str, t.Any]]:
    """Yield the users of an export read from a binary stream, one dict per user.

    :param stream: any readable binary file object (a file, a ``GzipFile``, the raw body
        of an HTTP response). gzip is detected by its magic bytes and decompressed on the
        fly; nothing is read ahead beyond a buffer.
    :param format: ``"json"`` (NDJSON) or ``"csv"``; ``None`` sniffs it from the data.
    :raises UsersFileError: a bad line (its number, not its content), a bad header, data
        that is not gzip although it says so.
    """
    wanted = _normalise_format(format) if format is not None else None
    return _iter_stream(stream, wanted)


def _iter_stream(stream: t.Any, wanted: str | None) -> Iterator[dict[str, t.Any]]:
    data = _maybe_gunzip(_buffered(stream))
    kind = wanted or _sniff(data) or "json"
    try:
        yield from _iter_ndjson(data) if kind == "json" else _iter_csv(data)
    except (OSError, EOFError, zlib.error):
        failure = "is truncated or not valid gzip"
    else:
        return
    raise UsersFileError(f"the users export {failure}")


# -- files --------------------------------------------------------------------------------------


class UsersFile:
    """The users of an Auth0 export file, iterable once, with progress for a progress bar.

    Use :func:`iter_users_file` to open one. :attr:`size` is the file's size on disk and
    :attr:`position` how many of those bytes have been read so far (compressed bytes for
    a gzipped file), so ``position / size`` is the fraction done.
    """

    def __init__(self, path: str | os.PathLike[str], format: str | None = None) -> None:
        self.path = os.fspath(path)
        forced = _normalise_format(format) if format is not None else None
        reason: str | None = None
        try:
            self._raw = open(self.path, "rb")  # noqa: SIM115 - closed by close()/__exit__
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
        if reason is not None:  # raised here, not in the except block: no chained OSError
            raise UsersFileError(f"cannot open the users file {self.path!r}: {reason}")
        try:
            #: The file's size in bytes.
            self.size = os.fstat(self._raw.fileno()).st_size
            #: Whether the file is gzipped (by its magic bytes, whatever its name).
            self.compressed = self._raw.peek(2)[:2] == GZIP_MAGIC
            self._data = _maybe_gunzip(self._raw)
            #: ``"json"`` (NDJSON) or ``"csv"``.
            self.format = forced or _sniff(self._data) or _format_from_name(self.path) or "json"
        except BaseException:
            self._raw.close()
            raise
        self._iterator: Iterator[dict[str, t.Any]] | None = None

    @property
    def position(self) -> int:
        """Bytes of the file read so far (never more than :attr:`size`)."""
        if self._raw.closed:
            return self.size
        return min(self._raw.tell(), self.size)

    def __iter__(self) -> Iterator[dict[str, t.Any]]:
        if self._iterator is None:
            self._iterator = self._read()
        return self._iterator

    def _read(self) -> Iterator[dict[str, t.Any]]:
        # The file is closed once read to the end, or on an error, or when the loop over
        # it is abandoned; ``with`` is still the way to close one never iterated.
        try:
            yield from _iter_stream(self._data, self.format)
        finally:
            self.close()

    def close(self) -> None:
        if not self._raw.closed:
            self._data.close()
            self._raw.close()

    def __enter__(self) -> UsersFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        gz = " gzip" if self.compressed else ""
        return f"<UsersFile {self.path!r} {self.format}{gz} {self.position}/{self.size} bytes>"


def _format_from_name(path: str) -> str | None:
    name = path.lower().removesuffix(".gz")
    for suffix in (".csv", ".json", ".ndjson", ".jsonl"):
        if name.endswith(suffix):
            return FORMATS[suffix[1:]]
    return None


def iter_users_file(path: str | os.PathLike[str], format: str | None = None) -> UsersFile:
    """Open an Auth0 user export file: NDJSON or CSV, plain or gzipped.

    gzip is detected by its magic bytes, the format by the first bytes of the data
    (``{`` means NDJSON), falling back to the extension for an empty file. ``format``
    forces ``"json"`` or ``"csv"``.

    :raises UsersFileError: the file cannot be opened or is not what it claims to be.
    """
    return UsersFile(path, format)


# -- fields -------------------------------------------------------------------------------------

_MISSING = object()


def field_value(user: t.Mapping[str, t.Any], path: str, default: t.Any = None) -> t.Any:
    """Read an export field such as ``app_metadata.signedUp`` or ``identities[0].provider``.

    A flat key named ``path`` (a CSV column, or a JSON export of that field) wins;
    otherwise the dotted path is followed through nested objects and list indexes.
    """
    if path in user:
        return user[path]
    current: t.Any = user
    for part in path.split("."):
        match = _INDEX_RE.match(part)
        key, index = (match["name"], int(match["index"])) if match else (part, None)
        if not isinstance(current, t.Mapping):
            return default
        current = current.get(key, _MISSING)
        if current is _MISSING:
            return default
        if index is not None:
            if not isinstance(current, list) or index >= len(current):
                return default
            current = current[index]
    return current
