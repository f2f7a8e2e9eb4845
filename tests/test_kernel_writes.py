"""Writes through the kernel mount, on S3 (moto) and a local directory side by side, in modes
through and back: create, write at offsets, O_TRUNC, O_APPEND, truncate, rename, unlink, mkdir,
rmdir, utime, EXDEV between silos, EPERM for what silos cannot keep, read-your-writes before any
commit, and the bytes checked on the silo behind the mount. Also: kill -9 in mode back with files
closed but not committed, and a remount commits them.
"""

from __future__ import annotations

import ctypes
import errno
import os
import random
import signal
from pathlib import Path
from typing import Iterator

import pytest

from tests.kernel import VfsMount, errno_of, fuse_available, read_file, start_mount, stop_mount, vfs_mount, wait_until
from tests.silos.s3 import MotoS3, moto_server

pytestmark = [pytest.mark.kernel, pytest.mark.skipif(fuse_available() is not None, reason=str(fuse_available()))]

BUCKET = "writes"


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    with moto_server(tmp_path_factory.mktemp("moto")) as m:
        m.client().create_bucket(Bucket=BUCKET)
        yield m


def s3_bytes(moto: MotoS3, key: str) -> bytes | None:
    return moto.object_bytes(BUCKET, key)


def config(moto: MotoS3, local: Path, mode: str, prefix: str) -> dict:
    return {
        "metadata": {"ttl": 30},
        "write": {"mode": mode, "write_back_delay": 0.2},
        "mount": [
            {"path": "/s3", **moto.options(bucket=BUCKET, prefix=prefix)},
            {"path": "/local", "backend": "local", "root": str(local)},
            {"path": "/ro", "backend": "local", "root": str(local), "write_mode": "off"},
        ],
    }


@pytest.fixture(scope="module", params=["through", "back"])
def mnt(request: pytest.FixtureRequest, moto: MotoS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[VfsMount, str, Path]]:
    tmp = tmp_path_factory.mktemp(request.param)
    (tmp / "local").mkdir()
    with vfs_mount(tmp, config(moto, tmp / "local", request.param, request.param)) as m:
        yield m, request.param, tmp / "local"
    assert "Traceback" not in m.log_text(), m.log_text()[-3000:]


def committed(moto: MotoS3, key: str, data: bytes, timeout: float = 30.0) -> None:
    wait_until(lambda: s3_bytes(moto, key) == data, timeout, f"{key} on the silo")


def test_create_write_read_back_and_commit(mnt: tuple[VfsMount, str, Path], moto: MotoS3) -> None:
    m, mode, _ = mnt
    data = random.Random(1).randbytes(3 * 1024 * 1024 + 5)
    with open(m.path / "s3" / "new.bin", "wb") as f:
        f.write(data[:1000])
        f.flush()
        assert os.stat(m.path / "s3" / "new.bin").st_size == 1000  # read-your-writes before any commit
        f.write(data[1000:])
        assert read_file(m.path / "s3" / "new.bin") == data
    if mode == "through":
        assert s3_bytes(moto, f"{mode}/new.bin") == data  # close returned: the silo holds it
    committed(moto, f"{mode}/new.bin", data)
    assert read_file(m.path / "s3" / "new.bin") == data
    assert "new.bin" in os.listdir(m.path / "s3")


