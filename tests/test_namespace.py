"""Namespace, the core the FUSE adapter calls, driven with no kernel over MemoryBackend (and local
directory) mounts, a real BlockCache and an injected metadata clock.

Covers lookup/getattr/opendir/readdir/open/read/release/statfs, '.' and '..', readdir offsets and
lookup counts, forget, EROFS/EISDIR/ENOTDIR/ENOENT, directories derived from prefixes, one listing
for `ls -l`, single-flight lookups, negative entries, objects replaced behind the mount, keep_cache,
and ESTALE invalidating metadata.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Awaitable, Callable

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_metadata import FakeClock, SlowMemory
from vfs.cache.tiered import build_cache
from vfs.inodes import ROOT_INODE
from vfs.metadata import MetadataCache
from vfs.mount_table import Mount, MountTable
from vfs.mounts.base import Backend
from vfs.mounts.local import LocalBackend, LocalOptions
from vfs.namespace import Entry, Namespace
from vfs.reader import Reader

BS = 4096
TTL = 10.0
NEG_TTL = 2.0


def make_ns(mounts: dict[str, Backend], ttl: float = TTL, negative_ttl: float = NEG_TTL,
            ram_blocks: int = 64, opens: bool = True) -> tuple[Namespace, FakeClock]:
    clock = FakeClock()
    table = MountTable([Mount(p, b, ttl, negative_ttl) for p, b in mounts.items()])
    reader = Reader(build_cache(BS, ram_blocks * BS, "lru", None, 0, "lru"))
    return Namespace(table, reader, default_ttl=60.0, metadata=MetadataCache(clock=clock), opens=opens), clock


def one_mount(ttl: float = TTL, negative_ttl: float = NEG_TTL, opens: bool = True) -> tuple[Namespace, SlowMemory, FakeClock]:
    backend = SlowMemory()
    ns, clock = make_ns({"/m": backend}, ttl, negative_ttl, opens=opens)
    return ns, backend, clock


async def walk(ns: Namespace, path: str) -> Entry:
    """Look up every component of `path` from the root (each one referenced once)."""
    entry = await ns.getattr(ROOT_INODE)
    for name in [p for p in path.split("/") if p]:
        entry = await ns.lookup(entry.ino, name)
    return entry


def listing(ns: Namespace, fh: int, start: int = 0, limit: int | None = None) -> list[tuple[str, Entry, int]]:
    out: list[tuple[str, Entry, int]] = []

    def reply(name: str, entry: Entry, next_offset: int) -> bool:
        if limit is not None and len(out) >= limit:
            return False
        out.append((name, entry, next_offset))
        return True

    ns.readdir(fh, start, reply)
    return out


async def names(ns: Namespace, path: str) -> list[str]:
    entry = await walk(ns, path)
    fh = await ns.opendir(entry.ino)
    try:
        return [n for n, _, _ in listing(ns, fh)][2:]
    finally:
        ns.releasedir(fh)


async def open_ro(ns: Namespace, ino: int, flags: int = os.O_RDONLY) -> tuple[int, bool]:
    """(handle, keep_cache) of an open."""
    opened = await ns.open(ino, flags)
    return opened.fh, opened.keep_cache


async def read_all(ns: Namespace, ino: int) -> tuple[bytes, bool]:
    fh, keep = await open_ro(ns, ino)
    try:
        return await ns.read(fh, 0, 1 << 30), keep
    finally:
        ns.release(fh)


def errno_of_call(exc_info: pytest.ExceptionInfo) -> int:  # type: ignore[type-arg]
    assert isinstance(exc_info.value, OSError)
    return exc_info.value.errno  # type: ignore[return-value]


# --- basic operations ---------------------------------------------------------------------------

def test_lookup_getattr_open_read_release() -> None:
    ns, backend, _ = one_mount()
    backend.put("d/f", b"hello world")

    async def main() -> None:
        m = await ns.lookup(ROOT_INODE, "m")
        assert m.is_dir and m.size == 0 and m.timeout == TTL
        d = await ns.lookup(m.ino, "d")
        assert d.is_dir
        f = await ns.lookup(d.ino, "f")
        assert not f.is_dir and f.size == 11 and f.timeout == TTL
        assert f.mtime_ns == backend.objects["d/f"][2]
        assert await ns.getattr(f.ino) == f
        fh, keep = await open_ro(ns, f.ino)
        assert keep is False
        assert await ns.read(fh, 6, 100) == b"world"
        assert await ns.read(fh, 0, 5) == b"hello"
        ns.release(fh)
        assert fh not in ns.reader.handles

    trio.run(main)


def test_statfs() -> None:
    ns, backend, _ = one_mount()
    backend.put("f", b"x")

    async def main() -> None:
        await walk(ns, "/m/f")
        s = ns.statfs()
        assert s["f_bsize"] == s["f_frsize"] == BS
        assert s["f_blocks"] * BS == 1 << 50 and s["f_bfree"] == s["f_bavail"] == 0
        assert s["f_files"] == len(ns.inodes) == 3  # root, /m, /m/f
        assert s["f_namemax"] == 255

    trio.run(main)


def test_dot_and_dotdot_in_lookup() -> None:
    ns, backend, _ = one_mount()
    backend.put("d/f", b"x")

    async def main() -> None:
        m = await walk(ns, "/m")
        d = await ns.lookup(m.ino, "d")
        assert (await ns.lookup(d.ino, ".")).ino == d.ino
        assert (await ns.lookup(d.ino, "..")).ino == m.ino
        assert (await ns.lookup(m.ino, "..")).ino == ROOT_INODE
        assert (await ns.lookup(ROOT_INODE, "..")).ino == ROOT_INODE
        assert ns.inodes.get(d.ino).lookups == 2  # '.' counts as a lookup like any other

    trio.run(main)


def test_errors_enoent_enotdir_eisdir() -> None:
    ns, backend, _ = one_mount()
    backend.put("d/f", b"x")

    async def main() -> None:
        m = await walk(ns, "/m")
        with pytest.raises(OSError) as info:
            await ns.lookup(m.ino, "missing")
        assert errno_of_call(info) == errno.ENOENT
        with pytest.raises(OSError) as info:
            await ns.lookup(ROOT_INODE, "not-a-mount")
        assert errno_of_call(info) == errno.ENOENT
        d = await ns.lookup(m.ino, "d")
        f = await ns.lookup(d.ino, "f")
        with pytest.raises(OSError) as info:
            await ns.opendir(f.ino)
        assert errno_of_call(info) == errno.ENOTDIR
        for ino in (d.ino, m.ino, ROOT_INODE):
            with pytest.raises(OSError) as info:
                await ns.open(ino, os.O_RDONLY)
            assert errno_of_call(info) == errno.EISDIR
        with pytest.raises(OSError) as info:
            await ns.getattr(987654)
        assert errno_of_call(info) == errno.ESTALE

    trio.run(main)


@pytest.mark.parametrize("flags", [os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC, os.O_WRONLY | os.O_APPEND,
                                   os.O_RDWR | os.O_CREAT])
def test_write_flags_give_erofs(flags: int) -> None:
    ns, backend, _ = one_mount()
    backend.put("f", b"x")

    async def main() -> None:
        f = await walk(ns, "/m/f")
        with pytest.raises(OSError) as info:
            await ns.open(f.ino, flags)
        assert errno_of_call(info) == errno.EROFS
        fh, _ = await open_ro(ns, f.ino, os.O_RDONLY | os.O_NONBLOCK)  # read-only flags still work
        assert await ns.read(fh, 0, 10) == b"x"

    trio.run(main)


def test_a_key_that_is_object_and_prefix_is_a_directory() -> None:
    ns, backend, _ = one_mount()
    backend.put("x", b"object")
    backend.put("x/y", b"child")

    async def main() -> None:
        x = await walk(ns, "/m/x")
        assert x.is_dir
        assert await names(ns, "/m") == ["x"]
        assert await names(ns, "/m/x") == ["y"]
        with pytest.raises(OSError) as info:
            await ns.open(x.ino, os.O_RDONLY)
        assert errno_of_call(info) == errno.EISDIR

    trio.run(main)


# --- lookups and forget ---------------------------------------------------------------------------

def test_each_successful_lookup_is_referenced_once_and_forget_releases() -> None:
    ns, backend, _ = one_mount()
    backend.put("f", b"x")

    async def main() -> None:
        m = await walk(ns, "/m")
        before = len(ns.inodes)
        with pytest.raises(OSError):
            await ns.lookup(m.ino, "nope")
        assert len(ns.inodes) == before  # a failed lookup leaves no inode
        inos = {(await ns.lookup(m.ino, "f")).ino for _ in range(3)}
        assert len(inos) == 1
        ino = inos.pop()
        assert ns.inodes.get(ino).lookups == 3
        ns.forget(ino, 2)
        assert (await ns.getattr(ino)).size == 1
        ns.forget(ino, 1)
        with pytest.raises(OSError) as info:
            await ns.getattr(ino)
        assert errno_of_call(info) == errno.ESTALE
        ns.forget(ino, 1)  # forgetting again never raises
        ns.forget(ROOT_INODE, 5)
        assert (await ns.getattr(ROOT_INODE)).is_dir
        again = await ns.lookup(m.ino, "f")
        assert again.ino != ino  # numbers are not reused

    trio.run(main)


def test_getattr_of_a_path_that_changed_kind_is_estale() -> None:
    ns, backend, clock = one_mount()
    backend.put("x", b"file")

    async def main() -> None:
        x = await walk(ns, "/m/x")
        backend.remove("x")
        backend.put("x/child", b"now a dir")
        clock.advance(TTL + 1)
        with pytest.raises(OSError) as info:
            await ns.getattr(x.ino)
        assert errno_of_call(info) == errno.ESTALE
        m = await walk(ns, "/m")
        new = await ns.lookup(m.ino, "x")
        assert new.is_dir and new.ino != x.ino

    trio.run(main)


# --- readdir ------------------------------------------------------------------------------------

def test_readdir_dot_dotdot_offsets_and_resume_from_any_offset() -> None:
    ns, backend, _ = one_mount()
    for name in ["b", "a", "c/x", "e", "d"]:
        backend.put(f"dir/{name}", name.encode())

    async def main() -> None:
        m = await walk(ns, "/m")
        d = await ns.lookup(m.ino, "dir")
        fh = await ns.opendir(d.ino)
        full = listing(ns, fh)
        assert [n for n, _, _ in full] == [".", "..", "a", "b", "c", "d", "e"]
        assert [o for _, _, o in full] == list(range(1, 8))
        assert full[0][1].ino == d.ino and full[1][1].ino == m.ino
        assert full[0][1].is_dir and full[1][1].is_dir
        by_name = {n: e for n, e, _ in full}
        assert by_name["c"].is_dir and not by_name["a"].is_dir and by_name["b"].size == 1
        backend.put("dir/0-new", b"n")  # the handle keeps its snapshot: offsets stay stable
        backend.remove("dir/a")
        for start in range(len(full) + 2):
            assert [(n, o) for n, _, o in listing(ns, fh, start)] == [(n, o) for n, _, o in full[start:]]
        ns.releasedir(fh)
        ns.releasedir(fh)  # twice is harmless

    trio.run(main)


def test_readdir_references_only_entries_the_reply_took() -> None:
    ns, backend, _ = one_mount()
    for name in "abcdef":
        backend.put(f"dir/{name}", b"x")

    async def main() -> None:
        d = await walk(ns, "/m/dir")
        base = len(ns.inodes)
        dir_lookups = ns.inodes.get(d.ino).lookups
        fh = await ns.opendir(d.ino)
        first = listing(ns, fh, 0, limit=4)  # '.', '..', 'a', 'b' taken, 'c' refused
        assert [n for n, _, _ in first] == [".", "..", "a", "b"]
        assert ns.inodes.get(d.ino).lookups == dir_lookups  # '.' and '..' are never counted
        assert len(ns.inodes) == base + 2
        for _, e, _ in first[2:]:
            assert ns.inodes.get(e.ino).lookups == 1
        rest = listing(ns, fh, first[-1][2])  # resume where the kernel stopped
        assert [n for n, _, _ in rest] == ["c", "d", "e", "f"]
        assert len(ns.inodes) == base + 6
        assert all(ns.inodes.get(e.ino).lookups == 1 for _, e, _ in first[2:] + rest)
        refused = listing(ns, fh, 0, limit=0)  # the reply refuses even '.'
        assert refused == [] and len(ns.inodes) == base + 6
        again = listing(ns, fh, 2)  # offered again: one more reference each, same inodes
        assert [e.ino for _, e, _ in again] == [e.ino for _, e, _ in first[2:] + rest]
        assert all(ns.inodes.get(e.ino).lookups == 2 for _, e, _ in again)
        ns.releasedir(fh)

    trio.run(main)


def test_readdir_of_a_directory_nobody_looked_up_leaves_no_stray_inodes() -> None:
    ns, backend, _ = one_mount()
    backend.put("a/b/c", b"x")

    async def main() -> None:
        b = await walk(ns, "/m/a/b")
        base = len(ns.inodes)
        fh = await ns.opendir(b.ino)
        listing(ns, fh, 0, limit=2)  # only '.' and '..'
        assert len(ns.inodes) == base
        listing(ns, fh, 0, limit=1)
        assert len(ns.inodes) == base

    trio.run(main)


# --- costs --------------------------------------------------------------------------------------

def test_ls_l_costs_one_listing_and_no_stat_per_file() -> None:
    ns, backend, _ = one_mount()
    n = 50
    for i in range(n):
        backend.put(f"data/f{i:03}", b"x" * i)

    async def main() -> None:
        d = await walk(ns, "/m/data")
        backend.requests = 0
        fh = await ns.opendir(d.ino)
        entries = listing(ns, fh)[2:]
        ns.releasedir(fh)
        assert len(entries) == n
        for name, e, _ in entries:  # ls -l: lookup (or readdirplus) then getattr of every file
            looked = await ns.lookup(d.ino, name)
            assert looked.ino == e.ino
            assert (await ns.getattr(e.ino)).size == int(name[1:])
        with pytest.raises(OSError):
            await ns.lookup(d.ino, "not-there")  # answered by the fresh listing too
        assert backend.requests == 1

    trio.run(main)


def test_ls_of_the_mount_root_costs_one_listing() -> None:
    ns, backend, _ = one_mount()
    for i in range(10):
        backend.put(f"f{i}", b"x")

    async def main() -> None:
        m = await walk(ns, "/m")
        assert backend.requests == 0  # a mount point needs no request
        fh = await ns.opendir(m.ino)
        for name, _, _ in listing(ns, fh)[2:]:
            await ns.lookup(m.ino, name)
        assert backend.requests == 1

    trio.run(main)


def test_concurrent_lookups_of_one_uncached_path_cost_one_stat() -> None:
    ns, backend, _ = one_mount(ttl=0.0)  # nothing cached: only single-flight shares the stat
    backend.put("f", b"abc")

    async def main() -> None:
        m = await walk(ns, "/m")
        backend.gate = trio.Event()
        got: list[Entry] = []

        async def lookup() -> None:
            got.append(await ns.lookup(m.ino, "f"))

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(lookup)
            await trio.testing.wait_all_tasks_blocked()
            backend.gate.set()
        assert backend.requests == 1
        assert len({e.ino for e in got}) == 1 and len(got) == 20
        assert ns.inodes.get(got[0].ino).lookups == 20

    trio.run(main)


def test_negative_entries_are_remembered_for_the_negative_ttl() -> None:
    ns, backend, clock = one_mount(negative_ttl=NEG_TTL)

    async def main() -> None:
        m = await walk(ns, "/m")
        assert ns.negative_timeout(m.ino) == NEG_TTL
        for _ in range(3):
            with pytest.raises(OSError) as info:
                await ns.lookup(m.ino, "soon")
            assert errno_of_call(info) == errno.ENOENT
        assert backend.requests == 1
        backend.put("soon", b"here")
        clock.advance(NEG_TTL / 2)
        with pytest.raises(OSError):
            await ns.lookup(m.ino, "soon")
        assert backend.requests == 1
        clock.advance(NEG_TTL)
        assert (await ns.lookup(m.ino, "soon")).size == 4
        assert backend.requests == 2

    trio.run(main)


# --- objects that change behind the mount ------------------------------------------------------

def test_replaced_object_after_ttl_new_size_and_new_version() -> None:
    ns, backend, clock = one_mount()
    backend.put("f", b"old!")

    async def main() -> None:
        f = await walk(ns, "/m/f")
        assert (await read_all(ns, f.ino))[0] == b"old!"
        backend.put("f", b"the new version")
        assert (await ns.getattr(f.ino)).size == 4  # trusted for the TTL
        clock.advance(TTL + 0.1)
        assert (await ns.getattr(f.ino)).size == 15
        data, keep = await read_all(ns, f.ino)
        assert data == b"the new version" and keep is False

    trio.run(main)


def test_keep_cache_only_when_reopening_the_same_version() -> None:
    ns, backend, clock = one_mount()
    backend.put("f", b"v1")

    async def main() -> None:
        f = await walk(ns, "/m/f")
        assert [(await read_all(ns, f.ino))[1] for _ in range(3)] == [False, True, True]
        backend.put("f", b"v2")
        clock.advance(TTL + 1)
        assert (await read_all(ns, f.ino)) == (b"v2", False)
        assert (await read_all(ns, f.ino)) == (b"v2", True)

    trio.run(main)


def test_estale_from_the_reader_invalidates_metadata() -> None:
    ns, backend, _ = one_mount()
    backend.put("d/f", b"first")

    async def main() -> None:
        d = await walk(ns, "/m/d")
        fh = await ns.opendir(d.ino)
        listing(ns, fh)  # the parent listing is fresh as well
        ns.releasedir(fh)
        f = await ns.lookup(d.ino, "f")
        fh, _ = await open_ro(ns, f.ino)
        backend.put("d/f", b"second!")  # within the TTL
        with pytest.raises(OSError) as info:
            await ns.read(fh, 0, 100)
        assert errno_of_call(info) == errno.ESTALE
        ns.release(fh)
        data, keep = await read_all(ns, f.ino)  # no clock advance: the ESTALE dropped the metadata
        assert (data, keep) == (b"second!", False)
        assert (await ns.getattr(f.ino)).size == 7

    trio.run(main)


def test_an_open_handle_keeps_serving_its_cached_version() -> None:
    ns, backend, clock = one_mount()
    backend.put("f", b"A" * (2 * BS))

    async def main() -> None:
        f = await walk(ns, "/m/f")
        fh, _ = await open_ro(ns, f.ino)
        assert await ns.read(fh, 0, BS) == b"A" * BS
        backend.put("f", b"B" * (2 * BS))
        clock.advance(TTL + 1)
        assert await ns.read(fh, 0, BS) == b"A" * BS  # old bytes from the cache, never new ones
        with pytest.raises(OSError) as info:
            await ns.read(fh, BS, BS)
        assert errno_of_call(info) == errno.ESTALE

    trio.run(main)


# --- without opens: the kernel opens files by itself and read() gets the inode --------------------

def without_opens(test: Callable[[Namespace, SlowMemory, FakeClock, list[int]], Awaitable[None]]) -> None:
    """Run `test` on a namespace without opens, started in a nursery, recording kernel invalidations."""
    ns, backend, clock = one_mount(opens=False)
    invalidated: list[int] = []

    async def record(ino: int) -> None:
        invalidated.append(ino)

    async def main() -> None:
        ns.invalidate_kernel = record
        async with trio.open_nursery() as nursery:
            ns.start(nursery)
            await test(ns, backend, clock, invalidated)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_without_opens_open_answers_enosys_and_read_takes_the_inode() -> None:
    async def test(ns: Namespace, backend: SlowMemory, clock: FakeClock, invalidated: list[int]) -> None:
        backend.put("d/f", b"hello")
        f = await walk(ns, "/m/d/f")
        with pytest.raises(OSError) as info:
            await ns.open(f.ino, os.O_RDONLY)
        assert errno_of_call(info) == errno.ENOSYS
        assert await ns.read(f.ino, 1, 3) == b"ell"
        assert await ns.read(f.ino, 0, 100) == b"hello"
        assert ns.stats()["reader"]["open_handles"] == 1
        ns.forget(f.ino, 1)  # the kernel forgets the inode: its read state goes with it
        assert ns.stats()["reader"]["open_handles"] == 0
        assert invalidated == []

    without_opens(test)


def test_without_opens_reads_serve_the_version_the_kernel_was_told_of() -> None:
    async def test(ns: Namespace, backend: SlowMemory, clock: FakeClock, invalidated: list[int]) -> None:
        backend.put("f", b"A" * (2 * BS))
        f = await walk(ns, "/m/f")
        assert await ns.read(f.ino, 0, BS) == b"A" * BS
        backend.put("f", b"B" * (2 * BS))  # same size
        assert (await ns.getattr(f.ino)).size == 2 * BS  # still trusted: the kernel was told of A
        assert await ns.read(f.ino, 0, BS) == b"A" * BS  # A's cached block, never B's bytes
        with pytest.raises(OSError) as info:  # A's second block is gone from the silo
            await ns.read(f.ino, BS, BS)
        assert errno_of_call(info) == errno.ESTALE
        await trio.testing.wait_all_tasks_blocked()
        assert invalidated == [f.ino]  # the kernel must ask again (and drop A's pages)
        await ns.getattr(f.ino)  # it does: the ESTALE dropped vfs's metadata, so it learns of B
        assert await ns.read(f.ino, 0, 2 * BS) == b"B" * (2 * BS)
        await trio.testing.wait_all_tasks_blocked()
        assert invalidated == [f.ino, f.ino]  # telling of a new version drops the pages of the old
        backend.put("f", b"C" * (2 * BS))
        clock.advance(TTL + 1)
        await ns.getattr(f.ino)
        assert await ns.read(f.ino, BS, BS) == b"C" * BS
        await trio.testing.wait_all_tasks_blocked()
        assert invalidated == [f.ino] * 3

    without_opens(test)


def test_without_opens_the_stats_file_keeps_one_rendering_for_a_reader() -> None:
    async def test(ns: Namespace, backend: SlowMemory, clock: FakeClock, invalidated: list[int]) -> None:
        stats = await walk(ns, "/.vfs/stats")
        entry = await ns.getattr(stats.ino)
        data = await ns.read(stats.ino, 0, 1 << 20)
        assert len(data) == entry.size > 0
        # Rendered at the lookup, before the stats inode existed (2 inodes: / and /.vfs); the
        # getattr and the read reuse that rendering, so the size the kernel was told holds.
        assert json.loads(bytes(data))["inodes"] == 2
        assert entry.timeout == 0

    without_opens(test)


def test_reading_through_a_directory_sweeps_its_other_small_files() -> None:
    async def test(ns: Namespace, backend: SlowMemory, clock: FakeClock, invalidated: list[int]) -> None:
        files = {f"d/f{i}": bytes([i]) * 100 for i in range(10)}
        for path, data in files.items():
            backend.put(path, data)
        backend.put("d/big", b"B" * (3 * BS))  # more than a block: never swept
        backend.put("other/x", b"x")
        d = await walk(ns, "/m/d")
        listing(ns, await ns.opendir(d.ino))  # as a DataLoader's indexing does
        assert await ns.read((await ns.lookup(d.ino, "f3")).ino, 0, 100) == files["d/f3"]
        await trio.testing.wait_all_tasks_blocked()
        assert ns.sweep.files == 0  # one file is not a pattern
        assert await ns.read((await ns.lookup(d.ino, "f7")).ino, 0, 100) == files["d/f7"]
        await trio.testing.wait_all_tasks_blocked()
        assert ns.sweep.files == 8 and sorted(p for p, _, _ in backend.reads) == sorted(files)
        for name in files:  # all in the cache now: no more reads from the silo
            assert await ns.read((await ns.lookup(d.ino, name.split("/")[1])).ino, 0, 100) == files[name]
        assert len(backend.reads) == 10

    without_opens(test)


def test_a_directory_too_big_for_a_quarter_of_the_cache_is_not_swept() -> None:
    async def test(ns: Namespace, backend: SlowMemory, clock: FakeClock, invalidated: list[int]) -> None:
        for i in range(20):  # 20 blocks of small files, the cache holds 64
            backend.put(f"d/f{i}", b"s" * BS)
        d = await walk(ns, "/m/d")
        listing(ns, await ns.opendir(d.ino))
        for name in ("f1", "f2", "f3"):
            await ns.read((await ns.lookup(d.ino, name)).ino, 0, BS)
        await trio.testing.wait_all_tasks_blocked()
        assert ns.sweep.files == 0 and len(backend.reads) == 3

    without_opens(test)


# --- the mount table through the namespace ------------------------------------------------------

def test_synthetic_parents_with_two_mounts_below(tmp_path: Path) -> None:
    mem = SlowMemory()
    mem.put("k", b"from memory")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "file.txt").write_bytes(b"from disk")
    ns, _ = make_ns({"/data/s3": mem, "/data/local": LocalBackend(LocalOptions(root=str(tmp_path)))})

    async def main() -> None:
        assert await names(ns, "/") == ["data"]
        assert await names(ns, "/data") == ["local", "s3"]
        assert await names(ns, "/data/local") == ["sub"]
        assert await names(ns, "/data/s3") == ["k"]
        data = await walk(ns, "/data")
        assert data.is_dir
        with pytest.raises(OSError) as info:
            await ns.lookup(data.ino, "other")
        assert errno_of_call(info) == errno.ENOENT
        with pytest.raises(OSError) as info:
            await ns.open(data.ino, os.O_RDONLY)
        assert errno_of_call(info) == errno.EISDIR
        assert (await read_all(ns, (await walk(ns, "/data/local/sub/file.txt")).ino))[0] == b"from disk"
        assert (await read_all(ns, (await walk(ns, "/data/s3/k")).ino))[0] == b"from memory"
        assert mem.requests > 0

    trio.run(main)


def test_mount_at_root_with_another_at_local_hides_the_backend_entry(tmp_path: Path) -> None:
    root = SlowMemory()
    root.put("local", b"a file the overlay hides")
    root.put("other", b"visible")
    (tmp_path / "inside").write_bytes(b"local bytes")
    ns, _ = make_ns({"/": root, "/local": LocalBackend(LocalOptions(root=str(tmp_path)))})

    async def main() -> None:
        fh = await ns.opendir(ROOT_INODE)
        entries = {n: e for n, e, _ in listing(ns, fh)}
        ns.releasedir(fh)
        assert sorted(entries) == [".", "..", "local", "other"]
        assert entries["local"].is_dir and not entries["other"].is_dir
        local = await ns.lookup(ROOT_INODE, "local")
        assert local.is_dir and local.ino == entries["local"].ino
        assert await names(ns, "/local") == ["inside"]
        assert (await read_all(ns, (await walk(ns, "/local/inside")).ino))[0] == b"local bytes"
        assert (await read_all(ns, (await walk(ns, "/other")).ino))[0] == b"visible"

    trio.run(main)


def test_mount_below_a_missing_backend_directory_is_still_reachable() -> None:
    root, deep = SlowMemory(), SlowMemory()
    root.put("top", b"t")
    deep.put("leaf", b"l")
    ns, _ = make_ns({"/": root, "/a/b": deep})

    async def main() -> None:
        assert await names(ns, "/") == ["a", "top"]
        assert await names(ns, "/a") == ["b"]  # the root backend has no 'a': listed from the overlay
        assert await names(ns, "/a/b") == ["leaf"]

    trio.run(main)


def test_nested_sibling_mounts() -> None:
    a, b = SlowMemory(), SlowMemory()
    a.put("fa", b"A")
    b.put("fb", b"BB")
    ns, _ = make_ns({"/s3/a": a, "/s3/b": b})

    async def main() -> None:
        assert await names(ns, "/") == ["s3"]
        assert await names(ns, "/s3") == ["a", "b"]
        assert (await walk(ns, "/s3/a/fa")).size == 1
        assert (await walk(ns, "/s3/b/fb")).size == 2
        s3 = await walk(ns, "/s3")
        with pytest.raises(OSError):
            await ns.lookup(s3.ino, "c")
        assert a.requests + b.requests == 2  # a listing of each; the files' stats come from it

    trio.run(main)


def test_mount_point_whose_silo_root_is_missing_lists_empty() -> None:
    class NoRoot(SlowMemory):
        async def list_dir(self, path: str):  # type: ignore[no-untyped-def]
            from vfs.mounts.base import not_found
            raise not_found(path or "bucket")

    ns, _ = make_ns({"/gone": NoRoot(), "/ok": SlowMemory()})

    async def main() -> None:
        assert await names(ns, "/gone") == []

    trio.run(main)


def test_timeouts_follow_the_mount_ttl() -> None:
    mem = SlowMemory()
    mem.put("f", b"x")
    ns, _ = make_ns({"/data/s3": mem}, ttl=3.0, negative_ttl=0.5)

    async def main() -> None:
        data = await ns.lookup(ROOT_INODE, "data")
        assert data.timeout == ns.default_ttl  # synthetic: fixed for the life of the mount
        s3 = await ns.lookup(data.ino, "s3")
        assert s3.timeout == 3.0
        assert (await ns.lookup(s3.ino, "f")).timeout == 3.0
        assert ns.negative_timeout(s3.ino) == 0.5
        assert ns.negative_timeout(ROOT_INODE) == ns.default_ttl
        assert ns.negative_timeout(424242) == 0.0  # an inode the kernel forgot: trust nothing

    trio.run(main)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), min_size=1, max_size=15))
def test_random_partial_readdirs_keep_exact_lookup_counts(calls: list[tuple[int, int]]) -> None:
    ns, backend, _ = one_mount()
    for name in "abcdefghij":
        backend.put(f"dir/{name}", b"x")

    async def main() -> None:
        d = await walk(ns, "/m/dir")
        base = len(ns.inodes)
        fh = await ns.opendir(d.ino)
        full = listing(ns, fh, 0, limit=None)
        taken: dict[int, int] = {e.ino: 1 for n, e, _ in full if n not in (".", "..")}
        for start, limit in calls:
            for name, e, _ in listing(ns, fh, start, limit):
                if name not in (".", ".."):
                    taken[e.ino] += 1
        assert ns.inodes.get(d.ino).lookups == 1
        assert len(ns.inodes) == base + len(taken)
        for ino, n in taken.items():
            assert ns.inodes.get(ino).lookups == n
            ns.forget(ino, n)
        assert len(ns.inodes) == base

    trio.run(main)


def test_kernel_timeouts_never_outlive_what_vfs_trusts() -> None:
    """An entry served from the metadata cache carries the rest of its TTL, not a fresh one."""
    ns, backend, clock = one_mount()
    backend.put("a.txt", b"x")

    async def main() -> None:
        assert (await walk(ns, "/m/a.txt")).timeout == TTL
        clock.advance(TTL * 0.75)
        entry = await walk(ns, "/m/a.txt")
        assert entry.timeout == pytest.approx(TTL * 0.25)
        clock.advance(TTL * 0.5)  # expired: asked again, a whole TTL again
        assert (await walk(ns, "/m/a.txt")).timeout == TTL

    trio.run(main)


def test_a_walk_lists_the_next_directories_ahead() -> None:
    """find-like: root listed, then one subdirectory: the siblings are listed in the background."""
    ns, backend, _ = one_mount()
    for d in range(10):
        backend.put(f"d{d}/f", b"x")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            ns.start(nursery)
            top = await walk(ns, "/m")
            await ns.opendir(top.ino)  # an `ls`: nothing more
            await trio.testing.wait_all_tasks_blocked()
            assert backend.requests == 1
            d0 = await ns.lookup(top.ino, "d0")
            await ns.opendir(d0.ino)  # a walker goes in: list d1..d9 ahead
            await trio.testing.wait_all_tasks_blocked()
            assert backend.requests == 1 + 10
            d7 = await ns.lookup(top.ino, "d7")
            await ns.opendir(d7.ino)
            assert backend.requests == 1 + 10  # served by the listing made ahead
            nursery.cancel_scope.cancel()

    trio.run(main)
