"""MetadataCache over a real MemoryBackend: a listing fills its children (no stat afterwards), TTL
expiry through an injected clock, negative entries for the negative TTL, invalidate, single-flight.

`SlowMemory` (a MemoryBackend whose calls yield to trio and can be held at a gate or made to fail)
and `FakeClock` are shared with tests/test_namespace.py and tests/test_reader.py.
"""

from __future__ import annotations

import errno

import pytest
import trio
import trio.testing

from vfs.errors import SiloError
from vfs.metadata import MetadataCache
from vfs.mount_table import Mount
from vfs.mounts.base import ObjectMeta
from vfs.mounts.memory import MemoryBackend


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class SlowMemory(MemoryBackend):
    """A MemoryBackend whose calls yield to trio, wait at `gate` while it is set, and fail on command.

    `fail_reads` maps a block start offset to an errno raised (once) by read_range at that offset;
    `reads` records every read_range as (path, start, end).
    """

    def __init__(self) -> None:
        super().__init__()
        self.gate: trio.Event | None = None
        self.fail_reads: dict[int, int] = {}
        self.reads: list[tuple[str, int, int]] = []
        self.on_call: list = []  # callbacks run at every call (to check invariants mid-flight)

    async def _pause(self) -> None:
        for check in self.on_call:
            check()
        await trio.sleep(0)
        if self.gate is not None:
            await self.gate.wait()

    async def stat(self, path: str) -> ObjectMeta:
        await self._pause()
        return await super().stat(path)

    async def list_dir(self, path: str) -> list[ObjectMeta]:
        await self._pause()
        return await super().list_dir(path)

    async def read_range(self, path: str, start: int, end: int, version: str) -> bytes:
        self.reads.append((path, start, end))
        await self._pause()
        err = self.fail_reads.pop(start, None)
        if err is not None:
            self.requests += 1
            raise SiloError(err, f"{path} @ {start} (injected)")
        return await super().read_range(path, start, end, version)


def setup(ttl: float = 10.0, negative_ttl: float = 2.0) -> tuple[SlowMemory, Mount, MetadataCache, FakeClock]:
    backend = SlowMemory()
    clock = FakeClock()
    return backend, Mount("/m", backend, ttl, negative_ttl), MetadataCache(clock=clock), clock


def test_listing_fills_children_so_no_stat_follows() -> None:
    backend, mount, meta, _ = setup()
    for i in range(20):
        backend.put(f"d/f{i:02}", b"x" * i)
    backend.put("d/sub/g", b"y")

    async def main() -> None:
        children = await meta.list_dir(mount, "d")
        assert sorted(children) == ["f%02d" % i for i in range(20)] + ["sub"]
        assert backend.requests == 1
        for i in range(20):
            m = await meta.stat(mount, f"d/f{i:02}")
            assert (m.is_dir, m.size) == (False, i)
        assert (await meta.stat(mount, "d/sub")).is_dir
        with pytest.raises(OSError) as info:  # the fresh listing also answers "no such name"
            await meta.stat(mount, "d/missing")
        assert info.value.errno == errno.ENOENT
        assert await meta.list_dir(mount, "d") is children
        assert backend.requests == 1

    trio.run(main)


def test_ttl_expiry_asks_again() -> None:
    backend, mount, meta, clock = setup(ttl=10.0)
    backend.put("f", b"one")

    async def main() -> None:
        assert (await meta.stat(mount, "f")).size == 3
        backend.put("f", b"longer")
        clock.advance(9.9)
        assert (await meta.stat(mount, "f")).size == 3  # still trusted
        assert backend.requests == 1
        clock.advance(0.2)
        m = await meta.stat(mount, "f")
        assert m.size == 6 and m.version == backend.objects["f"][1]
        assert backend.requests == 2

    trio.run(main)


def test_listing_expires_with_ttl() -> None:
    backend, mount, meta, clock = setup(ttl=5.0)
    backend.put("d/a", b"1")

    async def main() -> None:
        assert list(await meta.list_dir(mount, "d")) == ["a"]
        backend.put("d/b", b"2")
        assert list(await meta.list_dir(mount, "d")) == ["a"]
        with pytest.raises(OSError):
            await meta.stat(mount, "d/b")  # the fresh listing says no
        clock.advance(5.0)
        assert sorted(await meta.list_dir(mount, "d")) == ["a", "b"]
        assert (await meta.stat(mount, "d/b")).size == 1
        assert backend.requests == 2

    trio.run(main)


