"""The scan-resistant eviction policies: S3-FIFO, SIEVE, ARC and 2Q.

Same protocol as vfs.cache.policy (read its docstring): keys and sizes only, no bytes, no I/O.
This module does not import vfs.cache.policy (which imports it to register these classes as virtual
subclasses of EvictionPolicy), so there is no import cycle.

Sizes are bytes throughout: queue targets are fractions of the tier's byte budget (`capacity`), or,
when the owner did not say, of the most bytes ever resident at once (a cache runs full, so that
high-water mark converges to the budget). Ghost lists (keys without data) are bounded in bytes by the
algorithm's own rule and, in count, by the most keys ever resident at once, so they never grow without
limit even for zero-byte entries.

Ghosts are trimmed in `admit`, after the admitted key was looked up among them, never in `evict`: the
owner evicts *before* it admits the missed key, and trimming there could push out the very ghost entry
the coming admit is about to hit (the papers look the missed key up first, then make room). Between
an admit and the next, ghost lists may exceed their bound by the keys evicted since the admit.

Owner-driven protocol vs. the papers: the papers handle a miss as "make room for x, then insert x";
here the owner calls `evict()` (which does not know x) until x fits, then `admit(x)`. So decisions
that depend on x (ARC's adaptation on a ghost hit, S3-FIFO/2Q's "ghost hit goes to the main queue")
are taken at `admit`, after room was made. The one rule lost is ARC's tie-break "evict from T1 when
|T1| = p and x is in B2".

Pinned keys met during `evict()` are set aside and put back at the head of the queue they came from
(they are in use, as if just read): each call costs O(1) amortised plus O(pinned keys met).
"""

from __future__ import annotations

import collections
import logging
from typing import Callable, ClassVar, Hashable

log = logging.getLogger(__name__)

Key = Hashable
Pinned = Callable[[Key], bool]


class _Budget:
    """Resident bytes/keys and their high-water marks, and the byte target queues are sized against."""

    __slots__ = ("capacity", "bytes", "keys", "peak_bytes", "peak_keys")

    def __init__(self, capacity: int | None) -> None:
        if capacity is not None and capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self.bytes = 0
        self.keys = 0
        self.peak_bytes = 0
        self.peak_keys = 0

    def add(self, size: int) -> None:
        self.bytes += size
        self.keys += 1
        self.peak_bytes = max(self.peak_bytes, self.bytes)
        self.peak_keys = max(self.peak_keys, self.keys)

    def sub(self, size: int) -> None:
        self.bytes -= size
        self.keys -= 1

    def target(self) -> int:
        """The cache size in bytes the algorithm's fractions apply to."""
        return self.capacity if self.capacity is not None else self.peak_bytes


class _Ghosts:
    """A FIFO of non-resident keys with their sizes, trimmed oldest first."""

    __slots__ = ("entries", "bytes")

    def __init__(self) -> None:
        self.entries: collections.OrderedDict[Key, int] = collections.OrderedDict()
        self.bytes = 0

    def add(self, key: Key, size: int) -> None:
        self.discard(key)
        self.entries[key] = size
        self.bytes += size

    def discard(self, key: Key) -> bool:
        size = self.entries.pop(key, None)
        if size is None:
            return False
        self.bytes -= size
        return True

    def drop_oldest(self) -> None:
        _, size = self.entries.popitem(last=False)
        self.bytes -= size

    def trim(self, max_bytes: float, max_keys: int) -> None:
        while self.entries and (self.bytes > max_bytes or len(self.entries) > max_keys):
            self.drop_oldest()

    def __contains__(self, key: object) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)


class _Queue:
    """An insertion-ordered set of resident keys with sizes: oldest at the tail (popped first)."""

    __slots__ = ("entries", "bytes")

    def __init__(self) -> None:
        self.entries: collections.OrderedDict[Key, int] = collections.OrderedDict()
        self.bytes = 0

    def push(self, key: Key, size: int) -> None:
        self.entries[key] = size
        self.bytes += size

    def pop_oldest(self) -> tuple[Key, int]:
        key, size = self.entries.popitem(last=False)
        self.bytes -= size
        return key, size

    def pop(self, key: Key) -> int | None:
        size = self.entries.pop(key, None)
        if size is not None:
            self.bytes -= size
        return size

    def to_head(self, key: Key) -> None:
        self.entries.move_to_end(key)

    def __contains__(self, key: object) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def __bool__(self) -> bool:
        return bool(self.entries)