def test_fsync_again_and_again_on_one_open_file(mnt: tuple[VfsMount, str, Path], moto: MotoS3) -> None:
    """Each fsync commits what was written so far; the next writes build on it (no ESTALE, no loss)."""
    m, mode, _ = mnt
    rng = random.Random(7)
    parts = [rng.randbytes(n) for n in (5000, 70000, 3)]
    fd = os.open(m.path / "s3" / "fsyncs.bin", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        for i, part in enumerate(parts):
            os.write(fd, part)
            os.fsync(fd)
            assert s3_bytes(moto, f"{mode}/fsyncs.bin") == b"".join(parts[:i + 1])
    finally:
        os.close(fd)
    committed(moto, f"{mode}/fsyncs.bin", b"".join(parts))
    assert read_file(m.path / "s3" / "fsyncs.bin") == b"".join(parts)
    assert not [n for n in os.listdir(m.path / "s3") if "conflict" in n]


def test_overwrite_offsets_truncate_append(mnt: tuple[VfsMount, str, Path], moto: MotoS3) -> None:
    m, mode, _ = mnt
    p = m.path / "s3" / "edit.txt"
    p.write_bytes(b"0123456789")
    with open(p, "r+b") as f:
        f.seek(3)
        f.write(b"abc")
    assert p.read_bytes() == b"012abc6789"
    with open(p, "ab") as f:
        f.write(b"XY")
    assert p.read_bytes() == b"012abc6789XY"
    os.truncate(p, 4)
    assert p.read_bytes() == b"012a"
    with open(p, "r+b") as f:
        f.seek(10)
        f.write(b"!")  # a hole from 4 to 10
    assert p.read_bytes() == b"012a" + b"\0" * 6 + b"!"
    with open(p, "wb") as f:  # O_TRUNC
        f.write(b"short")
    assert p.read_bytes() == b"short"
    committed(moto, f"{mode}/edit.txt", b"short")


def test_directories_rename_unlink(mnt: tuple[VfsMount, str, Path], moto: MotoS3) -> None:
    m, mode, _ = mnt
    top = m.path / "s3"
    os.mkdir(top / "d")
    assert errno_of(os.mkdir, top / "d") == errno.EEXIST
    (top / "d" / "a.txt").write_bytes(b"a")
    assert errno_of(os.rmdir, top / "d") == errno.ENOTEMPTY
    os.rename(top / "d" / "a.txt", top / "d" / "b.txt")
    assert os.listdir(top / "d") == ["b.txt"] and (top / "d" / "b.txt").read_bytes() == b"a"
    committed(moto, f"{mode}/d/b.txt", b"a")
    os.rename(top / "d", top / "e")
    assert (top / "e" / "b.txt").read_bytes() == b"a" and not (top / "d").exists()
    assert s3_bytes(moto, f"{mode}/e/b.txt") == b"a" and s3_bytes(moto, f"{mode}/d/b.txt") is None
    os.unlink(top / "e" / "b.txt")
    assert errno_of(os.stat, top / "e" / "b.txt") == errno.ENOENT and s3_bytes(moto, f"{mode}/e/b.txt") is None
    os.rmdir(top / "e")
    assert not (top / "e").exists()


def test_rename_noreplace_exdev_eperm(mnt: tuple[VfsMount, str, Path], moto: MotoS3) -> None:
    m, mode, local = mnt
    (m.path / "s3" / "x").write_bytes(b"x")
    (m.path / "local" / "y").write_bytes(b"y")
    assert errno_of(os.rename, m.path / "s3" / "x", m.path / "local" / "x") == errno.EXDEV
    assert errno_of(os.symlink, "x", m.path / "s3" / "link") == errno.EPERM
    assert errno_of(os.link, m.path / "s3" / "x", m.path / "s3" / "hard") == errno.EPERM
    os.chmod(m.path / "s3" / "x", 0o600)  # accepted, changes nothing: silos keep no modes (rsync, mkstemp)
    assert os.stat(m.path / "s3" / "x").st_mode & 0o777 == 0o644
    assert errno_of(os.chown, m.path / "s3" / "x", os.getuid() + 1, -1) == errno.EPERM
    committed(moto, f"{mode}/x", b"x")
    wait_until(lambda: (local / "y").exists() and (local / "y").read_bytes() == b"y", 30, "y in the local silo")


def test_utime_is_kept(mnt: tuple[VfsMount, str, Path], moto: MotoS3) -> None:
    m, mode, local = mnt
    p = m.path / "local" / "dated"
    p.write_bytes(b"d")
    os.utime(p, ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))
    assert os.stat(p).st_mtime_ns == 1_600_000_000 * 10**9
    wait_until(lambda: (local / "dated").exists() and os.stat(local / "dated").st_mtime_ns == 1_600_000_000 * 10**9,
               30, "the mtime on the local silo")


