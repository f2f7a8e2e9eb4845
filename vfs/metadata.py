"""The metadata cache: what silos said about paths and directories, trusted for a TTL.

A directory listing fills the metadata of every child, so `ls -l` and a DataLoader's stat storm cost
one listing, not one HEAD per file. A fresh listing also answers "no such name" for its directory.
A directory that was listed once is listed again when its listing expires and a child is asked
for, rather than answering each child with a HEAD: an epoch that outlasts the TTL still costs
one listing per directory per TTL. A directory whose names are asked about `LIST_AFTER` times
before it was ever listed (`cp -r` into it asks about each new name) is listed then, and the
listing answers the rest; what vfs creates there is added to it (`learned`).
Misses are remembered for the mount's negative TTL. Concurrent questions about one path share one
request (single-flight). Entries are bounded in number.

Offline mode: expired entries are kept (until the LRU bound drops them), and while a silo cannot be
reached (vfs/mounts/health.py, `[metadata] offline = "auto"`) a question whose answer expired is
answered from them, listings and misses included; the kernel is told to keep such answers for
`STALE_TTL` at most, so the silo's fresh answers show soon after it returns. What was never seen
fails with the silo's error (EHOSTDOWN).
"""

from __future__ import annotations

import dataclasses
import errno
import time
from typing import Callable, TypeVar

import cachetools

from vfs.mount_table import Mount
from vfs.mounts.base import ObjectMeta, not_found
from vfs.mounts.health import unreachable
from vfs.singleflight import SingleFlight

# Upper bounds on remembered entries: a 100k-file dataset's metadata is ~30 MB of Python objects.
MAX_ENTRIES = 1_000_000
MAX_LISTINGS = 20_000
# Names per directory whose creation or removal by vfs is remembered for listings that race them.
MAX_MADE = 1000
# Questions about names in one directory not listed yet after which the directory is listed instead.
LIST_AFTER = 3
# Seconds the kernel may keep an answer served from an expired entry while the silo is offline.
STALE_TTL = 1.0


@dataclasses.dataclass(frozen=True, slots=True)
class _Entry:
    meta: ObjectMeta | None  # None: known missing
    expires: float


@dataclasses.dataclass(frozen=True, slots=True)
class _Listing:
    children: dict[str, ObjectMeta]
    expires: float


_E = TypeVar("_E", _Entry, _Listing)


