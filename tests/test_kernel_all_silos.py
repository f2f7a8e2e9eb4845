"""All four silos in ONE tree, through the real kernel and the real vfs process.

One mount holds S3 (moto) at /s3, GCS (gcp-storage-emulator) at /gcs, NFS (nfs-ganesha, read with
libnfs) at /nfs, Google Drive (tests/drive_server.py) at /gdrive and a local directory at /local, each
silo seeded with the standard dataset of tests/silos. For every silo whose server checks credentials
(`Silo.denied`) a second entry with refused credentials sits at /local/denied/<silo>, nested in the
local directory so the root keeps exactly the five mount names. The cache is small (8 blocks of
1 MiB) so the four 3 MiB blobs evict each other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import random
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import trio

from tests.kernel import VfsMount, errno_of, fuse_available, read_file, vfs_mount, wait_until
from tests.silos import EMPTY_DIRS, FILES, SHADOWED, Silo, open_silo
from tests.silos.local import write_tree
from vfs.mounts.gdrive_auth import token_info

pytestmark = pytest.mark.kernel

SILO_NAMES = ["s3", "gcs", "nfs", "gdrive"]
ROOT = sorted([*SILO_NAMES, "local"])
DENYING = ["s3", "nfs", "gdrive"]  # servers that check credentials; gcp-storage-emulator accepts anything
BLOCK = 1024 * 1024  # the cache's block size: data/blob.bin (3 MiB + 12345) spans four blocks
RAM = 8 * BLOCK  # less than the four blobs together (16 blocks): reading them all evicts
TTL = 1  # seconds, per silo mount: a replaced file must show within a few of them
CHANGE_TIMEOUT = 30.0  # bound on waiting for a replacement to show (TTL 1 s; margin for a loaded box)
BLOB = FILES["data/blob.bin"]
LOCAL = {"notes.txt": b"local notes\n", "sub/x.bin": random.Random(7).randbytes(5000)}
ODD_DIR = "odd names"

rnd = random.Random(1234)


@dataclasses.dataclass
class World:
    silos: dict[str, Silo]
    denied: dict[str, dict[str, Any]]
    """Refused-credentials `[[mount]]` options (without path), by silo name."""


def denied_options(name: str, silo: Silo, tmp: Path) -> dict[str, Any]:
    """The options of `silo.denied()` in config form: the fields that differ from their defaults.

    An in-memory credentials object (gdrive) cannot go into a config file, so it becomes a token file
    whose access token and refresh token the Drive server both refuse.
    """
    backend = silo.denied()
    try:
        opts = backend.options
        entry: dict[str, Any] = {"backend": backend.scheme}
        for f in dataclasses.fields(opts):
            value = getattr(opts, f.name)
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = dataclasses.MISSING
            if f.name != "credentials" and value is not None and value != default:
                entry[f.name] = value
        if name == "gdrive":
            token = tmp / "refused-token.json"
            token.write_text(json.dumps(token_info("wrong-token", refresh_token="refused", client_id="vfs-test", client_secret="unused")))
            token.chmod(0o600)
            entry.update(token_file=str(token), token_uri=silo.mount_options["token_uri"])
        return entry
    finally:
        trio.run(backend.aclose)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    reason = fuse_available()
    assert reason is None, reason
    with contextlib.ExitStack() as stack:
        silos = {name: stack.enter_context(open_silo(name, tmp_path_factory.mktemp(name))) for name in SILO_NAMES}
        tmp = tmp_path_factory.mktemp("denied")
        denied = {name: denied_options(name, s, tmp) for name, s in silos.items() if s.denied is not None}
        yield World(silos, denied)


@pytest.fixture(scope="module")
def mnt(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VfsMount]:
    tmp = tmp_path_factory.mktemp("kernel")
    write_tree(tmp / "local", LOCAL, [])
    mounts: list[dict[str, Any]] = [
        {"path": f"/{name}", **silo.mount_options, "ttl": TTL, "negative_ttl": TTL} for name, silo in world.silos.items()
    ]
    mounts.append({"path": "/local", "backend": "local", "root": str(tmp / "local")})
    mounts += [{"path": f"/local/denied/{name}", **opts} for name, opts in world.denied.items()]
    config = {"cache": {"block_size": BLOCK, "ram_size": RAM}, "mount": mounts}
    with vfs_mount(tmp, config) as m:
        yield m


@pytest.fixture
def alive(mnt: VfsMount) -> Iterator[VfsMount]:
    """The module's mount, checked to still be up and answering after the test."""
    yield mnt
    assert_answers(mnt)


