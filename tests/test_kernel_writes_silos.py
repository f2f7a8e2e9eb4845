"""Writes through the kernel mount on GCS (tests/gcs_emulator.py), NFS (nfs-ganesha, through the
libnfs backend) and Google Drive (tests/drive_server.py), all three in one tree, in modes through and
back: what tests/test_kernel_writes.py does on S3 and a local directory. Create and read-your-writes,
O_TRUNC, O_APPEND, truncate with a hole, rename of a file and of a directory, mkdir/rmdir/unlink,
EXDEV between silos, utime kept, a concurrent writer on the silo between our open and close (ESTALE
in through, a conflict copy in back; both versions survive), and kill -9 in mode back with files
closed but not committed, then a remount that commits them.

Every result is checked on the silo itself, behind vfs, with the silo's own client: the
google-cloud-storage client for GCS, the exported directory for NFS, and the Drive server's REST API
(with the mount's token) for Drive.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import json
import os
import random
import signal
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Protocol

import pytest

from tests.kernel import VfsMount, errno_of, fuse_available, read_file, start_mount, stop_mount, vfs_mount, wait_until
from tests.silos import Silo, open_silo
from tests.silos import gcs as gcs_silo
from vfs.mounts.gcs import MTIME_KEY

pytestmark = [pytest.mark.kernel, pytest.mark.skipif(fuse_available() is not None, reason=str(fuse_available()))]

SILOS = ["gcs", "nfs", "gdrive"]
COMMIT_TIMEOUT = 60.0  # bound on waiting for a mode back commit (delay 0.2 s; margin for a loaded box)
# Mode back: seconds from a close to its commit. Long enough that the steps of one test (a close,
# then the next open and write, milliseconds apart) do not overlap a commit of the same file, which
# races a write in flight (see the report); short enough to keep the waits for commits short.
BACK_DELAY = 0.5
STAMP_NS = 1_600_000_000 * 10**9  # a whole second: every silo keeps it exactly (Drive keeps ms)


class SiloView(Protocol):
    """A silo seen behind vfs, through its own client."""

    def read(self, path: str) -> bytes | None: ...
    def names(self, directory: str) -> set[str]: ...
    def mtime_ns(self, path: str) -> int: ...


class GCSView:
    def __init__(self, silo: Silo) -> None:
        self.client = gcs_silo.client(silo.mount_options["endpoint"])
        self.bucket = self.client.bucket(silo.mount_options["bucket"])

    def read(self, path: str) -> bytes | None:
        blob = self.bucket.get_blob(path)
        return None if blob is None else blob.download_as_bytes()

    def names(self, directory: str) -> set[str]:
        listing = self.bucket.list_blobs(prefix=directory + "/", delimiter="/")
        files = {b.name[len(directory) + 1:] for b in listing}
        return {n for n in files if n} | {p[len(directory) + 1:].rstrip("/") for p in listing.prefixes}

    def mtime_ns(self, path: str) -> int:
        blob = self.bucket.get_blob(path)
        return int((blob.metadata or {}).get(MTIME_KEY, "-1"))


class DirectoryView:
    """The directory nfs-ganesha exports, read on local disk."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def read(self, path: str) -> bytes | None:
        p = self.root / path
        return p.read_bytes() if p.is_file() else None

    def names(self, directory: str) -> set[str]:
        p = self.root / directory
        return set(os.listdir(p)) if p.is_dir() else set()

    def mtime_ns(self, path: str) -> int:
        return os.stat(self.root / path).st_mtime_ns


