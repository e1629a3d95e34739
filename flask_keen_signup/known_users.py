"""The users this process knows to have signed up already: a returning user's fast path.

A login whose user is here is answered as returning with no ledger read: one hash and a
few probes of two arrays. Only markers that can never go away again are remembered:
*confirmed* ones, and *pending* ones in background mode (pending there means durably
queued). Used only with stores that declare their markers shared and permanent
(:attr:`~.stores.MarkerStore.remembered`: the SQLite ledger, which also fronts ``auth0``,
PostgreSQL and Redis); never with the per-browser session store, nor with custom stores
unless they say so. A marker deleted by hand takes effect at restart. When full, the oldest
entries are forgotten (they cost a ledger read again). At start the most recent markers of
the ledger are loaded on a background thread
(:meth:`~.tracker.Tracker.load_known_users`), so a restart does not make every returning
user's next login pay the read.

**Digests, not ids.** A user is held as a 128-bit keyed BLAKE2b digest in an open-addressing
table of two flat arrays of 64-bit words (high and low halves; linear probing, at most half
full) and a ring of the same digests in the order they came (for forgetting the oldest): 48
bytes a user at the 100,000 cap, in memory mapped lazily (``bench/README.md``: a dict of the
ids held ~117 bytes a user). A digest hit is taken as known without reading the ledger,
so two ids sharing a digest would lose a signup. The chance a new user meets one of the
100,000 is 100,000 / 2**127, about 6e-34 a login; the ``redis`` store's own marker keys are
128-bit digests of the id, so this adds no risk the package does not take already, and the
random key (per instance, never stored) keeps a collision from being chosen on purpose.
A miss costs nothing but the ledger read it would have cost anyway.

Readers take no lock (a read racing a write can only miss, which is harmless); writers
take one.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
import typing as t
from hashlib import blake2b

#: How many signed-up users each process remembers.
KNOWN_USERS_MAX = 100_000

_HALVES = struct.Struct("<QQ")


def _zeros(count: int) -> memoryview:
    """``count`` unsigned 64-bit zeros in private anonymous memory: pages are only
    resident once written, so an app with few users pays for few (an empty ledger, none)."""
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    return memoryview(mmap.mmap(-1, 8 * max(count, 1), flags=flags)).cast("Q")


class KnownUsers:
    """A bounded set of user ids, held as digests (see the module doc).

    :param maximum: how many users at most (at least 1); the oldest go first.
    """

    def __init__(self, maximum: int = KNOWN_USERS_MAX) -> None:
        self.maximum = maximum
        self._key = os.urandom(16)
        self._slots = 2 * maximum + 1  # at most half full: short probes
        self._high = _zeros(self._slots)
        self._low = _zeros(self._slots)  # 0: an empty slot (digests are odd)
        self._ring = _zeros(2 * maximum)  # (high, low) pairs, oldest first
        self._next = 0  # the ring's next position: the oldest entry once full
        self._count = 0
        self._lock = threading.Lock()

    def _digest(self, user_id: str) -> tuple[int, int]:
        digest = blake2b(user_id.encode("utf-8", "surrogatepass"), digest_size=16, key=self._key)
        low, high = _HALVES.unpack(digest.digest())
        return high, low | 1

    def _find(self, high: int, low: int) -> int:
        """The slot holding the digest, or the empty slot where it would go (-1 - slot)."""
        highs, lows, slots = self._high, self._low, self._slots
        slot = high % slots
        while True:
            found = lows[slot]
            if found == 0:
                return -1 - slot
            if found == low and highs[slot] == high:
                return slot
            slot = slot + 1 if slot + 1 < slots else 0

    def __contains__(self, user_id: object) -> bool:
        return isinstance(user_id, str) and self._find(*self._digest(user_id)) >= 0

    def __len__(self) -> int:
        return self._count

    def _insert(self, high: int, low: int) -> bool:
        """Put a digest in the table and the ring (the lock held); False if it was there."""
        slot = self._find(high, low)
        if slot >= 0:
            return False
        self._high[-1 - slot], self._low[-1 - slot] = high, low
        ring, position = self._ring, 2 * self._next
        if self._count == self.maximum:
            self._remove(ring[position], ring[position + 1])  # the oldest
        else:
            self._count += 1
        ring[position], ring[position + 1] = high, low
        self._next = (self._next + 1) % self.maximum
        return True

    def _remove(self, high: int, low: int) -> None:
        """Take a digest out of the table, moving back the entries probed past it."""
        highs, lows, slots = self._high, self._low, self._slots
        hole = self._find(high, low)
        if hole < 0:
            return
        slot = hole
        while True:
            slot = slot + 1 if slot + 1 < slots else 0
            if lows[slot] == 0:
                break
            home = highs[slot] % slots
            # The entry stays if its home lies cyclically in (hole, slot].
            if (hole < home <= slot) if hole <= slot else (home > hole or home <= slot):
                continue
            highs[hole], lows[hole] = highs[slot], lows[slot]
            hole = slot
        highs[hole], lows[hole] = 0, 0

    def add(self, user_id: str) -> None:
        digest = self._digest(user_id)
        with self._lock:
            self._insert(*digest)

    def add_many(self, user_ids: t.Iterable[str]) -> int:
        """Remember ``user_ids`` while there is room; never forgets anyone for them.

        For the start-up load (:meth:`~.tracker.Tracker.load_known_users`): users a
        request remembered in the meantime stay. Returns how many were added.
        """
        added = 0
        for user_id in user_ids:
            if self._count >= self.maximum:
                break
            digest = self._digest(user_id)
            with self._lock:
                if self._count < self.maximum and self._insert(*digest):
                    added += 1
        return added


__all__ = ["KNOWN_USERS_MAX", "KnownUsers"]
