"""Reading Auth0 user export files: NDJSON and CSV, plain and gzipped, as streams.

Files are written by the tests in Auth0's formats (NDJSON lines; CSV with a header row and
Auth0's CSV-injection escaping of strings), then read back with the public readers.
"""

from __future__ import annotations

import gzip
import io
import json
import tracemalloc
import typing as t
from pathlib import Path

import pytest

from flask_keen_signup.users_export import UsersFile
from flask_keen_signup.users_export import UsersFileError
from flask_keen_signup.users_export import field_value
from flask_keen_signup.users_export import iter_export_stream
from flask_keen_signup.users_export import iter_users_file

USERS = [
    {
        "user_id": "auth0|001",
        "created_at": "2020-03-01T10:00:00.000Z",
        "email": "ada@example.com",
        "app_metadata": {"signedUp": True},
        "logins_count": 40,
    },
    {
        "user_id": "google-oauth2|002",
        "created_at": "2026-11-20T08:30:00.123Z",
        "email": "bob@example.com",
        "app_metadata": {},
        "logins_count": 1,
    },
    {
        "user_id": 'auth0|0"3,x',
        "created_at": "2026-11-25T00:00:00.000Z",
        "email": '=HYPERLINK("x")@example.com',
        "logins_count": 0,
    },
]