def assert_answers(m: VfsMount) -> None:
    assert m.alive(), m.log_text()[-3000:]
    assert sorted(os.listdir(m.path)) == ROOT


def expected_tree(flat_keys: bool) -> set[str]:
    """Every path below a silo's top, as `find` prints them (without './')."""
    paths = set(EMPTY_DIRS)
    for key in [*FILES, *(SHADOWED if flat_keys else {})]:
        parts = key.split("/")
        paths.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    return paths


def find(top: Path) -> tuple[set[str], subprocess.CompletedProcess]:
    done = subprocess.run(["find", "."], cwd=top, capture_output=True, timeout=120)
    return {os.fsdecode(line)[2:] for line in done.stdout.split(b"\n") if line and line != b"."}, done


def small_files(silo: Silo) -> dict[str, bytes]:
    files = {k: v for k, v in FILES.items() if k != "data/blob.bin"}
    if silo.flat_keys:
        files["both/child"] = SHADOWED["both/child"]  # the object `both` is shadowed by the directory
    return files


@pytest.mark.parametrize("name", SILO_NAMES)
def test_find_lists_exactly_the_tree(alive: VfsMount, world: World, name: str) -> None:
    found, done = find(alive.path / name)
    assert done.returncode == 0, done.stderr
    assert found == expected_tree(world.silos[name].flat_keys)
    if world.silos[name].flat_keys:
        assert os.path.isdir(alive.path / name / "both") and os.listdir(alive.path / name / "both") == ["child"]


@pytest.mark.parametrize("name", SILO_NAMES)
def test_cat_and_stat(alive: VfsMount, world: World, name: str) -> None:
    top = alive.path / name
    for key, data in small_files(world.silos[name]).items():
        out = subprocess.run(["cat", top / key], capture_output=True, check=True, timeout=60).stdout
        assert out == data, key
    for key, data in {**FILES, **small_files(world.silos[name])}.items():
        st = os.stat(top / key)
        assert (st.st_size, st.st_mode & 0o170000) == (len(data), 0o100000), key
    for d in [*EMPTY_DIRS, "data", "data/nested", ODD_DIR]:
        assert os.path.isdir(top / d), d
    assert os.listdir(top / "emptydir") == []


