"""The mount table: which silo serves which part of the tree.

A tree path goes to the mount with the longest matching path (`/data/s3/x` -> mount `/data/s3`,
backend path `x`). Directories that exist only because a mount lies below them (`/` and `/data` for a
lone mount at `/data/s3`) are synthetic. A mount point inside another mount (`/` from S3 and `/local`
from a directory) shows up in its parent's listing and hides any entry of that name there.
"""

from __future__ import annotations

import dataclasses
import posixpath
import time

from vfs.mounts.base import Backend


@dataclasses.dataclass(frozen=True, eq=False)
class Mount:
    path: str
    """Where the silo appears in the tree: absolute, normalised, '/' for the root."""
    backend: Backend
    ttl: float
    """Seconds metadata and listings are trusted (also the kernel's entry/attr timeouts)."""
    negative_ttl: float
    """Seconds a 'no such file' answer is trusted."""
    write_mode: str = "off"
    """through, back, cache or off (vfs/commit.py); off unless the backend is writable."""
    rename_limit: int = 1000
    """Keys an object store may copy one by one to rename a directory (beyond: EXDEV)."""

    @property
    def writable(self) -> bool:
        return self.write_mode != "off"


def parent_of(path: str) -> str:
    return posixpath.dirname(path) if path != "/" else "/"


def child_of(parent: str, name: str) -> str:
    return parent + name if parent == "/" else f"{parent}/{name}"


class MountTable:
    def __init__(self, mounts: list[Mount]) -> None:
        self.mounts = sorted(mounts, key=lambda m: len(m.path), reverse=True)  # longest first
        self.started_ns = time.time_ns()
        self.by_path = {m.path: m for m in mounts}
        children: dict[str, set[str]] = {}
        for m in mounts:
            path = m.path
            while path != "/":
                children.setdefault(parent_of(path), set()).add(posixpath.basename(path))
                path = parent_of(path)
        self._children = {k: sorted(v) for k, v in children.items()}
        self.synthetic = {p for p in self._children if p not in self.by_path and self.route(p) is None}

    def route(self, path: str) -> tuple[Mount, str] | None:
        """The mount serving `path` and the path inside its backend; None for a synthetic directory."""
        for m in self.mounts:
            if m.path == "/":
                return m, path.lstrip("/")
            if path == m.path or path.startswith(m.path + "/"):
                return m, path[len(m.path) + 1:]
        return None

    def overlay(self, path: str) -> list[str]:
        """Names under directory `path` that are mount points or lead to one."""
        return self._children.get(path, [])

    def is_overlay(self, path: str) -> bool:
        """`path` is a mount point or a directory on the way to one (never hidden, never a file)."""
        return path in self.by_path or path in self._children  # synthetic dirs all have children
