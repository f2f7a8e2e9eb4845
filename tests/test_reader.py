"""Reader over a real BlockCache (RamStore) and a MemoryBackend: byte-exact reads (hypothesis), block
boundaries, EOF, single-flight per block, a handle keeps its version, the RAM budget holds, prefetch."""

from __future__ import annotations

import errno
import random

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_metadata import SlowMemory
from vfs.cache.block import BlockKey
from vfs.cache.tiered import BlockCache, build_cache
from vfs.mount_table import Mount
from vfs.reader import Reader

BS = 4096


def cache(ram_blocks: int = 64) -> BlockCache:
    return build_cache(BS, ram_blocks * BS, "lru", None, 0, "lru")


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def open_file(reader: Reader, backend: SlowMemory, key: str) -> int:
    data, version, _ = backend.objects[key]
    return reader.open(Mount("/m", backend, 60, 5), key, version, len(data))


@settings(max_examples=60, deadline=None)
@given(size=st.integers(0, 5 * BS + 123),
       reads=st.lists(st.tuples(st.integers(0, 6 * BS), st.integers(0, 3 * BS)), min_size=1, max_size=12),
       ram_blocks=st.sampled_from([1, 2, 64]))
def test_reads_are_byte_exact(size: int, reads: list[tuple[int, int]], ram_blocks: int) -> None:
    backend = SlowMemory()
    data = payload(size, size)
    backend.put("obj", data)
    reader = Reader(cache(ram_blocks))

    async def main() -> None:
        fh = open_file(reader, backend, "obj")
        for offset, length in reads:
            assert await reader.read(fh, offset, length) == data[offset:offset + length]

    trio.run(main)


def test_block_boundaries_and_eof() -> None:
    backend = SlowMemory()
    data = payload(3 * BS + 10)
    backend.put("obj", data)
    reader = Reader(cache())

    async def main() -> None:
        fh = open_file(reader, backend, "obj")
        cases = [(0, BS), (BS - 1, 2), (BS, BS), (BS - 5, 2 * BS + 10), (0, len(data)), (3 * BS, 10),
                 (3 * BS + 5, 100), (len(data), 10), (len(data) + BS, 10), (0, 0), (5, 0)]
        for offset, length in cases:
            got = await reader.read(fh, offset, length)
            assert type(got) in (bytes, memoryview)  # a view into the cached block: no copy
            assert bytes(got) == data[offset:offset + length], (offset, length)
        # every block was fetched once, the last one cut at EOF
        assert sorted(set(backend.reads)) == [("obj", 0, BS), ("obj", BS, 2 * BS), ("obj", 2 * BS, 3 * BS),
                                              ("obj", 3 * BS, 3 * BS + 10)]
        assert len(backend.reads) == 4

    trio.run(main)


def test_zero_size_file_reads_empty_without_a_request() -> None:
    backend = SlowMemory()
    backend.put("empty", b"")
    reader = Reader(cache())

    async def main() -> None:
        fh = open_file(reader, backend, "empty")
        assert await reader.read(fh, 0, 4096) == b""
        assert await reader.read(fh, 100, 1) == b""
        assert backend.requests == 0

    trio.run(main)


def test_concurrent_reads_of_one_missing_block_cost_one_request() -> None:
    backend = SlowMemory()
    data = payload(2 * BS)
    backend.put("obj", data)
    reader = Reader(cache())

    async def main() -> None:
        fh = open_file(reader, backend, "obj")
        backend.gate = trio.Event()
        got: list[bytes] = []

        async def read(offset: int) -> None:
            got.append(bytes(await reader.read(fh, offset, 100)))

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(read, BS + i * 10)
            await trio.testing.wait_all_tasks_blocked()
            backend.gate.set()
        assert sorted(got) == sorted(data[BS + i * 10:BS + i * 10 + 100] for i in range(20))
        assert backend.reads == [("obj", BS, 2 * BS)]

    trio.run(main)


