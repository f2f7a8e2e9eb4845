"""The reader: turns (handle, offset, size) into blocks, and blocks into bytes.

It is the only caller of the block cache. A read is split into fixed-size blocks; each block comes
from the cache or, on a miss, from one ranged read of the backend (single-flight: N readers of one
missing block cause one request), and is then put in the cache. Blocks are keyed by the version the
handle was opened on, so one handle never mixes bytes of two versions. A file no larger than a
block is fetched whole, in one request.

Prefetch: a handle read sequentially gets a window of blocks fetched ahead of it in the background,
in parallel (one ranged GET per block: parallel ranged reads of a large object). The window starts
at one block and doubles each time the reader enters a new block, up to `prefetch_window` bytes; a
jump elsewhere in the file closes it. Requests that arrive a little out of order (the kernel sends
its readahead concurrently) still count as sequential. The bytes of prefetches in flight, which
are outside the cache's budget until they land, are bounded by `prefetch_memory` for the whole
mount: a prefetch that finds no room is skipped, never queued.

With a trace file, every block a reader asks for is recorded as a line `KEY SIZE` (KEY a short hash
of the BlockKey), the format `vfs cache simulate --trace` replays.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
import os
from typing import TextIO

import trio

from vfs.cache import BlockCache, BlockKey
from vfs.mount_table import Mount
from vfs.singleflight import SingleFlight

log = logging.getLogger(__name__)

# How far from where a sequential reader would read next a request may start and still count as
# sequential (at most half a block): the kernel's readahead sends up to read_ahead_kb (1 MiB when
# raised) in several concurrent requests, which trio may serve in any order.
SEQUENTIAL_SLACK = 2 * 1024 * 1024


@dataclasses.dataclass(eq=False)
class ReadHandle:
    mount: Mount
    path: str
    version: str
    size: int
    next_offset: int = 0
    """Where a sequential reader would read next."""
    window: int = 0
    """Blocks to keep prefetched ahead of the reader (0: not sequential)."""
    last_block: int = -1
    """The highest block a read touched."""
    prefetched_to: int = -1
    """Highest block index a prefetch was started for."""


class Reader:
    def __init__(self, cache: BlockCache, prefetch_window: int = 32 * 2**20, prefetch_memory: int = 64 * 2**20,
                 trace: TextIO | None = None) -> None:
        self.cache = cache
        self.block_size = cache.block_size
        self.window_max = max(0, prefetch_window // self.block_size)
        self.slack = min(SEQUENTIAL_SLACK, self.block_size // 2)
        self.handles: dict[int, ReadHandle] = {}
        self.trace = trace
        self._ids = itertools.count(1)
        self._flights: SingleFlight[BlockKey, bytes] = SingleFlight()
        self._nursery: trio.Nursery | None = None
        self._prefetch_slots = trio.Semaphore(max(1, prefetch_memory // self.block_size))
        self.prefetches = 0
        self.prefetches_skipped = 0

    def start(self, nursery: trio.Nursery) -> None:
        """Give the reader a nursery for background prefetch (none: no prefetch)."""
        self._nursery = nursery

    def open(self, mount: Mount, path: str, version: str, size: int) -> int:
        fh = next(self._ids)
        self.handles[fh] = ReadHandle(mount, path, version, size)
        return fh

    def release(self, fh: int) -> None:
        self.handles.pop(fh, None)

    async def read(self, fh: int, offset: int, size: int) -> bytes | memoryview:
        """Bytes [offset, offset + size) of the handle's version; a view into the cached block when
        the range lies in one block (pyfuse3 copies it into the reply: no copy of ours)."""
        h = self.handles[fh]
        end = min(offset + size, h.size)
        if offset >= end:
            return b""
        bs = self.block_size
        first, last = offset // bs, (end - 1) // bs
        self._follow(h, offset, end, last)
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
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _key(self, h: ReadHandle, index: int) -> BlockKey:
        return BlockKey(h.mount.path, h.path, h.version, index)

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
                    data = await h.mount.backend.read_range(h.path, start, min(start + self.block_size, h.size), h.version)
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

    def _follow(self, h: ReadHandle, offset: int, end: int, last: int) -> None:
        """Track how the handle is read and keep its prefetch window ahead of it."""
        if abs(offset - h.next_offset) <= self.slack:
            if last > h.last_block:  # a new block: widen the window
                h.window = min(max(1, 2 * h.window), self.window_max)
        else:  # a jump: no prefetch until the reader goes sequential again
            h.window = 0
            h.prefetched_to = last
        h.next_offset = max(h.next_offset, end) if h.window else end
        h.last_block = max(h.last_block, last) if h.window else last
        if h.window and self._nursery is not None:
            upto = min(last + h.window, (h.size - 1) // self.block_size)
            for i in range(max(last + 1, h.prefetched_to + 1), upto + 1):
                if self._key(h, i) in self._flights:
                    h.prefetched_to = i
                    continue
                try:
                    self._prefetch_slots.acquire_nowait()
                except trio.WouldBlock:
                    self.prefetches_skipped += 1
                    break  # memory for prefetch is used up: try again on the next read
                h.prefetched_to = i
                self.prefetches += 1
                self._nursery.start_soon(self._prefetch, h, i)

    async def fetch_whole(self, mount: Mount, path: str, version: str, size: int) -> None:
        """Bring a file of at most one block into the cache, as a prefetch (a failure is only logged)."""
        await self._fetch(ReadHandle(mount, path, version, size), 0)

    async def adopt(self, mount: Mount, path: str, version: str, source: str, size: int) -> None:
        """Put the blocks of a local file that a silo now holds as `version` into the cache (a commit
        read back costs no GET). At most half the RAM tier's worth: a larger file would only push
        other blocks out. Blocking reads in a worker thread."""
        bs = self.block_size
        with open(source, "rb") as f:
            for index in range(min((size + bs - 1) // bs, self.cache.ram.capacity // 2 // bs)):
                data = await trio.to_thread.run_sync(os.pread, f.fileno(), bs, index * bs)
                await self.cache.put(BlockKey(mount.path, path, version, index), data)

    async def _prefetch(self, h: ReadHandle, index: int) -> None:
        try:
            await self._fetch(h, index)
        finally:
            self._prefetch_slots.release()

    async def _fetch(self, h: ReadHandle, index: int) -> None:
        """Load a block ahead of any reader; errors are the reader's to meet, here only logged (a
        prefetch that joined a reader's failing load gets that reader's error)."""
        try:
            await self._block(h, index, prefetch=True)
        except Exception as exc:
            log.debug("prefetch of %s block %d failed: %s", h.path, index, exc)

    def stats(self) -> dict[str, object]:
        return {
            "tiers": self.cache.stats(),
            "reader": {"block_size": self.block_size, "open_handles": len(self.handles),
                       "blocks_in_flight": len(self._flights), "prefetches": self.prefetches,
                       "prefetches_skipped": self.prefetches_skipped},
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
