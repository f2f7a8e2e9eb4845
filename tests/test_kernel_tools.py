"""Everyday tools writing into an S3 mount (moto), in modes through and back, their results checked
through the mount AND on the silo behind it: cp -r, rsync -a (run twice: the second copies nothing
new), tar x, git clone of a local repository then a clean git status, fio (sequential, random,
O_DIRECT and periodic fsync, each with verify=crc32c, then the object on the silo verified by fio
itself), torch.save/torch.load of a state_dict (also after a remount, and from the silo's bytes).

Also the write paths these tools lean on: fsync again and again on one open file with writes between
(each fsync puts exactly the bytes so far on the silo), writes while a commit of the same file runs
(they go to one copy of the staged file, and no data file stays in the staging directory once all is
committed), closes of one file from eight threads at once (journal records written concurrently),
and fallocate(2), which FUSE answers EOPNOTSUPP for (vfs has no fallocate handler); and git's
lock-file pattern, renames over a file whose commit is under way (the newer bytes must win).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import random
import shutil
import subprocess
import tarfile
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.kernel import VfsMount, fuse_available, read_file, vfs_mount, wait_until
from tests.silos.s3 import MotoS3, moto_server

pytestmark = [pytest.mark.kernel, pytest.mark.skipif(fuse_available() is not None, reason=str(fuse_available()))]

BUCKET = "tools"


def tree(root: Path) -> dict[str, bytes]:
    rnd = random.Random(3)
    files = {f"a/f{i}.txt": f"file {i}\n".encode() * (i + 1) for i in range(12)}
    files |= {"a/b/c/deep.bin": rnd.randbytes(300_000), "top.txt": b"top\n", "a/empty": b""}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def read_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    with moto_server(tmp_path_factory.mktemp("moto")) as m:
        m.client().create_bucket(Bucket=BUCKET)
        yield m


def config(moto: MotoS3, mode: str, delay: float = 0.2) -> dict:
    return {"write": {"mode": mode, "write_back_delay": delay},
            "mount": [{"path": "/s3", **moto.options(bucket=BUCKET, prefix=mode)}]}


@pytest.fixture(scope="module", params=["through", "back"])
def mnt(request: pytest.FixtureRequest, moto: MotoS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[VfsMount, str]]:
    tmp = tmp_path_factory.mktemp(f"tools-{request.param}")
    with vfs_mount(tmp, config(moto, request.param)) as m:
        yield m, request.param
    assert "Traceback" not in m.log_text(), m.log_text()[-3000:]


# fio creates its file and closes it before the job opens it again to write. In mode back, a commit
# of that first version starting during the job races the job's writes (a write in flight when a
# commit ends: see the report), so fio's mount waits this long after a close; a 16 MiB job takes well
# under a second here.
FIO_DELAY = 3.0


@pytest.fixture(scope="module", params=["through", "back"])
def fio_mnt(request: pytest.FixtureRequest, moto: MotoS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[VfsMount, str]]:
    tmp = tmp_path_factory.mktemp(f"fio-{request.param}")
    with vfs_mount(tmp, config(moto, request.param, FIO_DELAY)) as m:
        yield m, request.param
    assert "Traceback" not in m.log_text(), m.log_text()[-3000:]


@contextlib.contextmanager
def own_mount(moto: MotoS3, tmp: Path, mode: str, delay: float = 0.2) -> Iterator[tuple[VfsMount, str]]:
    """A mount of the test's own: its staging directory holds only what the test staged."""
    with vfs_mount(tmp, config(moto, mode, delay), "own") as m:
        yield m, mode
    assert "Traceback" not in m.log_text(), m.log_text()[-3000:]


@pytest.fixture(params=["through", "back"])
def own(request: pytest.FixtureRequest, moto: MotoS3, tmp_path: Path) -> Iterator[tuple[VfsMount, str]]:
    with own_mount(moto, tmp_path, request.param) as m:
        yield m


