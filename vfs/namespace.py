"""The namespace: the core of vfs that the FUSE adapter calls, with no kernel in sight.

It ties the mount table (which silo serves a path), the inode table (what the kernel holds) and the
metadata cache (what the silos said, and for how long) together, and hands file reads to the reader.
Every method takes and returns plain Python values; errors are OSError with an errno.

vfs's own files under `/.vfs` are vfs/control.py's; which reader handle serves a read is
vfs/open_files.py's; writes stage whole files locally (vfs/staging.py) and commit them to the silo
as the mount's write mode says (vfs/commit.py). A staged file is the truth for its path: lookups,
listings and reads see it from its create or first write on.

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

import dataclasses
import errno
import functools
import itertools
import logging
import os
import time
from typing import Awaitable, Callable

import trio

from vfs.commit import Committer
from vfs.control import CONTROL_DIR, STATS_FILE, ControlFiles
from vfs.inodes import Inode, InodeTable
from vfs.metrics import Registry
from vfs.metadata import MetadataCache
from vfs.metadata_store import MetadataStore
from vfs.mount_table import Mount, MountTable, child_of, parent_of
from vfs.mounts.base import ObjectMeta, WritableBackend
from vfs.open_files import OpenFiles
from vfs.reader import Reader
from vfs.staging import StagedFile, StagingArea
from vfs.sweep import Sweep
from vfs.walk_ahead import WalkAhead
from vfs.warm import Warmer

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
    writable: bool = False
    """Anything may change it (its mount's write mode is not off)."""


@dataclasses.dataclass(slots=True)
class DirHandle:
    path: str
    entries: list[tuple[str, ObjectMeta, float]]  # name, meta, timeout; offsets are indexes + 2
    complete: bool = False
    """Read to its end: the kernel's readdir cache holds all of it."""
    unchanged: bool = False
    """The listing is the one the kernel cached at an earlier open: it may answer from its cache."""
    taken_at: int = 0
    """The clock of tells when the snapshot was taken: a file told of since keeps what it was told."""


@dataclasses.dataclass(frozen=True, slots=True)
class OpenFile:
    fh: int
    keep_cache: bool
    """The kernel may keep the pages it cached of this inode (the version has not changed)."""
    direct_io: bool = False
    """Bypass the page cache and the file size (vfs's own files, whose size is known only once read)."""


RENAME_NOREPLACE = 1  # renameat2 flags (linux/fs.h)
RENAME_EXCHANGE = 2


def _error(err: int, what: str) -> OSError:
    return OSError(err, os.strerror(err), what)


class Namespace:
    def __init__(self, table: MountTable, reader: Reader, default_ttl: float, metadata: MetadataCache | None = None,
                 opens: bool = True, staging: StagingArea | None = None, write_back_delay: float = 5.0,
                 metrics: Registry | None = None, offline: str = "auto",
                 metadata_store: MetadataStore | None = None) -> None:
        self.table = table
        for m in table.mounts:  # `[metadata] offline`: auto serves what is cached while a silo is down
            m.backend.health.fail_fast = offline == "auto"
            if self.committer_retry not in m.backend.health.returned:
                m.backend.health.returned.append(self.committer_retry)
        self.opens = opens
        """False: files are opened by the kernel alone and `read` gets inode numbers (module doc)."""
        self.invalidate_kernel: Callable[[int], Awaitable[None]] | None = None
        """Set by the adapter: drop the kernel's cached pages and attributes of an inode."""
        self._nursery: trio.Nursery | None = None
        self.reader = reader
        self.files = OpenFiles(reader)
        self.control = ControlFiles(self.stats, opens, lambda request: self.warmer.request(request))
        self.staging = staging
        self.committer = Committer(staging, table, reader, write_back_delay, self._committed) if staging else None
        self.flush_inodes: set[int] = set()
        self._staging_now: dict[int, trio.Event] = {}
        """Inodes whose staged copy is being made (`_stage`), so that a file gets one."""
        """Inodes whose FLUSH must reach vfs (changed since their last close); the adapter hands the
        set to the patched pyfuse3, which answers every other FLUSH by itself."""
        self.default_ttl = default_ttl
        self.inodes = InodeTable()
        self.meta = metadata or MetadataCache()
        self.metadata_store = metadata_store
        """Listings and attributes kept on disk across runs (served while a silo is offline)."""
        if metadata_store is not None:
            metadata_store.load(self.meta, table)
        self.walk = WalkAhead(table, self.meta)
        self.warmer = Warmer(table, self.meta, reader)
        """Warm-ups, checks and evictions that `vfs warm` asks for through `/.vfs/warm`."""
        self.sweep = Sweep(self.meta, reader)
        self._dirs: dict[int, DirHandle] = {}
        self._dir_ids = itertools.count(1)
        self._tells = itertools.count(1)
        """The clock of `Inode.told_at`."""
        self.started = time.monotonic()
        self.metrics = metrics or Registry()
        """Every figure of the mount: `.vfs/stats` renders it, and vfs/prometheus.py exports it."""
        self._register(self.metrics)

    def start(self, nursery: trio.Nursery) -> None:
        """Background work (prefetch of blocks, walk-ahead listings) runs in this nursery."""
        self._nursery = nursery
        self.reader.start(nursery)
        self.walk.start(nursery)
        self.sweep.start(nursery)
        self.warmer.start(nursery)
        if self.committer is not None:
            nursery.start_soon(self.committer.run)
        if self.metadata_store is not None:
            nursery.start_soon(self.metadata_store.run, self.meta, self.table)
        for m in self.table.mounts:  # each silo's breaker probes it while it is offline
            probe = getattr(m.backend, "probe", None) or functools.partial(m.backend.list_dir, "")
            nursery.start_soon(m.backend.health.watch, probe)

    def committer_retry(self) -> None:
        """A silo came back online: its failed uploads are tried again now, not after their backoff."""
        if self.committer is not None:
            self.committer.retry_now()

    # --- resolving paths -------------------------------------------------------------------------

    def _node(self, ino: int) -> Inode:
        try:
            return self.inodes.get(ino)
        except KeyError:
            raise _error(errno.ESTALE, f"inode {ino}") from None

    async def _resolve(self, path: str) -> tuple[ObjectMeta, float]:
        """Metadata of a tree path and how long the kernel may trust it."""
        if self.control.owns(path):
            return self.control.meta(path), self.default_ttl if path == CONTROL_DIR else 0.0
        if self.table.is_overlay(path):  # mount points and the directories leading to them
            mount = self.table.by_path.get(path)
            return ObjectMeta("", True), mount.ttl if mount else self.default_ttl
        routed = self.table.route(path)
        if routed is None:
            raise _error(errno.ENOENT, path)
        mount, inner = routed
        sf = self.staging.get(mount.path, inner) if self.staging else None
        if sf is not None:  # being written: what vfs holds is the truth, for as long as it holds it
            return self._staged_meta(sf), 0.0
        meta = await self.meta.stat(mount, inner)
        # The kernel keeps the entry only as long as vfs itself still trusts it, never a whole TTL more.
        return meta, min(mount.ttl, self.meta.expires_in(mount, inner))

    @staticmethod
    def _staged_meta(sf: StagedFile) -> ObjectMeta:
        return ObjectMeta(sf.path, False, sf.size, sf.mtime_ns, sf.version)

    def _entry(self, node: Inode, meta: ObjectMeta, timeout: float) -> Entry:
        """The attributes the kernel is about to be told; for a file, also the version reads serve."""
        mtime = meta.mtime_ns if meta.mtime_ns is not None else self.table.started_ns
        if not meta.is_dir:
            told, node.told, node.told_at = node.told, meta, next(self._tells)
            if (told is not None and told.version != meta.version and not self.opens and node.path != STATS_FILE
                    and not told.version.startswith("staged:") and not meta.version.startswith("staged:")):
                # The kernel drops pages itself only if size or mtime changed. A staged file's pages are
                # the kernel's own writes, and its commit changes the version, not the bytes.
                self._invalidate(node.ino)
        routed = self.table.route(node.path)
        writable = self.control.writable(node.path) or (routed is not None and routed[0].writable and self.staging is not None)
        return Entry(node.ino, meta.is_dir, 0 if meta.is_dir else meta.size, mtime, timeout, writable)

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
        if not self.inodes.known(ino):
            orphan = self.files.forget(ino)
            self.flush_inodes.discard(ino)
            if orphan is not None and self._nursery is not None and self.staging is not None:
                self._nursery.start_soon(self.staging.drop, orphan)

    def _invalidate(self, ino: int) -> None:
        if self._nursery is not None and self.invalidate_kernel is not None:
            self._nursery.start_soon(self.invalidate_kernel, ino)

    async def opendir(self, ino: int) -> int:
        """A handle on a snapshot of the directory's listing. Its `unchanged` says whether the kernel
        may answer its readdir from the listing it cached at an earlier open (keep_cache). Every
        opendir reaches vfs, which revalidates the listing as its TTL says; only the READDIR requests
        of an unchanged listing are saved."""
        node = self._node(ino)
        if not node.is_dir:
            raise _error(errno.ENOTDIR, node.path)
        children: dict[str, tuple[ObjectMeta, float]] = {}
        routed = self.table.route(node.path)
        if node.path == CONTROL_DIR:
            children = {name: (meta, 0.0) for name, meta in self.control.listing().items()}
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
            if self.staging is not None:
                for sf in self.staging.under(mount.path, inner):
                    children[sf.path.rpartition("/")[2]] = (self._staged_meta(sf), 0.0)
            self.walk.listed(node.path, [name for name, meta in listing.items() if meta.is_dir])
        if node.path == "/":
            children.pop(".vfs", None)  # vfs's own directory: found by path, never listed
        for name in self.table.overlay(node.path):
            mount = self.table.by_path.get(child_of(node.path, name))
            children[name] = (ObjectMeta(name, True), mount.ttl if mount else self.default_ttl)
        fh = next(self._dir_ids)
        handle = DirHandle(node.path, [(n, m, t) for n, (m, t) in sorted(children.items())], taken_at=next(self._tells))
        handle.unchanged = node.listing is not None and node.listing == self._listing(handle)
        self._dirs[fh] = handle
        return fh

    def _listing(self, handle: DirHandle) -> int:
        """What the kernel's readdir cache holds of a listing: names, kinds and inode numbers."""
        def ino(name: str, is_dir: bool) -> int:
            child = self.inodes.at(child_of(handle.path, name))
            return child.ino if child is not None and child.is_dir == is_dir else 0

        return hash(tuple((name, meta.is_dir, ino(name, meta.is_dir)) for name, meta, _ in handle.entries))

    def readdir(self, fh: int, start: int, reply: Callable[[str, Entry, int], bool]) -> None:
        """Offer entries from offset `start` to `reply(name, entry, next_offset)` until it says no.

        Offsets 0 and 1 are '.' and '..' (which the kernel never counts as lookups); entry i of the
        snapshot taken at opendir is offset i + 2, so offsets stay stable while the handle lives.
        Other entries are referenced for the kernel only when `reply` took them (readdirplus).
        """
        handle = self._dirs.get(fh)
        if handle is None:
            raise _error(errno.EBADF, f"directory handle {fh}")
        if start >= len(handle.entries) + 2:
            handle.complete = True
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
            if not meta.is_dir and node.told is not None and node.told_at > handle.taken_at:
                # Told of since the snapshot (a commit landed, a lookup saw a newer version): the
                # snapshot's older version (or a staged one since dropped) must not undo that.
                meta, timeout = node.told, 0.0
            if not reply(name, self._entry(node, meta, timeout), offset + 1):
                self.inodes.drop_unused(node)
                return
            self.inodes.ref(node)

    def listing_unchanged(self, fh: int) -> bool:
        handle = self._dirs.get(fh)
        return handle is not None and handle.unchanged

    def releasedir(self, fh: int) -> None:
        handle = self._dirs.pop(fh, None)
        node = self.inodes.at(handle.path) if handle is not None else None
        if node is not None and node.is_dir:
            # Read to the end: the kernel cached this listing (FOPEN_CACHE_DIR); answered from the kernel's
            # cache: it still holds it. Otherwise what it holds is unknown.
            if handle.complete:  # type: ignore[union-attr]
                node.listing = self._listing(handle)  # type: ignore[arg-type]
            elif not handle.unchanged:  # type: ignore[union-attr]
                node.listing = None

    async def open(self, ino: int, flags: int) -> OpenFile:
        """Open a file (with opens only; without, the kernel answers opens itself and this says ENOSYS)."""
        node = self._node(ino)
        if node.is_dir:
            raise _error(errno.EISDIR, node.path)
        writing = flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC
        if self.control.owns(node.path):
            if writing and not self.control.writable(node.path):
                raise _error(errno.EACCES, node.path)
            if not self.opens:
                raise _error(errno.ENOSYS, f"{node.path}: opened without vfs")
            return OpenFile(self.control.open(node.path), keep_cache=False, direct_io=True)
        if writing:
            mount, inner = self._writable(node.path)
        if not self.opens:  # the kernel opens files by itself from now on (FUSE no_open)
            raise _error(errno.ENOSYS, f"{node.path}: opened without vfs")
        if writing:
            if flags & os.O_TRUNC:
                await self.truncate(ino, 0)
            return OpenFile(self.files.open(ino, None, inner, None), keep_cache=False)
        routed = self.table.route(node.path)
        if routed is None:
            raise _error(errno.EISDIR, node.path)
        mount, inner = routed
        if self.staging is not None and self.staging.get(mount.path, inner) is not None:
            return OpenFile(self.files.open(ino, None, inner, None), keep_cache=False)
        meta = await self.meta.stat(mount, inner)
        if meta.is_dir:
            raise _error(errno.EISDIR, node.path)
        keep_cache = node.page_version == meta.version
        node.page_version = meta.version
        self.sweep.opened(mount, inner)
        return OpenFile(self.files.open(ino, mount, inner, meta), keep_cache)

    def _ino(self, fh: int) -> int:
        """The inode a FUSE file handle stands for (without opens, the handle is the inode)."""
        if not self.opens:
            return fh
        ino = self.files.inode(fh)
        if ino is None:
            raise _error(errno.EBADF, f"file handle {fh}")
        return ino

    async def read(self, fh: int, offset: int, size: int) -> bytes | memoryview:
        """Bytes of an open handle or, without opens, of the inode numbered `fh`."""
        if self.control.owns_handle(fh):
            return self.control.read(fh, offset, size)
        ino = self._ino(fh)
        sf = self._staged(ino)
        if sf is not None:
            data = await self.staging.read(sf, offset, size)  # type: ignore[union-attr]
            if data is not None:
                return data
            # Dropped meanwhile: its commit landed, and the inode now reads the silo's version.
        if not self.opens:
            node = self._node(ino)
            if self.control.owns(node.path):
                return self.control.read(None, offset, size, node.path)
            fh = await self._inode_handle(node)
        h = self.reader.handles.get(fh)
        if h is None:
            raise _error(errno.EBADF, f"file handle {fh}")
        try:
            return await self.reader.read(fh, offset, size)
        except OSError as exc:
            if exc.errno == errno.ESTALE:  # the next open (lookup, without opens) sees the new version
                self.meta.invalidate(h.mount, h.path)
                if not self.opens:
                    self._invalidate(ino)
            raise

    async def _inode_handle(self, node: Inode) -> int:
        """Without opens: the reader handle of the version the kernel was told of for this inode."""
        routed = self.table.route(node.path)
        if node.is_dir or routed is None:
            raise _error(errno.EISDIR, node.path)
        mount, inner = routed
        meta = node.told or (await self._resolve(node.path))[0]
        fh, new = self.files.for_inode(node.ino, mount, inner, meta)
        if new:
            self.sweep.opened(mount, inner)
        return fh

    def release(self, fh: int) -> None:
        if self.control.owns_handle(fh):
            self.control.release(fh)
        elif self.opens:
            self.files.release(fh)

    def _register(self, registry: Registry) -> None:
        registry.gauge("uptime_seconds", "Seconds since the mount started", (), ("uptime_s",)).labels().set_function(
            lambda: round(time.monotonic() - self.started, 3))
        registry.gauge("inodes", "Inodes the kernel holds", (), ("inodes",)).labels().set_function(lambda: len(self.inodes))
        registry.counter("walk_ahead_listings", "Directories listed ahead of a reader", (),
                         ("walk_ahead_listings",)).labels().set_function(lambda: self.walk.listings)
        registry.counter("swept_files", "Small files fetched ahead by directory sweeps", (),
                         ("swept_files",)).labels().set_function(lambda: self.sweep.files)
        self.reader.register(registry)
        if self.committer is not None:
            self.committer.register(registry)
        self.warmer.register(registry)
        for m in sorted(self.table.mounts, key=lambda m: m.path):
            m.backend.stats.register(registry, m.path, m.backend.describe())
            m.backend.health.register(registry, m.path)

    def getxattr(self, ino: int, name: bytes) -> bytes:
        """Silos keep no xattrs (ENODATA); a read-only mount's warm requests arrive this way (vfs/control.py)."""
        return self.control.take_request(self.inodes.get(ino).path, name)

    def stats(self) -> dict[str, object]:
        """Everything `.vfs/stats` shows: the metrics registry's snapshot."""
        return self.metrics.snapshot()

    def statfs(self) -> dict[str, int]:
        bs = self.reader.block_size
        free = (1 << 50) // bs if any(m.writable for m in self.table.mounts) else 0
        return {
            "f_bsize": bs, "f_frsize": bs,
            # Silos have no fixed size: report 1 PiB, all of it free where anything is writable.
            "f_blocks": (1 << 50) // bs, "f_bfree": free, "f_bavail": free,
            "f_files": len(self.inodes), "f_ffree": 0, "f_favail": 0,
            "f_namemax": 255,
        }

    # --- writes -----------------------------------------------------------------------------------

    def _writable(self, path: str) -> tuple[Mount, str]:
        """The mount and inner path of a tree path that may be changed; EROFS where nothing may."""
        routed = self.table.route(path)
        if self.control.owns(path) or routed is None or self.staging is None:
            raise _error(errno.EROFS, path)
        mount, inner = routed
        if not mount.writable or not isinstance(mount.backend, WritableBackend):
            raise _error(errno.EROFS, path)
        if inner == "" or self.table.is_overlay(path):
            raise _error(errno.EBUSY, f"{path} is a mount point")
        return mount, inner

    def _staged(self, ino: int) -> StagedFile | None:
        orphan = self.files.orphans.get(ino)
        if orphan is not None or self.staging is None:
            return orphan
        node = self.inodes.get(ino) if self.inodes.known(ino) else None
        routed = self.table.route(node.path) if node is not None and not node.is_dir else None
        return self.staging.get(routed[0].path, routed[1]) if routed else None

    async def _stage(self, ino: int, empty: bool = False) -> StagedFile:
        """The staged copy of a file about to change: made from the version the kernel was told of
        (whole, through the block cache) on its first change, or `empty` (O_TRUNC). One copy per
        file: a writer that comes while it is being made waits for it."""
        while (making := self._staging_now.get(ino)) is not None:
            await making.wait()
        sf = self._staged(ino)
        if sf is not None:
            return sf
        done = self._staging_now[ino] = trio.Event()
        try:
            return await self._make_staged(ino, empty)
        finally:
            del self._staging_now[ino]
            done.set()

    async def _make_staged(self, ino: int, empty: bool) -> StagedFile:
        node = self._node(ino)
        mount, inner = self._writable(node.path)
        meta = await self._base(node)
        if meta.is_dir:
            raise _error(errno.EISDIR, node.path)
        assert self.staging is not None
        sf = self.staging.create(mount.path, inner, meta.version, mount.write_mode)
        if empty:
            return sf
        try:
            bs = self.reader.block_size
            if meta.size:
                fh = self.reader.open(mount, inner, meta.version, meta.size)
                try:
                    for offset in range(0, meta.size, bs):
                        data = await self.reader.read(fh, offset, bs)
                        await self.staging.write(sf, offset, bytes(data), can_wait=mount.write_mode != "cache")
                finally:
                    self.reader.release(fh)
            sf.mtime_ns = meta.mtime_ns or sf.mtime_ns
            sf.generation = sf.committed = 0
        except BaseException:
            await self.staging.drop(sf)
            raise
        return sf

    async def _base(self, node: Inode) -> ObjectMeta:
        """What a new staged copy of `node` replaces: the version the kernel was told of, unless that
        was a staged copy now gone (committed or dropped), then what the silo holds."""
        meta = node.told
        if meta is None or meta.version.startswith("staged:"):
            meta = (await self._resolve(node.path))[0]
        return meta

    def _changed(self, ino: int) -> None:
        self.flush_inodes.add(ino)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        if self.control.owns_handle(fh) or (not self.opens and self.inodes.known(fh)
                                            and self.control.writable(self.inodes.get(fh).path)):
            return self.control.write(data)
        ino = self._ino(fh)
        sf = await self._stage(ino)
        with sf.writing():  # no await between getting `sf` and this: a commit ending now keeps it
            await self.staging.write(sf, offset, data, can_wait=sf.mode != "cache")  # type: ignore[union-attr]
        self._changed(ino)
        return len(data)

    async def truncate(self, ino: int, size: int) -> None:
        sf = await self._stage(ino, empty=size == 0)  # O_TRUNC: nothing of the old bytes needs fetching
        with sf.writing():  # no await between getting `sf` and this: a commit ending now keeps it
            await self.staging.truncate(sf, size, can_wait=sf.mode != "cache")  # type: ignore[union-attr]
        self._changed(ino)

    async def setattr(self, ino: int, size: int | None, mtime_ns: int | None, mode: int | None,
                      uid: int | None, gid: int | None, shown: tuple[int, int, int]) -> Entry:
        """truncate, utime; chmod is accepted and changes nothing (silos keep no POSIX modes, and
        tools such as rsync and mkstemp chmod every file they make); chown to another owner than
        shown (`shown`: mode, uid, gid) is EPERM."""
        node = self._node(ino)
        if self.control.writable(node.path) and mode is None and uid is None and gid is None:
            return await self.getattr(ino)  # `echo ... > .vfs/warm` truncates first: nothing to do
        if mode is not None or uid is not None or gid is not None:
            self._writable(node.path)
        if (uid is not None and uid != shown[1]) or (gid is not None and gid != shown[2]):
            raise _error(errno.EPERM, f"{node.path}: silos keep no owner")
        if size is not None:
            if node.is_dir:
                raise _error(errno.EISDIR, node.path)
            await self.truncate(ino, size)
        if mtime_ns is not None and not node.is_dir:
            mount, inner = self._writable(node.path)
            sf = self._staged(ino)
            if sf is not None:
                sf.mtime_ns = mtime_ns
                sf.generation += 1
                self._changed(ino)
            else:
                meta = await self._silo(mount).set_mtime(inner, mtime_ns)
                self.meta.learned(mount, meta)
        return await self.getattr(ino)

    async def create(self, parent_ino: int, name: str, flags: int) -> tuple[int, Entry]:
        """A new file (or, without O_EXCL, an existing one opened to write): its handle and entry."""
        parent = self._node(parent_ino)
        path = child_of(parent.path, name)
        mount, inner = self._writable(path)
        try:
            meta, _ = await self._resolve(path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
            meta = None
        if meta is not None:
            if flags & os.O_EXCL:
                raise _error(errno.EEXIST, path)
            if meta.is_dir:
                raise _error(errno.EISDIR, path)
            entry = self._known(path, meta, 0.0)
            if flags & os.O_TRUNC:
                await self.truncate(entry.ino, 0)
        else:
            await self._parent_is_dir(mount, inner, parent.path)
            sf = self.staging.create(mount.path, inner, None, mount.write_mode)  # type: ignore[union-attr]
            sf.generation = 1  # an empty file is a change too: its close commits it
            entry = self._known(path, self._staged_meta(sf), 0.0)
        self._changed(entry.ino)
        fh = self.files.open(entry.ino, None, inner, None) if self.opens else entry.ino
        return fh, await self.getattr(entry.ino)

    async def _parent_is_dir(self, mount: Mount, inner: str, parent_path: str) -> None:
        parent_inner = inner.rpartition("/")[0]
        if parent_inner and not self.table.is_overlay(parent_path):
            meta = await self.meta.stat(mount, parent_inner)
            if not meta.is_dir:
                raise _error(errno.ENOTDIR, parent_path)

    async def flush(self, fh: int) -> None:
        """close(): accept the file's changes and commit them as its mount's write mode says."""
        if self.control.owns_handle(fh):  # vfs's own files: a request written to one is taken already
            return
        ino = self._ino(fh)
        sf = self._staged(ino)
        self.flush_inodes.discard(ino)
        if sf is None or sf.unlinked or self.committer is None:
            return
        try:
            await self.committer.closed(sf)
        except BaseException:
            self.flush_inodes.add(ino)  # not committed: the next close tries again
            raise

    async def fsync(self, fh: int) -> None:
        if self.control.owns_handle(fh):
            return
        ino = self._ino(fh)
        sf = self._staged(ino)
        if sf is None or sf.unlinked or self.committer is None:
            return
        await self.committer.closed(sf, sync=sf.mode != "cache")

    def _committed(self, mount: Mount, sf: StagedFile, meta: ObjectMeta) -> None:
        """A commit landed: the metadata and the inode learn the silo's version (same bytes)."""
        self.meta.learned(mount, meta)
        node = self.inodes.assign(child_of(mount.path, meta.path), False)
        # Whatever the kernel was told last (a staged generation of this file, or the version the
        # commit replaced) is older than this; the bytes are the same, so no pages are dropped.
        node.told, node.told_at = meta, next(self._tells)
        self.inodes.drop_unused(node)

    async def mkdir(self, parent_ino: int, name: str) -> Entry:
        path = child_of(self._node(parent_ino).path, name)
        mount, inner = self._writable(path)
        if self.staging is not None and self.staging.get(mount.path, inner) is not None:
            raise _error(errno.EEXIST, path)
        await self._silo(mount).mkdir(inner)
        meta = ObjectMeta(inner, True)
        self.meta.learned(mount, meta)
        return self._known(path, meta, 0.0)

    async def unlink(self, parent_ino: int, name: str) -> None:
        path = child_of(self._node(parent_ino).path, name)
        mount, inner = self._writable(path)
        sf = self.staging.get(mount.path, inner) if self.staging else None
        if sf is not None:
            while sf.uploading:
                await self.committer.wait_settled()  # type: ignore[union-attr]
            self._orphan(path, sf)
            if sf.mode == "cache":  # the local copy goes; what the silo holds, if anything, shows again
                self.meta.invalidate(mount, inner)
                return
            if sf.base is not None or sf.committed >= 0:
                await self._silo_delete(mount, inner)
            self.meta.removed(mount, inner)
            return
        meta, _ = await self._resolve(path)
        if meta.is_dir:
            raise _error(errno.EISDIR, path)
        await self._silo_delete(mount, inner)
        self.meta.removed(mount, inner)

    @staticmethod
    def _silo(mount: Mount) -> WritableBackend:
        """The backend, for a change that reaches the silo at once; mode cache changes only local
        files, so there it is EROFS."""
        if mount.write_mode == "cache" or not isinstance(mount.backend, WritableBackend):
            raise _error(errno.EROFS, f"{mount.path}: write mode {mount.write_mode} keeps changes local")
        return mount.backend

    async def _silo_delete(self, mount: Mount, inner: str) -> None:
        try:
            await self._silo(mount).delete(inner)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise

    def _orphan(self, path: str, sf: StagedFile) -> None:
        """Take a staged file out of the tree; the kernel may still read it by inode until forget."""
        self.staging.detach(sf)  # type: ignore[union-attr]
        node = self.inodes.assign(path, False)
        if node.lookups:
            self.files.orphans[node.ino] = sf
        else:
            self.inodes.drop_unused(node)
            if self._nursery is not None:
                self._nursery.start_soon(self.staging.drop, sf)  # type: ignore[union-attr]

    async def rmdir(self, parent_ino: int, name: str) -> None:
        path = child_of(self._node(parent_ino).path, name)
        mount, inner = self._writable(path)
        if self.staging is not None and self.staging.any_below(mount.path, inner):
            raise _error(errno.ENOTEMPTY, path)
        await self._silo(mount).rmdir(inner)
        self.meta.removed(mount, inner)

    async def rename(self, old_parent: int, old_name: str, new_parent: int, new_name: str, flags: int) -> None:
        src = child_of(self._node(old_parent).path, old_name)
        dst = child_of(self._node(new_parent).path, new_name)
        if flags & RENAME_EXCHANGE:
            raise _error(errno.EINVAL, f"{src}: exchanging names is not supported")
        smount, sinner = self._writable(src)
        dmount, dinner = self._writable(dst)
        if smount is not dmount:
            raise _error(errno.EXDEV, f"{src} -> {dst}: another silo")
        mount = smount
        if src == dst:
            return
        staging = self.staging
        assert staging is not None
        while True:  # a commit of the target under way lands first: we replace what it leaves
            dsf = staging.get(mount.path, dinner)
            if dsf is not None and dsf.uploading:
                await self.committer.wait_settled()  # type: ignore[union-attr]
                continue
            try:
                dmeta: ObjectMeta | None = (await self._resolve(dst))[0]
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
                dmeta = None
            dsf = staging.get(mount.path, dinner)
            if dsf is None or not dsf.uploading:
                break
        sf = staging.get(mount.path, sinner)
        if dmeta is not None and flags & RENAME_NOREPLACE:
            raise _error(errno.EEXIST, dst)
        if sf is not None and sf.base is None and sf.committed < 0 and not sf.uploading:
            # Only here so far: the rename is ours alone, and the commit goes to the new name.
            if dmeta is not None and dmeta.is_dir:
                raise _error(errno.EISDIR, dst)
            base = None
            if dsf is not None:  # replacing a file being written: commit over what the silo has of it
                self._orphan(dst, dsf)
                base = dsf.base
            elif dmeta is not None:
                base = dmeta.version
            staging.move(sf, mount.path, dinner, base)
            await staging.rewrite_record(sf)
        else:
            if sf is not None:  # the silo holds an older version: commit this one first, then move it
                await self.committer.commit_now(sf)  # type: ignore[union-attr]
                sf = staging.get(mount.path, sinner)
                if sf is not None:
                    raise _error(errno.EBUSY, f"{src} is being written")
            if dsf is not None:
                self._orphan(dst, dsf)
            await self._silo(mount).rename(sinner, dinner, replace=not flags & RENAME_NOREPLACE,
                                           limit=mount.rename_limit)
            for moved in [f for (m, p), f in staging.files.items()
                          if m == mount.path and p.startswith(sinner + "/")]:
                staging.move(moved, mount.path, dinner + moved.path[len(sinner):], moved.base)
                await staging.rewrite_record(moved)
        self.meta.removed(mount, sinner)
        self.meta.invalidate_tree(mount, dinner)
        self.inodes.rename(src, dst)

    async def drain(self, timeout: float) -> int:
        """At unmount: commit what is pending, for at most `timeout` seconds; how many are left. Then
        the metadata is saved (commits change it)."""
        left = await self.committer.drain(timeout) if self.committer is not None else 0
        if self.metadata_store is not None:
            await self.metadata_store.save(self.meta, self.table)
        return left