def auth0_csv_cell(value: t.Any, *, date: bool = False) -> str:
    """A cell as Auth0 writes it: strings quoted, '"' doubled and prefixed with "'"."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if date:
        return str(value)
    return '"' + "'" + str(value).replace('"', '""') + '"'


def csv_text(users: list[dict[str, t.Any]]) -> str:
    lines = ["user_id,created_at,email,app_metadata.signedUp,logins_count"]
    for user in users:
        cells = [
            auth0_csv_cell(user["user_id"]),
            auth0_csv_cell(user["created_at"], date=True),
            auth0_csv_cell(user["email"]),
            auth0_csv_cell((user.get("app_metadata") or {}).get("signedUp")),
            auth0_csv_cell(user["logins_count"]),
        ]
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


def ndjson_text(users: list[dict[str, t.Any]]) -> str:
    return "".join(json.dumps(user) + "\n" for user in users)


def write(path: Path, text: str, *, gz: bool) -> Path:
    data = text.encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_ndjson_file(tmp_path: Path, gz: bool) -> None:
    path = write(tmp_path / ("users.json" + (".gz" if gz else "")), ndjson_text(USERS), gz=gz)
    with iter_users_file(path) as users:
        assert users.format == "json"
        assert users.compressed is gz
        assert users.size == path.stat().st_size
        read = list(users)
        assert users.position == users.size
    assert read == USERS


@pytest.mark.parametrize("gz", [False, True])
def test_csv_file_undoes_auth0_escaping(tmp_path: Path, gz: bool) -> None:
    path = write(tmp_path / ("users.csv" + (".gz" if gz else "")), csv_text(USERS), gz=gz)
    with iter_users_file(path) as users:
        assert users.format == "csv"
        read = list(users)
    assert [u["user_id"] for u in read] == [u["user_id"] for u in USERS]
    assert read[2]["user_id"] == 'auth0|0"3,x'  # quotes, comma and the "'" prefix undone
    assert read[2]["email"] == '=HYPERLINK("x")@example.com'
    assert read[0]["created_at"] == "2020-03-01T10:00:00.000Z"  # dates are not escaped
    # Values stay strings; the caller normalises them.
    assert read[0]["app_metadata.signedUp"] == "true"
    assert read[1]["app_metadata.signedUp"] == ""
    assert read[0]["logins_count"] == "40"
    assert field_value(read[0], "app_metadata.signedUp") == "true"


def test_a_value_that_really_starts_with_a_quote(tmp_path: Path) -> None:
    path = write(tmp_path / "users.csv", 'user_id,name\n"\'auth0|1","\'\'quoted"\n', gz=False)
    assert list(iter_users_file(path)) == [{"user_id": "auth0|1", "name": "'quoted"}]


def test_format_is_sniffed_not_taken_from_the_name(tmp_path: Path) -> None:
    # A gzipped NDJSON file saved as ".csv", and a CSV file saved as ".json".
    misnamed_json = write(tmp_path / "export.csv", ndjson_text(USERS), gz=True)
    misnamed_csv = write(tmp_path / "export.json", csv_text(USERS), gz=False)
    with iter_users_file(misnamed_json) as users:
        assert users.format == "json"
        assert [u["user_id"] for u in users][0] == "auth0|001"
    with iter_users_file(misnamed_csv) as users:
        assert users.format == "csv"
        assert len(list(users)) == 3


def test_empty_files_fall_back_to_the_extension(tmp_path: Path) -> None:
    with iter_users_file(write(tmp_path / "a.csv.gz", "", gz=True)) as users:
        assert users.format == "csv"
    with iter_users_file(write(tmp_path / "a.ndjson", "\n\n", gz=False)) as users:
        assert users.format == "json"
        assert list(users) == []


def test_forced_format(tmp_path: Path) -> None:
    path = write(tmp_path / "users.txt", csv_text(USERS), gz=False)
    with pytest.raises(UsersFileError, match="line 1"):
        list(iter_users_file(path, format="json"))
    assert len(list(iter_users_file(path, format="csv"))) == 3
    with pytest.raises(UsersFileError, match="unknown users export format"):
        iter_users_file(path, format="xml")  # the file is closed before the error


def test_blank_lines_are_skipped_and_a_bad_line_is_named_by_number(tmp_path: Path) -> None:
    secret = "secret-personal-data@example.com"
    text = json.dumps(USERS[0]) + "\n\n   \n" + f'{{"user_id": "{secret}"\n' + json.dumps(USERS[1])
    path = write(tmp_path / "users.json", text, gz=False)
    with iter_users_file(path) as users_file:
        users = iter(users_file)
        assert next(users) == USERS[0]
        with pytest.raises(UsersFileError) as info:
            next(users)
    assert info.value.line == 4
    assert "line 4" in str(info.value)
    # The line's content is personal data: not in the message, not in the chain.
    link: BaseException | None = info.value
    while link is not None:
        assert secret not in str(link) and secret not in repr(link.args)
        link = link.__cause__ or link.__context__


def test_a_json_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = write(tmp_path / "users.json", '{"user_id": "a"}\n["b"]\n', gz=False)
    with pytest.raises(UsersFileError, match="line 2 .* not a JSON object"):
        list(iter_users_file(path))


def test_csv_row_with_the_wrong_number_of_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "users.csv", 'user_id,created_at\n"\'a",x\n"\'b"\n', gz=False)
    with pytest.raises(UsersFileError, match="line 3 .* 1 columns where the header has 2"):
        list(iter_users_file(path))


def test_truncated_gzip_is_a_clear_error(tmp_path: Path) -> None:
    data = gzip.compress(ndjson_text(USERS * 50).encode())
    path = tmp_path / "users.json.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UsersFileError, match="truncated or not valid gzip"):
        list(iter_users_file(path))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UsersFileError, match="cannot open the users file"):
        iter_users_file(tmp_path / "nope.json")


def test_export_stream_from_any_binary_stream() -> None:
    class Chunked(io.RawIOBase):
        """Hands out at most 7 bytes per read, like a slow network body."""

        def __init__(self, data: bytes) -> None:
            self.data = data

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            chunk, self.data = self.data[:7], self.data[7:]
            return chunk

    body = gzip.compress(csv_text(USERS).encode())
    read = list(iter_export_stream(Chunked(body), "csv"))
    assert [u["email"] for u in read] == [u["email"] for u in USERS]
    assert list(iter_export_stream(io.BytesIO(ndjson_text(USERS).encode()))) == USERS


def test_field_value_reads_nested_and_flat_shapes() -> None:
    user = {
        "app_metadata": {"signedUp": True},
        "identities": [{"provider": "auth0", "connection": "db"}],
        "user_metadata.plan": "flat wins",
        "user_metadata": {"plan": "nested"},
    }
    assert field_value(user, "app_metadata.signedUp") is True
    assert field_value(user, "identities[0].connection") == "db"
    assert field_value(user, "identities[3].connection", "none") == "none"
    assert field_value(user, "user_metadata.plan") == "flat wins"
    assert field_value(user, "app_metadata.missing.deeper") is None


def test_progress_moves_while_reading(tmp_path: Path) -> None:
    """Python 3.12+ reads gzip input 128 KiB at a time: the reader hands it less, so the
    position still moves through a file of a few hundred KiB (issue 17)."""
    users = [
        {"user_id": f"auth0|{number * 7919 % 1_000_003:07d}{number}", "n": number}
        for number in range(60_000)
    ]
    path = write(tmp_path / "users.json.gz", ndjson_text(users), gz=True)
    assert path.stat().st_size > 256 * 1024
    positions = []
    with iter_users_file(path) as source:
        assert isinstance(source, UsersFile)
        for number, _ in enumerate(source):
            if number % 10_000 == 0:
                positions.append(source.position)
        assert source.position == source.size
    assert positions == sorted(positions)
    assert len(set(positions)) == len(positions), positions  # it moved every time
    assert positions[-1] < source.size
    assert "users.json.gz" in repr(source)


def test_numbered_gives_the_physical_line_where_each_record_starts(tmp_path: Path) -> None:
    text = 'user_id,name\n"\'a","one"\n\n"\'b","two\nlines\nhere"\n"\'c","three"\n'
    with iter_users_file(write(tmp_path / "users.csv", text, gz=False)) as source:
        assert [(line, user["user_id"]) for line, user in source.numbered()] == [
            (2, "a"),
            (4, "b"),
            (7, "c"),
        ]
    ndjson = '{"user_id": "a"}\n\n{"user_id": "b"}\n'
    with iter_users_file(write(tmp_path / "users.json", ndjson, gz=True)) as source:
        assert [line for line, _ in source.numbered()] == [1, 3]


@pytest.mark.parametrize("gz", [False, True])
def test_a_bad_byte_in_a_csv_names_its_physical_line(tmp_path: Path, gz: bool) -> None:
    """Before: the text decoder read ahead in chunks and the error named line 115 or 101."""
    rows = ["user_id,created_at,name"]
    for number in range(1, 400):
        # Every 50th name spans two physical lines.
        name = f"User\n{number}" if number % 50 == 0 else f"User {number}"
        rows.append(f'"\'auth0|{number}",2026-11-20T00:00:00.000Z,"\'{name}"')
    data = ("\n".join(rows) + "\n").encode()
    lines = data.split(b"\n")
    lines[200] = lines[200].replace(b"User", b"Us\xffer")  # physical line 201
    assert b"\xff" in lines[200]
    path = tmp_path / "users.csv"
    path.write_bytes(gzip.compress(b"\n".join(lines)) if gz else b"\n".join(lines))
    with pytest.raises(UsersFileError) as info:
        list(iter_users_file(path))
    assert info.value.line == 201
    assert str(info.value) == "line 201 of the users export is not valid UTF-8"


@pytest.mark.parametrize("ending", ["\n", "\r\n", "\r"])
def test_csv_line_endings_and_line_numbers(tmp_path: Path, ending: str) -> None:
    """LF, CRLF, and the lone CR of an old spreadsheet's CSV: all read, lines counted."""
    rows = ['user_id,name', '"\'a","x"', '"\'b","two' + ending + 'lines"', '"\'c","y"']
    path = write(tmp_path / "users.csv", ending.join(rows) + ending, gz=False)
    with iter_users_file(path) as source:
        read = [(line, user["user_id"], user["name"]) for line, user in source.numbered()]
    assert read == [(2, "a", "x"), (3, "b", "two" + ending + "lines"), (5, "c", "y")]
    bad = (ending.join(rows) + ending + '"\'d","z"' + ending).encode()
    bad = bad.replace(b'"z"', b'"\xff"')
    with pytest.raises(UsersFileError) as info:
        list(iter_users_file(write_bytes(tmp_path / "bad.csv", bad)))
    assert info.value.line == 6