def on_silo(moto: MotoS3, prefix: str) -> dict[str, bytes]:
    c = moto.client()
    out = {}
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
        for o in page.get("Contents", []):
            if not o["Key"].endswith("/"):
                out[o["Key"][len(prefix) + 1:]] = c.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
    return out


def settled(moto: MotoS3, prefix: str, expected: dict[str, bytes]) -> None:
    wait_until(lambda: {k: v for k, v in on_silo(moto, prefix).items() if k in expected} == expected, 60,
               f"{prefix} on the silo")


def s3_bytes(moto: MotoS3, key: str) -> bytes | None:
    return moto.object_bytes(BUCKET, key)


def committed(moto: MotoS3, key: str, data: bytes) -> None:
    wait_until(lambda: s3_bytes(moto, key) == data, 60, f"{key} on the silo")


def staging_of(m: VfsMount) -> Path:
    """The mount's staging directory (tests/kernel.py puts it beside the mountpoint)."""
    return m.path.with_name(m.path.name + "-staging")


def staged_data_files(m: VfsMount) -> list[Path]:
    return sorted(staging_of(m).rglob("*.data"))


def test_cp_r(mnt: tuple[VfsMount, str], moto: MotoS3, tmp_path: Path) -> None:
    m, mode = mnt
    files = tree(tmp_path / "src")
    subprocess.run(["cp", "-r", str(tmp_path / "src"), str(m.path / "s3" / "cp")], check=True)
    assert read_tree(m.path / "s3" / "cp") == files
    settled(moto, f"{mode}/cp", files)


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")
def test_rsync_a_twice(mnt: tuple[VfsMount, str], moto: MotoS3, tmp_path: Path) -> None:
    m, mode = mnt
    files = tree(tmp_path / "src")
    dst = m.path / "s3" / "rsync"
    subprocess.run(["rsync", "-a", f"{tmp_path / 'src'}/", f"{dst}/"], check=True, capture_output=True)
    assert read_tree(dst) == files
    settled(moto, f"{mode}/rsync", files)
    again = subprocess.run(["rsync", "-a", "--itemize-changes", f"{tmp_path / 'src'}/", f"{dst}/"], check=True,
                           capture_output=True, text=True)
    assert read_tree(dst) == files, again.stdout


def test_tar_x(mnt: tuple[VfsMount, str], moto: MotoS3, tmp_path: Path) -> None:
    m, mode = mnt
    files = tree(tmp_path / "src")
    with tarfile.open(tmp_path / "t.tar", "w") as t:
        t.add(tmp_path / "src", arcname="tarred")
    subprocess.run(["tar", "xf", str(tmp_path / "t.tar"), "-C", str(m.path / "s3")], check=True)
    assert read_tree(m.path / "s3" / "tarred") == files
    settled(moto, f"{mode}/tarred", files)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_clone_then_clean_status(mnt: tuple[VfsMount, str], tmp_path: Path) -> None:
    m, _ = mnt
    repo = tmp_path / "repo"
    tree(repo)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(tmp_path)}
    for cmd in (["git", "init", "-q"], ["git", "add", "."], ["git", "commit", "-qm", "x"]):
        subprocess.run(cmd, cwd=repo, check=True, env=env)
    clone = m.path / "s3" / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True, env=env, capture_output=True)
    status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, check=True, env=env, capture_output=True, text=True)
    assert status.stdout == ""
    worktree = {k: v for k, v in read_tree(clone).items() if not k.startswith(".git/")}
    assert worktree == {k: v for k, v in read_tree(repo).items() if not k.startswith(".git/")}


