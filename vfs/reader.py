"""The reader: turns (handle, offset, size) into blocks, and blocks into bytes.

It is the only caller of the block cache. A read is split into fixed-size blocks; each block comes
from the cache or, on a miss, from one ranged read of the backend (single-flight: N readers of one
missing block cause one request), and is then put in the cache. Blocks are keyed by the version the
handle was opened on, so one handle never mixes bytes of two versions.

Sequential reads (a read starting where the last one ended) prefetch the next blocks in the
background, up to `prefetch_blocks` ahead per handle.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging

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
    def __init__(self, cache: BlockCache, prefetch_blocks: int = 2) -> None:
        self.cache = cache
        self.block_size = cache.block_size
        self.prefetch_blocks = prefetch_blocks
        self.handles: dict[int, ReadHandle] = {}
        self._ids = itertools.count(1)
        self._flights: SingleFlight[BlockKey, bytes] = SingleFlight()
        self._nursery: trio.Nursery | None = None

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
            block = await self._block(h, index)
            lo = max(offset - index * bs, 0)
            hi = min(end - index * bs, len(block))
            if lo == 0 and hi == len(block) and first == last:
                return block
            parts.append(memoryview(block)[lo:hi])
        return b"".join(parts)

    def _key(self, h: ReadHandle, index: int) -> BlockKey:
        return BlockKey(h.mount, h.path, h.version, index)

    async def _block(self, h: ReadHandle, index: int) -> bytes:
        key = self._key(h, index)
        with self.cache.pinned(key):
            data = await self.cache.get(key)
        if data is not None:
            return data

        async def fetch() -> bytes:
            start = index * self.block_size
            data = await h.backend.read_range(h.path, start, min(start + self.block_size, h.size), h.version)
            await self.cache.put(key, data)
            return data

        return await self._flights.do(key, fetch)

    def _prefetch(self, h: ReadHandle, index: int) -> None:
        if self._nursery is None:
            return
        last_block = (h.size - 1) // self.block_size
        upto = min(index + self.prefetch_blocks - 1, last_block)
        for i in range(max(index, h.prefetched_to + 1), upto + 1):
            h.prefetched_to = i
            key = self._key(h, i)
            if key not in self._flights:
                self._nursery.start_soon(self._prefetch_one, h, i)

    async def _prefetch_one(self, h: ReadHandle, index: int) -> None:
        try:
            await self._block(h, index)
        except Exception as exc:  # a prefetch failing is not an error: the read itself will retry
            log.debug("prefetch of %s block %d failed: %s", h.path, index, exc)
