"""The kernel's readdir cache (FOPEN_CACHE_DIR through the patched pyfuse3), on a local silo: an
unchanged listing is read from the kernel's cache (no READDIR reaches vfs), and the cache never shows
a listing vfs no longer has: changes made through the mount show at once, changes made on the silo
once the TTL lets vfs see them, and an entry forgotten and looked up again keeps its inode right.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pyfuse3
import pytest

from tests.kernel import VfsMount, fuse_available, read_file, vfs_mount, wait_until
from vfs.control import STATS_REFRESH

pytestmark = [pytest.mark.kernel, pytest.mark.skipif(fuse_available() is not None, reason=str(fuse_available())),
              pytest.mark.skipif(getattr(pyfuse3, "VFS_PATCH", 0) < 4, reason="pyfuse3 without scripts/setup's patch")]

TTL = 2.0
FILES = 2000  # several READDIRPLUS replies' worth


def requests(m: VfsMount) -> dict[str, int]:
    time.sleep(STATS_REFRESH + 0.1)  # one rendering of .vfs/stats is served for a second
    return json.loads(read_file(m.path / ".vfs" / "stats"))["requests"]


def config(root: Path) -> dict[str, Any]:
    return {"metadata": {"ttl": TTL, "negative_ttl": TTL}, "write": {"mode": "through"},
            "mount": [{"path": "/l", "backend": "local", "root": str(root)}]}


def silo(tmp: Path) -> tuple[Path, set[str]]:
    """A local silo with FILES empty-ish files in d/; its root and the names."""
    root = tmp / "silo"
    (root / "d").mkdir(parents=True)
    names = {f"f{i:05d}" for i in range(FILES)}
    for name in names:
        (root / "d" / name).write_bytes(b"x")
    return root, names


def test_an_unchanged_listing_comes_from_the_kernel_and_a_changed_one_never_does(tmp_path: Path) -> None:
    root, names = silo(tmp_path)
    with vfs_mount(tmp_path, config(root)) as m:
        d = m.path / "l" / "d"
        assert set(os.listdir(d)) == names
        before = requests(m)
        assert set(os.listdir(d)) == names and set(os.listdir(d)) == names
        after = requests(m)
        assert after["opendir"] == before["opendir"] + 2, "every opendir reaches vfs"
        assert after.get("readdir", 0) == before.get("readdir", 0), "an unchanged listing is the kernel's"

        # Through the mount: the kernel drops its cache itself, and vfs's listing changed too.
        (d / "new").write_bytes(b"n")
        os.unlink(d / "f00000")
        os.rename(d / "f00001", d / "g00001")
        names = (names - {"f00000", "f00001"}) | {"new", "g00001"}
        assert set(os.listdir(d)) == names
        assert set(os.listdir(d)) == names

        # On the silo, behind vfs's back: seen once the TTL has passed, never a stale cached listing after.
        (root / "d" / "outside").write_bytes(b"o")
        (root / "d" / "f00002").unlink()
        names = (names - {"f00002"}) | {"outside"}
        wait_until(lambda: set(os.listdir(d)) == names, 10 * TTL, "the silo's change to show")
        for _ in range(3):
            assert set(os.listdir(d)) == names

        # Inode numbers from the cache agree with stat.
        for entry in list(os.scandir(d))[:50]:
            assert entry.inode() == os.stat(entry.path).st_ino, entry.name
    assert m.log_text().count("Traceback") == 0


def test_a_listing_cut_short_is_not_taken_for_a_whole_one(tmp_path: Path) -> None:
    root, names = silo(tmp_path)
    with vfs_mount(tmp_path, config(root)) as m:
        d = m.path / "l" / "d"
        with os.scandir(d) as it:  # read a few entries, then close: the kernel's cache is partial
            for _, _ in zip(range(5), it):
                pass
        assert set(os.listdir(d)) == names
        assert set(os.listdir(d)) == names
