"""What survives when the SQLite file is deleted, replaced or truncated under a running app.

:class:`~flask_keen_signup.database.Database` notices it (the inode at its path changed, or
the file shrank: SQLite never shrinks it here) and, before it closes its connections to the
old file, hands them to :func:`salvage`. That reads what the new file needs so that nothing
is lost and nobody is reported twice: every marker (a user already reported stays reported),
every event still waiting to be sent and every dead letter (the marker of its user survives,
so the dead letter is the only way its signup can still reach Keen). The returned function
writes them into the new file in one transaction, with the same rules as a login: a marker
is added only where the new file has none, an event or a dead letter only where the new file
has no row with its uniqueness token.

A file truncated in place has lost the pages that were only in it: what the open
connections still read (the WAL, their page caches) is copied, table by table, trying each
connection. A table that none of them can read any more is counted against the last
:func:`take_inventory` (the sender takes one at most every :data:`INVENTORY_INTERVAL`), and
the count is written into the new file (:func:`unrecovered`): the log, ``health()`` and
``flask keen-signup status`` say how many queued events, dead letters and markers are gone.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import typing as t

_OUTBOX = "keen_signup_outbox"
_DEAD = "keen_signup_dead_letters"
_META = "keen_signup_outbox_meta"
#: The meta key under which the new file keeps what a salvage could not recover.
UNRECOVERED_KEY = "unrecovered"
#: How often (at most) the sender counts the rows a damaged file could lose, in seconds.
INVENTORY_INTERVAL = 30.0

#: What is copied: ``{key: (table, columns, which rows)}``; inserted with the same columns.
_TABLES = {
    "markers": (
        "keen_signup_markers",
        "collection, user_id, state, claimed_at, confirmed_at",
        "",
    ),
    "events": (
        _OUTBOX,
        "id, collection, user_id, uniqueness_token, body, created_at",
        "WHERE state IN ('pending', 'confirming') ORDER BY id",
    ),
    "dead_letters": (
        _DEAD,
        "id, collection, user_id, uniqueness_token, body, attempts, created_at, reason, "
        "error_code, died_at",
        "ORDER BY id",
    ),
}
_WORDS = {"events": "queued event(s)", "dead_letters": "dead letter(s)", "markers": "marker(s)"}

#: ``{absolute path: (counts, wall-clock time)}`` from the last :func:`take_inventory`.
_inventory: dict[str, tuple[dict[str, int], float]] = {}
_inventory_due: dict[str, float] = {}
_inventory_lock = threading.Lock()


def _path_of(conn: sqlite3.Connection) -> str:
    """The file of ``conn`` (its "main" database, always the first listed)."""
    return os.path.realpath(str(conn.execute("PRAGMA database_list").fetchone()[2]))


def inventory_due(path: str) -> bool:
    """Whether :func:`take_inventory` should count ``path``'s rows now (at most every
    :data:`INVENTORY_INTERVAL`); if so, the next one is due an interval later."""
    now = time.monotonic()
    path = os.path.realpath(path)
    with _inventory_lock:
        if now < _inventory_due.get(path, 0.0):
            return False
        _inventory_due[path] = now + INVENTORY_INTERVAL
    return True


def take_inventory(conn: sqlite3.Connection) -> None:
    """Count the rows of ``conn``'s file a salvage would copy. Sender-side only, when
    :func:`inventory_due` says so (three ``COUNT(*)`` reads, no lock): the login path
    never pays for it."""
    path = _path_of(conn)
    counts: dict[str, int] = {}
    for key, (table, _, rows) in _TABLES.items():
        try:
            sql = f"SELECT COUNT(*) FROM {table} {rows.replace(' ORDER BY id', '')}"
            counts[key] = int(conn.execute(sql).fetchone()[0])
        except sqlite3.Error:  # a table not created yet (the outbox of another backend)
            counts[key] = 0
    with _inventory_lock:
        _inventory[path] = (counts, time.time())


def _read(
    conns: t.Sequence[sqlite3.Connection], key: str
) -> tuple[list[tuple[t.Any, ...]] | None, str]:
    """Rows of one table from the first connection that reads all of them, or (None, why)."""
    why = "no connection"
    table, columns, rows = _TABLES[key]
    for conn in conns:
        try:
            return conn.execute(f"SELECT {columns} FROM {table} {rows}").fetchall(), ""
        except sqlite3.Error as exc:  # pages cut off by a truncation, or the table gone
            why = str(exc)
    return None, why


def salvage(old: t.Sequence[sqlite3.Connection]) -> t.Callable[[sqlite3.Connection], str]:
    """Read the old file's markers, open events and dead letters through ``old`` (this
    process's connections to it); return the writer for the new file."""
    path = _path_of(old[0]) if old else ""
    with _inventory_lock:
        counts, counted_at = _inventory.get(path, ({}, 0.0))
    rows: dict[str, list[tuple[t.Any, ...]]] = {}
    lost: dict[str, int] = {}
    lost_why = ""
    for key in _TABLES:
        got, why = _read(old, key)
        rows[key] = got or []
        if got is None:
            # Unknown if never counted: at least one row is assumed, never a silent zero.
            lost[key] = counts.get(key, 1) if counted_at else -1
            lost_why = why
    summary_lost = ""
    if lost:
        age = f"counted {time.time() - counted_at:.0f}s before" if counted_at else "never counted"
        summary_lost = (
            f"; NOT RECOVERED (the old file cannot be read: {lost_why}): "
            f"{_in_words(lost)} ({age})"
        )

    def write(new: sqlite3.Connection) -> str:
        added_markers = _insert(new, "markers", rows["markers"], "ON CONFLICT DO NOTHING")
        added_events = _write_queued(new, "events", rows["events"])
        added_dead = _write_queued(new, "dead_letters", rows["dead_letters"])
        if lost:
            _record_unrecovered(new, lost)
        return (
            f"{added_events} of {len(rows['events'])} queued event(s), {added_dead} of "
            f"{len(rows['dead_letters'])} dead letter(s) and {added_markers} of "
            f"{len(rows['markers'])} marker(s) copied from the old file{summary_lost}"
        )

    return write