def test_a_concurrent_writer_keeps_both_versions(mnt: tuple[VfsMount, str, Path], moto: MotoS3) -> None:
    m, mode, _ = mnt
    p = m.path / "s3" / "raced.txt"
    p.write_bytes(b"ours v1")
    committed(moto, f"{mode}/raced.txt", b"ours v1")
    f = open(p, "r+b", buffering=0)
    f.write(b"ours v2")
    moto.client().put_object(Bucket=BUCKET, Key=f"{mode}/raced.txt", Body=b"theirs")
    if mode == "through":
        with pytest.raises(OSError) as info:
            f.close()
        assert info.value.errno == errno.ESTALE
    else:
        f.close()
    keys = [o["Key"] for o in moto.client().list_objects_v2(Bucket=BUCKET, Prefix=f"{mode}/raced.txt")["Contents"]]
    wait_until(lambda: len([o for o in moto.client().list_objects_v2(Bucket=BUCKET, Prefix=f"{mode}/raced.txt")["Contents"]]) == 2,
               30, "the conflict copy")
    keys = [o["Key"] for o in moto.client().list_objects_v2(Bucket=BUCKET, Prefix=f"{mode}/raced.txt")["Contents"]]
    conflict = [k for k in keys if ".conflict-" in k]
    assert s3_bytes(moto, f"{mode}/raced.txt") == b"theirs"
    assert len(conflict) == 1 and s3_bytes(moto, conflict[0]) == b"ours v2"


def test_kill_9_in_mode_back_loses_nothing(moto: MotoS3, tmp_path: Path) -> None:
    (tmp_path / "local").mkdir()
    cfg = config(moto, tmp_path / "local", "back", "crash")
    cfg["write"]["write_back_delay"] = 3600  # closed, accepted, not committed when the process dies
    m = start_mount(tmp_path, cfg, "crash")
    files = {f"f{i}.bin": random.Random(i).randbytes(1000 * i + 1) for i in range(20)}
    try:
        for name, data in files.items():
            (m.path / "s3" / name).write_bytes(data)
        assert all(s3_bytes(moto, f"crash/{n}") is None for n in files)
        m.proc.send_signal(signal.SIGKILL)
        m.proc.wait(30)
    finally:
        stop_mount(m)
    cfg["write"]["write_back_delay"] = 0.2
    with vfs_mount(tmp_path, cfg, "crash") as again:
        for name, data in files.items():
            committed(moto, f"crash/{name}", data)
            assert read_file(again.path / "s3" / name) == data
        staging = tmp_path / "crash-staging"
        wait_until(lambda: not list(staging.rglob("*.json")), 30, "the journal to empty")


def renameat2_noreplace(src: Path, dst: Path) -> int:
    """renameat2(RENAME_NOREPLACE); 0 or the errno."""
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, noreplace = -100, 1
    ret = libc.renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), noreplace)
    return 0 if ret == 0 else ctypes.get_errno()


def test_rename_noreplace_is_eexist(mnt: tuple[VfsMount, str, Path]) -> None:
    m, _, _ = mnt
    top = m.path / "s3"
    (top / "nr-a").write_bytes(b"a")
    (top / "nr-b").write_bytes(b"b")
    assert renameat2_noreplace(top / "nr-a", top / "nr-b") == errno.EEXIST
    assert (top / "nr-a").read_bytes() == b"a" and (top / "nr-b").read_bytes() == b"b"
    assert renameat2_noreplace(top / "nr-a", top / "nr-c") == 0 and (top / "nr-c").read_bytes() == b"a"


def test_a_mount_with_write_mode_off_is_erofs_beside_writable_ones(mnt: tuple[VfsMount, str, Path]) -> None:
    m, _, local = mnt
    (local / "seen.txt").write_bytes(b"seen")
    ro = m.path / "ro"
    assert (ro / "seen.txt").read_bytes() == b"seen"
    assert os.stat(ro / "seen.txt").st_mode & 0o777 == 0o444 and os.stat(m.path / "local").st_mode & 0o777 == 0o755
    # Files open without asking vfs (FUSE no_open): the open succeeds, the first change is refused.
    fd = os.open(ro / "seen.txt", os.O_RDWR)
    try:
        assert errno_of(os.write, fd, b"x") == errno.EROFS
        assert errno_of(os.ftruncate, fd, 0) == errno.EROFS
    finally:
        os.close(fd)
    assert errno_of(open, ro / "new.txt", "wb") == errno.EROFS
    assert errno_of(os.truncate, ro / "seen.txt", 0) == errno.EROFS
    assert errno_of(os.mkdir, ro / "d") == errno.EROFS
    assert errno_of(os.unlink, ro / "seen.txt") == errno.EROFS
    assert errno_of(os.rmdir, ro) == errno.EROFS or errno_of(os.rmdir, ro) == errno.EBUSY
    assert errno_of(os.rename, ro / "seen.txt", ro / "other.txt") == errno.EROFS
    assert errno_of(os.utime, ro / "seen.txt", (1, 1)) == errno.EROFS
    assert (local / "seen.txt").read_bytes() == b"seen"
