"""The read path end to end: the real kernel, the real vfs process, a real S3 server (moto).

One mount holds a data bucket at /s3, a second bucket and a local directory nested under /other,
a bucket whose server refuses our key at /denied, and a short-TTL view of the data bucket at
/mutable for the consistency tests.
"""

from __future__ import annotations

import concurrent.futures
import errno
import os
import random
import subprocess
import sys
import json
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.kernel import VfsMount, errno_of, fuse_available, read_file, start_mount, stop_mount, unmount, vfs_mount, wait_until
from tests.silos.local import write_tree
from tests.silos.s3 import REGION, MotoS3, moto_server, seed
from vfs.app import mounted_at

pytestmark = pytest.mark.kernel

BLOCK = 1024 * 1024  # small blocks so the 50 MiB object spans 50 of them
DATA_BUCKET, OTHER_BUCKET = "vfs-data", "vfs-other"
MANY = 5_000  # more than one ListObjectsV2 page (1,000)

rnd = random.Random(42)
BIG = rnd.randbytes(50 * 1024 * 1024)
DATA: dict[str, bytes] = {
    "readme.txt": b"vfs reads S3\n",
    "zero-at-root": b"",
    "empty/zero.bin": b"",
    "nested/a/b/c/deep.txt": b"deep\n",
    "nested/a/sibling.txt": b"sibling\n",
    "big/fifty.bin": BIG,
    "odd/with space.txt": b"space\n",
    "odd/\u00fcn\u00efc\u00f8d\u00e9 \u6587\u4ef6.txt": b"unicode\n",
    "odd/100%.txt": b"percent\n",
    "odd/a+b=c.txt": b"plus\n",
    "mutable/file.txt": b"version one\n",
    **{f"many/k{i:05d}": f"{i}\n".encode() for i in range(MANY)},
}
MARKERS = ["markeronly"]
LOCAL = {"notes.txt": b"local notes\n", "deeper/x.bin": rnd.randbytes(3000)}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MotoS3, MotoS3]]:
    reason = fuse_available()
    assert reason is None, reason
    tmp = tmp_path_factory.mktemp("s3")
    with moto_server(tmp) as moto, moto_server(tmp, check_credentials=True) as guarded:
        client = moto.client()
        seed(client, OTHER_BUCKET, {"other.txt": b"from the other bucket\n"})
        client.create_bucket(Bucket=DATA_BUCKET)
        small = {k: v for k, v in DATA.items() if len(v) < 1024}
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda kv: client.put_object(Bucket=DATA_BUCKET, Key=kv[0], Body=kv[1]), small.items()))
        client.put_object(Bucket=DATA_BUCKET, Key="big/fifty.bin", Body=BIG)
        for d in MARKERS:
            client.put_object(Bucket=DATA_BUCKET, Key=d + "/", Body=b"")
        guarded.client().create_bucket(Bucket="locked")
        yield moto, guarded


def config(moto: MotoS3, guarded: MotoS3, local: Path, **cache: object) -> dict:
    refused = {**guarded.options(bucket="locked"), "access_key_id": "AKIAREFUSED", "secret_access_key": "no", "max_attempts": 1}
    return {
        "cache": {"block_size": BLOCK, "ram_size": 16 * BLOCK, **cache},
        "mount": [
            {"path": "/s3", **moto.options(bucket=DATA_BUCKET)},
            {"path": "/other/b", **moto.options(bucket=OTHER_BUCKET)},
            {"path": "/other/local", "backend": "local", "root": str(local)},
            {"path": "/denied", **refused},
            {"path": "/mutable", **moto.options(bucket=DATA_BUCKET, prefix="mutable"), "ttl": 1, "negative_ttl": 1},
        ],
    }


@pytest.fixture(scope="module")
def mnt(servers: tuple[MotoS3, MotoS3], tmp_path_factory: pytest.TempPathFactory) -> Iterator[VfsMount]:
    tmp = tmp_path_factory.mktemp("kernel")
    write_tree(tmp / "local", LOCAL, [])
    with vfs_mount(tmp, config(*servers, tmp / "local")) as m:
        yield m


@pytest.fixture
def alive(mnt: VfsMount) -> Iterator[VfsMount]:
    """The module's mount, checked to still be up and answering after the test."""
    yield mnt
    assert mnt.alive(), mnt.log_text()[-3000:]
    assert sorted(os.listdir(mnt.path)) == ["denied", "mutable", "other", "s3"]


def expected_tree() -> set[str]:
    paths = set()
    for key in DATA:
        parts = key.split("/")
        paths.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    return paths | set(MARKERS)


