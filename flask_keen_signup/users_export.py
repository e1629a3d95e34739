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

__all__ = [
    "Numbered",
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
#: The most compressed bytes handed to the gzip reader at once (see :func:`_maybe_gunzip`).
GZIP_READ_BYTES = 16 * 1024
#: How far into the (decompressed) data the format sniffer looks.
SNIFF_BYTES = 4096
#: Splits text after each CR that is not followed by LF (keeping it).
_LONE_CR = re.compile(r"(?<=\r)(?!\n)")
_INDEX_RE = re.compile(r"^(?P<name>[^\[\]]+)\[(?P<index>\d+)\]$")


class UsersFileError(KeenSignupError, ValueError):
    """A users file or export stream cannot be read (bad line, unknown format, bad gzip).

    :param line: the 1-based line number of the offending line, when there is one.
    """

    def __init__(self, message: str, *, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


def _normalise_format(format: str | None) -> str | None:
    try:
        return None if format is None else FORMATS[format.strip().lower()]
    except (KeyError, AttributeError):
        raise UsersFileError(
            f"unknown users export format {format!r}: expected 'json' or 'csv'"
        ) from None


# -- parsing ------------------------------------------------------------------------------------


#: A user, with the physical line (1-based) of the file where its record starts.
Numbered = tuple[int, dict[str, t.Any]]


def _iter_ndjson(stream: t.BinaryIO) -> Iterator[Numbered]:
    for number, text in enumerate(_text_lines(stream, lone_cr=False), start=1):
        if not text.strip():
            continue
        error: str | None = None
        try:
            user = json.loads(text)
        except ValueError:
            error = "is not valid JSON"
        else:
            if not isinstance(user, dict):
                error = "is not a JSON object"
            elif "\\u" in text and _has_lone_surrogate(user):
                # JSON may escape half of a surrogate pair (\ud800): not text SQLite, Keen
                # or a terminal can take, so refused here rather than deep in a write.
                error = "holds half of a UTF-16 surrogate pair (a lone U+D800-U+DFFF escape)"
        if error is not None:
            # Raised outside the except block: the decoder's error quotes the line.
            raise UsersFileError(f"line {number} of the users export {error}", line=number)
        yield number, user


def _has_lone_surrogate(user: dict[str, t.Any]) -> bool:
    try:
        json.dumps(user, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _text_lines(stream: t.BinaryIO, *, lone_cr: bool) -> Iterator[str]:
    """The physical lines of ``stream``, endings kept, each decoded on its own (strict
    UTF-8) so that a bad byte names its own line. With ``lone_cr``, a CR not followed by
    LF ends a line too (an old spreadsheet's CSV), as ``newline=""`` gives it to the csv
    module."""
    number = 0
    for raw in stream:
        bad_at: int | None = None
        try:
            text = raw.decode("utf-8-sig" if number == 0 else "utf-8")
        except UnicodeDecodeError as exc:
            bad_at = exc.start
        if bad_at is not None:
            before = raw[:bad_at]
            if lone_cr:
                number += before.count(b"\r") - before.count(b"\r\n")
            number += 1
            message = f"line {number} of the users export is not valid UTF-8"
            raise UsersFileError(message, line=number)
        for part in _LONE_CR.split(text) if lone_cr and "\r" in text else (text,):
            if part:
                number += 1
                yield part


def _iter_csv(stream: t.BinaryIO) -> Iterator[Numbered]:
    # Exported values can be long (a JSON object as text): lift the csv module's cap.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    reader = csv.reader(_text_lines(stream, lone_cr=True), strict=True)
    header: list[str] | None = None
    failure: str | None = None
    line = 0
    while True:
        # A record may span several physical lines (a quoted newline): it is named by
        # the line it starts on, the one after the previous record's last line.
        line = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error:
            failure = "starts a record that is not valid CSV"
            break
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            # Auth0 escapes every string against CSV injection with a leading "'" (dates,
            # numbers and booleans have none): undone here and for each value.
            header = [name.strip().removeprefix("'") for name in row]
            if not all(header) or len(set(header)) != len(header):
                failure = "(the header) has empty or repeated column names"
                break
            continue
        if len(row) != len(header):
            failure = f"has {len(row)} columns where the header has {len(header)}"
            break
        yield (
            line,
            {name: value.removeprefix("'") for name, value in zip(header, row, strict=True)},
        )
    if failure is not None:
        raise UsersFileError(f"line {line} of the users export {failure}", line=line)


class _RawReader(io.RawIOBase):
    """A raw reader over any object with ``read(n)``: an HTTP response body, a socket file.

    ``io.BufferedReader`` (for ``peek``) refuses a raw object that says it is closed, and
    urllib3's response says so as soon as its body is exhausted, before our buffer is.
    """

    def __init__(self, source: t.Any, limit: int | None = None) -> None:
        self._source = source
        self._limit = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: t.Any) -> int:
        wanted = len(buffer) if self._limit is None else min(len(buffer), self._limit)
        data = self._source.read(wanted)
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
        # Compressed bytes are handed to gzip in small reads, whatever its own buffer
        # (128 KiB since Python 3.12): the file's position then moves as the data is
        # read, which is what a progress bar shows.
        source = _RawReader(stream, limit=GZIP_READ_BYTES)
        return _buffered(gzip.GzipFile(fileobj=source, mode="rb"))
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
    return (user for _, user in _iter_stream(stream, _normalise_format(format)))


def _iter_stream(stream: t.Any, wanted: str | None) -> Iterator[Numbered]:
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
    a gzipped file), so ``position / size`` is the fraction done. Iterate :meth:`numbered`
    instead of the file itself to get each user's line number too.
    """

    def __init__(self, path: str | os.PathLike[str], format: str | None = None) -> None:
        self.path = os.fspath(path)
        forced = _normalise_format(format)
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
        self._iterator = self._read()  # a generator: nothing is read until it is iterated

    @property
    def position(self) -> int:
        """Bytes of the file read so far (never more than :attr:`size`)."""
        if self._raw.closed:
            return self.size
        return min(self._raw.tell(), self.size)

    def __iter__(self) -> Iterator[dict[str, t.Any]]:
        return (user for _, user in self.numbered())

    def numbered(self) -> Iterator[Numbered]:
        """``(line, user)`` pairs: the physical line (1-based) where each record starts."""
        return self._iterator

    def _read(self) -> Iterator[Numbered]:
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

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        gz = " gzip" if self.compressed else ""
        return f"<UsersFile {self.path!r} {self.format}{gz} {self.position}/{self.size} bytes>"


def _format_from_name(path: str) -> str | None:
    extension = os.path.splitext(path.lower().removesuffix(".gz"))[1]
    return FORMATS.get(extension[1:]) if extension else None


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