def test_lock_file_renamed_over_a_file_being_committed(moto: MotoS3, tmp_path: Path) -> None:
    """git's lock-file pattern in mode back: `config.lock` written, closed and renamed over `config`,
    four versions per file, paced around the write-back delay so that some renames land while the
    previous version's commit is under way. Every name must end up holding its last version, and
    nothing is a conflict: nobody else wrote."""
    files, versions = 24, 4
    with own_mount(moto, tmp_path, "back", delay=0.05) as (m, _):
        top = m.path / "s3" / "locks"
        top.mkdir()
        for f in range(files):
            for v in range(versions):
                (top / f"config{f}.lock").write_bytes(f"version {v}\n".encode())
                os.rename(top / f"config{f}.lock", top / f"config{f}")
                time.sleep(0.04 + 0.002 * f)  # the delay is 0.05 s: around it, in 2 ms steps
        last = {f"config{f}": f"version {versions - 1}\n".encode() for f in range(files)}
        assert {n: (top / n).read_bytes() for n in last} == last

        def done() -> bool:
            silo = on_silo(moto, "back/locks")
            return any(".conflict-" in k for k in silo) or all(silo.get(n) == data for n, data in last.items())

        wait_until(done, 60, "the last versions (or a conflict copy) on the silo")
        silo = on_silo(moto, "back/locks")
        assert [k for k in silo if ".conflict-" in k] == [] and {n: silo.get(n) for n in last} == last


# --- fio -----------------------------------------------------------------------------------------

FIO_SIZE = "16M"
FIO_BS = "256k"
FIO_JOBS = {
    "seq": ["--rw=write"],
    "rand": ["--rw=randwrite"],
    "fsync": ["--rw=write", "--fsync=16"],  # an fsync (a commit, in both modes) every 16 writes of 256 KiB
    "direct": ["--rw=randwrite", "--direct=1"],
}


def fio(path: Path, job: list[str], *extra: str) -> subprocess.CompletedProcess:
    """fio writing `path` with verify=crc32c; with `--verify_only`, checking a file it wrote earlier.
    The random offsets and data are seeded (randrepeat, the default), so a later run verifies."""
    argv = ["fio", "--name=vfs", f"--filename={path}", f"--size={FIO_SIZE}", f"--bs={FIO_BS}", "--ioengine=psync",
            "--verify=crc32c", "--verify_state_save=0", "--fallocate=none", "--randrepeat=1", *job, *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed (scripts/setup installs it)")
@pytest.mark.parametrize("job", sorted(FIO_JOBS))
def test_fio_verify_crc32c_then_on_the_silo(fio_mnt: tuple[VfsMount, str], moto: MotoS3, tmp_path: Path, job: str) -> None:
    m, mode = fio_mnt
    path = m.path / "s3" / f"fio-{job}.bin"
    run = fio(path, FIO_JOBS[job])
    assert run.returncode == 0, run.stdout + run.stderr  # fio read every block back and checked its crc32c
    assert os.stat(path).st_size == 16 * 1024 * 1024
    data = read_file(path)
    if mode == "through":
        assert s3_bytes(moto, f"{mode}/fio-{job}.bin") == data  # fio closed the file: the silo holds it
    committed(moto, f"{mode}/fio-{job}.bin", data)
    # fio itself verifies the silo's object: every block's header and crc32c, at the offsets it wrote.
    local = tmp_path / "from-silo.bin"
    local.write_bytes(s3_bytes(moto, f"{mode}/fio-{job}.bin") or b"")
    again = fio(local, FIO_JOBS[job], "--verify_only")
    assert again.returncode == 0, again.stdout + again.stderr
    local.write_bytes(data[:4096] + bytes([data[4096] ^ 1]) + data[4097:])  # and it does notice one flipped bit
    assert fio(local, FIO_JOBS[job], "--verify_only").returncode != 0


def test_o_direct_is_accepted(mnt: tuple[VfsMount, str], moto: MotoS3) -> None:
    m, mode = mnt
    path = m.path / "s3" / "direct.bin"
    data = random.Random(5).randbytes(1 << 20)
    buf = mmap_aligned(data)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC | os.O_DIRECT, 0o644)
    try:
        assert os.write(fd, buf) == len(data)
    finally:
        os.close(fd)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        back = mmap_aligned(bytes(len(data)))
        assert os.readv(fd, [back]) == len(data) and bytes(back) == data
    finally:
        os.close(fd)
    committed(moto, f"{mode}/direct.bin", data)


