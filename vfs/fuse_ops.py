"""The FUSE adapter: pyfuse3.Operations over the namespace, and nothing more.

Each handler decodes the kernel's arguments, calls the core, and encodes the reply. Every exception
becomes a FUSEError in ONE place (`_errors`), with the errno from vfs.errors. Writes go to the
namespace, which stages and commits them; silos keep no POSIX owners, modes or links, so chmod
changes nothing, chown to another owner, symlink, link and mknod answer EPERM, and xattrs ENOTSUP (getxattr:
ENODATA, except the warm requests of a read-only mount, vfs/control.py).

FLUSH: on a tree where nothing is writable it answers ENOSYS once, and the kernel stops sending it
(no request per close). Otherwise the patched pyfuse3 answers the FLUSH of every inode that is not
in `Namespace.flush_inodes` by itself, and only a close after a change reaches vfs.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import time
from typing import Iterator

import pyfuse3
import trio

from vfs.errors import errno_of
from vfs.metrics import Registry
from vfs.namespace import Entry, Namespace

log = logging.getLogger(__name__)

# The patched pyfuse3 (scripts/setup) lets opendir ask the kernel to cache listings (FOPEN_CACHE_DIR).
CACHE_DIRS = getattr(pyfuse3, "VFS_PATCH", 0) >= 4
# Errors a reader expects in normal use: logged at debug, not as warnings.
_QUIET = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EROFS, errno.ENOSYS, errno.ENODATA, errno.EEXIST,
          errno.ENOTEMPTY, errno.EXDEV, errno.EPERM, errno.ENOTSUP}
# Seconds between two warnings for the same (errno, operation, silo): a dead silo must not flood the log.
_WARN_EVERY = 30.0


class _Errors:
    """Each request timed (per operation, in the metrics registry), and its errors mapped to errnos."""

    def __init__(self, registry: Registry) -> None:
        self._last: dict[tuple[int, str, str], float] = {}
        self.latency = registry.histogram("fuse_request_duration_seconds", "FUSE requests by operation and duration",
                                          ("operation",), stats=("requests", "{operation}"),
                                          stats_sum=("request_seconds", "{operation}"))

    @contextlib.contextmanager
    def __call__(self, op: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:
            err = errno_of(exc, op)
            if err in _QUIET:
                log.debug("%s: %s", op, exc)
            else:
                now, key = time.monotonic(), (err, op, getattr(exc, "silo", ""))
                if now - self._last.get(key, -_WARN_EVERY) >= _WARN_EVERY:
                    self._last[key] = now
                    log.warning("%s failed: %s", op, exc, exc_info=not isinstance(exc, OSError))
            raise pyfuse3.FUSEError(err) from None
        finally:
            self.latency.labels(op).observe(time.perf_counter() - start)


class FuseOps(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, ns: Namespace) -> None:
        super().__init__()
        self.ns = ns
        self.uid = os.getuid()
        self.gid = os.getgid()
        self._errors = _Errors(ns.metrics)
        ns.invalidate_kernel = self._invalidate
        self.writable = any(m.writable for m in ns.table.mounts)
        if self.writable and hasattr(pyfuse3, "flush_inodes"):
            pyfuse3.flush_inodes = ns.flush_inodes  # the patched build answers other FLUSHes itself

    async def _invalidate(self, ino: int) -> None:
        # From a worker thread: the kernel may wait for pages that a read on the trio thread is
        # still filling, so invalidating from the trio thread itself could deadlock.
        try:
            await trio.to_thread.run_sync(pyfuse3.invalidate_inode, ino, False)
        except OSError as exc:  # ENOENT: the kernel has forgotten the inode already
            log.debug("invalidate inode %d: %s", ino, exc)

    @staticmethod
    def _mode(is_dir: bool, writable: bool) -> int:
        """What `ls -l` shows: writable bits only where something can be written."""
        if is_dir:
            return stat.S_IFDIR | (0o755 if writable else 0o555)
        return stat.S_IFREG | (0o644 if writable else 0o444)

    def _attrs(self, e: Entry) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = e.ino
        a.st_mode = self._mode(e.is_dir, e.writable)
        a.st_nlink = 1  # "unknown": keeps find's leaf optimisation off
        a.st_uid, a.st_gid = self.uid, self.gid
        a.st_size = e.size
        a.st_blksize = 128 * 1024  # the kernel's default FUSE request size (DESIGN.md)
        a.st_blocks = (e.size + 511) // 512
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = e.mtime_ns
        a.entry_timeout = a.attr_timeout = e.timeout
        a.generation = 0
        return a

    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        with self._errors("lookup"):
            try:
                return self._attrs(await self.ns.lookup(parent_inode, os.fsdecode(name)))
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
                negative = pyfuse3.EntryAttributes()  # st_ino 0: the kernel remembers the miss
                negative.entry_timeout = self.ns.negative_timeout(parent_inode)
                return negative

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        with self._errors("getattr"):
            return self._attrs(await self.ns.getattr(inode))

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for inode, n in inode_list:
            try:
                self.ns.forget(inode, n)
            except Exception:  # forget must never raise
                log.exception("forget(%d, %d)", inode, n)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int | pyfuse3.FileInfo:
        with self._errors("opendir"):
            fh = await self.ns.opendir(inode)
            if CACHE_DIRS:  # the kernel caches listings; an unchanged one is read from its cache
                return pyfuse3.FileInfo(fh=fh, keep_cache=self.ns.listing_unchanged(fh))
            return fh

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        with self._errors("readdir"):
            self.ns.readdir(
                fh, start_id, lambda name, e, nxt: pyfuse3.readdir_reply(token, os.fsencode(name), self._attrs(e), nxt)
            )

    async def releasedir(self, fh: int) -> None:
        self.ns.releasedir(fh)

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        with self._errors("open"):
            f = await self.ns.open(inode, flags)
            return pyfuse3.FileInfo(fh=f.fh, keep_cache=f.keep_cache, direct_io=f.direct_io)

    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        with self._errors("read"):
            return await self.ns.read(fh, off, size)

    async def flush(self, fh: int) -> None:
        if not self.writable:
            # Nothing to flush on a read-only tree. ENOSYS makes the kernel stop sending FLUSH at all:
            # one request less per close(), a third of the requests of an open/close of a cached file.
            raise pyfuse3.FUSEError(errno.ENOSYS)
        with self._errors("flush"):
            await self.ns.flush(fh)

    async def fsync(self, fh: int, datasync: bool) -> None:
        with self._errors("fsync"):
            await self.ns.fsync(fh)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        with self._errors("write"):
            return await self.ns.write(fh, off, buf)

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        with self._errors("create"):
            fh, entry = await self.ns.create(parent_inode, os.fsdecode(name), flags)
            return pyfuse3.FileInfo(fh=fh, keep_cache=True), self._attrs(entry)

    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: int | None, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        with self._errors("setattr"):
            shown = self._attrs(await self.ns.getattr(inode))
            shown = (shown.st_mode, self.uid, self.gid)
            return self._attrs(await self.ns.setattr(
                inode,
                size=attr.st_size if fields.update_size else None,
                mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
                mode=attr.st_mode if fields.update_mode else None,
                uid=attr.st_uid if fields.update_uid else None,
                gid=attr.st_gid if fields.update_gid else None,
                shown=shown,
            ))

    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        with self._errors("mkdir"):
            return self._attrs(await self.ns.mkdir(parent_inode, os.fsdecode(name)))

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        with self._errors("unlink"):
            await self.ns.unlink(parent_inode, os.fsdecode(name))

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        with self._errors("rmdir"):
            await self.ns.rmdir(parent_inode, os.fsdecode(name))

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
                     flags: int, ctx: pyfuse3.RequestContext) -> None:
        with self._errors("rename"):
            await self.ns.rename(parent_inode_old, os.fsdecode(name_old), parent_inode_new, os.fsdecode(name_new), flags)

    async def release(self, fh: int) -> None:
        with self._errors("release"):
            self.ns.release(fh)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        out = pyfuse3.StatvfsData()
        for key, value in self.ns.statfs().items():
            setattr(out, key, value)
        return out

    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        return self.writable or not mode & os.W_OK

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        with self._errors("getxattr"):
            return self.ns.getxattr(inode, name)

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return []

    # --- what silos cannot keep ------------------------------------------------------------------

    async def _not_permitted(self, *args: object, **kwargs: object) -> None:
        raise pyfuse3.FUSEError(errno.EPERM if self.writable else errno.EROFS)

    async def _no_xattrs(self, *args: object, **kwargs: object) -> None:
        raise pyfuse3.FUSEError(errno.ENOTSUP if self.writable else errno.EROFS)

    mknod = symlink = link = _not_permitted  # type: ignore[assignment]
    setxattr = removexattr = _no_xattrs  # type: ignore[assignment]