class DriveView:
    """Drive v3 REST calls to the test server, authorized with the mount's own token."""

    def __init__(self, silo: Silo) -> None:
        self.url = silo.mount_options["root_url"]
        self.token = json.loads(Path(silo.mount_options["token_file"]).read_text())["token"]

    def _get(self, what: str, **params: str) -> bytes:
        req = urllib.request.Request(f"{self.url}drive/v3/files{what}?{urllib.parse.urlencode(params)}",
                                     headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.read()

    def _children(self, folder_id: str) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        params = {"q": f"'{folder_id}' in parents and trashed = false", "pageSize": "1000",
                  "fields": "nextPageToken,files(id,name,mimeType,modifiedTime)"}
        while True:
            page = json.loads(self._get("", **params))
            out |= {f["name"]: f for f in page["files"]}
            if "nextPageToken" not in page:
                return out
            params["pageToken"] = page["nextPageToken"]

    def _find(self, path: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = {"id": "root"}
        for part in path.split("/"):
            found = self._children(found["id"]).get(part)
            if found is None:
                return None
        return found

    def read(self, path: str) -> bytes | None:
        f = self._find(path)
        return None if f is None or f["mimeType"].endswith(".folder") else self._get("/" + f["id"], alt="media")

    def names(self, directory: str) -> set[str]:
        f = self._find(directory)
        return set(self._children(f["id"])) if f is not None else set()

    def mtime_ns(self, path: str) -> int:
        f = self._find(path)
        stamp = datetime.strptime(f["modifiedTime"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
        return int(stamp.timestamp()) * 10**9 + stamp.microsecond * 1000


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Silo, SiloView]]]:
    with contextlib.ExitStack() as stack:
        out: dict[str, tuple[Silo, SiloView]] = {}
        for name in SILOS:
            tmp = tmp_path_factory.mktemp(name)
            silo = stack.enter_context(open_silo(name, tmp))
            view = {"gcs": GCSView, "gdrive": DriveView}[name](silo) if name != "nfs" else DirectoryView(tmp / "nfs-export")
            out[name] = (silo, view)
        yield out


def config(world: dict[str, tuple[Silo, SiloView]], mode: str, delay: float = BACK_DELAY) -> dict:
    return {"metadata": {"ttl": 30}, "write": {"mode": mode, "write_back_delay": delay},
            "mount": [{"path": f"/{name}", **silo.mount_options} for name, (silo, _) in world.items()]}


@pytest.fixture(scope="module", params=["through", "back"])
def mnt(request: pytest.FixtureRequest, world: dict[str, tuple[Silo, SiloView]],
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[VfsMount, str]]:
    mode = request.param
    with vfs_mount(tmp_path_factory.mktemp(f"silos-{mode}"), config(world, mode)) as m:
        for name in SILOS:
            os.mkdir(m.path / name / mode)  # each mode writes in a directory of its own
        yield m, mode
    assert "Traceback" not in m.log_text(), m.log_text()[-3000:]


@dataclasses.dataclass
class Target:
    top: Path
    """The directory the test writes in, through the mount."""
    base: str
    """That directory on the silo (the write mode's name)."""
    silo: Silo
    view: SiloView
    staging: Path
    """The mount's staging directory."""

    def committed(self, path: str, data: bytes) -> None:
        """`data` at `base/path` on the silo, and no staged copy left in vfs (once a commit has
        landed, a change made before its staged copy is dropped races the drop: see the report)."""
        wait_until(lambda: self.view.read(f"{self.base}/{path}") == data, COMMIT_TIMEOUT, f"{path} on the silo", 0.1)
        wait_until(lambda: not list(self.staging.rglob("*.data")), COMMIT_TIMEOUT, "the staged copies dropped", 0.02)


@pytest.fixture(params=SILOS)
def target(request: pytest.FixtureRequest, mnt: tuple[VfsMount, str], world: dict[str, tuple[Silo, SiloView]]) -> Target:
    m, mode = mnt
    silo, view = world[request.param]
    return Target(m.path / request.param / mode, mode, silo, view, m.path.with_name(m.path.name + "-staging"))


def committed(view: SiloView, path: str, data: bytes) -> None:
    wait_until(lambda: view.read(path) == data, COMMIT_TIMEOUT, f"{path} on the silo", interval=0.1)


def test_create_write_read_your_writes(target: Target) -> None:
    t = target
    data = random.Random(1).randbytes(3 * 1024 * 1024 + 5)
    with open(t.top / "new.bin", "wb") as f:
        f.write(data[:1000])
        f.flush()
        assert os.stat(t.top / "new.bin").st_size == 1000  # read-your-writes before any commit
        assert "new.bin" in os.listdir(t.top)  # listed from its create
        f.write(data[1000:])
        assert read_file(t.top / "new.bin") == data
    if t.base == "through":
        assert t.view.read(f"{t.base}/new.bin") == data  # close returned: the silo holds it
    t.committed("new.bin", data)
    assert read_file(t.top / "new.bin") == data
    assert "new.bin" in t.view.names(t.base)


def test_overwrite_truncate_append(target: Target) -> None:
    t = target
    p = t.top / "edit.txt"
    p.write_bytes(b"0123456789")
    t.committed("edit.txt", b"0123456789")
    with open(p, "r+b") as f:  # a committed file, changed in place
        f.seek(3)
        f.write(b"abc")
    assert p.read_bytes() == b"012abc6789"
    with open(p, "ab") as f:
        f.write(b"XY")
    assert p.read_bytes() == b"012abc6789XY"
    if t.base == "through":
        assert t.view.read(f"{t.base}/edit.txt") == b"012abc6789XY"
    os.truncate(p, 4)
    with open(p, "r+b") as f:
        f.seek(10)
        f.write(b"!")  # a hole from 4 to 10
    assert p.read_bytes() == b"012a" + b"\0" * 6 + b"!"
    t.committed("edit.txt", b"012a" + b"\0" * 6 + b"!")
    with open(p, "wb") as f:  # O_TRUNC of a committed file
        f.write(b"short")
    assert p.read_bytes() == b"short"
    t.committed("edit.txt", b"short")


def test_directories_rename_unlink(target: Target) -> None:
    t = target
    top, base, view = t.top, t.base, t.view
    os.mkdir(top / "d")
    assert "d" in view.names(base)  # mkdir is on the silo at once, in every mode
    assert errno_of(os.mkdir, top / "d") == errno.EEXIST
    (top / "d" / "a.txt").write_bytes(b"a")
    assert errno_of(os.rmdir, top / "d") == errno.ENOTEMPTY
    os.rename(top / "d" / "a.txt", top / "d" / "b.txt")  # before its commit: committed once, as b.txt
    assert os.listdir(top / "d") == ["b.txt"] and (top / "d" / "b.txt").read_bytes() == b"a"
    t.committed("d/b.txt", b"a")
    assert view.names(f"{base}/d") == {"b.txt"}
    (top / "d" / "b.txt").write_bytes(b"b")
    t.committed("d/b.txt", b"b")
    os.rename(top / "d" / "b.txt", top / "d" / "c.txt")  # a committed file: the silo renames it
    assert view.names(f"{base}/d") == {"c.txt"} and view.read(f"{base}/d/c.txt") == b"b"
    os.rename(top / "d", top / "e")
    assert (top / "e" / "c.txt").read_bytes() == b"b" and not (top / "d").exists()
    assert view.read(f"{base}/e/c.txt") == b"b" and "d" not in view.names(base)
    os.unlink(top / "e" / "c.txt")
    assert errno_of(os.stat, top / "e" / "c.txt") == errno.ENOENT and view.read(f"{base}/e/c.txt") is None
    os.rmdir(top / "e")
    assert not (top / "e").exists() and "e" not in view.names(base)


def renameat2_noreplace(src: Path, dst: Path) -> int:
    """renameat2(RENAME_NOREPLACE); 0 or the errno."""
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, noreplace = -100, 1
    ret = libc.renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), noreplace)
    return 0 if ret == 0 else ctypes.get_errno()


