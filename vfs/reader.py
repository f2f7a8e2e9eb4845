"""The reader: turns (handle, offset, size) into blocks, and blocks into bytes.

It is the only caller of the block cache. A read is split into fixed-size blocks; each block comes
from the cache or, on a miss, from one ranged read of the backend (single-flight: N readers of one
missing block cause one request), and is then put in the cache. Blocks are keyed by the version the
handle was opened on, so one handle never mixes bytes of two versions.

Sequential reads (a read starting where the last one ended) prefetch the next blocks in the
background, up to `prefetch_blocks` ahead per handle.

With a trace file, every block access is recorded as a line `KEY SIZE` (KEY a short hash of the
BlockKey), the format `vfs cache simulate --trace` replays.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
from typing import TextIO

import trio

from vfs.cache import BlockCache, BlockKey
from vfs.mounts.base import Backend
from vfs.singleflight import SingleFlight

log = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False)
class ReadHandle:
    mount: str
    backend: Backend
    path: str
    version: str
    size: int
    next_offset: int = 0
    """Where a sequential reader would read next."""
    prefetched_to: int = -1
    """Highest block index a prefetch was started for."""


class Reader:
    def __init__(self, cache: BlockCache, prefetch_blocks: int = 2, trace: TextIO | None = None) -> None:
        self.cache = cache
        self.block_size = cache.block_size
        self.prefetch_blocks = prefetch_blocks
        self.handles: dict[int, ReadHandle] = {}
        self.trace = trace
        self._ids = itertools.count(1)
        self._flights: SingleFlight[BlockKey, bytes] = SingleFlight()
        self._nursery: trio.Nursery | None = None
        self.prefetches = 0

    def start(self, nursery: trio.Nursery) -> None:
        """Give the reader a nursery for background prefetch (none: no prefetch)."""
        self._nursery = nursery

    def open(self, mount: str, backend: Backend, path: str, version: str, size: int) -> int:
        fh = next(self._ids)
        self.handles[fh] = ReadHandle(mount, backend, path, version, size)
        return fh

    def release(self, fh: int) -> None:
        self.handles.pop(fh, None)

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        h = self.handles[fh]
        end = min(offset + size, h.size)
        if offset >= end:
            return b""
        bs = self.block_size
        first, last = offset // bs, (end - 1) // bs
        if offset == h.next_offset or offset == 0:
            self._prefetch(h, last + 1)
        h.next_offset = end
        parts = []
        for index in range(first, last + 1):
            if self.trace is not None:
                self._record(h, index)
            block = await self._block(h, index)
            assert block is not None
            lo = max(offset - index * bs, 0)
            hi = min(end - index * bs, len(block))
            if lo == 0 and hi == len(block) and first == last:
                return block
            parts.append(memoryview(block)[lo:hi])
        return b"".join(parts)

    def _key(self, h: ReadHandle, index: int) -> BlockKey:
        return BlockKey(h.mount, h.path, h.version, index)

    def _record(self, h: ReadHandle, index: int) -> None:
        size = min(self.block_size, h.size - index * self.block_size)
        key = hashlib.blake2b(str(self._key(h, index)).encode(), digest_size=8).hexdigest()
        self.trace.write(f"{key} {size}\n")  # type: ignore[union-attr]

    async def _block(self, h: ReadHandle, index: int, prefetch: bool = False) -> bytes | None:
        """Block `index` of the handle's version; None only for a prefetch that failed."""
        key = self._key(h, index)

        async def load() -> bytes | None:
            # Inside the flight: a block that a concurrent reader or prefetch is loading is waited
            # for, never fetched a second time (a lookup outside would race with that load).
            try:
                with self.cache.pinned(key):
                    data = await self.cache.get(key)
                if data is None:
                    start = index * self.block_size
                    data = await h.backend.read_range(h.path, start, min(start + self.block_size, h.size), h.version)
                    await self.cache.put(key, data)
                return data
            except Exception as exc:
                if not prefetch:
                    raise
                log.debug("prefetch of %s block %d failed: %s", h.path, index, exc)
                return None  # readers waiting on this prefetch load the block themselves

        while True:
            data = await self._flights.do(key, load)
            if data is not None or prefetch:
                return data

    def _prefetch(self, h: ReadHandle, index: int) -> None:
        if self._nursery is None:
            return
        last_block = (h.size - 1) // self.block_size
        upto = min(index + self.prefetch_blocks - 1, last_block)
        for i in range(max(index, h.prefetched_to + 1), upto + 1):
            h.prefetched_to = i
            if self._key(h, i) not in self._flights:
                self.prefetches += 1
                self._nursery.start_soon(self._block, h, i, True)

    def stats(self) -> dict[str, object]:
        return {
            "tiers": self.cache.stats(),
            "reader": {"block_size": self.block_size, "open_handles": len(self.handles),
                       "blocks_in_flight": len(self._flights), "prefetches": self.prefetches},
        }

    async def clear(self, tier: str | None = None) -> dict[str, int]:
        """Drop every cached block of one tier (or all)."""
        return await self.cache.clear(tier)

    def close(self) -> None:
        """Flush the trace and close the cache (blocking: the SSD tier writes out RAM's blocks)."""
        if self.trace is not None:
            self.trace.close()
            self.trace = None
        self.cache.close()
