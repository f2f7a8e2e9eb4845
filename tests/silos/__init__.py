"""Test silos: each module here starts a real server (or directory) on 127.0.0.1, seeds it with the
standard dataset and hands out a Backend for it. The backend conformance suite and the kernel tests
run over every module listed in SILOS.

A silo module provides `open_silo(tmp: Path, files: dict[str, bytes], empty_dirs: list[str])`, a
context manager yielding a `Silo`; it stops every server it started on exit.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import random
from pathlib import Path
from typing import Callable, ContextManager

from vfs.mounts.base import Backend

# Silo modules, in the order the suites run them. A module whose server cannot start here fails its
# tests (it is not skipped), so a missing install step shows in CI.
# VFS_TEST_SILOS=gcs,s3 narrows a run to some of them.
SILOS = os.environ.get("VFS_TEST_SILOS", "memory,local,s3,gcs,nfs,gdrive").split(",")


@dataclasses.dataclass
class Silo:
    backend: Backend
    flat_keys: bool
    """An object store: keys are flat, a key can be both object and prefix, markers exist."""
    replace: Callable[[str, bytes], None]
    """Write new bytes for a path straight to the silo (behind the backend)."""
    denied: Callable[[], Backend] | None = None
    """A backend for the same silo whose credentials the server refuses, if the server checks them."""
    mount_options: dict | None = None
    """`[[mount]]` options (without `path`) that mount this silo in a config file."""
    rooted: Callable[[str], Backend] | None = None
    """A backend whose top is the directory `data` of the dataset (S3 prefix, NFS sub-path...)."""
    fetch: Callable[[str], bytes | None] | None = None
    """Read a file straight from the silo, behind the backend (None if it is not there)."""
    small_parts: Callable[[], Backend] | None = None
    """A backend for the same silo that uploads in the smallest parts/chunks the silo allows, so a
    file of a few MiB goes up in several (multipart, resumable chunks)."""


def _blob(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


# The standard dataset every silo is seeded with.
PAGE_SIZE = 7  # listings are asked for in pages this small, so `many/` (25 entries) spans 4 pages
FILES: dict[str, bytes] = {
    "hello.txt": b"hello, world\n",
    "empty.bin": b"",
    "data/blob.bin": _blob(3 * 1024 * 1024 + 12345, 1),
    "data/nested/deep/leaf.txt": b"leaf\n",
    "odd names/sp ace \u00fc\u00f1\u4e2d%+&=#.txt": b"odd\n",
    **{f"many/f{i:04d}": f"file {i}\n".encode() for i in range(25)},
}
EMPTY_DIRS = ["emptydir"]
# Object stores only: a key that is also a prefix (README: the directory wins).
SHADOWED = {"both": b"object", "both/child": b"child\n"}


def open_silo(name: str, tmp: Path, *, shadowed: bool = True) -> ContextManager[Silo]:
    """Start silo `name` seeded with the standard dataset."""
    module = importlib.import_module(f"tests.silos.{name}")
    return module.open_silo(tmp, FILES, EMPTY_DIRS, SHADOWED if shadowed else {})
