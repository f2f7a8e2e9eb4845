"""The inode table: tree path <-> inode number, with the kernel's lookup counts.

Invariants (checked by tests/test_inodes.py):
- an inode the kernel knows (lookups > 0) keeps its number and its path until `forget` brings its
  count to zero; the root is never forgotten;
- one path has one live inode per kind: a path that turns from file into directory (or back) gets a
  new inode, and the old one stays valid for `forget` only;
- numbers are never reused during the life of the mount (the kernel may hold stale ones briefly).
"""

from __future__ import annotations

import dataclasses
import itertools

from vfs.mounts.base import ObjectMeta

ROOT_INODE = 1  # FUSE's root inode number (pyfuse3.ROOT_INODE)


@dataclasses.dataclass(slots=True)
class Inode:
    ino: int
    path: str
    is_dir: bool
    lookups: int = 0
    page_version: str | None = None
    """The version whose pages the kernel may hold in its page cache (decides keep_cache)."""
    told: ObjectMeta | None = None
    """A file's metadata as the kernel was last told it (the version reads serve without opens)."""
    told_at: int = 0
    """When `told` was set, on the namespace's clock of tells (a listing snapshot older than it must not undo it)."""
    listing: int | None = None
    """A directory's listing as the kernel may hold it in its readdir cache (decides keep_cache at opendir)."""


class InodeTable:
    def __init__(self) -> None:
        self._next = itertools.count(ROOT_INODE + 1)
        root = Inode(ROOT_INODE, "/", True, lookups=1)
        self._by_ino: dict[int, Inode] = {ROOT_INODE: root}
        self._by_path: dict[str, Inode] = {"/": root}

    def __len__(self) -> int:
        return len(self._by_ino)

    def get(self, ino: int) -> Inode:
        """The inode, or KeyError if the kernel asks about one it has forgotten."""
        return self._by_ino[ino]

    def known(self, ino: int) -> bool:
        return ino in self._by_ino

    def at(self, path: str) -> Inode | None:
        """The inode that owns `path`, if the kernel holds one."""
        return self._by_path.get(path)

    def assign(self, path: str, is_dir: bool) -> Inode:
        """The inode for `path` of that kind, created with no lookups if there is none."""
        node = self._by_path.get(path)
        if node is not None and node.is_dir == is_dir:
            return node
        node = Inode(next(self._next), path, is_dir)
        self._by_ino[node.ino] = node
        self._by_path[path] = node  # a node of the other kind, if any, lives on until forgotten
        return node

    def ref(self, node: Inode) -> None:
        node.lookups += 1

    def drop_unused(self, node: Inode) -> None:
        """Forget a node assigned for a reply the kernel did not take (it holds no lookups)."""
        if node.lookups == 0 and node.ino != ROOT_INODE:
            self._remove(node)

    def forget(self, ino: int, n: int) -> None:
        """The kernel dropped `n` references. Never raises (pyfuse3's forget must not)."""
        node = self._by_ino.get(ino)
        if node is None or ino == ROOT_INODE:
            return
        node.lookups -= n
        if node.lookups <= 0:
            self._remove(node)

    def rename(self, old: str, new: str) -> None:
        """A rename in the tree: `old` and everything below it now live under `new`. An inode that
        was at `new` keeps its number (for forget) but no longer owns the path."""
        prefix = old + "/"
        for node in [n for n in self._by_path.values() if n.path == old or n.path.startswith(prefix)]:
            if self._by_path.get(node.path) is node:
                del self._by_path[node.path]
            node.path = new + node.path[len(old):]
            self._by_path[node.path] = node

    def _remove(self, node: Inode) -> None:
        del self._by_ino[node.ino]
        if self._by_path.get(node.path) is node:
            del self._by_path[node.path]