# --------------------------------------------------------------------------------------------- S3-FIFO

# 10% small queue, ghost as large as the main queue (90%): the paper's choice, found to generalise
# across its 6,594 traces (Yang et al., SOSP'23, section 4; libCacheSim's defaults fifo-size-ratio=0.10,
# ghost-size-ratio=0.90).
S3FIFO_SMALL_FRACTION = 0.10
S3FIFO_GHOST_FRACTION = 0.90
# Two bits of frequency per object (the paper's counter, capped at 3).
S3FIFO_MAX_FREQ = 3


class S3FIFO:
    """S3-FIFO (Yang et al., "FIFO queues are all you need for cache eviction", SOSP'23).

    New keys enter the small FIFO S unless the ghost FIFO G remembers them, then they enter the main
    FIFO M. Evicting from S (while S holds >= 10% of the bytes): a tail key read at least once while
    in S moves to M (bits cleared), otherwise it leaves and its id goes to G. Evicting from M: a tail
    key with frequency > 0 is reinserted at the head with frequency - 1 (lazy promotion), otherwise it
    leaves. Reads only bump a 2-bit counter: no queue moves on a hit.
    """

    name: ClassVar[str] = "s3fifo"

    def __init__(self, capacity: int | None = None) -> None:
        self.capacity = capacity
        self._budget = _Budget(capacity)
        self._small = _Queue()
        self._main = _Queue()
        self._ghost = _Ghosts()
        self._freq: dict[Key, int] = {}

    def admit(self, key: Key, size: int) -> None:
        self.remove(key)
        if self._ghost.discard(key):
            self._main.push(key, size)
        else:
            self._small.push(key, size)
        self._freq[key] = 0
        self._budget.add(size)
        self._ghost.trim(S3FIFO_GHOST_FRACTION * self._budget.target(), self._budget.peak_keys)

    def touch(self, key: Key) -> None:
        freq = self._freq.get(key)
        if freq is not None and freq < S3FIFO_MAX_FREQ:
            self._freq[key] = freq + 1

    def remove(self, key: Key) -> None:
        if self._freq.pop(key, None) is None:
            return
        size = self._small.pop(key)
        if size is None:
            size = self._main.pop(key)
        self._budget.sub(size)  # type: ignore[arg-type]

    def evict(self, pinned: Pinned) -> Key | None:
        held_small: list[tuple[Key, int]] = []
        held_main: list[tuple[Key, int]] = []
        held_small_bytes = 0
        small_target = S3FIFO_SMALL_FRACTION * self._budget.target()
        victim = None
        while self._small or self._main:
            if self._small and (self._small.bytes + held_small_bytes >= small_target or not self._main):
                key, size = self._small.pop_oldest()
                if pinned(key):
                    held_small.append((key, size))
                    held_small_bytes += size
                elif self._freq[key] > 0:
                    self._freq[key] = 0
                    self._main.push(key, size)
                else:
                    self._ghost.add(key, size)
                    victim = key
                    break
            else:
                key, size = self._main.pop_oldest()
                if pinned(key):
                    held_main.append((key, size))
                elif self._freq[key] > 0:
                    self._freq[key] -= 1
                    self._main.push(key, size)
                else:
                    victim = key
                    break
        for key, size in held_small:
            self._small.push(key, size)
        for key, size in held_main:
            self._main.push(key, size)
        if victim is not None:
            del self._freq[victim]
            self._budget.sub(size)
        return victim

    def ghosts(self) -> int:
        return len(self._ghost)

    def __len__(self) -> int:
        return len(self._freq)

    def __contains__(self, key: object) -> bool:
        return key in self._freq


# ----------------------------------------------------------------------------------------------- SIEVE


class _Node:
    __slots__ = ("key", "visited", "older", "newer")

    def __init__(self, key: Key) -> None:
        self.key = key
        self.visited = False
        self.older: _Node | None = None
        self.newer: _Node | None = None


