"""The RAM tier: blocks as `bytes` in a dict, under an exact byte budget it never exceeds.

Room is made before a block goes in, so even between two statements the tier holds no more than
its budget. Victims are returned to the caller, which may demote them to the next tier.
"""

from __future__ import annotations

import collections

from vfs.cache.block import BlockKey, TierStats
from vfs.cache.policy import EvictionPolicy


class RamStore:
    def __init__(self, capacity: int, policy: EvictionPolicy) -> None:
        self.capacity = capacity
        self.policy = policy
        self.used = 0
        self.stats = TierStats()
        self._blocks: dict[BlockKey, bytes] = {}
        self._pins: collections.Counter[BlockKey] = collections.Counter()

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, key: object) -> bool:
        return key in self._blocks

    def get(self, key: BlockKey) -> bytes | None:
        data = self._blocks.get(key)
        if data is None:
            self.stats.misses += 1
            return None
        self.policy.touch(key)
        self.stats.hits += 1
        self.stats.hit_bytes += len(data)
        return data

    def put(self, key: BlockKey, data: bytes) -> list[tuple[BlockKey, bytes]]:
        """Store a block; return the blocks evicted to make room (oldest choice first)."""
        self.discard(key)
        size = len(data)
        evicted: list[tuple[BlockKey, bytes]] = []
        if size > self.capacity:
            self.stats.refused += 1
            return evicted
        while self.used + size > self.capacity:
            victim = self.policy.evict(self.is_pinned)
            if victim is None:
                self.stats.refused += 1
                return evicted
            old = self._blocks.pop(victim)  # type: ignore[arg-type]
            self.used -= len(old)
            self.stats.evictions += 1
            self.stats.eviction_bytes += len(old)
            evicted.append((victim, old))  # type: ignore[arg-type]
        self._blocks[key] = data
        self.used += size
        self.policy.admit(key, size)
        self.stats.inserts += 1
        self.stats.insert_bytes += size
        return evicted

    def charge(self, key: BlockKey, data: bytes) -> int:
        """Bytes one block costs in this tier's budget."""
        return len(data)

    def items(self) -> list[tuple[BlockKey, bytes]]:
        """Every resident block (a snapshot), e.g. to write RAM to the SSD at unmount."""
        return list(self._blocks.items())

    def clear(self) -> int:
        """Drop every block (pinned ones too: a pin only keeps the policy off a block)."""
        keys = list(self._blocks)
        for key in keys:
            self.discard(key)
        return len(keys)

    def discard(self, key: BlockKey) -> None:
        old = self._blocks.pop(key, None)
        if old is not None:
            self.used -= len(old)
            self.policy.remove(key)

    def pin(self, key: BlockKey) -> None:
        self._pins[key] += 1

    def unpin(self, key: BlockKey) -> None:
        self._pins[key] -= 1
        if self._pins[key] <= 0:
            del self._pins[key]

    def is_pinned(self, key: object) -> bool:
        return key in self._pins
