"""A local directory as a silo: any path, including a kernel-mounted NFS export (the NFS "path mode").

Version = (mtime_ns, size): the best a POSIX file offers. Symlinks are followed; sockets, FIFOs and
devices are left out of listings (reading a FIFO would hang the reader).

Writable, with the POSIX calls themselves (a directory rename is one `rename`, hence
`atomic_dir_rename`). `write_file` copies the source into a temporary file `.vfs-tmp-*` in the
target's directory (hidden from listings), sets its mode and mtime, fsyncs it, and only then checks
the precondition and puts it in place: `rename` over the version seen, or, to create, a rename that
refuses to replace (renameat2 RENAME_NOREPLACE, else link + unlink), so a file that appeared
meanwhile is never replaced (ESTALE). The window left: between the final `stat` of the target and
the `rename` over it (microseconds, no I/O of the data in between), another writer's replacement
can be overwritten; POSIX has no compare-and-rename. A file replaced keeps its permission bits; a new
one gets 0666 minus the umask. A version is (mtime, size), so a write of as many bytes with the
same mtime keeps the version (only `cp -p` of an equal-sized file does that).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import os
import shutil
import stat as st
import tempfile
from typing import Any

from vfs.errors import SiloError
from vfs.mounts.base import (DEFAULT_RENAME_LIMIT, BaseOptions, ObjectMeta, WritableBackend, join,
                             not_a_directory, stale)

TMP_PREFIX = ".vfs-tmp-"
"""Names of files being written; never listed."""
COPY_BUFFER = 1 << 20


@dataclasses.dataclass(frozen=True)
class LocalOptions(BaseOptions):
    root: str


def _meta(path: str, s: os.stat_result) -> ObjectMeta | None:
    if st.S_ISDIR(s.st_mode):
        return ObjectMeta(path, True, 0, s.st_mtime_ns)
    if st.S_ISREG(s.st_mode):
        return ObjectMeta(path, False, s.st_size, s.st_mtime_ns, f"{s.st_mtime_ns}:{s.st_size}")
    return None


def _umask() -> int:
    """The process umask, read without changing it (os.umask would, for every thread)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


def _stat_or_none(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)  # glibc >= 2.28
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def rename_noreplace(src: str, dst: str) -> None:
    """`rename(src, dst)` that fails with EEXIST if `dst` exists: renameat2(RENAME_NOREPLACE) where
    the kernel and filesystem have it, else link + unlink (files) or a check first (directories;
    the one case with a window)."""
    if _renameat2 is not None:
        if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):  # e.g. NFS: EINVAL
            raise OSError(err, os.strerror(err), src, None, dst)
    if not os.path.isdir(src) or os.path.islink(src):
        try:
            os.link(src, dst, follow_symlinks=False)  # EEXIST if dst is there, atomically
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
        else:
            os.unlink(src)
            return
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst)
    os.rename(src, dst)