def test_a_bad_byte_in_ndjson_names_its_line(tmp_path: Path) -> None:
    data = b'{"user_id": "a"}\n{"user_id": "b\xc3"}\n'
    with pytest.raises(UsersFileError, match="^line 2 .* not valid UTF-8") as info:
        list(iter_users_file(write_bytes(tmp_path / "users.json", data)))
    assert info.value.line == 2


def test_a_lone_surrogate_escape_is_refused_with_its_line(tmp_path: Path) -> None:
    """JSON can spell half a surrogate pair; SQLite and HTTP cannot encode it. Before:
    an uncaught UnicodeEncodeError deep in migrate. A real pair is fine."""
    text = (
        '{"user_id": "auth0|1", "name": "\\ud83d\\ude00 pair"}\n'
        '{"user_id": "auth0|2", "app_metadata": {"x": ["\\ud800"]}}\n'
    )
    path = write(tmp_path / "users.json", text, gz=False)
    users = iter(iter_users_file(path))
    assert next(users)["name"] == "\U0001f600 pair"
    with pytest.raises(UsersFileError, match="^line 2 .* surrogate") as info:
        next(users)
    assert info.value.line == 2


def test_a_csv_record_left_open_names_the_line_it_starts_on(tmp_path: Path) -> None:
    text = 'user_id,name\n"\'a","x"\n"\'b","never closed\nmore\n'
    with pytest.raises(UsersFileError, match="^line 3 .* not valid CSV"):
        list(iter_users_file(write(tmp_path / "users.csv", text, gz=False)))


