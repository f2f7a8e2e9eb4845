"""Open files: which reader handle serves a read, and which inode a FUSE file handle stands for.

Two modes (`[fuse] pin_handle_version`, see vfs/namespace.py):
- without opens, the kernel names files by inode: each inode read gets one reader handle, for the
  version the kernel was last told of, replaced when that version changes and freed at forget;
- with opens, each OPEN makes a handle pinned to the version current then; FUSE file handles map to
  their inode here, so writes, flushes and fsyncs find the file's staged copy.

Written files are found by inode too (their staged copy is per file, shared by every descriptor);
a staged file unlinked while the kernel still knows its inode stays readable here until forget.
"""

from __future__ import annotations

import itertools

from vfs.mount_table import Mount
from vfs.mounts.base import ObjectMeta
from vfs.reader import Reader
from vfs.staging import StagedFile


class OpenFiles:
    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self._by_ino: dict[int, int] = {}  # without opens: inode -> reader handle of its told version
        self._fh_ino: dict[int, int] = {}  # with opens: FUSE handle -> inode
        self._write_ids = itertools.count(1 << 61)  # handles of files opened only to write
        self.orphans: dict[int, StagedFile] = {}
        """Staged files unlinked (or replaced) while their inode lives: readable until forget."""

    def for_inode(self, ino: int, mount: Mount, path: str, meta: ObjectMeta) -> tuple[int, bool]:
        """The reader handle that serves inode `ino` at `meta.version` (without opens), and whether
        it is new (a new version, or the first read)."""
        fh = self._by_ino.get(ino)
        h = self.reader.handles.get(fh) if fh is not None else None
        if h is not None and h.version == meta.version:
            return fh, False  # type: ignore[return-value]
        if fh is not None:
            self.reader.release(fh)
        fh = self._by_ino[ino] = self.reader.open(mount, path, meta.version, meta.size)
        return fh, True

    def open(self, ino: int, mount: Mount | None, path: str, meta: ObjectMeta | None) -> int:
        """A FUSE handle for inode `ino`: pinned to `meta`'s version if given (a file opened to read)."""
        fh = self.reader.open(mount, path, meta.version, meta.size) if meta is not None and mount is not None \
            else next(self._write_ids)
        self._fh_ino[fh] = ino
        return fh

    def inode(self, fh: int) -> int | None:
        return self._fh_ino.get(fh)

    def release(self, fh: int) -> None:
        self._fh_ino.pop(fh, None)
        self.reader.release(fh)

    def forget(self, ino: int) -> StagedFile | None:
        """The kernel forgot the inode: free its reader handle; an orphaned staged file to drop, if any."""
        fh = self._by_ino.pop(ino, None)
        if fh is not None:
            self.reader.release(fh)
        return self.orphans.pop(ino, None)