def _insert(new: sqlite3.Connection, key: str, rows: t.Any, tail: str = "") -> int:
    """Insert ``rows`` (of :data:`_TABLES`'s columns) into ``key``'s table; how many."""
    table, columns, _ = _TABLES[key]
    marks = ", ".join("?" * (columns.count(",") + 1))
    sql = f"INSERT INTO {table} ({columns}) VALUES ({marks}) {tail}"
    return sum(new.execute(sql, row).rowcount for row in rows)


def _in_either(new: sqlite3.Connection, column: str, value: t.Any) -> bool:
    """Whether a row of the new file's outbox or dead letters has ``value`` in ``column``."""
    found = new.execute(
        f"SELECT 1 FROM {_OUTBOX} WHERE {column} = ? UNION ALL "
        f"SELECT 1 FROM {_DEAD} WHERE {column} = ?",
        (value, value),
    )
    return found.fetchone() is not None


def _top_id(new: sqlite3.Connection, table: str) -> int:
    ((top,),) = new.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}").fetchall()
    return int(top)


def _write_queued(new: sqlite3.Connection, key: str, rows: t.Sequence[t.Any]) -> int:
    """Copy queued events or dead letters (``key``) the new file has no row of (by
    uniqueness token), under their own ids where the new file has no row with it, else
    above every row of both tables; return how many.

    Keeping the id matters: the sender may have the row in flight when the file changes,
    and records the outcome by id (``mark_delivered``): under its own id the outcome lands
    on this row, never on another signup's that took the id in the new file. A dead letter
    keeps an outbox row's id too (``retry-dead`` puts it back under that id), and the
    outbox never reuses one because its newest row is never deleted (see
    :mod:`.delivery.sqlite_outbox`): a dead letter whose id is above every outbox row gets
    a blank placeholder row in the outbox that keeps the id taken.
    """
    added = 0
    now = time.time()
    for row in rows:
        if _in_either(new, "uniqueness_token", row[3]):
            continue
        row_id = row[0]
        if _in_either(new, "id", row_id):
            row_id = max(_top_id(new, _OUTBOX), _top_id(new, _DEAD)) + 1
        if key == "events":  # due at once, as it was
            new.execute(
                f"INSERT INTO {_OUTBOX} (id, collection, user_id, uniqueness_token, body, "
                "created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (row_id, *row[1:], row[5]),
            )
        else:
            _insert(new, key, [(row_id, *row[1:])])
        if key != "events" and row_id > _top_id(new, _OUTBOX):
            new.execute(
                f"INSERT INTO {_OUTBOX} (id, collection, user_id, uniqueness_token, body, "
                "state, created_at, next_attempt_at, done_at, last_error) "
                "VALUES (?, ?, '', '', '', 'skipped', ?, ?, ?, "
                "'placeholder keeping the id of a dead letter')",
                (row_id, row[1], now, now, now),
            )
        added += 1
    return added


def _record_unrecovered(new: sqlite3.Connection, lost: t.Mapping[str, int]) -> None:
    record = unrecovered(new) or {}
    for key, count in lost.items():
        before = int(record.get(key, 0))
        record[key] = -1 if count < 0 or before < 0 else before + count
    record["at"] = time.time()
    new.execute(
        f"INSERT INTO {_META} (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (UNRECOVERED_KEY, json.dumps(record)),
    )


def unrecovered(conn: sqlite3.Connection) -> dict[str, t.Any] | None:
    """What salvages of this file could not recover (``{"events": n, "dead_letters": n,
    "markers": n, "at": time}``, -1 for an unknown count), or None: nothing was lost."""
    try:
        found = conn.execute(
            f"SELECT value FROM {_META} WHERE key = ?", (UNRECOVERED_KEY,)
        ).fetchone()
    except sqlite3.Error:
        return None
    return t.cast("dict[str, t.Any]", json.loads(found[0])) if found else None


def describe_unrecovered(record: t.Mapping[str, t.Any]) -> str:
    """``record`` (see :func:`unrecovered`) in words, for ``status`` and health."""
    counts = {key: int(record[key]) for key in _WORDS if record.get(key)}
    return _in_words(counts) + " lost with a damaged database file"


def _in_words(counts: t.Mapping[str, int]) -> str:
    """``{"markers": 41, "events": -1}`` as "41 marker(s), an unknown number of queued
    event(s)" (-1: not known)."""
    return ", ".join(
        f"{'an unknown number of' if n < 0 else n} {_WORDS[key]}" for key, n in counts.items()
    )


__all__ = ["describe_unrecovered", "inventory_due", "salvage", "take_inventory", "unrecovered"]