def mmap_aligned(data: bytes) -> "mmap.mmap":
    """A page-aligned buffer holding `data` (O_DIRECT wants aligned memory)."""
    import mmap

    buf = mmap.mmap(-1, len(data))
    buf.write(data)
    return buf


# --- torch ---------------------------------------------------------------------------------------

def test_torch_save_then_load_also_after_a_remount(mnt: tuple[VfsMount, str], moto: MotoS3, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch", reason="torch is not installed (the test extra installs it)")
    import io

    m, mode = mnt
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 10))  # ~2 MiB
    state = model.state_dict()
    path = m.path / "s3" / "ckpt" / "model.pt"
    path.parent.mkdir()
    torch.save(state, path)

    def same(loaded: dict) -> bool:
        return loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)

    assert same(torch.load(path))
    if mode == "through":
        assert s3_bytes(moto, f"{mode}/ckpt/model.pt") == read_file(path)
    committed(moto, f"{mode}/ckpt/model.pt", read_file(path))
    assert same(torch.load(io.BytesIO(s3_bytes(moto, f"{mode}/ckpt/model.pt") or b"")))
    with vfs_mount(tmp_path, config(moto, mode), "again") as again:  # a new process, its cache empty
        assert same(torch.load(again.path / "s3" / "ckpt" / "model.pt"))


# --- fsync, commits and the staging directory ----------------------------------------------------

def test_fsync_again_and_again_on_one_open_file(own: tuple[VfsMount, str], moto: MotoS3) -> None:
    """Each fsync commits (both modes) exactly the bytes written so far, on top of the last one."""
    m, mode = own
    path, key = m.path / "s3" / "fsyncs.bin", f"{mode}/fsyncs.bin"
    rnd = random.Random(11)
    expected = bytearray()
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644)
    try:
        for chunk in (rnd.randbytes(100_000), rnd.randbytes(3_000_000), b"tail"):
            os.write(fd, chunk)
            expected += chunk
            os.fsync(fd)
            assert s3_bytes(moto, key) == expected
        os.pwrite(fd, b"HEAD", 0)  # rewrite in place, then grow past the end: two more commits
        expected[0:4] = b"HEAD"
        os.fsync(fd)
        assert s3_bytes(moto, key) == expected
        os.pwrite(fd, b"!", len(expected) + 10)
        expected += b"\0" * 10 + b"!"
        os.fsync(fd)
        assert s3_bytes(moto, key) == expected
    finally:
        os.close(fd)
    assert read_file(path) == expected
    assert not [k for k in on_silo(moto, mode) if k.startswith("fsyncs.bin.conflict-")]
    wait_until(lambda: not list(staging_of(m).rglob("*.*")), 60, "the staging directory to empty")