class LocalBackend(WritableBackend):
    scheme = "local"
    Options = LocalOptions
    atomic_dir_rename = True

    def __init__(self, options: LocalOptions) -> None:
        super().__init__(options)
        self.root = os.path.abspath(os.path.expanduser(options.root))

    @classmethod
    def options_from_url(cls, url: str) -> dict[str, Any]:
        return {"root": url.removeprefix("file://")}

    def describe(self) -> str:
        return self.root

    def _abs(self, path: str) -> str:
        return os.path.join(self.root, path) if path else self.root

    def _stat(self, path: str) -> ObjectMeta:
        meta = _meta(path, os.stat(self._abs(path)))
        if meta is None:
            raise SiloError(errno.ENOENT, f"{self._abs(path)} is not a regular file or directory")
        return meta

    def _list(self, path: str) -> list[ObjectMeta]:
        out = []
        with os.scandir(self._abs(path)) as it:
            for entry in it:
                if entry.name.startswith(TMP_PREFIX):
                    continue  # a write in progress (or one a crash left behind)
                try:
                    meta = _meta(join(path, entry.name), entry.stat())
                except OSError:
                    continue  # vanished, or a dangling symlink
                if meta is not None:
                    out.append(meta)
        return sorted(out, key=lambda m: m.name)

    def _read(self, path: str, start: int, end: int, version: str) -> bytes:
        fd = os.open(self._abs(path), os.O_RDONLY)
        try:
            s = os.fstat(fd)
            if f"{s.st_mtime_ns}:{s.st_size}" != version:
                raise stale(path)
            return os.pread(fd, max(0, end - start), start)
        finally:
            os.close(fd)

    async def stat(self, path: str) -> ObjectMeta:
        return await self.run_sync(self._stat, path)

    async def list_dir(self, path: str) -> list[ObjectMeta]:
        try:
            return await self.run_sync(self._list, path)
        except NotADirectoryError:
            raise not_a_directory(path) from None

    async def read_range(self, path: str, start: int, end: int, version: str) -> bytes:
        return await self.run_sync(self._read, path, start, end, version)

    # --- writing -------------------------------------------------------------------------------------

    def _check(self, path: str, current: os.stat_result | None, expected: str | None) -> None:
        """ESTALE unless the target is still what the writer saw (`expected`; None: nothing)."""
        if current is not None and st.S_ISDIR(current.st_mode):
            raise SiloError(errno.EISDIR, self._abs(path))
        seen = None if current is None else f"{current.st_mtime_ns}:{current.st_size}"
        if seen != expected:
            raise stale(self._abs(path))

    def _write(self, path: str, source: str, expected: str | None, mtime_ns: int | None) -> ObjectMeta:
        target = self._abs(path)
        current = _stat_or_none(target)
        self._check(path, current, expected)  # early: no copy for a write that is already stale
        mode = st.S_IMODE(current.st_mode) if current is not None else 0o666 & ~_umask()
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=os.path.dirname(target))
        try:
            with open(fd, "wb") as out, open(source, "rb") as src:
                shutil.copyfileobj(src, out, COPY_BUFFER)
                out.flush()
                os.fchmod(fd, mode)
                if mtime_ns is not None:
                    os.utime(fd, ns=(os.fstat(fd).st_atime_ns, mtime_ns))
                os.fsync(fd)
                written = os.fstat(fd)
            # The window: from this stat to the rename below.
            self._check(path, _stat_or_none(target), expected)
            if expected is None:
                try:
                    rename_noreplace(tmp, target)
                except FileExistsError:
                    raise stale(target) from None
            else:
                os.rename(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        meta = _meta(path, written)
        assert meta is not None
        return meta

    def _rename(self, src: str, dst: str, replace: bool) -> None:
        if not src or not dst:
            raise SiloError(errno.EBUSY, f"{self.root}: the root cannot be renamed")
        a, b = self._abs(src), self._abs(dst)
        if a == b:
            os.lstat(a)  # ENOENT, else nothing to do
            return
        if not replace:
            rename_noreplace(a, b)
            return
        try:
            os.rename(a, b)
        except OSError as exc:
            if exc.errno == errno.EEXIST:  # some filesystems say so for a non-empty target directory
                raise SiloError(errno.ENOTEMPTY, b) from None
            raise

    def _rmdir(self, path: str) -> None:
        if not path:
            raise SiloError(errno.EBUSY, f"{self.root}: the root cannot be removed")
        os.rmdir(self._abs(path))

    def _set_mtime(self, path: str, mtime_ns: int) -> ObjectMeta:
        p = self._abs(path)
        os.utime(p, ns=(os.stat(p).st_atime_ns, mtime_ns))
        return self._stat(path)

    async def write_file(self, path: str, source: str, expected: str | None, mtime_ns: int | None = None) -> ObjectMeta:
        return await self.run_sync(self._write, path, source, expected, mtime_ns)

    async def delete(self, path: str) -> None:
        await self.run_sync(os.unlink, self._abs(path))  # EISDIR for a directory (Linux)

    async def mkdir(self, path: str) -> None:
        await self.run_sync(os.mkdir, self._abs(path))

    async def rmdir(self, path: str) -> None:
        await self.run_sync(self._rmdir, path)

    async def rename(self, src: str, dst: str, *, replace: bool = True, limit: int = DEFAULT_RENAME_LIMIT) -> None:
        await self.run_sync(self._rename, src, dst, replace)

    async def set_mtime(self, path: str, mtime_ns: int) -> ObjectMeta:
        return await self.run_sync(self._set_mtime, path, mtime_ns)

    async def probe(self) -> None:
        """A stat of the root (a network filesystem below it may hang or fail): whether the
        directory answers, for the offline breaker (vfs/mounts/health.py)."""
        await self.run_sync(self._stat, "")
