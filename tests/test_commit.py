"""Writes in the core, with no kernel: a Namespace over a MemoryBackend whose commits fail on
command. Mode back retries a failing silo until it takes the bytes (0 lost, 0 corrupted); a lost
race keeps both versions; the journal brings accepted bytes back after a stop; ENOSPC in mode cache.
"""

from __future__ import annotations

import errno
import random
from pathlib import Path

import pytest
import trio
import trio.testing

from vfs.cache.tiered import build_cache
from vfs.inodes import ROOT_INODE
from vfs.mount_table import Mount, MountTable
from vfs.mounts.base import ObjectMeta
from vfs.mounts.memory import MemoryBackend
from vfs.namespace import Namespace
from vfs.reader import Reader
from vfs.staging import StagingArea

BS = 4096


class FlakyMemory(MemoryBackend):
    """A MemoryBackend whose write_file fails with `errno` for the next `failures` calls."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 0
        self.error = errno.EAGAIN
        self.calls = 0
        self.errors: list[OSError] = []

    async def write_file(self, path: str, source: str, expected: str | None, mtime_ns: int | None = None) -> ObjectMeta:
        self.calls += 1
        await trio.sleep(0)
        if self.failures:
            self.failures -= 1
            raise OSError(self.error, f"injected: {path}")
        try:
            return await super().write_file(path, source, expected, mtime_ns)
        except OSError as exc:
            self.errors.append(exc)
            raise


def make(tmp: Path, mode: str, backend: FlakyMemory, budget: int = 1 << 30) -> Namespace:
    table = MountTable([Mount("/m", backend, 10.0, 2.0, write_mode=mode)])
    reader = Reader(build_cache(BS, 64 * BS, "lru", None, 0, "lru"))
    return Namespace(table, reader, default_ttl=60.0, opens=False, staging=StagingArea(str(tmp / "staging"), budget),
                     write_back_delay=0.1)


async def mount_ino(ns: Namespace) -> int:
    return (await ns.lookup(ROOT_INODE, "m")).ino


async def write_file(ns: Namespace, parent: int, name: str, data: bytes) -> int:
    fh, entry = await ns.create(parent, name, 0)
    for off in range(0, len(data), 1000):
        await ns.write(fh, off, data[off:off + 1000])
    await ns.flush(fh)
    return entry.ino


def test_back_mode_outlasts_a_failing_silo(tmp_path: Path) -> None:
    backend = FlakyMemory()
    ns = make(tmp_path, "back", backend)
    files = {f"f{i}": random.Random(i).randbytes(5000 + i) for i in range(30)}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            ns.start(nursery)
            top = await mount_ino(ns)
            backend.failures = 45  # the first 45 commits fail: each file is tried again, with backoff
            for name, data in files.items():
                await write_file(ns, top, name, data)
            with trio.fail_after(120):
                while ns.committer.pending():  # type: ignore[union-attr]
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0.01))
    assert {k: v[0] for k, v in backend.objects.items()} == files
    assert (ns.committer.failures.value, backend.calls) == (45, 45 + len(files)), backend.errors  # type: ignore[union-attr]
    assert not list((tmp_path / "staging").glob("*.json")), "the journal empties"


def test_through_mode_returns_the_error_and_keeps_the_bytes(tmp_path: Path) -> None:
    backend = FlakyMemory()
    ns = make(tmp_path, "through", backend)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            ns.start(nursery)
            top = await mount_ino(ns)
            backend.failures = 1
            with pytest.raises(OSError) as info:
                await write_file(ns, top, "f", b"accepted later")
            assert info.value.errno == errno.EAGAIN
            assert "f" not in backend.objects
            ino = (await ns.lookup(top, "f")).ino
            assert await ns.read(ino, 0, 100) == b"accepted later"  # still staged, still readable
            await ns.flush(ino)  # the next close commits
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert backend.objects["f"][0] == b"accepted later"


def test_a_lost_race_keeps_both_versions(tmp_path: Path) -> None:
    backend = FlakyMemory()
    backend.put("f", b"original")
    ns = make(tmp_path, "through", backend)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            ns.start(nursery)
            top = await mount_ino(ns)
            ino = (await ns.lookup(top, "f")).ino
            await ns.write(ino, 0, b"OURS")
            backend.put("f", b"theirs")  # a writer elsewhere, between our open and close
            with pytest.raises(OSError) as info:
                await ns.flush(ino)
            assert info.value.errno == errno.ESTALE
            nursery.cancel_scope.cancel()

    trio.run(main)
    conflicts = [k for k in backend.objects if k.startswith("f.conflict-")]
    assert backend.objects["f"][0] == b"theirs"
    assert len(conflicts) == 1 and backend.objects[conflicts[0]][0] == b"OURSinal"


def test_the_journal_resumes_after_a_stop(tmp_path: Path) -> None:
    backend = FlakyMemory()
    ns = make(tmp_path, "back", backend)
    ns.committer.delay = 3600.0  # type: ignore[union-attr]

    async def write_and_stop() -> None:
        async with trio.open_nursery() as nursery:
            ns.start(nursery)
            top = await mount_ino(ns)
            await write_file(ns, top, "kept", b"accepted by close")
            fh, _ = await ns.create(top, "unaccepted", 0)
            await ns.write(fh, 0, b"never closed")
            nursery.cancel_scope.cancel()

    trio.run(write_and_stop)
    assert backend.objects == {}
    ns.staging.close()  # type: ignore[union-attr]
    again = make(tmp_path, "back", backend)
    recovered, dropped = again.staging.recover()  # type: ignore[union-attr]
    assert [sf.path for sf in recovered] == ["kept"] and len(dropped) == 1

    async def resume() -> None:
        async with trio.open_nursery() as nursery:
            again.start(nursery)
            with trio.fail_after(10):
                while again.committer.pending():  # type: ignore[union-attr]
                    await trio.sleep(0.02)
            nursery.cancel_scope.cancel()

    trio.run(resume)
    assert backend.objects["kept"][0] == b"accepted by close" and "unaccepted" not in backend.objects


def test_cache_mode_is_never_committed_and_a_full_staging_area_is_enospc(tmp_path: Path) -> None:
    backend = FlakyMemory()
    ns = make(tmp_path, "cache", backend, budget=10_000)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            ns.start(nursery)
            top = await mount_ino(ns)
            await write_file(ns, top, "scratch", b"x" * 6000)
            fh, _ = await ns.create(top, "more", 0)
            with pytest.raises(OSError) as info:
                await ns.write(fh, 0, b"y" * 6000)
            assert info.value.errno == errno.ENOSPC
            assert await ns.read((await ns.lookup(top, "scratch")).ino, 0, 10) == b"x" * 10
            assert "scratch" in [n for n, *_ in ns._dirs[await ns.opendir(top)].entries]
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert backend.objects == {} and backend.calls == 0


class UploadingMemory(FlakyMemory):
    """A FlakyMemory that records the uploads it is asked to abort, and refuses while `down`."""

    def __init__(self) -> None:
        super().__init__()
        self.aborted: list[tuple[str, str]] = []
        self.down = False

    async def abort_upload(self, key: str, upload: str) -> None:
        if self.down:
            raise OSError(errno.EHOSTDOWN, "injected: silo down")
        self.aborted.append((key, upload))


def test_uploads_a_crash_left_unfinished_are_aborted_at_the_next_start(tmp_path: Path) -> None:
    backend = UploadingMemory()
    ns = make(tmp_path, "back", backend)
    view = backend.uploads
    assert view is not None and view.mount == "/m", "the committer gives a writable mount's backend the ledger"
    view.started("data/big.bin", "upload-1")
    view.started("data/other.bin", "upload-2")
    (ns.staging.uploads.dir / "garbled.json").write_text("{not json")  # type: ignore[union-attr]

    async def start_once() -> None:
        async with trio.open_nursery() as nursery:
            ns.start(nursery)
            await trio.sleep(1)
            nursery.cancel_scope.cancel()

    backend.down = True  # the silo refuses: the notes stay for the next start
    trio.run(start_once, clock=trio.testing.MockClock(autojump_threshold=0.01))
    assert backend.aborted == [] and len(ns.staging.uploads.notes()) == 2  # type: ignore[union-attr]
    backend.down = False
    ns = make(tmp_path, "back", backend)  # the next start
    trio.run(start_once, clock=trio.testing.MockClock(autojump_threshold=0.01))
    assert sorted(backend.aborted) == [("data/big.bin", "upload-1"), ("data/other.bin", "upload-2")]
    assert ns.staging.uploads.notes() == [] and ns.committer.orphans_aborted.value == 2  # type: ignore[union-attr]


def test_a_listing_taken_before_a_commit_does_not_tell_the_staged_version_after_it(tmp_path: Path) -> None:
    """opendir snapshots a staged file; its commit lands and the staged copy is dropped; the readdir
    that follows must tell the kernel the silo's version, not the dropped staged one (whose reads
    went to the silo with a version it never had: ESTALE for rsync's temp-file-then-rename)."""
    backend = FlakyMemory()
    ns = make(tmp_path, "back", backend)
    ns.committer.delay = 3600.0  # type: ignore[union-attr]
    data = b"renamed into place " * 100

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            ns.start(nursery)
            top = await mount_ino(ns)
            ino = await write_file(ns, top, "f.txt", data)
            dh = await ns.opendir(top)  # the snapshot holds the staged version
            sf = ns.staging.get("/m", "f.txt")  # type: ignore[union-attr]
            await ns.committer.commit_now(sf)  # type: ignore[union-attr]
            assert ns.staging.get("/m", "f.txt") is None, "committed and idle: dropped"  # type: ignore[union-attr]
            told: dict[str, object] = {}
            ns.readdir(dh, 0, lambda name, entry, nxt: told.setdefault(name, entry) is not None)
            ns.releasedir(dh)
            version = ns.inodes.get(ino).told.version  # type: ignore[union-attr]
            assert version == backend.objects["f.txt"][1], version
            assert bytes(await ns.read(ino, 0, len(data))) == data
            nursery.cancel_scope.cancel()

    trio.run(main)