class SIEVE:
    """SIEVE (Zhang et al., "SIEVE is simpler than LRU", NSDI'24).

    One FIFO queue (new keys at the head) and a visited bit per key, set by a read. A hand walks from
    the tail toward the head, wrapping at the head: a visited key has its bit cleared and stays where
    it is; the first unvisited key is the victim, and the hand stays at the next key for next time.
    """

    name: ClassVar[str] = "sieve"

    def __init__(self, capacity: int | None = None) -> None:
        self.capacity = capacity
        self._nodes: dict[Key, _Node] = {}
        self._head: _Node | None = None  # newest
        self._tail: _Node | None = None  # oldest
        self._hand: _Node | None = None  # None: start at the tail

    def admit(self, key: Key, size: int) -> None:
        self.remove(key)
        node = _Node(key)
        node.older = self._head
        if self._head is not None:
            self._head.newer = node
        self._head = node
        if self._tail is None:
            self._tail = node
        self._nodes[key] = node

    def touch(self, key: Key) -> None:
        node = self._nodes.get(key)
        if node is not None:
            node.visited = True

    def _unlink(self, node: _Node) -> None:
        if self._hand is node:
            self._hand = node.newer
        if node.older is not None:
            node.older.newer = node.newer
        else:
            self._tail = node.newer
        if node.newer is not None:
            node.newer.older = node.older
        else:
            self._head = node.older
        del self._nodes[node.key]

    def remove(self, key: Key) -> None:
        node = self._nodes.get(key)
        if node is not None:
            self._unlink(node)

    def evict(self, pinned: Pinned) -> Key | None:
        node = self._hand or self._tail
        idle = 0  # keys passed since a bit was last cleared: a whole lap of them means all are pinned
        while node is not None:
            if pinned(node.key):
                idle += 1
                if idle >= len(self._nodes):
                    self._hand = node.newer
                    return None
            elif node.visited:
                node.visited = False
                idle = 0
            else:
                self._unlink(node)  # moves the hand to the next newer key if it was here
                self._hand = node.newer
                return node.key
            node = node.newer or self._tail
        return None

    def ghosts(self) -> int:
        return 0

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, key: object) -> bool:
        return key in self._nodes


# ------------------------------------------------------------------------------------------------- ARC


class ARC:
    """ARC (Megiddo & Modha, "ARC: A Self-Tuning, Low Overhead Replacement Cache", FAST'03), in bytes.

    T1 holds keys read once recently, T2 keys read at least twice (both LRU); B1 and B2 remember the
    ids evicted from T1 and T2. A miss that hits B1 grows p (T1's byte target), one that hits B2
    shrinks it; either way the key enters T2. Eviction takes T1's LRU while T1 holds more than p bytes,
    else T2's. Ghosts are trimmed so that T1+B1 <= c and T1+T2+B1+B2 <= 2c bytes (c = the budget).
    """

    name: ClassVar[str] = "arc"

    def __init__(self, capacity: int | None = None) -> None:
        self.capacity = capacity
        self._budget = _Budget(capacity)
        self._t1 = _Queue()
        self._t2 = _Queue()
        self._b1 = _Ghosts()
        self._b2 = _Ghosts()
        self._p = 0.0

    def admit(self, key: Key, size: int) -> None:
        self.remove(key)
        c = self._budget.target()
        if key in self._b1:
            # p grows by the missed size, scaled by |B2|/|B1| as in the paper's delta1 = max(1, |B2|/|B1|).
            ratio = self._b2.bytes / self._b1.bytes if self._b1.bytes else 1.0
            self._p = min(float(max(c, size)), self._p + size * max(1.0, ratio))
            self._b1.discard(key)
            self._t2.push(key, size)
        elif key in self._b2:
            ratio = self._b1.bytes / self._b2.bytes if self._b2.bytes else 1.0
            self._p = max(0.0, self._p - size * max(1.0, ratio))
            self._b2.discard(key)
            self._t2.push(key, size)
        else:
            self._t1.push(key, size)
        self._budget.add(size)
        self._trim_ghosts()

    def touch(self, key: Key) -> None:
        if key in self._t2:
            self._t2.to_head(key)
        else:
            size = self._t1.pop(key)
            if size is not None:
                self._t2.push(key, size)

    def remove(self, key: Key) -> None:
        size = self._t1.pop(key)
        if size is None:
            size = self._t2.pop(key)
        if size is not None:
            self._budget.sub(size)

    def evict(self, pinned: Pinned) -> Key | None:
        held1: list[tuple[Key, int]] = []
        held2: list[tuple[Key, int]] = []
        held1_bytes = 0
        victim = None
        while self._t1 or self._t2:
            if self._t1 and (self._t1.bytes + held1_bytes > self._p or not self._t2):
                key, size = self._t1.pop_oldest()
                if pinned(key):
                    held1.append((key, size))
                    held1_bytes += size
                    continue
                self._b1.add(key, size)
            else:
                key, size = self._t2.pop_oldest()
                if pinned(key):
                    held2.append((key, size))
                    continue
                self._b2.add(key, size)
            victim = key
            self._budget.sub(size)
            break
        for key, size in held1:
            self._t1.push(key, size)
        for key, size in held2:
            self._t2.push(key, size)
        return victim

    def _trim_ghosts(self) -> None:
        c = self._budget.target()
        max_keys = self._budget.peak_keys
        b1, b2 = self._b1, self._b2
        while b1 and (self._t1.bytes + b1.bytes > c or len(b1) + len(b2) > max_keys):
            b1.drop_oldest()
        while (b1 or b2) and (self._t1.bytes + self._t2.bytes + b1.bytes + b2.bytes > 2 * c
                              or len(b1) + len(b2) > max_keys):
            (b2 if b2 else b1).drop_oldest()

    def ghosts(self) -> int:
        return len(self._b1) + len(self._b2)

    def __len__(self) -> int:
        return len(self._t1) + len(self._t2)

    def __contains__(self, key: object) -> bool:
        return key in self._t1 or key in self._t2


