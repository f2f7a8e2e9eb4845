"""Every errno the README's Writing section names, through the kernel, on an S3 mount (moto) and a
local one, with what the silo holds checked after each refusal (a refused change changes nothing):
EXDEV for a directory rename past `rename_limit` keys (and `mv` then copies), EINVAL for
RENAME_EXCHANGE, EISDIR and ENOTDIR, EPERM for mknod, symlink, link and chown, ENOTSUP for extended
attributes, ENOSPC when the staging area of a mode-cache mount is full, EROFS for writes to a
mount whose write mode is off, EEXIST for O_EXCL and mkdir of an existing name, ENOTEMPTY.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from tests.kernel import VfsMount, errno_of, fuse_available, vfs_mount
from tests.silos.s3 import MotoS3, moto_server

pytestmark = [pytest.mark.kernel, pytest.mark.skipif(fuse_available() is not None, reason=str(fuse_available()))]

BUCKET = "errnos"
RENAME_LIMIT = 3
STAGING = 256 * 1024


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    with moto_server(tmp_path_factory.mktemp("moto")) as m:
        m.client().create_bucket(Bucket=BUCKET)
        yield m


@pytest.fixture(scope="module")
def mnt(moto: MotoS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[VfsMount, Path]]:
    tmp = tmp_path_factory.mktemp("errnos")
    local = tmp / "local"
    local.mkdir()
    (tmp / "scratch").mkdir()
    config = {
        "metadata": {"ttl": 30},
        "write": {"mode": "through", "rename_limit": RENAME_LIMIT, "staging_size": STAGING},
        "mount": [
            {"path": "/s3", **moto.options(bucket=BUCKET)},
            {"path": "/local", "backend": "local", "root": str(local)},
            {"path": "/scratch", "backend": "local", "root": str(tmp / "scratch"), "write_mode": "cache"},
            {"path": "/ro", "backend": "local", "root": str(local), "write_mode": "off"},
        ],
    }
    with vfs_mount(tmp, config) as m:
        yield m, local
    assert "Traceback" not in m.log_text(), m.log_text()[-3000:]


def keys(moto: MotoS3, prefix: str) -> list[str]:
    listed = moto.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for o in listed.get("Contents", []))


def renameat2(src: Path, dst: Path, flags: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd = -100
    ret = libc.renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), flags)
    return ctypes.get_errno() if ret != 0 else 0


def test_a_directory_rename_past_the_limit_is_exdev_and_mv_copies(mnt: tuple[VfsMount, Path], moto: MotoS3) -> None:
    m, _ = mnt
    top = m.path / "s3"
    (top / "big").mkdir()
    for i in range(RENAME_LIMIT + 2):
        (top / "big" / f"f{i}").write_bytes(b"%d" % i)
    before = keys(moto, "big/")
    assert errno_of(os.rename, top / "big", top / "moved") == errno.EXDEV
    assert keys(moto, "big/") == before and keys(moto, "moved/") == []  # refused before anything changed
    subprocess.run(["mv", str(top / "big"), str(top / "moved")], check=True, capture_output=True)
    assert keys(moto, "big/") == [] and [k.split("/", 1)[1] for k in keys(moto, "moved/")] == \
        [k.split("/", 1)[1] for k in before]
    (top / "small").mkdir()
    (top / "small" / "a").write_bytes(b"a")
    os.rename(top / "small", top / "small2")  # within the limit: renamed key by key
    assert "small2/a" in keys(moto, "small2/") and keys(moto, "small/") == []


def test_rename_exchange_is_einval(mnt: tuple[VfsMount, Path]) -> None:
    m, local = mnt
    for top in (m.path / "s3", m.path / "local"):
        (top / "x1").write_bytes(b"1")
        (top / "x2").write_bytes(b"2")
        assert renameat2(top / "x1", top / "x2", 2) == errno.EINVAL  # RENAME_EXCHANGE
        assert (top / "x1").read_bytes() == b"1" and (top / "x2").read_bytes() == b"2"
    assert (local / "x1").read_bytes() == b"1"


def test_eisdir_enotdir_eexist_enotempty(mnt: tuple[VfsMount, Path]) -> None:
    m, _ = mnt
    for top in (m.path / "s3", m.path / "local"):
        (top / "dir").mkdir()
        (top / "dir" / "in").write_bytes(b"x")
        (top / "file").write_bytes(b"f")
        assert errno_of(open, top / "dir", "wb") == errno.EISDIR
        assert errno_of(os.unlink, top / "dir") == errno.EISDIR
        assert errno_of(os.rmdir, top / "file") == errno.ENOTDIR
        assert errno_of(open, top / "file" / "below", "wb") == errno.ENOTDIR
        assert errno_of(os.mkdir, top / "dir") == errno.EEXIST
        assert errno_of(os.open, top / "file", os.O_CREAT | os.O_EXCL | os.O_WRONLY) == errno.EEXIST
        assert errno_of(os.rmdir, top / "dir") == errno.ENOTEMPTY
        assert (top / "file").read_bytes() == b"f" and (top / "dir" / "in").read_bytes() == b"x"


def test_what_silos_cannot_keep_is_eperm_or_enotsup(mnt: tuple[VfsMount, Path], moto: MotoS3) -> None:
    m, local = mnt
    for top in (m.path / "s3", m.path / "local"):
        (top / "target").write_bytes(b"t")
        assert errno_of(os.mknod, top / "fifo", 0o644 | stat.S_IFIFO) == errno.EPERM
        assert errno_of(os.symlink, "target", top / "link") == errno.EPERM
        assert errno_of(os.link, top / "target", top / "hard") == errno.EPERM
        assert errno_of(os.chown, top / "target", 12345, 12345) == errno.EPERM
        assert errno_of(os.setxattr, top / "target", "user.x", b"1") == errno.ENOTSUP
        os.chmod(top / "target", 0o600)  # accepted, changes nothing (rsync and mkstemp chmod every file)
        assert sorted(p.name for p in top.iterdir() if p.name in {"fifo", "link", "hard", "target"}) == ["target"]
    assert not any(n in os.listdir(local) for n in ("fifo", "link", "hard"))  # nothing stray on the silos
    assert keys(moto, "fifo") == keys(moto, "link") == keys(moto, "hard") == []


def test_a_full_staging_area_in_mode_cache_is_enospc_and_loses_nothing(mnt: tuple[VfsMount, Path]) -> None:
    m, _ = mnt
    top = m.path / "scratch"
    (top / "fits").write_bytes(b"a" * (STAGING // 2))
    with open(top / "too-big", "wb") as f:
        f.write(b"b" * (STAGING // 4))
        f.flush()
        with pytest.raises(OSError) as full:
            f.write(b"c" * STAGING)
            f.flush()
        assert full.value.errno == errno.ENOSPC
    assert (top / "fits").read_bytes() == b"a" * (STAGING // 2)  # what was accepted stays
    assert (top / "too-big").read_bytes() == b"b" * (STAGING // 4)
    os.unlink(top / "too-big")
    (top / "after").write_bytes(b"d" * (STAGING // 4))  # room again once a file is removed
    assert (top / "after").stat().st_size == STAGING // 4


def test_a_mount_with_writes_off_is_erofs(mnt: tuple[VfsMount, Path]) -> None:
    m, local = mnt
    (local / "ro-file").write_bytes(b"r")
    top = m.path / "ro"
    assert errno_of(open, top / "new", "wb") == errno.EROFS
    assert errno_of(os.mkdir, top / "d") == errno.EROFS
    assert errno_of(os.unlink, top / "ro-file") == errno.EROFS
    assert errno_of(os.truncate, top / "ro-file", 0) == errno.EROFS
    assert (local / "ro-file").read_bytes() == b"r" and not (local / "new").exists()
