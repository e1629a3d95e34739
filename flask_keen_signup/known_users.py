"""The users this process knows to have signed up already: a returning user's fast path.

A login whose user is here is answered as returning with no ledger read: a few probes of
flat arrays. Only markers that can never go away again are remembered:
*confirmed* ones, and *pending* ones in background mode (pending there means durably
queued). Used only with stores that declare their markers shared and permanent
(:attr:`~.stores.MarkerStore.remembered`: the SQLite ledger, which also fronts ``auth0``,
PostgreSQL and Redis); never with the per-browser session store, nor with custom stores
unless they say so. A marker deleted by hand takes effect at restart. When full, the oldest
entries are forgotten (they cost a ledger read again). At start the most recent markers of
the ledger are loaded on a background thread
(:meth:`~.tracker.Tracker.load_known_users`), so a restart does not make every returning
user's next login pay the read.

**Digests, not ids.** A user is held as two 64-bit digests, both Python's own ``hash()``
(SipHash, keyed at random per process, computed in C): of the id, which names the slot
(and is cached on the string), and of the id with a random salt of this instance's,
computed only to confirm a match or to add a user. They sit in a ring in the order they
came (16 bytes a user; the oldest is forgotten first) beside an open-addressing table of
ring positions (4 bytes a slot, at most half full, linear probing): 24 bytes a user, 2.4 MB
in flat arrays at the 100,000 cap, allocated at once (no page faults in a login later),
where a dict of the ids held ~117 bytes a user (``bench/README.md``). A new user costs one
``hash()`` and a probe or two. A match on both digests is taken as known without reading
the ledger, so two ids sharing both would lose a signup: the chance a new user meets one of
the 100,000 is 100,000 / 2**128, about 3e-34 a login (the ``redis`` store's own marker keys
are 128-bit digests of the id: this adds no risk the package does not take already), and
the salt (never stored) keeps a collision from being chosen on purpose, even under a fixed
``PYTHONHASHSEED``. A miss costs nothing but the ledger read it would have cost anyway.

Readers take no lock (a read racing a write can only miss, which is harmless); writers
take one.
"""

from __future__ import annotations

import os
import threading
import typing as t
from array import array

#: How many signed-up users each process remembers.
KNOWN_USERS_MAX = 100_000


class KnownUsers:
    """A bounded set of user ids, held as digests (see the module doc).

    :param maximum: how many users at most (at least 1); the oldest go first.
    """

    def __init__(self, maximum: int = KNOWN_USERS_MAX) -> None:
        self.maximum = maximum
        self._salt = os.urandom(16).hex()  # never stored: a check no one can aim at
        # The ring: each user's two digests, in the order they came (the oldest first once
        # full). The table: ring position + 1 (0: an empty slot) at the slot the user's
        # hash() names, or the next free one.
        self._hashes = array("q", [0]) * maximum
        self._checks = array("q", [0]) * maximum
        self._slots = 2 * maximum + 1
        self._table = array("I", [0]) * self._slots
        self._next = 0  # the ring's next position: the oldest entry once full
        self._count = 0
        self._lock, self._pid = threading.Lock(), os.getpid()

    def _check(self, user_id: str) -> int:
        return hash(user_id + self._salt)

    def _find(self, user_id: str) -> int:
        """The slot holding ``user_id``, or the empty slot where it would go (-1 - slot)."""
        table, hashes, slots = self._table, self._hashes, self._slots
        hashed = hash(user_id)
        slot = hashed % slots
        check = None
        while True:
            held = table[slot]
            if held == 0:
                return -1 - slot
            if hashes[held - 1] == hashed:
                if check is None:
                    check = self._check(user_id)
                if self._checks[held - 1] == check:
                    return slot
            slot = slot + 1 if slot + 1 < slots else 0

    def __contains__(self, user_id: object) -> bool:
        return isinstance(user_id, str) and self._find(user_id) >= 0

    def __len__(self) -> int:
        return self._count

    def _insert(self, user_id: str) -> bool:
        """Put a user in the ring and the table (the lock held); False if there already."""
        slot = self._find(user_id)
        if slot >= 0:
            return False
        position = self._next
        if self._count == self.maximum:
            self._remove(position)  # the oldest
            slot = self._find(user_id)  # the removal may have moved the free slot
        else:
            self._count += 1
        self._hashes[position] = hash(user_id)
        self._checks[position] = self._check(user_id)
        self._table[-1 - slot] = position + 1
        self._next = (position + 1) % self.maximum
        return True

    def _remove(self, position: int) -> None:
        """Take the ring's ``position`` out of the table, moving back the entries probed
        past it."""
        table, hashes, slots = self._table, self._hashes, self._slots
        hole = hashes[position] % slots
        while table[hole] != position + 1:
            hole = hole + 1 if hole + 1 < slots else 0
        slot = hole
        while True:
            slot = slot + 1 if slot + 1 < slots else 0
            held = table[slot]
            if held == 0:
                break
            home = hashes[held - 1] % slots
            # The entry stays if its home lies cyclically in (hole, slot].
            if (hole < home <= slot) if hole <= slot else (home > hole or home <= slot):
                continue
            table[hole] = held
            hole = slot
        table[hole] = 0

    def _writing(self) -> threading.Lock:
        """The writers' lock. A process forked while a thread held it (the start-up load
        runs while servers fork their workers) gets a new one: that thread is not here to
        release it."""
        if self._pid != os.getpid():
            self._lock, self._pid = threading.Lock(), os.getpid()
        return self._lock

    def add(self, user_id: str) -> None:
        with self._writing():
            self._insert(user_id)

    def add_many(self, user_ids: t.Iterable[str]) -> int:
        """Remember ``user_ids`` while there is room; never forgets anyone for them.

        For the start-up load (:meth:`~.tracker.Tracker.load_known_users`): users a
        request remembered in the meantime stay. Returns how many were added.
        """
        added = 0
        for user_id in user_ids:
            with self._writing():
                if self._count >= self.maximum:
                    break
                if self._insert(user_id):
                    added += 1
        return added


__all__ = ["KNOWN_USERS_MAX", "KnownUsers"]