# -------------------------------------------------------------------------------------------------- 2Q

# Kin = 25% and Kout = 50% of the cache: the settings the paper recommends ("Kin should be 25% of the
# page slots and Kout should hold identifiers for as many pages as would fit on 50% of the buffer").
TWOQ_IN_FRACTION = 0.25
TWOQ_OUT_FRACTION = 0.50


class TwoQ:
    """2Q, full version (Johnson & Shasha, "2Q: A Low Overhead High Performance Buffer Management
    Replacement Algorithm", VLDB'94).

    A new key enters A1in (FIFO); reads while in A1in do not promote it (correlated references).
    Evicting while A1in holds more than Kin bytes takes A1in's oldest and remembers its id in A1out
    (ghost FIFO, Kout bytes); otherwise Am's LRU key leaves (not remembered). A miss on a key A1out
    remembers puts it in Am (LRU), where reads move it to the head.
    """

    name: ClassVar[str] = "2q"

    def __init__(self, capacity: int | None = None) -> None:
        self.capacity = capacity
        self._budget = _Budget(capacity)
        self._a1in = _Queue()
        self._am = _Queue()
        self._a1out = _Ghosts()

    def admit(self, key: Key, size: int) -> None:
        self.remove(key)
        if self._a1out.discard(key):
            self._am.push(key, size)
        else:
            self._a1in.push(key, size)
        self._budget.add(size)
        self._a1out.trim(TWOQ_OUT_FRACTION * self._budget.target(), self._budget.peak_keys)

    def touch(self, key: Key) -> None:
        if key in self._am:
            self._am.to_head(key)

    def remove(self, key: Key) -> None:
        size = self._a1in.pop(key)
        if size is None:
            size = self._am.pop(key)
        if size is not None:
            self._budget.sub(size)

    def evict(self, pinned: Pinned) -> Key | None:
        held_in: list[tuple[Key, int]] = []
        held_m: list[tuple[Key, int]] = []
        held_in_bytes = 0
        k_in = TWOQ_IN_FRACTION * self._budget.target()
        victim = None
        while self._a1in or self._am:
            if self._a1in and (self._a1in.bytes + held_in_bytes > k_in or not self._am):
                key, size = self._a1in.pop_oldest()
                if pinned(key):
                    held_in.append((key, size))
                    held_in_bytes += size
                    continue
                self._a1out.add(key, size)
            else:
                key, size = self._am.pop_oldest()
                if pinned(key):
                    held_m.append((key, size))
                    continue
            victim = key
            self._budget.sub(size)
            break
        for key, size in held_in:
            self._a1in.push(key, size)
        for key, size in held_m:
            self._am.push(key, size)
        return victim

    def ghosts(self) -> int:
        return len(self._a1out)

    def __len__(self) -> int:
        return len(self._a1in) + len(self._am)

    def __contains__(self, key: object) -> bool:
        return key in self._a1in or key in self._am


MODERN_POLICIES: tuple[type, ...] = (S3FIFO, SIEVE, ARC, TwoQ)