def test_a_handle_never_mixes_versions() -> None:
    backend = SlowMemory()
    old, new = payload(3 * BS, 1), payload(3 * BS, 2)
    backend.put("obj", old)
    reader = Reader(cache())

    async def main() -> None:
        fh = open_file(reader, backend, "obj")
        assert await reader.read(fh, 0, BS) == old[:BS]
        backend.put("obj", new)  # replaced behind the mount, same size
        assert await reader.read(fh, 0, BS) == old[:BS]  # a cached block of the handle's version
        with pytest.raises(OSError) as info:
            await reader.read(fh, BS, BS)  # not cached: the silo no longer has that version
        assert info.value.errno == errno.ESTALE
        with pytest.raises(OSError):
            await reader.read(fh, 0, 2 * BS)  # spans a cached and a missing block: never half new
        fresh = open_file(reader, backend, "obj")
        assert await reader.read(fresh, 0, 3 * BS) == new
        assert await reader.read(fh, 0, BS) == old[:BS]

    trio.run(main)


def test_released_handle_is_gone() -> None:
    backend = SlowMemory()
    backend.put("obj", b"abc")
    reader = Reader(cache())
    fh = open_file(reader, backend, "obj")
    reader.release(fh)
    reader.release(fh)  # twice is harmless
    assert fh not in reader.handles
    assert open_file(reader, backend, "obj") != fh  # handle numbers are not reused


@pytest.mark.parametrize("prefetch", [False, True])
def test_ram_budget_holds_while_reading_a_file_larger_than_the_cache(prefetch: bool) -> None:
    backend = SlowMemory()
    data = payload(40 * BS + 7)
    backend.put("big", data)
    c = cache(ram_blocks=3)
    reader = Reader(c, prefetch_window=4 * BS)
    peak = 0

    def check() -> None:
        nonlocal peak
        assert c.ram.used <= c.ram.capacity
        peak = max(peak, c.ram.used)

    backend.on_call.append(check)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            if prefetch:
                reader.start(nursery)
            fh = open_file(reader, backend, "big")
            out = bytearray()
            for offset in range(0, len(data), 3000):
                out += await reader.read(fh, offset, 3000)
                check()
            assert bytes(out) == data
            rng = random.Random(5)
            for _ in range(50):
                offset = rng.randrange(len(data))
                assert await reader.read(fh, offset, 5000) == data[offset:offset + 5000]
                check()
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert 0 < peak <= 3 * BS


