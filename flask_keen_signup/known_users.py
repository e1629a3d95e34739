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

**Digests, not ids.** A user is held as a 128-bit keyed BLAKE2b digest: a ring of the
digests in the order they came (16 bytes each; the oldest is forgotten first) and an
open-addressing table of ring positions (4 bytes a slot, at most half full, linear
probing). 24 bytes a user, 2.4 MB in two flat arrays at the 100,000 cap, allocated at once
(no page faults on a login later); a dict of the ids held ~117 bytes a user
(``bench/README.md``). A digest hit is taken as known without reading the ledger, so two
ids sharing a digest would lose a signup. The chance a new user meets one of the 100,000 is
100,000 / 2**128, about 3e-34 a login; the ``redis`` store's own marker keys are 128-bit
digests of the id, so this adds no risk the package does not take already, and the random
key (per instance, never stored) keeps a collision from being chosen on purpose. A miss
costs nothing but the ledger read it would have cost anyway.

Readers take no lock (a read racing a write can only miss, which is harmless); writers
take one.
"""

from __future__ import annotations

import os
import struct
import threading
import typing as t
from array import array
from hashlib import blake2b

#: How many signed-up users each process remembers.
KNOWN_USERS_MAX = 100_000

_HALVES = struct.Struct("<QQ")


class KnownUsers:
    """A bounded set of user ids, held as digests (see the module doc).

    :param maximum: how many users at most (at least 1); the oldest go first.
    """

    def __init__(self, maximum: int = KNOWN_USERS_MAX) -> None:
        self.maximum = maximum
        self._key = os.urandom(16)
        # The digests, (high, low) pairs in the order they came: a ring, oldest first once
        # full; and the table, at most half full (short probes), of ring position + 1 (0:
        # an empty slot), at the slot the digest's high half names, or the next free one.
        self._ring = array("Q", [0]) * (2 * maximum)
        self._slots = 2 * maximum + 1
        self._table = array("I", [0]) * self._slots
        self._next = 0  # the ring's next position: the oldest entry once full
        self._count = 0
        self._lock = threading.Lock()

    def _digest(self, user_id: str) -> tuple[int, int]:
        digest = blake2b(user_id.encode("utf-8", "surrogatepass"), digest_size=16, key=self._key)
        low, high = _HALVES.unpack(digest.digest())
        return high, low

    def _find(self, high: int, low: int) -> int:
        """The slot holding the digest, or the empty slot where it would go (-1 - slot)."""
        table, ring, slots = self._table, self._ring, self._slots
        slot = high % slots
        while True:
            held = table[slot]
            if held == 0:
                return -1 - slot
            if ring[2 * held - 2] == high and ring[2 * held - 1] == low:
                return slot
            slot = slot + 1 if slot + 1 < slots else 0

    def __contains__(self, user_id: object) -> bool:
        return isinstance(user_id, str) and self._find(*self._digest(user_id)) >= 0

    def __len__(self) -> int:
        return self._count

    def _insert(self, high: int, low: int) -> bool:
        """Put a digest in the ring and the table (the lock held); False if it was there."""
        slot = self._find(high, low)
        if slot >= 0:
            return False
        ring, position = self._ring, self._next
        if self._count == self.maximum:
            self._remove(position)  # the oldest
            slot = self._find(high, low)  # the removal may have moved the free slot
        else:
            self._count += 1
        ring[2 * position], ring[2 * position + 1] = high, low
        self._table[-1 - slot] = position + 1
        self._next = (position + 1) % self.maximum
        return True

    def _remove(self, position: int) -> None:
        """Take the ring's ``position`` out of the table, moving back the entries probed
        past it."""
        table, ring, slots = self._table, self._ring, self._slots
        hole = self._find(ring[2 * position], ring[2 * position + 1])
        slot = hole
        while True:
            slot = slot + 1 if slot + 1 < slots else 0
            held = table[slot]
            if held == 0:
                break
            home = ring[2 * held - 2] % slots
            # The entry stays if its home lies cyclically in (hole, slot].
            if (hole < home <= slot) if hole <= slot else (home > hole or home <= slot):
                continue
            table[hole] = held
            hole = slot
        table[hole] = 0

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