def test_writes_during_a_commit_leave_no_copies_behind(own: tuple[VfsMount, str], moto: MotoS3) -> None:
    """A close commits a 32 MiB file (mode through: in the close; back: 0.2 s later, in the
    background) while another descriptor writes to it: those writes go to one copy of the staged
    file; once everything is committed no data file is left in staging. (A close, not an fsync: the
    kernel holds the inode lock through an fsync, so no write could land during it.)

    The writes stop once the copy exists and two more went to it, and start again only after that
    commit ended: a write still in flight when a commit ends races the drop of the staged file
    (EBADF, or a lost write; see the report), a bug of its own, not what this test is about."""
    m, mode = own
    path, key = m.path / "s3" / "busy.bin", f"{mode}/busy.bin"
    rnd = random.Random(12)
    expected = bytearray(rnd.randbytes(32 << 20))
    path.write_bytes(expected)
    committed(moto, key, bytes(expected))
    wait_until(lambda: not staged_data_files(m), 60, "the staged copy dropped")

    def write_some() -> None:
        offset = rnd.randrange(len(expected) - 4096)
        chunk = rnd.randbytes(4096)
        os.pwrite(writer, chunk, offset)
        expected[offset:offset + 4096] = chunk

    writer = os.open(path, os.O_WRONLY)
    most, writes = 0, 0
    try:
        for _ in range(10):  # bounded rounds, each one commit
            closer = os.open(path, os.O_WRONLY)
            os.pwrite(writer, b"start", 0)  # the close below has something to commit
            expected[0:5] = b"start"
            t = threading.Thread(target=os.close, args=(closer,))
            t.start()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and (t.is_alive() or mode == "back"):
                write_some()
                writes += 1
                most = max(most, len(staged_data_files(m)))
                if most >= 2:  # a write landed during the commit: the staged file got its copy
                    write_some()
                    write_some()
                    break
            t.join()
            wait_until(lambda: len(staged_data_files(m)) <= 1, 60, "the commit to end")
            if most >= 2:
                break
    finally:
        os.close(writer)
    assert most >= 2, f"no write landed during a commit in {writes} writes"
    assert read_file(path) == expected
    committed(moto, key, bytes(expected))
    wait_until(lambda: not list(staging_of(m).rglob("*.*")), 60, "nothing left in the staging directory")


def test_fallocate_is_eopnotsupp(mnt: tuple[VfsMount, str]) -> None:
    """vfs has no fallocate handler; FUSE answers EOPNOTSUPP (glibc's posix_fallocate then writes
    zeros itself, so tools that use it still work)."""
    m, _ = mnt
    path = m.path / "s3" / "falloc.bin"
    path.write_bytes(b"x")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fd = os.open(path, os.O_RDWR)
    try:
        assert libc.fallocate(fd, 0, 0, 1 << 20) == -1 and ctypes.get_errno() == errno.EOPNOTSUPP
        os.posix_fallocate(fd, 0, 8192)  # glibc's emulation: writes a byte per block
        assert os.fstat(fd).st_size == 8192
    finally:
        os.close(fd)
    assert read_file(path) == b"x" + b"\0" * 8191


@pytest.mark.parametrize("mode", ["back", "through"])
def test_closes_of_one_file_from_many_threads(mode: str, moto: MotoS3, tmp_path: Path) -> None:
    """Eight threads write and close one file over and over. Mode back: every close writes the
    file's journal record, concurrently (two record writes of one file once raced on one temporary
    name); the commit waits for the unmount (a commit during the writes would meet the race of the
    xfail above), which drains it. Mode through: every close commits. No write or close fails, and
    the last bytes reach the silo."""
    path, key = "closes.bin", f"{mode}/closes.bin"
    with own_mount(moto, tmp_path, mode, delay=3600 if mode == "back" else 0.2) as (m, _):
        expected = write_and_close_from_threads(m.path / "s3" / path)
    assert s3_bytes(moto, key) == expected  # through: committed by the closes; back: by the unmount's drain
    assert not list(staging_of(m).rglob("*.*"))


def write_and_close_from_threads(path: Path, threads: int = 8, rounds: int = 30) -> bytes:
    """Each thread opens, writes its own 4 KiB and closes `path`, `rounds` times; the bytes expected."""
    path.write_bytes(bytes(threads * 4096))
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for n in range(rounds):
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.pwrite(fd, bytes([i]) * 4095 + bytes([n]), i * 4096)
                finally:
                    os.close(fd)
        except OSError as exc:  # reported below, with the others
            errors.append(exc)

    running = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in running:
        t.start()
    for t in running:
        t.join()
    assert errors == []
    expected = b"".join(bytes([i]) * 4095 + bytes([rounds - 1]) for i in range(threads))
    assert read_file(path) == expected
    return expected