def test_sequential_reads_prefetch_following_blocks() -> None:
    backend = SlowMemory()
    data = payload(10 * BS)
    backend.put("obj", data)
    reader = Reader(cache(), prefetch_window=3 * BS)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            reader.start(nursery)
            fh = open_file(reader, backend, "obj")
            assert await reader.read(fh, 0, BS) == data[:BS]
            await trio.testing.wait_all_tasks_blocked()
            fetched = sorted(start // BS for _, start, _ in backend.reads)
            assert fetched == [0, 1]  # the read's block and a window of one
            before = len(backend.reads)
            assert await reader.read(fh, BS, 2 * BS) == data[BS:3 * BS]  # block 1 served by the prefetch
            await trio.testing.wait_all_tasks_blocked()
            assert sorted(start // BS for _, start, _ in backend.reads[before:]) == [2, 3, 4]  # window now 2
            for offset in range(3 * BS, 10 * BS, BS):
                assert await reader.read(fh, offset, BS) == data[offset:offset + BS]
                await trio.testing.wait_all_tasks_blocked()
                ahead = max(start // BS for _, start, _ in backend.reads)
                assert ahead <= min(offset // BS + 3, 9)  # never more than the 3-block window ahead
            assert sorted(start // BS for _, start, _ in backend.reads) == list(range(10))  # each once, none past EOF
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_random_reads_do_not_prefetch() -> None:
    backend = SlowMemory()
    data = payload(10 * BS)
    backend.put("obj", data)
    reader = Reader(cache(), prefetch_window=3 * BS)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            reader.start(nursery)
            fh = open_file(reader, backend, "obj")
            assert await reader.read(fh, 5 * BS + 3, 10) == data[5 * BS + 3:5 * BS + 13]
            await trio.testing.wait_all_tasks_blocked()
            assert [s // BS for _, s, _ in backend.reads] == [5]
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_failing_prefetch_does_not_break_the_read() -> None:
    backend = SlowMemory()
    data = payload(4 * BS)
    backend.put("obj", data)
    backend.fail_reads = {BS: errno.EIO}  # the first read of block 1 (the prefetch) fails
    reader = Reader(cache(), prefetch_window=2 * BS)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            reader.start(nursery)
            fh = open_file(reader, backend, "obj")
            assert await reader.read(fh, 0, BS) == data[:BS]
            await trio.testing.wait_all_tasks_blocked()
            assert not backend.fail_reads  # the prefetch did hit the failure ...
            assert await reader.read(fh, BS, BS) == data[BS:2 * BS]  # ... and the read fetched again
            assert await reader.read(fh, 2 * BS, 2 * BS) == data[2 * BS:]
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_read_waiting_on_a_failing_prefetch_retries() -> None:
    """A read that joined a prefetch's flight loads the block itself when the prefetch fails."""
    backend = SlowMemory()
    data = payload(4 * BS)
    backend.put("obj", data)
    backend.fail_reads = {BS: errno.EIO}
    reader = Reader(cache(), prefetch_window=1 * BS)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            reader.start(nursery)
            fh = open_file(reader, backend, "obj")
            assert await reader.read(fh, 0, BS) == data[:BS]  # starts the prefetch of block 1
            backend.gate = trio.Event()  # hold the prefetch in flight
            await trio.testing.wait_all_tasks_blocked()
            result: list[bytes] = []

            async def read_block_1() -> None:
                result.append(await reader.read(fh, BS, BS))

            nursery.start_soon(read_block_1)  # joins the prefetch's flight
            await trio.testing.wait_all_tasks_blocked()
            backend.gate.set()  # the prefetch fails with EIO
            await trio.testing.wait_all_tasks_blocked()
            assert result == [data[BS:2 * BS]]
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_blocks_are_keyed_by_mount_path_and_version() -> None:
    backend = SlowMemory()
    backend.put("obj", b"x" * 10)
    c = cache()
    reader = Reader(c)

    async def main() -> None:
        fh = open_file(reader, backend, "obj")
        await reader.read(fh, 0, 10)
        version = backend.objects["obj"][1]
        assert BlockKey("/m", "obj", version, 0) in c.ram
        other = reader.open(Mount("/other", backend, 60, 5), "obj", version, 10)  # same object, other mount
        await reader.read(other, 0, 10)
        assert BlockKey("/other", "obj", version, 0) in c.ram
        assert backend.requests == 2

    trio.run(main)


def test_prefetch_window_grows_and_prefetch_memory_is_bounded() -> None:
    """The window doubles per new block up to prefetch_window; in-flight prefetches never exceed
    prefetch_memory (a prefetch without room is skipped, and taken up again on a later read)."""
    backend = SlowMemory()
    data = payload(64 * BS)
    backend.put("obj", data)
    reader = Reader(cache(), prefetch_window=16 * BS, prefetch_memory=3 * BS)
    in_flight: list[int] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            reader.start(nursery)
            fh = open_file(reader, backend, "obj")
            backend.gate = trio.Event()  # hold every backend read
            backend.on_call.append(lambda: in_flight.append(len(reader._flights)))
            nursery.start_soon(reader.read, fh, 0, BS)
            await trio.testing.wait_all_tasks_blocked()
            assert len(reader._flights) == 2  # the read's block and one prefetched
            backend.gate.set()
            backend.gate = None
            await trio.testing.wait_all_tasks_blocked()
            for offset in range(BS, 40 * BS, BS):
                assert await reader.read(fh, offset, BS) == data[offset:offset + BS]
            await trio.testing.wait_all_tasks_blocked()
            assert max(in_flight) <= 1 + 3  # one demand read and at most three prefetches
            assert reader.prefetches_skipped.value > 0  # the memory bound did bite
            assert reader.handles[fh].window == 16
            nursery.cancel_scope.cancel()

    trio.run(main)