def test_noreplace_links_and_owners(target: Target) -> None:
    t = target
    (t.top / "nr-a").write_bytes(b"a")
    (t.top / "nr-b").write_bytes(b"b")
    assert renameat2_noreplace(t.top / "nr-a", t.top / "nr-b") == errno.EEXIST
    assert errno_of(os.symlink, "nr-a", t.top / "link") == errno.EPERM
    assert errno_of(os.link, t.top / "nr-a", t.top / "hard") == errno.EPERM
    assert errno_of(os.chown, t.top / "nr-a", os.getuid() + 1, -1) == errno.EPERM
    t.committed("nr-a", b"a")
    t.committed("nr-b", b"b")
    assert not {"link", "hard"} & t.view.names(t.base)


def test_rename_between_silos_is_exdev(mnt: tuple[VfsMount, str], world: dict[str, tuple[Silo, SiloView]]) -> None:
    m, mode = mnt
    for src, dst in zip(SILOS, SILOS[1:] + SILOS[:1]):
        (m.path / src / mode / "x").write_bytes(src.encode())
        assert errno_of(os.rename, m.path / src / mode / "x", m.path / dst / mode / "moved") == errno.EXDEV
        assert (m.path / src / mode / "x").read_bytes() == src.encode() and not (m.path / dst / mode / "moved").exists()
    for name, (_, view) in world.items():
        committed(view, f"{mode}/x", name.encode())
        assert "moved" not in view.names(mode)