def test_ls_la(alive: VfsMount) -> None:
    out = subprocess.run(["ls", "-la", alive.path / "s3"], capture_output=True, text=True, check=True).stdout
    lines = {line.split()[-1]: line for line in out.splitlines()[1:]}
    assert set(lines) == {".", "..", "readme.txt", "zero-at-root", "empty", "nested", "big", "odd", "many", "markeronly", "mutable"}
    assert lines["readme.txt"].startswith("-r--r--r--") and f" {len(DATA['readme.txt'])} " in lines["readme.txt"]
    assert lines["big"].startswith("dr-xr-xr-x")


def test_find_lists_every_key(alive: VfsMount) -> None:
    out = subprocess.run(["find", "."], cwd=alive.path / "s3", capture_output=True, check=True).stdout
    found = {os.fsdecode(line)[2:] for line in out.split(b"\n") if line and line != b"."}
    assert found == expected_tree()
    assert len(os.listdir(alive.path / "s3" / "many")) == MANY


def test_stat(alive: VfsMount) -> None:
    for key, data in DATA.items():
        if key.startswith(("odd/", "big/", "empty/", "nested/")):
            st = os.stat(alive.path / "s3" / key)
            assert (st.st_size, st.st_mode & 0o777, st.st_nlink) == (len(data), 0o444, 1), key
            assert st.st_mtime > 1_600_000_000
    assert os.path.isdir(alive.path / "s3" / "markeronly") and os.listdir(alive.path / "s3" / "markeronly") == []


def test_cat(alive: VfsMount) -> None:
    for key in ["readme.txt", "zero-at-root", "empty/zero.bin", "nested/a/b/c/deep.txt", *[k for k in DATA if k.startswith("odd/")]]:
        out = subprocess.run(["cat", alive.path / "s3" / key], capture_output=True, check=True).stdout
        assert out == DATA[key], key


