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
import errno
import hashlib
import itertools
import logging
import os
from typing import Any, Callable, TextIO

import trio

from vfs.cache import BlockCache, BlockKey
from vfs.errors import SiloError
from vfs.metrics import Counter, Registry
from vfs.mount_table import Mount
from vfs.singleflight import SingleFlight

log = logging.getLogger(__name__)

# How far from where a sequential reader would read next a request may start and still count as
# sequential (at most half a block): the kernel's readahead sends up to read_ahead_kb (1 MiB when
# raised) in several concurrent requests, which trio may serve in any order.
SEQUENTIAL_SLACK = 2 * 1024 * 1024


def confirmed(version: str) -> bool:
    """Whether blocks of `version` may be shared through the cluster tier: a version the silo named
    (read_range checks it), not a local file's staged version nor none."""
    return bool(version) and not version.startswith("staged:")


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
        self.prefetches = Counter()
        self.prefetches_skipped = Counter()
        """Prefetches not started: the memory for prefetches in flight was used up."""

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
                    end = min(start + self.block_size, h.size)
                    shared = self.cache.cluster is not None and confirmed(h.version)
                    silo = h.mount.backend.describe()
                    if shared:
                        data = await self.cache.from_cluster(key, silo)
                        if data is not None and len(data) != end - start:  # cannot happen: the tier checks
                            log.warning("cluster tier: block %d of %s has %d bytes, not %d; fetched from the silo",
                                        index, h.path, len(data), end - start)
                            data = None
                        if data is not None:
                            return data
                    try:
                        data = await h.mount.backend.read_range(h.path, start, end, h.version)
                        if len(data) != end - start:  # a body cut short that the backend missed: never cached
                            raise SiloError(errno.EIO, f"{silo}/{h.path}: {len(data)} bytes where {end - start} "
                                            f"were asked for at {start}", retryable=True)
                    except BaseException:
                        if shared:  # nodes waiting for this block fetch it themselves
                            with trio.CancelScope(shield=True):
                                await self.cache.withdraw(key, silo)
                        raise
                    await self.cache.put(key, data)
                    if shared:
                        await self.cache.offer(key, silo, data)
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
                    self.prefetches_skipped.inc()
                    break  # memory for prefetch is used up: try again on the next read
                h.prefetched_to = i
                self.prefetches.inc()
                self._nursery.start_soon(self._prefetch, h, i)

    async def fetch_whole(self, mount: Mount, path: str, version: str, size: int) -> None:
        """Bring a file of at most one block into the cache, as a prefetch (a failure is only logged)."""
        await self._fetch(ReadHandle(mount, path, version, size), 0)

    def _keys(self, mount: Mount, path: str, version: str, size: int) -> list[tuple[BlockKey, int]]:
        """Every block of a file version, with its length."""
        bs = self.block_size
        return [(BlockKey(mount.path, path, version, i), min(bs, size - i * bs)) for i in range((size + bs - 1) // bs)]

    def _cached(self, key: BlockKey) -> bool:
        c = self.cache
        return key in c.ram or (c.ssd is not None and (key in c.ssd or c.writer.pending(key) is not None))  # type: ignore[union-attr]

    def cached_bytes(self, mount: Mount, path: str, version: str, size: int) -> int:
        """Bytes of a file version that some tier holds (asks nothing of the silo, touches no policy)."""
        return sum(n for key, n in self._keys(mount, path, version, size) if self._cached(key))

    async def warm_block(self, mount: Mount, path: str, version: str, size: int, index: int) -> int:
        """Bring block `index` of a file version into the cache as a read would (errors raise); its length."""
        data = await self._block(ReadHandle(mount, path, version, size), index)
        return len(data or b"")

    async def evict(self, mount: Mount, path: str, version: str, size: int) -> int:
        """Drop every block of a file version from every tier; the bytes that were cached."""
        cached = [(key, n) for key, n in self._keys(mount, path, version, size) if self._cached(key)]
        for key, _ in cached:
            self.cache.ram.discard(key)
        ssd = self.cache.ssd
        if ssd is not None and cached:
            await self.cache.flush()  # a copy queued for the SSD lands first, then goes with the rest
            await trio.to_thread.run_sync(lambda: [ssd.discard(key) for key, _ in cached])
        return sum(n for _, n in cached)

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

    def register(self, registry: Registry) -> None:
        """The reader's figures, and the cache tiers' (read from their own counters when rendered)."""
        registry.gauge("block_size_bytes", "Size of a cache block", (), ("reader", "block_size")).labels().set(self.block_size)
        registry.gauge("reader_open_handles", "Reader handles open", (), ("reader", "open_handles")).labels().set_function(
            lambda: len(self.handles))
        registry.gauge("reader_blocks_in_flight", "Blocks being loaded from a silo", (),
                       ("reader", "blocks_in_flight")).labels().set_function(lambda: len(self._flights))
        registry.counter("reader_prefetches", "Blocks prefetched ahead of a sequential reader", (),
                         ("reader", "prefetches")).attach((), self.prefetches)
        registry.counter("reader_prefetches_skipped", "Prefetches not started: prefetch memory used up", (),
                         ("reader", "prefetches_skipped")).attach((), self.prefetches_skipped)
        register_cache(registry, self.cache)

    async def clear(self, tier: str | None = None) -> dict[str, int]:
        """Drop every cached block of one tier (or all)."""
        return await self.cache.clear(tier)

    def close(self) -> None:
        """Flush the trace and close the cache (blocking: the SSD tier writes out RAM's blocks)."""
        if self.trace is not None:
            self.trace.close()
            self.trace = None
        self.cache.close()


# Counters every tier keeps in its TierStats: (field, metric name, help).
_TIER_COUNTERS = (
    ("hits", "cache_hits", "Block lookups the tier answered"),
    ("misses", "cache_misses", "Block lookups the tier could not answer"),
    ("hit_bytes", "cache_hit_bytes", "Bytes of the blocks the tier answered with"),
    ("inserts", "cache_inserts", "Blocks stored in the tier"),
    ("insert_bytes", "cache_inserted_bytes", "Bytes stored in the tier"),
    ("evictions", "cache_evictions", "Blocks evicted from the tier"),
    ("eviction_bytes", "cache_evicted_bytes", "Bytes evicted from the tier"),
    ("refused", "cache_refused", "Blocks not stored: larger than the tier, or every block pinned"),
)
# Figures of the SSD store: (attribute, kind, metric name, help).
_SSD_FIGURES = (
    ("budget", "gauge", "cache_budget_bytes", "Bytes the tier is configured to hold (capacity is lower after a full disk)"),
    ("disk_full", "counter", "cache_disk_full", "Writes that failed for want of room on the disk"),
    ("orphans", "counter", "cache_orphan_files", "Value files no row pointed to, deleted at start"),
)
_WRITER_COUNTERS = (
    ("queued", "Blocks queued for the SSD"),
    ("written", "Blocks written to the SSD"),
    ("dropped", "Blocks not queued because the writer was closed"),
    ("waits", "Times a reader waited for room in the SSD queue"),
    ("failed", "Blocks the SSD writer failed to write"),
)


# The cluster tier's figures (ClusterTier.stats()) that the other tiers have too: its field -> the tiers' field.
_CLUSTER_AS_TIER = {"hits": "hits", "misses": "misses", "hit_bytes": "hit_bytes", "stores": "inserts",
                    "store_bytes": "insert_bytes"}
# ...and its own: (field, metric name, help).
_CLUSTER_COUNTERS = (
    ("fallbacks", "cluster_fallbacks", "Reads sent to the silo because the cluster tier failed, was off or a lease expired"),
    ("lease_won", "cluster_leases_won", "Blocks this node fetched from the silo for the cluster"),
    ("lease_waits", "cluster_lease_waits", "Blocks this node waited for while another node fetched them"),
    ("lease_wait_hits", "cluster_lease_wait_hits", "Waits for another node's fetch that ended with the block"),
    ("lease_expired", "cluster_leases_expired", "Waits for another node's fetch that ended without the block"),
    ("switched_off", "cluster_switched_off", "Times the cluster tier switched itself off after repeated failures"),
    ("offers_dropped", "cluster_offers_dropped", "Blocks not offered to the cluster tier: its queue was full"),
)


def register_cache(registry: Registry, cache: BlockCache) -> None:
    """The tiers' own counters (vfs/cache keeps them), read through callbacks when rendered."""
    if cache.cluster is not None:
        _register_cluster(registry, cache)
    tiers = [("ram", cache.ram)] + ([("ssd", cache.ssd)] if cache.ssd is not None else [])
    for field, name, help in _TIER_COUNTERS:
        family = registry.counter(name, help, ("tier",), ("tiers", "{tier}", field))
        for tier, store in tiers:
            family.labels(tier).set_function(lambda store=store, field=field: getattr(store.stats, field))
    used = registry.gauge("cache_used_bytes", "Bytes the tier holds", ("tier",), ("tiers", "{tier}", "used"))
    capacity = registry.gauge("cache_capacity_bytes", "Bytes the tier may hold", ("tier",), ("tiers", "{tier}", "capacity"))
    fill = registry.gauge("cache_fill_ratio", "Share of the tier's capacity in use", ("tier",), ("tiers", "{tier}", "fill"))
    blocks = registry.gauge("cache_blocks", "Blocks the tier holds", ("tier",), ("tiers", "{tier}", "blocks"))
    for tier, store in tiers:
        used.labels(tier).set_function(lambda store=store: store.used)
        capacity.labels(tier).set_function(lambda store=store: store.capacity)
        fill.labels(tier).set_function(lambda store=store: round(store.used / store.capacity, 6) if store.capacity else 0.0)
        blocks.labels(tier).set_function(lambda store=store: len(store))
        registry.static(("tiers", tier, "policy"), store.policy.name or type(store.policy).__qualname__)
    ssd, writer = cache.ssd, cache.writer
    if ssd is None or writer is None:
        return
    registry.static(("tiers", "ssd", "directory"), ssd.directory)
    registry.counter("cache_errors", "Failed reads and writes of the tier", ("tier",), ("tiers", "{tier}", "errors")
                     ).labels("ssd").set_function(lambda: ssd.errors + cache.ssd_failures)
    registry.counter("cache_corrupt_blocks", "Blocks found corrupt and dropped", ("tier",), ("tiers", "{tier}", "corrupt")
                     ).labels("ssd").set_function(lambda: ssd.corrupt)
    for field, kind, name, help in _SSD_FIGURES:
        if hasattr(ssd, field):  # figures of the SSD store that older stores lack
            family = (registry.counter if kind == "counter" else registry.gauge)(name, help, ("tier",), ("tiers", "{tier}", field))
            family.labels("ssd").set_function(lambda field=field: getattr(ssd, field))
    if hasattr(ssd, "damaged_db"):
        registry.static(("tiers", "ssd", "damaged_db"), lambda: ssd.damaged_db)
    for field, help in _WRITER_COUNTERS:
        registry.counter(f"ssd_writer_{field}", help, (), ("tiers", "ssd_writer", field)).labels().set_function(
            lambda field=field: getattr(writer.stats, field))
    registry.gauge("ssd_writer_queued_bytes", "Bytes queued for the SSD", (), ("tiers", "ssd_writer", "queued_bytes")
                   ).labels().set_function(lambda: writer.queued_bytes)
    registry.static(("tiers", "ssd_writer", "write_through"), cache.write_through)


def _register_cluster(registry: Registry, cache: BlockCache) -> None:
    """The cluster tier's figures, from one `stats()` per rendering of each (a dict of ints)."""
    cluster = cache.cluster
    assert cluster is not None

    def figure(field: str) -> Callable[[], Any]:
        if field == "offers_dropped":
            return lambda: cache.offers_dropped
        return lambda: cluster.stats().get(field, 0)

    names = {field: (name, help) for field, name, help in _TIER_COUNTERS}
    for field, as_tier in _CLUSTER_AS_TIER.items():
        name, help = names[as_tier]
        registry.counter(name, help, ("tier",), ("tiers", "{tier}", as_tier)).labels("cluster").set_function(figure(field))
    registry.counter("cache_errors", "Failed reads and writes of the tier", ("tier",), ("tiers", "{tier}", "errors")
                     ).labels("cluster").set_function(figure("errors"))
    registry.counter("cache_corrupt_blocks", "Blocks found corrupt and dropped", ("tier",), ("tiers", "{tier}", "corrupt")
                     ).labels("cluster").set_function(figure("corrupt"))
    for field, name, help in _CLUSTER_COUNTERS:
        registry.counter(name, help, (), ("tiers", "cluster", field)).labels().set_function(figure(field))
    registry.gauge("cluster_online", "1 while the cluster tier is in use, 0 while it is switched off", (),
                   ("tiers", "cluster", "online")).labels().set_function(lambda: 0 if figure("off")() else 1)
