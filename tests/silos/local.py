"""A local directory as a silo (also what a kernel-mounted NFS export is)."""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path
from typing import Iterator

from tests.silos import Silo
from vfs.mounts.local import LocalBackend, LocalOptions


def write_tree(root: Path, files: dict[str, bytes], empty_dirs: list[str]) -> None:
    for key, data in files.items():
        p = root / key
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    for d in empty_dirs:
        (root / d).mkdir(parents=True, exist_ok=True)


def replace_file(root: Path, path: str, data: bytes) -> None:
    """Write new bytes for a file so that its version (mtime, size) surely changes."""
    p = root / path
    st = p.stat() if p.exists() else None
    p.write_bytes(data)
    if st is not None and st.st_size == len(data):  # same size: make sure the mtime moves
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def fetch(root: Path, path: str) -> bytes | None:
    p = root / path
    return p.read_bytes() if p.is_file() else None


@contextlib.contextmanager
def open_silo(tmp: Path, files: dict[str, bytes], empty_dirs: list[str], shadowed: dict[str, bytes]) -> Iterator[Silo]:
    root = tmp / "local-silo"
    root.mkdir()
    write_tree(root, files, empty_dirs)

    yield Silo(
        backend=LocalBackend(LocalOptions(root=str(root))),
        flat_keys=False,
        replace=functools.partial(replace_file, root),
        mount_options={"backend": "local", "root": str(root)},
        rooted=lambda sub: LocalBackend(LocalOptions(root=str(root / sub))),
        fetch=functools.partial(fetch, root),
    )