@pytest.mark.parametrize("name", SILO_NAMES)
def test_ls_la_odd_names(alive: VfsMount, name: str) -> None:
    done = subprocess.run(["ls", "-la", alive.path / name / ODD_DIR], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = os.fsdecode(done.stdout).splitlines()[1:]  # after "total N"
    odd = next(k for k in FILES if k.startswith(ODD_DIR + "/")).split("/")[1]
    by_name = {line.split(maxsplit=8)[8]: line for line in lines}
    assert set(by_name) == {".", "..", odd}
    assert by_name[odd].startswith("-r--r--r--") and f" {len(FILES[f'{ODD_DIR}/{odd}'])} " in by_name[odd]


@pytest.mark.parametrize("name", SILO_NAMES)
def test_random_reads_are_byte_exact(alive: VfsMount, name: str) -> None:
    size = len(BLOB)
    ranges = [(rnd.randrange(size), rnd.choice([1, 100, 4096, 65536, 131072, BLOCK, 2 * BLOCK])) for _ in range(300)]
    ranges += [(k * BLOCK - d, 2 * d) for k in (1, 2, 3) for d in (1, 7, 4096, BLOCK // 2)]  # across blocks
    ranges += [(0, size + 10), (size - 10, 100), (size - 1, 1), (size, 10), (size + 12345, 10)]  # up to and past EOF
    rnd.shuffle(ranges)
    fd = os.open(alive.path / name / "data/blob.bin", os.O_RDONLY)
    try:
        for off, n in ranges:
            assert os.pread(fd, n, off) == BLOB[off:off + n], (off, n)
    finally:
        os.close(fd)


@pytest.mark.parametrize("name", SILO_NAMES)
def test_errnos_and_the_mount_keeps_answering(alive: VfsMount, name: str) -> None:
    top = alive.path / name
    checks: list[tuple[int, Callable[..., Any], tuple[Any, ...]]] = [
        (errno.ENOENT, open, (top / "nope.txt", "rb")),
        (errno.ENOENT, os.stat, (top / "data/nope",)),
        (errno.ENOTDIR, os.stat, (top / "hello.txt/child",)),
        (errno.ENOTDIR, os.listdir, (top / "hello.txt",)),
        (errno.EROFS, open, (top / "hello.txt", "wb")),
        (errno.EROFS, open, (top / "new.txt", "wb")),
        (errno.EROFS, os.mkdir, (top / "newdir",)),
        (errno.EROFS, os.unlink, (top / "hello.txt",)),
        (errno.EROFS, os.rename, (top / "hello.txt", top / "renamed.txt")),
    ]
    for expected, fn, args in checks:
        assert errno_of(fn, *args) == expected, (fn.__name__, args)
        assert_answers(alive)
    assert read_file(top / "hello.txt") == FILES["hello.txt"]


@pytest.mark.parametrize("name", DENYING)
def test_refused_credentials_give_eacces(alive: VfsMount, world: World, name: str) -> None:
    assert name in world.denied, f"{name}: Silo.denied is None"
    denied = alive.path / "local" / "denied" / name
    assert errno_of(os.listdir, denied) == errno.EACCES
    assert_answers(alive)
    assert errno_of(os.stat, denied / "hello.txt") == errno.EACCES
    assert_answers(alive)
    assert read_file(alive.path / name / "hello.txt") == FILES["hello.txt"]  # the silo itself still reads
    assert read_file(alive.path / "local" / "notes.txt") == LOCAL["notes.txt"]


@pytest.mark.parametrize("name", SILO_NAMES)
def test_replaced_file_is_seen_after_the_ttl(alive: VfsMount, world: World, name: str) -> None:
    silo, path = world.silos[name], alive.path / name / "hello.txt"
    assert read_file(path) == FILES["hello.txt"]
    new = f"hello again from {name}, a longer version\n".encode()
    silo.replace("hello.txt", new)
    try:
        wait_until(lambda: os.stat(path).st_size == len(new), CHANGE_TIMEOUT, "the new size after the TTL", interval=0.2)
        wait_until(lambda: read_file(path) == new, CHANGE_TIMEOUT, "the new bytes after the TTL", interval=0.2)
    finally:
        silo.replace("hello.txt", FILES["hello.txt"])
    wait_until(lambda: read_file(path) == FILES["hello.txt"], CHANGE_TIMEOUT, "the original back", interval=0.2)


@pytest.mark.parametrize("name", SILO_NAMES)
def test_du_and_cp_r_of_data(alive: VfsMount, name: str, tmp_path: Path) -> None:
    src = alive.path / name / "data"
    subprocess.run(["cp", "-r", src, tmp_path / "data"], check=True, timeout=120)
    copied = {str(p.relative_to(tmp_path)): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert copied == {k: v for k, v in FILES.items() if k.startswith("data/")}
    du = int(subprocess.run(["du", "-sb", src], capture_output=True, text=True, check=True, timeout=120).stdout.split()[0])
    dirs = [Path(d) for d, _, _ in os.walk(src)]
    assert du == sum(len(v) for k, v in FILES.items() if k.startswith("data/")) + sum(os.lstat(d).st_size for d in dirs)


def test_find_over_the_whole_tree(alive: VfsMount, world: World) -> None:
    found, done = find(alive.path)
    expected = {*ROOT, "local/notes.txt", "local/sub", "local/sub/x.bin", "local/denied"}
    expected |= {f"local/denied/{name}" for name in world.denied}
    for name, silo in world.silos.items():
        expected |= {f"{name}/{p}" for p in expected_tree(silo.flat_keys)}
    assert found == expected
    # find reads the refused mounts too: exactly those fail, with EACCES
    errors = os.fsdecode(done.stderr).splitlines()
    assert done.returncode == 1 and len(errors) == len(world.denied), errors
    assert all("Permission denied" in line for line in errors), errors