def test_negative_entries_last_the_negative_ttl() -> None:
    backend, mount, meta, clock = setup(ttl=10.0, negative_ttl=2.0)

    async def main() -> None:
        for _ in range(3):
            with pytest.raises(OSError) as info:
                await meta.stat(mount, "late")
            assert info.value.errno == errno.ENOENT
        assert backend.requests == 1
        backend.put("late", b"here")
        clock.advance(1.9)
        with pytest.raises(OSError):
            await meta.stat(mount, "late")  # still remembered as missing
        assert backend.requests == 1
        clock.advance(0.2)
        assert (await meta.stat(mount, "late")).size == 4
        assert backend.requests == 2

    trio.run(main)


def test_zero_negative_ttl_remembers_nothing() -> None:
    backend, mount, meta, _ = setup(negative_ttl=0.0)

    async def main() -> None:
        for _ in range(3):
            with pytest.raises(OSError):
                await meta.stat(mount, "nope")
        assert backend.requests == 3

    trio.run(main)


def test_zero_ttl_caches_nothing() -> None:
    backend, mount, meta, _ = setup(ttl=0.0)
    backend.put("d/f", b"x")

    async def main() -> None:
        await meta.list_dir(mount, "d")
        await meta.list_dir(mount, "d")
        await meta.stat(mount, "d/f")
        await meta.stat(mount, "d/f")
        assert backend.requests == 4

    trio.run(main)


def test_invalidate_forgets_the_path_and_its_parent_listing() -> None:
    backend, mount, meta, _ = setup()
    backend.put("d/f", b"old")
    backend.put("top", b"old")

    async def main() -> None:
        await meta.list_dir(mount, "d")
        old = await meta.stat(mount, "d/f")
        await meta.stat(mount, "top")
        assert backend.requests == 2
        backend.put("d/f", b"newer")
        backend.put("d/g", b"g")
        backend.put("top", b"newer")
        meta.invalidate(mount, "d/f")
        new = await meta.stat(mount, "d/f")
        assert new.version != old.version and new.size == 5
        assert sorted(await meta.list_dir(mount, "d")) == ["f", "g"]  # the parent listing was dropped
        assert backend.requests == 4
        meta.invalidate(mount, "top")  # a top-level path: its parent is the root listing ""
        assert (await meta.stat(mount, "top")).size == 5

    trio.run(main)


def test_errors_other_than_enoent_are_not_remembered() -> None:
    backend, mount, meta, _ = setup()
    backend.put("f", b"x")

    async def main() -> None:
        with pytest.raises(OSError) as info:
            await meta.list_dir(mount, "f")
        assert info.value.errno == errno.ENOTDIR
        with pytest.raises(OSError):
            await meta.list_dir(mount, "f")
        assert backend.requests == 2

    trio.run(main)


def test_concurrent_stats_of_one_path_cost_one_request() -> None:
    backend, mount, meta, _ = setup(ttl=0.0)  # nothing cached: only single-flight can share
    backend.put("f", b"abc")

    async def main() -> None:
        backend.gate = trio.Event()
        sizes: list[int] = []

        async def ask() -> None:
            sizes.append((await meta.stat(mount, "f")).size)

        async with trio.open_nursery() as nursery:
            for _ in range(25):
                nursery.start_soon(ask)
            await trio.testing.wait_all_tasks_blocked()
            backend.gate.set()
        assert sizes == [3] * 25
        assert backend.requests == 1

    trio.run(main)


def test_concurrent_listings_of_one_directory_cost_one_request() -> None:
    backend, mount, meta, _ = setup(ttl=0.0)
    backend.put("d/a", b"")

    async def main() -> None:
        backend.gate = trio.Event()
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(meta.list_dir, mount, "d")
            await trio.testing.wait_all_tasks_blocked()
            backend.gate.set()
        assert backend.requests == 1

    trio.run(main)


def test_mounts_do_not_share_entries() -> None:
    b1, b2 = SlowMemory(), SlowMemory()
    b1.put("f", b"1")
    b2.put("f", b"22")
    m1, m2 = Mount("/one", b1, 10, 2), Mount("/two", b2, 10, 2)
    meta = MetadataCache(clock=FakeClock())

    async def main() -> None:
        assert (await meta.stat(m1, "f")).size == 1
        assert (await meta.stat(m2, "f")).size == 2

    trio.run(main)