class MetadataCache:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._entries: cachetools.LRUCache[tuple[str, str], _Entry] = cachetools.LRUCache(MAX_ENTRIES)
        self._listings: cachetools.LRUCache[tuple[str, str], _Listing] = cachetools.LRUCache(MAX_LISTINGS)
        self._stat_flights: SingleFlight[tuple[str, str], ObjectMeta] = SingleFlight()
        self._list_flights: SingleFlight[tuple[str, str], dict[str, ObjectMeta]] = SingleFlight()
        self._changed: cachetools.LRUCache[tuple[str, str], int] = cachetools.LRUCache(MAX_LISTINGS)
        """Directories vfs changed (`learned`, `removed`, `invalidate*`): the sequence number of the
        last change. An answer asked for before a change of its directory is not stored: it may
        predate the change (a listing taken before a commit landed would hide the new file)."""
        self._seq = 0
        self._invalidated: cachetools.LRUCache[tuple[str, str], int] = cachetools.LRUCache(MAX_LISTINGS)
        self._made: cachetools.LRUCache[tuple[str, str], dict[str, tuple[int, ObjectMeta | None]]] = \
            cachetools.LRUCache(MAX_LISTINGS)
        """Per directory, what vfs itself made or removed there lately (name -> (sequence, metadata or
        None)): a listing that raced those changes is stored with them applied."""
        self._asked: cachetools.LRUCache[tuple[str, str], tuple[int, float]] = cachetools.LRUCache(MAX_LISTINGS)
        """Directories not listed yet: how often their names were asked about, since when."""

    def _bump(self, mount: Mount, *dirs: str, invalidated: bool = True) -> None:
        for d in dirs:
            self._seq += 1
            self._changed[(mount.path, d)] = self._seq
            if invalidated:
                self._invalidated[(mount.path, d)] = self._seq

    def _mark(self, mount: Mount, directory: str) -> int:
        return self._changed.get((mount.path, directory), 0)

    def _made_here(self, mount: Mount, path: str, meta: ObjectMeta | None) -> None:
        parent, _, name = path.rpartition("/")
        self._bump(mount, parent, invalidated=False)
        made = self._made.setdefault((mount.path, parent), {})
        made[name] = (self._seq, meta)
        if len(made) > MAX_MADE:
            del made[next(iter(made))]

    def _since(self, mount: Mount, directory: str, mark: int) -> dict[str, ObjectMeta | None] | None:
        """What vfs made or removed in `directory` after `mark`; None if it changed in other ways too
        (an invalidation: nothing raced can be kept)."""
        if self._invalidated.get((mount.path, directory), 0) > mark:
            return None
        return {name: meta for name, (seq, meta) in self._made.get((mount.path, directory), {}).items() if seq > mark}

    def invalidate(self, mount: Mount, path: str) -> None:
        """Forget what is known of `path` and of the listing that holds it."""
        self._bump(mount, path, path.rpartition("/")[0])
        self._entries.pop((mount.path, path), None)
        self._listings.pop((mount.path, path), None)
        self._listings.pop((mount.path, path.rpartition("/")[0]), None)

    def learned(self, mount: Mount, meta: ObjectMeta) -> None:
        """vfs itself made `meta` so (a commit, a mkdir): remember it, and in a fresh parent listing."""
        self._made_here(mount, meta.path, meta)
        if mount.ttl <= 0:
            return
        self._entries[(mount.path, meta.path)] = _Entry(meta, self.clock() + mount.ttl)
        parent, _, name = meta.path.rpartition("/")
        listing = self._fresh_listing(mount, parent)
        if listing is not None:
            self._listings[(mount.path, parent)] = _Listing({**listing.children, name: meta}, listing.expires)

    def removed(self, mount: Mount, path: str) -> None:
        """vfs itself removed `path` (and anything below it): forget it, and remember it is gone."""
        self.invalidate_tree(mount, path)
        parent, _, name = path.rpartition("/")
        listing = self._fresh_listing(mount, parent)
        if listing is not None and name in listing.children:
            children = dict(listing.children)
            del children[name]
            self._listings[(mount.path, parent)] = _Listing(children, listing.expires)
        self._made_here(mount, path, None)
        if mount.negative_ttl > 0:
            self._entries[(mount.path, path)] = _Entry(None, self.clock() + mount.negative_ttl)

    def invalidate_tree(self, mount: Mount, path: str) -> None:
        """Forget `path`, everything below it and the listing that holds it (a rename, an rmdir)."""
        prefix = path + "/" if path else ""
        below = [k[1] for k in self._changed if k[0] == mount.path and k[1].startswith(prefix)]
        self._bump(mount, path, path.rpartition("/")[0], *below)
        for cache in (self._entries, self._listings):
            for key in [k for k in cache if k[0] == mount.path and (k[1] == path or k[1].startswith(prefix))]:
                cache.pop(key, None)
        self._listings.pop((mount.path, path.rpartition("/")[0]), None)

    def known(self) -> tuple[list[tuple[str, ObjectMeta]], list[tuple[str, str, list[ObjectMeta]]]]:
        """Everything known (expired or not, misses left out): (mount path, metadata) of each entry,
        (mount path, directory, children) of each listing; for vfs/metadata_store.py."""
        entries = [(mount, e.meta) for (mount, _), e in self._entries.items() if e.meta is not None]
        listings = [(mount, path, list(listing.children.values())) for (mount, path), listing in self._listings.items()]
        return entries, listings

    def restore(self, mount: Mount, meta: ObjectMeta) -> None:
        """Remember `meta` from an earlier run, expired: it answers only while the silo is offline."""
        self._entries.setdefault((mount.path, meta.path), _Entry(meta, float("-inf")))

    def restore_listing(self, mount: Mount, path: str, children: list[ObjectMeta]) -> None:
        """Remember a listing from an earlier run, expired (as `restore`)."""
        self._listings.setdefault((mount.path, path), _Listing({m.name: m for m in children}, float("-inf")))

    def expires_in(self, mount: Mount, path: str) -> float:
        """Seconds until what is known of `path` expires (what the kernel may keep it for)."""
        now = self.clock()
        entry = self._entries.get((mount.path, path))
        if entry is not None and entry.expires > now:
            return entry.expires - now
        return self.listing_expires_in(mount, path.rpartition("/")[0]) if path else self._unknown_ttl(mount)

    def listing_expires_in(self, mount: Mount, path: str) -> float:
        """Seconds until the listing of directory `path` expires."""
        listing = self._fresh_listing(mount, path)
        return listing.expires - self.clock() if listing is not None else self._unknown_ttl(mount)

    @staticmethod
    def _unknown_ttl(mount: Mount) -> float:
        """How long the kernel may keep an answer vfs holds no fresh entry for (stale while offline)."""
        return min(mount.ttl, STALE_TTL) if mount.backend.health.serves_stale else mount.ttl

    def cached_listing(self, mount: Mount, path: str) -> dict[str, ObjectMeta] | None:
        """The children of directory `path` if a listing of it is fresh, without asking the silo."""
        listing = self._fresh_listing(mount, path)
        return listing.children if listing is not None else None

    def _fresh_listing(self, mount: Mount, path: str) -> _Listing | None:
        listing = self._listings.get((mount.path, path))
        if listing is not None and listing.expires > self.clock():
            return listing
        return None

    async def stat(self, mount: Mount, path: str) -> ObjectMeta:
        """Metadata of a backend path; ENOENT (possibly remembered) if missing."""
        now = self.clock()
        entry = self._entries.get((mount.path, path))
        if entry is not None and entry.expires > now:
            if entry.meta is None:
                raise not_found(f"{mount.path}: {path}")
            return entry.meta
        if path:
            parent, _, name = path.rpartition("/")
            listing = self._fresh_listing(mount, parent)
            if listing is None and ((mount.path, parent) in self._listings  # listed before, expired
                                    or self._asked_often(mount, parent)):
                try:
                    children: dict[str, ObjectMeta] | None = await self.list_dir(mount, parent)
                except OSError:
                    children = None  # ask about the path itself below
            else:
                children = None if listing is None else listing.children
            if children is not None:
                if name in children:
                    return children[name]
                raise not_found(f"{mount.path}: {path}")

        async def ask() -> ObjectMeta:
            mark = self._mark(mount, path.rpartition("/")[0])
            try:
                meta = await mount.backend.stat(path)
            except OSError as exc:
                if (exc.errno == errno.ENOENT and mount.negative_ttl > 0
                        and self._mark(mount, path.rpartition("/")[0]) == mark):
                    self._entries[(mount.path, path)] = _Entry(None, self.clock() + mount.negative_ttl)
                stale = self._stale(mount, exc, self._entries.get((mount.path, path)))
                if stale is None:
                    raise
                if stale.meta is None:
                    raise not_found(f"{mount.path}: {path}") from exc
                return stale.meta
            if mount.ttl > 0 and self._mark(mount, path.rpartition("/")[0]) == mark:
                self._entries[(mount.path, path)] = _Entry(meta, self.clock() + mount.ttl)
            return meta

        return await self._stat_flights.do((mount.path, path), ask)

    def _asked_often(self, mount: Mount, parent: str) -> bool:
        """Whether names in `parent` (not listed yet) were asked about `LIST_AFTER` times within a TTL:
        then one listing answers them and the names to come (`cp -r` into a directory asks about every
        new name before creating it), instead of a request per name."""
        if mount.ttl <= 0:
            return False
        key = (mount.path, parent)
        now = self.clock()
        count, since = self._asked.get(key, (0, now))
        if now - since > mount.ttl:
            count, since = 0, now
        self._asked[key] = (count + 1, since)
        return count + 1 >= LIST_AFTER

    async def list_dir(self, mount: Mount, path: str) -> dict[str, ObjectMeta]:
        """Children of a backend directory by name, each child's metadata remembered too."""
        listing = self._fresh_listing(mount, path)
        if listing is not None:
            return listing.children

        async def ask() -> dict[str, ObjectMeta]:
            mark = self._mark(mount, path)
            try:
                found = await mount.backend.list_dir(path)
            except OSError as exc:
                stale = self._stale(mount, exc, self._listings.get((mount.path, path)))
                if stale is None:
                    raise
                return stale.children
            children = {m.name: m for m in found}
            raced = self._since(mount, path, mark) if self._mark(mount, path) != mark else {}
            if raced:  # vfs made or removed names here while the silo answered: theirs are newer
                for name, made in raced.items():
                    if made is None:
                        children.pop(name, None)
                    else:
                        children[name] = made
            if mount.ttl > 0 and raced is not None:
                expires = self.clock() + mount.ttl
                self._listings[(mount.path, path)] = _Listing(children, expires)
                for meta in children.values():
                    self._entries[(mount.path, meta.path)] = _Entry(meta, expires)
            return children

        return await self._list_flights.do((mount.path, path), ask)

    @staticmethod
    def _stale(mount: Mount, exc: OSError, kept: _E | None) -> _E | None:
        """`kept` (an expired entry or listing) if it may answer for a silo that failed with `exc`."""
        if kept is not None and unreachable(exc) and mount.backend.health.fail_fast:
            return kept
        return None

