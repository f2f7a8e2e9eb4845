"""BlockCache: the reader's one door to the tiers, RAM first, then SSD.

What this module owns: the order of lookups (RAM -> blocks queued for the SSD -> SSD -> miss),
promotion (an SSD hit is put in RAM), getting blocks onto the SSD, pins across tiers, the stats of
every tier, `clear`, and `build_cache` (the `[cache]` table of the config -> a BlockCache; a directory
the SSD tier cannot use switches that tier off with one warning instead of stopping the mount).

Getting blocks onto the SSD: demote-on-evict. A block the reader puts goes to RAM only; when RAM
evicts it and the SSD does not hold it, it is queued for the SSD. `close()` (unmount) writes what is
still only in RAM, so a remount serves every cached block without touching the silo; after a crash
only the RAM-only blocks are lost (and are fetched again). Blocks that reached the RAM but were refused
there (larger than the tier) go to the SSD directly. Measured with bench/cache_tiering.py
(this machine kind: 2 vCPU, ext4 on virtio, other jobs sharing the disk; 1 MiB blocks, RAM 32 MiB,
SSD 256 MiB, LRU both, Zipf(1.1) over 256 distinct blocks, 4,000 reads, a silo costing 5 ms a block):

    mode              silo reads  SSD MiB written  hit ratio  reads/s (5 runs)               hot 32 after remount*
    demote-on-evict   246         245              0.939      1637, 1135**, 1286, 1270, 1479  1 read from the silo
    write-through     246         246              0.939      1564,  983**, 1017, 1134,  934  0

    *  remount without writing RAM at close (the bench's close predates that); with it, 0 for both.
    ** that run used 512 distinct blocks, 6,000 reads (hit ratio 0.88, 711 vs 706 MiB written).

Hit ratio and write volume are the same (RAM is 1/8 of the SSD: nearly every block leaves RAM
sooner or later, so both write it once). Demotion served 10-50 % more reads per second in every run,
either order: write-through puts a disk write beside every silo fetch, at the moment the reader
is busiest with that block. Write-through's one advantage, the SSD holding the RAM's blocks at a
crash, costs the hottest few blocks one silo read each. Hence WRITE_THROUGH = False.
`BlockCache(write_through=True)` keeps the other mode (the bench compares them).

The SSD tier's policy sees RAM hits too (`SsdStore.touch`), so a block hot enough to live in RAM is not
the SSD's first victim in LRU order.

SSD I/O never runs on the trio thread: reads go through `trio.to_thread.run_sync` (under a
CapacityLimiter), writes through one writer thread fed by a bounded queue (`BlockWriter`). A block
waiting in that queue is served from it. An SSD error is a miss (SsdStore logs it; this module also
turns any unexpected exception from the SSD into a logged miss).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterator

import trio

from vfs.cache.block import BlockKey
from vfs.cache.policy import EvictionPolicy, policy_class
from vfs.cache.ram import RamStore
from vfs.cache.ssd import SSD_ERRORS, SsdStore

if TYPE_CHECKING:
    from vfs.cache.cluster import ClusterTier

log = logging.getLogger(__name__)

WRITE_THROUGH = False  # chosen by bench/cache_tiering.py: see the module docstring
SSD_READ_THREADS = 4  # concurrent SSD reads; 2 vCPU here, and the NVMe/virtio queue likes a few in flight
SSD_QUEUE_BYTES = 64 * 2**20  # bytes of evicted blocks waiting for the SSD writer (memory beyond the RAM
# budget); bench/cache_tiering.py measured the writer alone at 50-230 MiB/s on this shared disk, so a
# full queue drains in 0.3-1.3 s; a larger one only buffers a silo faster than the disk (readers then
# wait for room: the queue is never unbounded and no block is lost)
CLUSTER_THREADS = 16  # cluster lookups at once; a lookup may wait up to cluster_lease for another node's fetch
CLUSTER_QUEUE_BYTES = 64 * 2**20  # blocks on their way to the cluster tier; when full, an offer is dropped


def make_policy(policy: str | type[EvictionPolicy], capacity: int) -> EvictionPolicy:
    """A new policy instance for a tier of `capacity` bytes; `policy` is a name, `module:Class` or class."""
    cls = policy_class(policy) if isinstance(policy, str) else policy
    return cls(capacity=capacity)


@dataclasses.dataclass
class WriterStats:
    queued: int = 0
    written: int = 0
    dropped: int = 0
    """Blocks not queued because the writer was closed."""
    waits: int = 0
    """Times a reader waited for room in a full queue (the disk is slower than the silo)."""
    failed: int = 0


class BlockWriter:
    """One thread that hands queued blocks to `put` (the SSD store's, the cluster tier's), in order; the
    queue is bounded in bytes."""

    def __init__(self, put: Callable[[Any, bytes], None], name: str, max_bytes: int = SSD_QUEUE_BYTES) -> None:
        self.put = put
        self.name = name
        self.max_bytes = max_bytes
        self.stats = WriterStats()
        self.queued_bytes = 0
        self._queue: collections.OrderedDict[Any, bytes] = collections.OrderedDict()
        self._inflight: dict[Any, bytes] = {}
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, key: Any, data: bytes) -> bool:
        """Queue a block (non-blocking); False if the queue has no room for it now."""
        with self._cond:
            if self._closed:
                self.stats.dropped += 1
                return True  # nothing to wait for
            if key in self._queue or key in self._inflight:
                return True
            if self.queued_bytes + len(data) > self.max_bytes and self.queued_bytes:
                return False
            self._queue[key] = data
            self.queued_bytes += len(data)
            self.stats.queued += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self._cond.notify()
            return True

    def wait_for_room(self, size: int, timeout: float) -> None:
        """Block until `size` bytes fit in the queue (or it is empty, or closed), at most `timeout` s."""
        with self._cond:
            self.stats.waits += 1
            self._cond.wait_for(lambda: self._closed or not self._queue or self.queued_bytes + size <= self.max_bytes,
                                timeout)

    def pending(self, key: BlockKey) -> bytes | None:
        with self._cond:
            data = self._queue.get(key)
            return data if data is not None else self._inflight.get(key)

    def discard_all(self) -> None:
        with self._cond:
            for data in self._queue.values():
                self.queued_bytes -= len(data)
            self._queue.clear()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued block is written; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._inflight, timeout)

    def close(self, timeout: float | None = None) -> None:
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closed)
                if not self._queue:
                    return
                key, data = self._queue.popitem(last=False)
                self._inflight[key] = data
            try:
                self.put(key, data)
                ok = True
            except Exception:  # the stores log their own errors; anything else is a bug: log, keep writing
                log.exception("%s failed on %r", self.name, key)
                ok = False
            with self._cond:
                del self._inflight[key]
                self.queued_bytes -= len(data)
                if ok:
                    self.stats.written += 1
                else:
                    self.stats.failed += 1
                self._cond.notify_all()


def _tier_stats(store: RamStore | SsdStore) -> dict:
    s = store.stats
    return {**dataclasses.asdict(s), "bytes": store.used, "used": store.used, "capacity": store.capacity,
            "fill": store.used / store.capacity if store.capacity else 0.0, "blocks": len(store),
            "policy": store.policy.name or type(store.policy).__qualname__}


class BlockCache:
    def __init__(self, block_size: int, ram: RamStore, ssd: SsdStore | None = None, *,
                 write_through: bool = WRITE_THROUGH, queue_bytes: int = SSD_QUEUE_BYTES,
                 cluster: ClusterTier | None = None) -> None:
        self.block_size = block_size
        self.ram = ram
        self.ssd = ssd
        self.write_through = write_through
        self.writer = BlockWriter(ssd.put, "vfs-ssd-writer", queue_bytes) if ssd is not None else None
        self.ssd_failures = 0
        self._limiter: trio.CapacityLimiter | None = None
        self.cluster = cluster
        self.offers = (BlockWriter(lambda ks, data: cluster.put(ks[0], ks[1], data), "vfs-cluster-offers",
                                   CLUSTER_QUEUE_BYTES) if cluster is not None else None)
        self.offers_dropped = 0
        """Blocks not offered to the cluster tier: its queue was full."""
        self._cluster_limiter: trio.CapacityLimiter | None = None

    async def get(self, key: BlockKey) -> bytes | None:
        data = self.ram.get(key)
        if self.ssd is None:
            return data
        if data is not None:
            self.ssd.touch(key)  # keeps the SSD copy of a RAM-hot block from aging out (lock, no I/O)
            return data
        assert self.writer is not None
        data = self.writer.pending(key)
        if data is None:
            if self._limiter is None:
                self._limiter = trio.CapacityLimiter(SSD_READ_THREADS)
            try:
                data = await trio.to_thread.run_sync(self.ssd.get, key, limiter=self._limiter)
            except Exception:
                self.ssd_failures += 1
                log.exception("SSD tier failed on get %r; treated as a miss", key)
                return None
            if data is None:
                return None
        await self._to_ram(key, data)
        return data

    async def put(self, key: BlockKey, data: bytes) -> None:
        if type(data) is not bytes:
            data = bytes(data)
        await self._to_ram(key, data)
        if self.writer is not None and (self.write_through or key not in self.ram) and key not in self.ssd:
            await self._to_ssd(key, data)

    async def _to_ram(self, key: BlockKey, data: bytes) -> None:
        victims = self.ram.put(key, data)
        if self.writer is None:
            return
        for victim, old in victims:  # not on the SSD yet: demote it
            if victim not in self.ssd:  # type: ignore[operator]
                await self._to_ssd(victim, old)

    async def _to_ssd(self, key: BlockKey, data: bytes) -> None:
        """Queue a block for the SSD writer; when the queue is full, wait for the disk (backpressure):
        dropping it instead would lose a block from both tiers (measured: half of a 2 GiB pass,
        bench/cache_passes.py, when the writer thread was starved of CPU)."""
        assert self.writer is not None
        while not self.writer.submit(key, data):
            await trio.to_thread.run_sync(self.writer.wait_for_room, len(data), 1.0)

    # --- the cluster tier: after RAM and SSD, before the silo ------------------------------------

    async def from_cluster(self, key: BlockKey, silo: str) -> bytes | None:
        """After a miss in RAM and SSD: the cluster tier's copy of the block, or the copy another node
        is fetching, waited for (its lease); a hit fills the local tiers. None: the caller fetches it
        from the silo and then calls `offer` (or `withdraw` if that fails)."""
        if self.cluster is None:
            return None
        if self._cluster_limiter is None:
            self._cluster_limiter = trio.CapacityLimiter(CLUSTER_THREADS)
        data = await trio.to_thread.run_sync(self._cluster_lookup, key, silo, limiter=self._cluster_limiter)
        if data is not None:
            await self._to_ram(key, data)
        return data

    def _cluster_lookup(self, key: BlockKey, silo: str) -> bytes | None:
        assert self.cluster is not None
        data = self.cluster.get(key, silo)
        return data if data is not None else self.cluster.claim_or_wait(key, silo)

    async def offer(self, key: BlockKey, silo: str, data: bytes) -> None:
        """A block just fetched from the silo, for the cluster tier: queued for a thread of its own (a
        reader never waits for Redis); the lease taken by `from_cluster` goes when it is stored."""
        if self.offers is None:
            return
        if not self.offers.submit((key, silo), data):
            self.offers_dropped += 1
            await self.withdraw(key, silo)

    async def withdraw(self, key: BlockKey, silo: str) -> None:
        """The silo fetch after `from_cluster` failed (or its offer was dropped): let the nodes waiting
        for the block fetch it themselves now."""
        if self.cluster is not None:
            await trio.to_thread.run_sync(self.cluster.release, key, silo, limiter=self._cluster_limiter)

    @contextlib.contextmanager
    def pinned(self, key: BlockKey) -> Iterator[None]:
        """Keep `key` from being chosen as a victim in every tier while the block is in use."""
        self.ram.pin(key)
        if self.ssd is not None:
            self.ssd.pin(key)
        try:
            yield
        finally:
            self.ram.unpin(key)
            if self.ssd is not None:
                self.ssd.unpin(key)

    async def clear(self, tier: str | None = None) -> dict[str, int]:
        """Drop every block of `tier` ("ram", "ssd") or of both (None); return blocks dropped per tier."""
        if tier not in (None, "ram", "ssd"):
            raise ValueError(f"unknown cache tier {tier!r}; ram or ssd")
        dropped: dict[str, int] = {}
        if tier in (None, "ram"):
            dropped["ram"] = self.ram.clear()
        if tier in (None, "ssd") and self.ssd is not None:
            assert self.writer is not None
            self.writer.discard_all()
            dropped["ssd"] = await trio.to_thread.run_sync(self._clear_ssd)
        return dropped

    def _clear_ssd(self) -> int:
        assert self.writer is not None and self.ssd is not None
        self.writer.flush()  # a write in flight lands, then goes with the rest
        return self.ssd.clear()

    async def flush(self) -> None:
        """Wait until every block queued for the SSD is written."""
        if self.writer is not None:
            await trio.to_thread.run_sync(self.writer.flush)

    def close(self) -> None:
        """Write what is queued and what is only in RAM, stop the writer, close the SSD store (unmount;
        blocks the calling thread)."""
        if self.offers is not None and self.cluster is not None:
            self.offers.close(timeout=5.0)
            self.cluster.close()
        if self.writer is not None:
            self.writer.close()
            assert self.ssd is not None
            for key, data in self.ram.items():
                if key not in self.ssd:
                    self.ssd.put(key, data)
        if self.ssd is not None:
            self.ssd.close()

    @property
    def capacity(self) -> int:
        """Bytes both tiers hold at most."""
        return self.ram.capacity + (self.ssd.capacity if self.ssd is not None else 0)

    def stats(self) -> dict[str, dict]:
        out: dict[str, dict] = {"ram": _tier_stats(self.ram)}
        if self.ssd is not None and self.writer is not None:
            out["ssd"] = {**_tier_stats(self.ssd), "errors": self.ssd.errors + self.ssd_failures,
                          "corrupt": self.ssd.corrupt, "directory": self.ssd.directory, "budget": self.ssd.budget,
                          "disk_full": self.ssd.disk_full, "orphans": self.ssd.orphans,
                          "damaged_db": self.ssd.damaged_db, "off": self.ssd.off}
            out["ssd_writer"] = {**dataclasses.asdict(self.writer.stats), "queued_bytes": self.writer.queued_bytes,
                                 "write_through": self.write_through}
        if self.cluster is not None:
            out["cluster"] = {**self.cluster.stats(), "offers_dropped": self.offers_dropped}
        return out


def build_cache(block_size: int, ram_size: int, ram_policy: str, ssd_dir: str | None, ssd_size: int,
                ssd_policy: str, cluster: ClusterTier | None = None) -> BlockCache:
    """The cache the `[cache]` table describes; no SSD tier when ssd_dir is empty, ssd_size is 0 or the
    directory cannot be used; the cluster tier if `open_cluster` gave one."""
    if block_size <= 0 or ram_size < 0 or ssd_size < 0:
        raise ValueError("cache sizes must be positive")
    ram = RamStore(ram_size, make_policy(ram_policy, ram_size))
    ssd = None
    if ssd_dir and ssd_size > 0:
        ssd = open_ssd(ssd_dir, ssd_size, make_policy(ssd_policy, ssd_size))
    return BlockCache(block_size, ram, ssd, cluster=cluster)


def open_cluster(url: str, *, password: str, password_file: str, tls: bool, timeout: float, lease: float,
                 block_size: int) -> ClusterTier | None:
    """The cluster tier on the Redis Cluster at `url`, or None (one warning saying why: an unreadable
    password file, a wrong password, no node answering) so that the mount runs without it."""
    if not url:
        return None
    if password_file:
        try:
            with open(os.path.expanduser(password_file)) as f:
                password = f.readline().rstrip("\r\n")
        except OSError as exc:
            log.warning("cluster tier off: password file %s: %s", password_file, exc.strerror)
            return None
    from vfs.cache.cluster import ClusterTier  # the Redis client is imported only where a cluster is configured

    return ClusterTier.connect(url, password=password or None, tls=tls, timeout=timeout, lease_seconds=lease,
                               block_size=block_size)


def open_ssd(ssd_dir: str, ssd_size: int, policy: EvictionPolicy) -> SsdStore | None:
    """The SSD tier, or None (one warning) when its directory cannot be used: another user's, not
    writable, in use by another vfs process, or refused by sqlite. The mount then serves from RAM and
    the silo; a damaged cache.db is no reason (SsdStore sets it aside and starts empty)."""
    try:
        return SsdStore(ssd_dir, ssd_size, policy)
    except SSD_ERRORS as exc:
        log.warning("SSD tier off: %s cannot be used (%s); blocks are cached in RAM only", ssd_dir, exc)
        return None
