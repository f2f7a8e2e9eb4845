"""Directory read-ahead for small files: when a reader works through the small files of a directory
(a DataLoader's epoch, `cp -r`, `grep -r`), fetch the directory's other small files before it asks.

Reading small files one after another leaves a silo idle between them: four DataLoader workers keep
four GETs in flight, whatever the silo could serve. The signal is SWEEP_AFTER distinct files of one
directory opened for reading; then every file of that directory no larger than a block (as listed,
from the metadata cache: no extra request) is fetched whole into the block cache through the reader,
SWEEP_PARALLEL GETs at a time for the whole mount, in listing order. A directory is swept at most
once per listing TTL, and only if its small files fit in a quarter of the block cache, so a sweep
never evicts what it has just fetched nor a working set for a directory nobody reads through.
"""

from __future__ import annotations

import logging
import time

import cachetools
import trio

from vfs.metadata import MetadataCache
from vfs.mount_table import Mount, parent_of
from vfs.mounts.base import ObjectMeta
from vfs.reader import Reader

log = logging.getLogger(__name__)

SWEEP_AFTER = 2  # distinct files of one directory opened before it is swept
SWEEP_PARALLEL = 16  # whole-file GETs in flight for the whole mount (a backend's default SDK threads)
REMEMBERED_DIRS = 10_000


class Sweep:
    def __init__(self, meta: MetadataCache, reader: Reader) -> None:
        self.meta = meta
        self.reader = reader
        self._opened: cachetools.LRUCache[tuple[str, str], set[str]] = cachetools.LRUCache(REMEMBERED_DIRS)
        self._swept: cachetools.LRUCache[tuple[str, str], float] = cachetools.LRUCache(REMEMBERED_DIRS)
        self._slots = trio.Semaphore(SWEEP_PARALLEL)
        self._nursery: trio.Nursery | None = None
        self.files = 0
        """Files fetched by sweeps (counted when started)."""

    def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    def opened(self, mount: Mount, path: str) -> None:
        """A file of `mount` (inner path) is being read for the first time by a handle."""
        if self._nursery is None:
            return
        directory = parent_of("/" + path).lstrip("/")
        key = (mount.path, directory)
        if key in self._swept and time.monotonic() - self._swept[key] < mount.ttl:
            return
        seen = self._opened.setdefault(key, set())
        seen.add(path)
        if len(seen) < SWEEP_AFTER:
            return
        listing = self.meta.cached_listing(mount, directory)
        if listing is None:
            return
        small = [m for m in listing.values() if not m.is_dir and 0 < m.size <= self.reader.block_size
                 and m.path not in seen]
        if sum(m.size for m in small) > self.reader.cache.capacity // 4:
            return
        del self._opened[key]
        self._swept[key] = time.monotonic()
        log.debug("sweeping %d small files of %s:%s", len(small), mount.path, directory)
        self._nursery.start_soon(self._sweep, mount, small)

    async def _sweep(self, mount: Mount, files: list[ObjectMeta]) -> None:
        async with trio.open_nursery() as nursery:
            for m in files:
                await self._slots.acquire()  # released by the fetch: one task per GET in flight
                self.files += 1
                nursery.start_soon(self._fetch, mount, m)

    async def _fetch(self, mount: Mount, m: ObjectMeta) -> None:
        try:
            await self.reader.fetch_whole(mount, m.path, m.version, m.size)
        finally:
            self._slots.release()