def test_a_flipped_checksum_byte_fails_at_the_end(tmp_path: Path) -> None:
    data = bytearray(gzip.compress(ndjson_text(USERS).encode()))
    data[-6] ^= 0x01  # in the CRC32 of the trailer: every line decodes fine
    path = write_bytes(tmp_path / "users.json.gz", bytes(data))
    users = iter(iter_users_file(path))
    assert [next(users) for _ in USERS] == USERS
    with pytest.raises(UsersFileError, match="truncated or not valid gzip"):
        next(users)


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("fmt", ["json", "csv"])
@pytest.mark.slow
def test_a_large_gzipped_file_is_read_in_bounded_memory(tmp_path: Path, fmt: str) -> None:
    """100,000 users (8 to 10 MB once decompressed): peak allocation stays a few MB,
    far below the data's size, because nothing holds more than a buffer and one user."""
    path = tmp_path / f"big.{fmt}.gz"
    count = 100_000
    with gzip.open(path, "wt", compresslevel=1) as out:
        if fmt == "csv":
            out.write("user_id,created_at,app_metadata.signedUp,name\n")
        for number in range(count):
            if fmt == "csv":
                user_id = f"auth0|{number:024x}"
                out.write(f'"\'{user_id}",2021-01-01T00:00:00.000Z,true,"\'User {number}"\n')
            else:
                user = {
                    "user_id": f"auth0|{number:024x}",
                    "created_at": "2021-01-01T00:00:00.000Z",
                    "app_metadata": {"signedUp": True},
                    "name": f"User {number}",
                }
                out.write(json.dumps(user) + "\n")
    with gzip.open(path, "rb") as data:
        raw_size = sum(len(chunk) for chunk in iter(lambda: data.read(1 << 20), b""))
    assert raw_size > 7 * 1024 * 1024
    tracemalloc.start()
    try:
        seen = 0
        with iter_users_file(path) as users:
            for user in users:
                seen += 1
                assert user["user_id"]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == count
    assert peak < 3 * 1024 * 1024, f"peak {peak} bytes for {raw_size} bytes of data"