def test_an_expired_listing_is_listed_again_instead_of_a_stat_per_child() -> None:
    """A DataLoader epoch longer than the TTL: one listing per TTL, never a HEAD per file."""
    backend, mount, meta, clock = setup()
    for i in range(20):
        backend.put(f"d/f{i:02}", b"x")

    async def main() -> None:
        await meta.list_dir(mount, "d")
        clock.advance(11)  # past the 10 s TTL of setup()
        backend.put("d/f05", b"changed")
        for i in range(20):
            assert (await meta.stat(mount, f"d/f{i:02}")).size == (7 if i == 5 else 1)
        assert backend.requests == 2  # the first listing and one more, no stat
        with pytest.raises(OSError):
            await meta.stat(mount, "d/missing")
        assert backend.requests == 2

    trio.run(main)


def test_names_asked_about_often_in_an_unlisted_directory_list_it_once() -> None:
    """`cp -r` into a directory asks about every new name first: after LIST_AFTER questions one listing
    answers the rest, and what vfs creates there joins it, so a copy costs no request per name."""
    from vfs.metadata import LIST_AFTER

    backend, mount, meta, clock = setup()
    backend.put("dst/old", b"x")

    async def main() -> None:
        for i in range(LIST_AFTER - 1):  # a few questions: each asked of the silo
            with pytest.raises(OSError):
                await meta.stat(mount, f"dst/new{i}")
        asked = backend.requests
        assert asked >= LIST_AFTER - 1
        for i in range(LIST_AFTER - 1, 50):
            with pytest.raises(OSError) as info:
                await meta.stat(mount, f"dst/new{i}")
            assert info.value.errno == errno.ENOENT
            meta.learned(mount, ObjectMeta(f"dst/new{i}", False, 1, version="v"))  # vfs created it
            assert (await meta.stat(mount, f"dst/new{i}")).size == 1
        assert (await meta.stat(mount, "dst/old")).size == 1
        assert backend.requests == asked + 1  # one listing
        clock.advance(11)  # the count restarts after a TTL: a rare question is not a listing
        backend.put("other/a", b"x")
        before = backend.requests
        await meta.stat(mount, "other/a")
        assert backend.requests == before + 1

    trio.run(main)


def test_an_answer_asked_for_before_a_change_of_its_directory_is_not_kept() -> None:
    """A listing (or a stat) in flight while vfs commits a file there must not hide the new file
    for a TTL when it lands after the commit."""
    class AnswersThenWaits(SlowMemory):  # the silo answered; the answer is still on its way
        async def list_dir(self, path: str) -> list[ObjectMeta]:
            found = await MemoryBackend.list_dir(self, path)
            await self._pause()
            return found

        async def stat(self, path: str) -> ObjectMeta:
            try:
                found = await MemoryBackend.stat(self, path)
            except OSError:
                await self._pause()
                raise
            await self._pause()
            return found

    backend = AnswersThenWaits()
    mount, meta = Mount("/m", backend, 10.0, 2.0), MetadataCache(clock=FakeClock())
    backend.put("d/old", b"x")
    backend.put("e/x", b"x")

    async def missing(path: str) -> None:
        with pytest.raises(OSError):  # the silo's answer: not there yet
            await meta.stat(mount, path)

    async def main() -> None:
        backend.gate = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(meta.list_dir, mount, "d")
            nursery.start_soon(missing, "d/new")
            await trio.testing.wait_all_tasks_blocked()
            backend.put("d/new", b"yy")
            meta.learned(mount, ObjectMeta("d/new", False, 2, version="v2"))  # a commit landed meanwhile
            backend.gate.set()
        backend.gate = None
        asked = backend.requests
        assert (await meta.stat(mount, "d/new")).size == 2
        assert "new" in await meta.list_dir(mount, "d")
        assert backend.requests == asked  # the raced listing was kept, with the commit applied
        meta.removed(mount, "d/old")  # a delete racing a listing: that listing is not kept
        backend.gate = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(meta.list_dir, mount, "e")
            await trio.testing.wait_all_tasks_blocked()
            meta.invalidate_tree(mount, "e")
            backend.gate.set()
        backend.gate = None
        asked = backend.requests
        await meta.list_dir(mount, "e")
        assert backend.requests == asked + 1

    trio.run(main)
