"""BlockCache: the reader's one door to the tiers (RAM now; the SSD tier goes below it).

Lookups go RAM first. The reader is the only caller; nothing else in vfs touches a tier.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator

from vfs.cache.block import BlockKey
from vfs.cache.ram import RamStore


class BlockCache:
    def __init__(self, block_size: int, ram: RamStore) -> None:
        self.block_size = block_size
        self.ram = ram

    async def get(self, key: BlockKey) -> bytes | None:
        return self.ram.get(key)

    async def put(self, key: BlockKey, data: bytes) -> None:
        self.ram.put(key, data)

    @contextlib.contextmanager
    def pinned(self, key: BlockKey) -> Iterator[None]:
        """Keep `key` from being chosen as a victim while the block is in use."""
        self.ram.pin(key)
        try:
            yield
        finally:
            self.ram.unpin(key)

    def stats(self) -> dict[str, dict]:
        return {"ram": {**dataclasses.asdict(self.ram.stats), "used": self.ram.used, "capacity": self.ram.capacity,
                        "blocks": len(self.ram), "policy": self.ram.policy.name}}
