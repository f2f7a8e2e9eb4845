"""Walk-ahead: when a tree is being walked (`find`, `du`, `ls -R`, a DataLoader indexing a dataset),
list the next directories before the walker asks for them, several at a time.

The signal is a directory listed and then one of its subdirectories listed: a walker will list the
siblings next. Their listings are started in the background (through the metadata cache, so a
walker arriving meanwhile joins the listing in flight) with at most WALK_AHEAD_PARALLEL requests in
flight for the whole mount, and at most WALK_AHEAD_MAX siblings per directory, so an `ls` of a
directory with a million prefixes does not turn into a million requests.
"""

from __future__ import annotations

import logging

import cachetools
import trio

from vfs.metadata import MetadataCache
from vfs.mount_table import MountTable, child_of, parent_of

log = logging.getLogger(__name__)

# 8 listings in flight: with 20 ms round trips a walk of 100 directories takes ~13 rounds instead of 100,
# and 8 stays well under a backend's 16 SDK threads, leaving room for reads.
WALK_AHEAD_PARALLEL = 8
WALK_AHEAD_MAX = 1000  # siblings listed ahead per directory at most
REMEMBERED_DIRS = 10_000  # directories whose subdirectory names are kept to detect a walk


class WalkAhead:
    def __init__(self, table: MountTable, meta: MetadataCache) -> None:
        self.table = table
        self.meta = meta
        self._subdirs: cachetools.LRUCache[str, tuple[str, ...]] = cachetools.LRUCache(REMEMBERED_DIRS)
        self._started: cachetools.LRUCache[str, bool] = cachetools.LRUCache(REMEMBERED_DIRS)
        self._limiter = trio.CapacityLimiter(WALK_AHEAD_PARALLEL)
        self._nursery: trio.Nursery | None = None
        self.listings = 0

    def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    def listed(self, path: str, subdirs: list[str]) -> None:
        """Directory `path` was listed and holds these subdirectories."""
        self._subdirs[path] = tuple(subdirs)
        parent = parent_of(path)
        if path == "/" or self._nursery is None or parent in self._started or parent not in self._subdirs:
            return
        self._started[parent] = True
        for name in self._subdirs[parent][:WALK_AHEAD_MAX]:
            sibling = child_of(parent, name)
            if sibling != path and not self.table.is_overlay(sibling):
                self._nursery.start_soon(self._list, sibling)

    async def _list(self, path: str) -> None:
        routed = self.table.route(path)
        if routed is None:
            return
        async with self._limiter:
            try:
                await self.meta.list_dir(*routed)
                self.listings += 1
            except OSError as exc:  # the walker will meet the error itself, if it gets there
                log.debug("walk-ahead listing of %s: %s", path, exc)