def test_cp_r(alive: VfsMount, tmp_path: Path) -> None:
    for sub in ["nested", "odd", "empty", "big"]:
        subprocess.run(["cp", "-r", alive.path / "s3" / sub, tmp_path / sub], check=True)
    copied = {str(p.relative_to(tmp_path)): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert copied == {k: v for k, v in DATA.items() if k.split("/")[0] in ("nested", "odd", "empty", "big")}


def test_random_reads_are_byte_exact(alive: VfsMount) -> None:
    size = len(BIG)
    ranges = [(rnd.randrange(size), rnd.choice([1, 100, 4096, 131072, 1 << 20, 3 << 20])) for _ in range(1000)]
    ranges += [(k * BLOCK - d, 2 * d) for k in (1, 2, 17, 49) for d in (1, 7, 4096, BLOCK // 2)]  # across blocks
    ranges += [(0, 3 * BLOCK + 5), (size - 10, 100), (size - 1, 1), (size, 10), (size + 12345, 10)]  # past EOF
    fd = os.open(alive.path / "s3" / "big/fifty.bin", os.O_RDONLY)
    try:
        for off, n in ranges:
            assert os.pread(fd, n, off) == BIG[off:off + n], (off, n)
    finally:
        os.close(fd)


def test_nested_mounts_two_buckets_and_local(alive: VfsMount) -> None:
    assert sorted(os.listdir(alive.path / "other")) == ["b", "local"]
    assert read_file(alive.path / "other/b/other.txt") == b"from the other bucket\n"
    assert read_file(alive.path / "other/local/notes.txt") == LOCAL["notes.txt"]
    assert read_file(alive.path / "other/local/deeper/x.bin") == LOCAL["deeper/x.bin"]
    assert os.path.isdir(alive.path / "other") and not os.path.exists(alive.path / "other/nope")


def test_errnos_reach_the_reader(alive: VfsMount) -> None:
    s3 = alive.path / "s3"
    assert errno_of(open, s3 / "nope.txt", "rb") == errno.ENOENT
    assert errno_of(os.stat, s3 / "nested/nope") == errno.ENOENT
    assert errno_of(os.listdir, s3 / "readme.txt") == errno.ENOTDIR
    assert errno_of(os.stat, s3 / "readme.txt/child") == errno.ENOTDIR
    assert errno_of(open, s3 / "readme.txt", "wb") == errno.EROFS
    assert errno_of(open, s3 / "readme.txt", "ab") == errno.EROFS
    assert errno_of(open, s3 / "new.txt", "wb") == errno.EROFS
    assert errno_of(os.mkdir, s3 / "newdir") == errno.EROFS
    assert errno_of(os.unlink, s3 / "readme.txt") == errno.EROFS
    assert errno_of(os.rename, s3 / "readme.txt", s3 / "renamed.txt") == errno.EROFS
    assert errno_of(os.utime, s3 / "readme.txt") == errno.EROFS
    assert errno_of(os.listdir, alive.path / "denied") == errno.EACCES
    assert errno_of(os.stat, alive.path / "denied/some.txt") == errno.EACCES
    assert read_file(s3 / "readme.txt") == DATA["readme.txt"]  # and everything else still works


def test_replaced_object_is_seen_after_the_ttl(alive: VfsMount, servers: tuple[MotoS3, MotoS3]) -> None:
    client = servers[0].client()
    path = alive.path / "mutable" / "file.txt"
    assert read_file(path) == DATA["mutable/file.txt"]
    new = b"version two is longer than version one\n"
    client.put_object(Bucket=DATA_BUCKET, Key="mutable/file.txt", Body=new)
    wait_until(lambda: os.stat(path).st_size == len(new), 30, "the new size after the TTL", interval=0.2)
    assert read_file(path) == new


@pytest.fixture(scope="module")
def pinned(servers: tuple[MotoS3, MotoS3], tmp_path_factory: pytest.TempPathFactory) -> Iterator[VfsMount]:
    """The same tree with `pin_handle_version`: every open reaches vfs and pins its version."""
    tmp = tmp_path_factory.mktemp("pinned")
    write_tree(tmp / "local", LOCAL, [])
    with vfs_mount(tmp, {**config(*servers, tmp / "local"), "fuse": {"pin_handle_version": True}}) as m:
        yield m


def stats_of(m: VfsMount) -> dict:
    return json.loads(read_file(m.path / ".vfs/stats"))


def replace_while_open(client: Any, path: Path, key: str) -> tuple[bytes, bytes, list[bytes | None], bytes | None]:
    """Read a block of v1, replace the object by v2 of the same size, read the rest of the open
    file in half blocks (None: ESTALE), wait until a fresh read gives v2, then read the first block
    of the still open file again (None: ESTALE)."""
    v1, v2 = rnd.randbytes(6 * BLOCK), rnd.randbytes(6 * BLOCK)
    client.put_object(Bucket=DATA_BUCKET, Key=key, Body=v1)
    wait_until(lambda: os.path.exists(path), 30, "the new object", interval=0.2)
    got: list[bytes | None] = []
    with open(path, "rb", buffering=0) as f:
        assert f.read(BLOCK) == v1[:BLOCK]
        client.put_object(Bucket=DATA_BUCKET, Key=key, Body=v2)  # same size, other bytes
        for off in range(BLOCK, len(v1), BLOCK // 2):
            try:
                got.append(os.pread(f.fileno(), BLOCK // 2, off))
            except OSError as exc:
                assert exc.errno == errno.ESTALE, exc
                got.append(None)
            time.sleep(0.1)  # across the mount's 1 s TTL
        wait_until(lambda: read_file(path) == v2, 30, "the new version after the TTL", interval=0.3)
        try:
            again: bytes | None = os.pread(f.fileno(), BLOCK, 0)
        except OSError as exc:
            assert exc.errno == errno.ESTALE, exc
            again = None
    return v1, v2, got, again


def test_a_pinned_handle_never_mixes_versions(pinned: VfsMount, servers: tuple[MotoS3, MotoS3]) -> None:
    v1, _, got, again = replace_while_open(servers[0].client(), pinned.path / "mutable/pinned.bin", "mutable/pinned.bin")
    for i, data in enumerate(got):
        off = BLOCK + i * BLOCK // 2
        assert data is None or data == v1[off:off + BLOCK // 2], f"bytes of another version at {off}"
    # `again` is not checked: once a fresh open has read v2, the kernel's page cache (one per inode,
    # shared by every open file) holds v2's pages, and the old handle reads those (README).
    assert stats_of(pinned)["requests"]["open"] > 0


def test_without_opens_every_read_is_one_version(alive: VfsMount, servers: tuple[MotoS3, MotoS3]) -> None:
    before = stats_of(alive)["requests"].get("open", 0)
    v1, v2, got, again = replace_while_open(servers[0].client(), alive.path / "mutable/unpinned.bin", "mutable/unpinned.bin")
    for i, data in enumerate(got):
        off = BLOCK + i * BLOCK // 2
        assert data is None or data in (v1[off:off + BLOCK // 2], v2[off:off + BLOCK // 2]), f"mixed bytes at {off}"
    assert again == v2[:BLOCK], "the open file reads the new version once the kernel was told of it"
    assert stats_of(alive)["requests"].get("open", 0) == before <= 1, "the kernel opened files without asking vfs"


def test_sigterm_during_a_read_unmounts_cleanly(servers: tuple[MotoS3, MotoS3], tmp_path: Path) -> None:
    cfg = config(*servers, tmp_path)
    m = start_mount(tmp_path, cfg, "sig")
    started, outcome = threading.Event(), []

    def read_slowly() -> None:
        try:
            with open(m.path / "s3/big/fifty.bin", "rb", buffering=0) as f:
                while f.read(256 * 1024):
                    started.set()
            outcome.append("eof")
        except OSError as exc:
            outcome.append(exc.errno)
        finally:
            started.set()

    reader = threading.Thread(target=read_slowly, daemon=True)
    try:
        reader.start()
        assert started.wait(60)
        m.proc.terminate()
        assert m.proc.wait(30) == 0, m.log_text()[-2000:]
        reader.join(30)
        assert not reader.is_alive() and outcome, "the reader hangs after the unmount"
        assert mounted_at(str(m.path)) is None
    finally:
        stop_mount(m)
    with vfs_mount(tmp_path, cfg, "sig") as again:  # the mountpoint is reusable
        assert read_file(again.path / "s3/readme.txt") == DATA["readme.txt"]


def test_kill_9_leaves_no_stale_mount(servers: tuple[MotoS3, MotoS3], tmp_path: Path) -> None:
    m = start_mount(tmp_path, config(*servers, tmp_path), "k9")
    try:
        assert read_file(m.path / "s3/readme.txt") == DATA["readme.txt"]
        m.proc.kill()
        m.proc.wait(30)
        try:
            wait_until(lambda: mounted_at(str(m.path)) is None, 60, "auto_unmount")
        except TimeoutError:
            ps = subprocess.run(["ps", "-eo", "pid,ppid,stat,cmd"], capture_output=True, text=True).stdout
            raise AssertionError("still mounted after kill -9; fusermount3 processes:\n"
                                 + "\n".join(line for line in ps.splitlines() if "fusermount" in line)) from None
    finally:
        stop_mount(m)


def vfs(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vfs", *map(str, args)], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parent.parent)


def test_stale_mount_is_reported_in_one_line(servers: tuple[MotoS3, MotoS3], tmp_path: Path) -> None:
    cfg = config(*servers, tmp_path)
    cfg["fuse"] = {"auto_unmount": False}
    m = start_mount(tmp_path, cfg, "stale")
    try:
        m.proc.kill()
        m.proc.wait(30)
        assert errno_of(os.listdir, m.path) == errno.ENOTCONN
        done = vfs("mount", m.path, "--config", m.config, "--foreground")
        assert done.returncode == 2
        assert done.stderr.count("\n") == 1 and "stale mount" in done.stderr and "vfs unmount" in done.stderr
        assert vfs("unmount", m.path).returncode == 0
        assert mounted_at(str(m.path)) is None and os.path.isdir(m.path)
    finally:
        unmount(m.path)


def test_bad_config_names_file_and_key_and_mounts_nothing(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[[mount]]\npath = "/s3"\nbackend = "s3"\nbukcet = "x"\n')
    done = vfs("mount", tmp_path / "mnt", "--config", cfg)
    assert done.returncode == 2
    assert str(cfg) in done.stderr and "bukcet" in done.stderr and "bucket" in done.stderr
    assert mounted_at(str(tmp_path / "mnt")) is None


def test_one_liner_with_the_standard_aws_environment(servers: tuple[MotoS3, MotoS3], tmp_path: Path) -> None:
    """`vfs mount MNT s3://bucket/prefix=/path` in the background, credentials from AWS_* variables."""
    moto = servers[0]
    env = {**os.environ, "AWS_ENDPOINT_URL_S3": moto.endpoint, "AWS_ACCESS_KEY_ID": moto.access_key_id,
           "AWS_SECRET_ACCESS_KEY": moto.secret_access_key, "AWS_REGION": REGION, "XDG_STATE_HOME": str(tmp_path / "state")}
    mnt = tmp_path / "one"
    done = subprocess.run([sys.executable, "-m", "vfs", "mount", str(mnt), f"s3://{DATA_BUCKET}/nested=/n", f"s3://{OTHER_BUCKET}"],
                          env=env, capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent.parent)
    try:
        assert done.returncode == 0, done.stderr
        assert sorted(os.listdir(mnt)) == ["n", OTHER_BUCKET]
        assert read_file(mnt / "n/a/b/c/deep.txt") == b"deep\n"
        assert read_file(mnt / OTHER_BUCKET / "other.txt") == b"from the other bucket\n"
        assert vfs("unmount", mnt).returncode == 0
        wait_until(lambda: mounted_at(str(mnt)) is None, 30, "the unmount")
    finally:
        unmount(mnt)
