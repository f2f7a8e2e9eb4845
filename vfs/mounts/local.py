"""A local directory as a silo: any path, including a kernel-mounted NFS export (the NFS "path mode").

Version = (mtime_ns, size): the best a POSIX file offers. Symlinks are followed; sockets, FIFOs and
devices are left out of listings (reading a FIFO would hang the reader).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat as st
from typing import Any

from vfs.errors import SiloError
from vfs.mounts.base import Backend, BaseOptions, ObjectMeta, join, not_a_directory, stale


@dataclasses.dataclass(frozen=True)
class LocalOptions(BaseOptions):
    root: str


def _meta(path: str, s: os.stat_result) -> ObjectMeta | None:
    if st.S_ISDIR(s.st_mode):
        return ObjectMeta(path, True, 0, s.st_mtime_ns)
    if st.S_ISREG(s.st_mode):
        return ObjectMeta(path, False, s.st_size, s.st_mtime_ns, f"{s.st_mtime_ns}:{s.st_size}")
    return None


class LocalBackend(Backend):
    scheme = "local"
    Options = LocalOptions

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
