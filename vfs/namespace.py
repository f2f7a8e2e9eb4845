"""The namespace: the core of vfs that the FUSE adapter calls, with no kernel in sight.

It ties the mount table (which silo serves a path), the inode table (what the kernel holds) and the
metadata cache (what the silos said, and for how long) together, and hands file reads to the reader.
Every method takes and returns plain Python values; errors are OSError with an errno.

`/.vfs/stats` is vfs's own read-only file: JSON counters of every tier and backend, made afresh at
each open (at most once a second without opens). `/.vfs` is left out of the root's listing but
found by path.

Opens come in two modes (`[fuse] pin_handle_version`):
- without opens (the default): `open` answers ENOSYS, so the kernel opens every file by itself
  (FUSE no_open), sends no OPEN or RELEASE, keeps the file's pages, and passes the inode number to
  `read` (pyfuse3 patched by scripts/setup). A read serves the version of the file the kernel was
  last told of by a lookup/getattr/readdir reply; telling it of a new version drops its pages
  (`invalidate_kernel`), and blocks are keyed by version, so no read returns bytes of two versions.
- pinned: every open makes a reader handle pinned to the version current at open, released at
  close; `keep_cache` only while that version is the one whose pages the kernel holds.

Lock order: there are no locks; every method runs on the trio thread and keeps the tables consistent
between awaits (a node is assigned and referenced with no await in between).
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import itertools
import json
import logging
import os
import time
from typing import Awaitable, Callable

import trio

from vfs.inodes import Inode, InodeTable
from vfs.metadata import MetadataCache
from vfs.mount_table import MountTable, child_of, parent_of
from vfs.mounts.base import ObjectMeta
from vfs.reader import Reader
from vfs.sweep import Sweep
from vfs.walk_ahead import WalkAhead

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """Attributes of one inode, as the adapter needs them."""

    ino: int
    is_dir: bool
    size: int
    mtime_ns: int
    timeout: float
    """Seconds the kernel may keep this entry and its attributes."""


@dataclasses.dataclass(frozen=True, slots=True)
class DirHandle:
    path: str
    entries: list[tuple[str, ObjectMeta, float]]  # name, meta, timeout; offsets are indexes + 2


@dataclasses.dataclass(frozen=True, slots=True)
class OpenFile:
    fh: int
    keep_cache: bool
    """The kernel may keep the pages it cached of this inode (the version has not changed)."""
    direct_io: bool = False
    """Bypass the page cache and the file size (vfs's own files, whose size is known only once read)."""


CONTROL_DIR = "/.vfs"
STATS_FILE = "/.vfs/stats"
_VIRTUAL_FH = 1 << 62  # handles of vfs's own files, apart from the reader's
STATS_REFRESH = 1.0  # seconds one rendering of the stats file is served without opens (one `cat`)


def _error(err: int, what: str) -> OSError:
    return OSError(err, os.strerror(err), what)


class Namespace:
    def __init__(self, table: MountTable, reader: Reader, default_ttl: float, metadata: MetadataCache | None = None,
                 opens: bool = True) -> None:
        self.table = table
        self.opens = opens
        """False: files are opened by the kernel alone and `read` gets inode numbers (module doc)."""
        self.invalidate_kernel: Callable[[int], Awaitable[None]] | None = None
        """Set by the adapter: drop the kernel's cached pages and attributes of an inode."""
        self._nursery: trio.Nursery | None = None
        self.requests: collections.Counter[str] = collections.Counter()
        """FUSE requests by operation, counted by the adapter (shown in the stats file)."""
        self._ino_handles: dict[int, int] = {}  # without opens: inode -> reader handle of its told version
        self._stats_file: tuple[float, bytes, int] = (-STATS_REFRESH, b"", 0)  # monotonic, bytes, mtime_ns
        self.reader = reader
        self.default_ttl = default_ttl
        self.inodes = InodeTable()
        self.meta = metadata or MetadataCache()
        self.walk = WalkAhead(table, self.meta)
        self.sweep = Sweep(self.meta, reader)
        self._dirs: dict[int, DirHandle] = {}
        self._dir_ids = itertools.count(1)
        self._virtual: dict[int, bytes] = {}
        self._virtual_ids = itertools.count(_VIRTUAL_FH)
        self.started = time.monotonic()

    def start(self, nursery: trio.Nursery) -> None:
        """Background work (prefetch of blocks, walk-ahead listings) runs in this nursery."""
        self._nursery = nursery
        self.reader.start(nursery)
        self.walk.start(nursery)
        self.sweep.start(nursery)

    # --- resolving paths -------------------------------------------------------------------------

    def _node(self, ino: int) -> Inode:
        try:
            return self.inodes.get(ino)
        except KeyError:
            raise _error(errno.ESTALE, f"inode {ino}") from None

    async def _resolve(self, path: str) -> tuple[ObjectMeta, float]:
        """Metadata of a tree path and how long the kernel may trust it."""
        if path == CONTROL_DIR:
            return ObjectMeta(".vfs", True), self.default_ttl
        if path == STATS_FILE:
            if self.opens:  # made at each open, read with direct_io: the size is unknown here
                return ObjectMeta("stats", False, 0), 0.0
            _, data, mtime_ns = self._stats_rendering()
            return ObjectMeta("stats", False, len(data), mtime_ns, str(mtime_ns)), 0.0
        if self.table.is_overlay(path):  # mount points and the directories leading to them
            mount = self.table.by_path.get(path)
            return ObjectMeta("", True), mount.ttl if mount else self.default_ttl
        routed = self.table.route(path)
        if routed is None:
            raise _error(errno.ENOENT, path)
        mount, inner = routed
        meta = await self.meta.stat(mount, inner)
        # The kernel keeps the entry only as long as vfs itself still trusts it, never a whole TTL more.
        return meta, min(mount.ttl, self.meta.expires_in(mount, inner))

    def _entry(self, node: Inode, meta: ObjectMeta, timeout: float) -> Entry:
        """The attributes the kernel is about to be told; for a file, also the version reads serve."""
        mtime = meta.mtime_ns if meta.mtime_ns is not None else self.table.started_ns
        if not meta.is_dir:
            told, node.told = node.told, meta
            if told is not None and told.version != meta.version and not self.opens and node.path != STATS_FILE:
                self._invalidate(node.ino)  # the kernel drops pages itself only if size or mtime changed
        return Entry(node.ino, meta.is_dir, 0 if meta.is_dir else meta.size, mtime, timeout)

    def _known(self, path: str, meta: ObjectMeta, timeout: float) -> Entry:
        """An entry for a path, referenced once for the kernel."""
        node = self.inodes.assign(path, meta.is_dir)
        self.inodes.ref(node)
        return self._entry(node, meta, timeout)

    # --- the operations --------------------------------------------------------------------------

    async def lookup(self, parent_ino: int, name: str) -> Entry:
        parent = self._node(parent_ino)
        if name == ".":
            path = parent.path
        elif name == "..":
            path = parent_of(parent.path)
        else:
            path = child_of(parent.path, name)
        meta, timeout = await self._resolve(path)
        return self._known(path, meta, timeout)

    def negative_timeout(self, parent_ino: int) -> float:
        """How long the kernel may remember that a name under this directory does not exist."""
        try:
            routed = self.table.route(self.inodes.get(parent_ino).path)
        except KeyError:
            return 0.0
        return routed[0].negative_ttl if routed else self.default_ttl

    async def getattr(self, ino: int) -> Entry:
        node = self._node(ino)
        meta, timeout = await self._resolve(node.path)
        if meta.is_dir != node.is_dir:
            raise _error(errno.ESTALE, f"{node.path} changed kind")
        return self._entry(node, meta, timeout)

    def forget(self, ino: int, n: int) -> None:
        self.inodes.forget(ino, n)
        if ino in self._ino_handles and not self.inodes.known(ino):
            self.reader.release(self._ino_handles.pop(ino))

    def _invalidate(self, ino: int) -> None:
        if self._nursery is not None and self.invalidate_kernel is not None:
            self._nursery.start_soon(self.invalidate_kernel, ino)

    async def opendir(self, ino: int) -> int:
        node = self._node(ino)
        if not node.is_dir:
            raise _error(errno.ENOTDIR, node.path)
        children: dict[str, tuple[ObjectMeta, float]] = {}
        routed = self.table.route(node.path)
        if node.path == CONTROL_DIR:
            children["stats"] = (ObjectMeta("stats", False, 0), 0.0)
        elif routed is not None:
            mount, inner = routed
            try:
                listing = await self.meta.list_dir(mount, inner)
            except OSError as exc:
                if not (self.table.is_overlay(node.path) and exc.errno in (errno.ENOENT, errno.ENOTDIR)):
                    raise
                listing = {}
            timeout = min(mount.ttl, self.meta.listing_expires_in(mount, inner))
            children = {name: (meta, timeout) for name, meta in listing.items()}
            self.walk.listed(node.path, [name for name, meta in listing.items() if meta.is_dir])
        if node.path == "/":
            children.pop(".vfs", None)  # vfs's own directory: found by path, never listed
        for name in self.table.overlay(node.path):
            mount = self.table.by_path.get(child_of(node.path, name))
            children[name] = (ObjectMeta(name, True), mount.ttl if mount else self.default_ttl)
        fh = next(self._dir_ids)
        self._dirs[fh] = DirHandle(node.path, [(n, m, t) for n, (m, t) in sorted(children.items())])
        return fh

    def readdir(self, fh: int, start: int, reply: Callable[[str, Entry, int], bool]) -> None:
        """Offer entries from offset `start` to `reply(name, entry, next_offset)` until it says no.

        Offsets 0 and 1 are '.' and '..' (which the kernel never counts as lookups); entry i of the
        snapshot taken at opendir is offset i + 2, so offsets stay stable while the handle lives.
        Other entries are referenced for the kernel only when `reply` took them (readdirplus).
        """
        handle = self._dirs.get(fh)
        if handle is None:
            raise _error(errno.EBADF, f"directory handle {fh}")
        for offset in range(start, len(handle.entries) + 2):
            if offset < 2:
                node = self.inodes.assign(handle.path if offset == 0 else parent_of(handle.path), True)
                taken = reply("." if offset == 0 else "..", self._entry(node, ObjectMeta("", True), 0), offset + 1)
                self.inodes.drop_unused(node)  # the kernel takes no reference on '.' and '..'
                if not taken:
                    return
                continue
            name, meta, timeout = handle.entries[offset - 2]
            node = self.inodes.assign(child_of(handle.path, name), meta.is_dir)
            if not reply(name, self._entry(node, meta, timeout), offset + 1):
                self.inodes.drop_unused(node)
                return
            self.inodes.ref(node)

    def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    async def open(self, ino: int, flags: int) -> OpenFile:
        """Open a file for reading."""
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise _error(errno.EROFS, self._node(ino).path)
        node = self._node(ino)
        if node.is_dir:
            raise _error(errno.EISDIR, node.path)
        if not self.opens:  # the kernel opens files by itself from now on (FUSE no_open)
            raise _error(errno.ENOSYS, f"{node.path}: opened without vfs")
        if node.path == STATS_FILE:
            fh = next(self._virtual_ids)
            self._virtual[fh] = self._render_stats()
            return OpenFile(fh, keep_cache=False, direct_io=True)
        routed = self.table.route(node.path)
        if routed is None:
            raise _error(errno.EISDIR, node.path)
        mount, inner = routed
        meta = await self.meta.stat(mount, inner)
        if meta.is_dir:
            raise _error(errno.EISDIR, node.path)
        keep_cache = node.page_version == meta.version
        node.page_version = meta.version
        self.sweep.opened(mount, inner)
        return OpenFile(self.reader.open(mount.path, mount.backend, inner, meta.version, meta.size), keep_cache)

    async def read(self, fh: int, offset: int, size: int) -> bytes | memoryview:
        """Bytes of an open handle or, without opens, of the inode numbered `fh`."""
        if not self.opens:
            ino, fh = fh, await self._inode_handle(fh)
            if fh is None:  # vfs's own stats file
                return self._stats_rendering()[1][offset:offset + size]
        elif fh >= _VIRTUAL_FH:
            return self._virtual[fh][offset:offset + size]
        h = self.reader.handles.get(fh)
        if h is None:
            raise _error(errno.EBADF, f"file handle {fh}")
        try:
            return await self.reader.read(fh, offset, size)
        except OSError as exc:
            if exc.errno == errno.ESTALE:  # the next open (lookup, without opens) sees the new version
                self.meta.invalidate(self.table.by_path[h.mount], h.path)
                if not self.opens:
                    self._invalidate(ino)
            raise

    async def _inode_handle(self, ino: int) -> int | None:
        """Without opens: the reader handle of the version the kernel was told of for this inode."""
        node = self._node(ino)
        if node.path == STATS_FILE:
            return None
        routed = self.table.route(node.path)
        if node.is_dir or routed is None:
            raise _error(errno.EISDIR, node.path)
        mount, inner = routed
        meta = node.told or (await self._resolve(node.path))[0]
        fh = self._ino_handles.get(ino)
        h = self.reader.handles.get(fh) if fh is not None else None
        if h is None or h.version != meta.version:
            if fh is not None:
                self.reader.release(fh)
            fh = self._ino_handles[ino] = self.reader.open(mount.path, mount.backend, inner, meta.version, meta.size)
            self.sweep.opened(mount, inner)
        return fh

    def release(self, fh: int) -> None:
        if fh >= _VIRTUAL_FH:
            self._virtual.pop(fh, None)
            return
        self.reader.release(fh)

    def _render_stats(self) -> bytes:
        return json.dumps(self.stats(), indent=1, sort_keys=True).encode() + b"\n"

    def _stats_rendering(self) -> tuple[float, bytes, int]:
        """The stats file as served without opens: one rendering kept STATS_REFRESH seconds, so a
        reader sees one size and one content from its stat to its last read."""
        if time.monotonic() - self._stats_file[0] >= STATS_REFRESH:
            self._stats_file = (time.monotonic(), self._render_stats(), time.time_ns())
        return self._stats_file

    def stats(self) -> dict[str, object]:
        """Everything `.vfs/stats` shows: tiers, reader, and per mount its backend's counters."""
        return {
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self.started, 3),
            "inodes": len(self.inodes),
            "requests": dict(sorted(self.requests.items())),
            "walk_ahead_listings": self.walk.listings,
            "swept_files": self.sweep.files,
            **self.reader.stats(),
            "backends": {m.path: {"silo": m.backend.describe(), **dataclasses.asdict(m.backend.stats)}
                         for m in sorted(self.table.mounts, key=lambda m: m.path)},
        }

    def statfs(self) -> dict[str, int]:
        bs = self.reader.block_size
        return {
            "f_bsize": bs, "f_frsize": bs,
            # Silos have no fixed size: report 1 PiB, all of it in use (the mount is read-only).
            "f_blocks": (1 << 50) // bs, "f_bfree": 0, "f_bavail": 0,
            "f_files": len(self.inodes), "f_ffree": 0, "f_favail": 0,
            "f_namemax": 255,
        }