def test_utime_is_kept(target: Target) -> None:
    t = target
    p = t.top / "dated"
    p.write_bytes(b"d")
    os.utime(p, ns=(STAMP_NS, STAMP_NS))  # mode back: before the commit, so it goes up with the bytes
    assert os.stat(p).st_mtime_ns == STAMP_NS
    t.committed("dated", b"d")
    assert t.view.mtime_ns(f"{t.base}/dated") == STAMP_NS
    os.utime(p, ns=(STAMP_NS, STAMP_NS + 10**9))  # a committed file: straight to the silo
    assert os.stat(p).st_mtime_ns == STAMP_NS + 10**9
    assert t.view.mtime_ns(f"{t.base}/dated") == STAMP_NS + 10**9


def test_a_concurrent_writer_keeps_both_versions(target: Target) -> None:
    t = target
    p = t.top / "raced.txt"
    p.write_bytes(b"ours v1")
    t.committed("raced.txt", b"ours v1")
    f = open(p, "r+b", buffering=0)
    f.write(b"ours v2")
    t.silo.replace(f"{t.base}/raced.txt", b"theirs")  # someone else, on the silo, between our open and close
    if t.base == "through":
        with pytest.raises(OSError) as info:
            f.close()
        assert info.value.errno == errno.ESTALE
    else:
        f.close()

    def conflicts() -> list[str]:
        return [n for n in t.view.names(t.base) if n.startswith("raced.txt.conflict-")]

    wait_until(lambda: len(conflicts()) == 1, COMMIT_TIMEOUT, "the conflict copy on the silo", 0.1)
    assert t.view.read(f"{t.base}/{conflicts()[0]}") == b"ours v2"
    assert t.view.read(f"{t.base}/raced.txt") == b"theirs"


def test_kill_9_in_mode_back_loses_nothing(world: dict[str, tuple[Silo, SiloView]], tmp_path: Path) -> None:
    cfg = config(world, "back", delay=3600)  # closed, accepted, not committed when the process dies
    m = start_mount(tmp_path, cfg, "crash")
    files = {f"{name}/crash/f{i}.bin": random.Random(i).randbytes(1000 * i + 1) for name in SILOS for i in range(5)}
    try:
        for name in SILOS:
            os.mkdir(m.path / name / "crash")
        for path, data in files.items():
            (m.path / path).write_bytes(data)
        assert all(world[name][1].names("crash") == set() for name in SILOS)  # the directories only
        m.proc.send_signal(signal.SIGKILL)
        m.proc.wait(30)
    finally:
        stop_mount(m)
    with vfs_mount(tmp_path, config(world, "back"), "crash") as again:
        for path, data in files.items():
            name, _, inner = path.partition("/")
            committed(world[name][1], inner, data)
            assert read_file(again.path / path) == data
        wait_until(lambda: not list((tmp_path / "crash-staging").rglob("*.json")), COMMIT_TIMEOUT, "the journal to empty")
