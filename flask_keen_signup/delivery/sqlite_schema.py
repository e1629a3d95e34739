"""The SQLite outbox's tables, and the statements :class:`~.sqlite_outbox.SQLiteOutbox`
runs in more than one place (or that need a word on why they are so).

The tables live in the app's file, beside the marker ledger (see ``sqlite_outbox``).
"""

from __future__ import annotations

import sqlite3

SCHEMA = """
CREATE TABLE IF NOT EXISTS keen_signup_outbox (
    id               INTEGER PRIMARY KEY,
    collection       TEXT    NOT NULL,
    user_id          TEXT    NOT NULL,
    uniqueness_token TEXT    NOT NULL,
    body             TEXT    NOT NULL,
    state            TEXT    NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'confirming', 'delivered', 'skipped')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    created_at       REAL    NOT NULL,
    next_attempt_at  REAL    NOT NULL,
    lease_owner      TEXT,
    last_attempt_at  REAL,
    last_error       TEXT,
    reclaimed        INTEGER NOT NULL DEFAULT 0,
    done_at          REAL,
    first_failed_at  REAL
);
CREATE INDEX IF NOT EXISTS keen_signup_outbox_due
    ON keen_signup_outbox (next_attempt_at) WHERE state IN ('pending', 'confirming');
CREATE INDEX IF NOT EXISTS keen_signup_outbox_done
    ON keen_signup_outbox (done_at) WHERE state IN ('delivered', 'skipped');
CREATE INDEX IF NOT EXISTS keen_signup_outbox_bodies
    ON keen_signup_outbox (done_at) WHERE state IN ('delivered', 'skipped') AND body <> '';
CREATE TABLE IF NOT EXISTS keen_signup_dead_letters (
    id               INTEGER PRIMARY KEY,
    collection       TEXT    NOT NULL,
    user_id          TEXT    NOT NULL,
    uniqueness_token TEXT    NOT NULL,
    body             TEXT    NOT NULL,
    attempts         INTEGER NOT NULL,
    created_at       REAL    NOT NULL,
    reason           TEXT    NOT NULL,
    error_code       TEXT,
    died_at          REAL    NOT NULL
);
CREATE TABLE IF NOT EXISTS keen_signup_outbox_meta (
    key   TEXT PRIMARY KEY,
    value
) WITHOUT ROWID;
"""

INSERT = (
    "INSERT INTO keen_signup_outbox "
    "(collection, user_id, uniqueness_token, body, created_at, next_attempt_at) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)

OPEN = "state IN ('pending', 'confirming')"
#: The rows whose ids a parameter holds as a JSON array (one parameter, however many).
IDS = "id IN (SELECT value FROM json_each(?))"


# Old values are used on the right-hand side of SET, so ``lease_owner IS NOT NULL`` sees
# the previous claim: a pending row still leased when it is claimed again had no outcome
# recorded (its owner died or hung), so this claim is probably a resend.
def _claim_sql(which: str) -> str:
    """Lease the open rows ``which`` picks (a WHERE/ORDER/LIMIT tail) in one UPDATE."""
    return f"""
UPDATE keen_signup_outbox
SET attempts = attempts + 1,
    last_attempt_at = :now,
    next_attempt_at = :until,
    lease_owner = :owner,
    reclaimed = (lease_owner IS NOT NULL AND state = 'pending')
WHERE id IN (SELECT id FROM keen_signup_outbox WHERE {OPEN} AND {which})
RETURNING id, collection, user_id, uniqueness_token, body, attempts, created_at,
    next_attempt_at, last_error, state, first_failed_at, reclaimed
"""


CLAIM = _claim_sql("next_attempt_at <= :now ORDER BY next_attempt_at LIMIT :limit")
CLAIM_FLUSH = _claim_sql(
    "(next_attempt_at <= :now OR (lease_owner IS NULL "
    "AND (last_attempt_at IS NULL OR last_attempt_at < :since))) ORDER BY id LIMIT :limit"
)
ANY_DUE = f"SELECT 1 FROM keen_signup_outbox WHERE {OPEN} AND next_attempt_at <= ? LIMIT 1"
ANY_BODY = (
    "SELECT 1 FROM keen_signup_outbox WHERE state IN ('delivered', 'skipped') "
    "AND body <> '' AND done_at < ? LIMIT 1"
)
FINISH = (
    "UPDATE keen_signup_outbox SET state = ?, lease_owner = NULL, done_at = ? "
    f"WHERE {IDS} AND {OPEN}"
)


# Row ids are never reused: a sender that lost its lease may still record an outcome by id,
# and dead letters keep their row's id. SQLite gives a new row the largest id + 1, so the
# newest row is never deleted. Where it would be, it stays, finished: a delivered one as
# delivered, a dead-lettered one as a blank placeholder (state 'skipped', no user, no body;
# its event is in the dead letters). Either is deleted once a newer row exists (SWEEP,
# without keep_delivered) or by prune_delivered. AUTOINCREMENT would give the same
# guarantee by writing one more page (``sqlite_sequence``) in every signup's transaction;
# files made before this keep it, and the rule is harmless there.
NOT_NEWEST = "id < (SELECT MAX(id) FROM keen_signup_outbox)"
SWEEP = f"DELETE FROM keen_signup_outbox WHERE state IN ('delivered', 'skipped') AND {NOT_NEWEST}"
#: The placeholder a dead-lettered newest row leaves (see above).
PLACEHOLDER = (
    "UPDATE keen_signup_outbox SET state = 'skipped', user_id = '', uniqueness_token = '', "
    "body = '', lease_owner = NULL, done_at = ?, last_error = 'placeholder keeping the id of "
    "a dead letter' WHERE id = ?"
)


def bump(conn: sqlite3.Connection, key: str, by: int) -> None:
    if by:
        conn.execute(
            "INSERT INTO keen_signup_outbox_meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
            (key, by),
        )


def set_last_error(conn: sqlite3.Connection, error: str) -> None:
    conn.execute(
        "INSERT INTO keen_signup_outbox_meta (key, value) VALUES ('last_error', ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (error,),
    )
