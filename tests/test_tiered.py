"""BlockCache over a real RamStore and a real SsdStore: promotion, write-through and demotion,
SSD failure as a miss, both budgets held, pins across tiers, restart, build_cache, clear, stats."""

from __future__ import annotations

import logging
import os
import random

import pytest
import trio

from tests.test_stores import FailingDisk, failing_disk  # noqa: F401  (fixture)
from vfs.cache.block import BlockKey
from vfs.cache.policy import POLICIES
from vfs.cache.ram import RamStore
from vfs.cache.ssd import SsdStore
from vfs.cache.tiered import BlockCache, build_cache, make_policy

BLOCK = 4096


def key(i: int) -> BlockKey:
    return BlockKey("/mem", "obj", "v1", i)


def data(i: int) -> bytes:
    return i.to_bytes(4, "little") * (BLOCK // 4)


def make(tmp_path, ram_blocks: int = 4, ssd_blocks: int = 16, *, write_through: bool = True,  # type: ignore[no-untyped-def]
         policy: str = "lru", disk: type = None) -> BlockCache:  # type: ignore[assignment]
    ram_cap = ram_blocks * BLOCK
    ssd_cap = ssd_blocks * (BLOCK + 64)
    kwargs = {"disk": disk} if disk is not None else {}
    ssd = SsdStore(str(tmp_path / "ssd"), ssd_cap, make_policy(policy, ssd_cap), **kwargs)
    return BlockCache(BLOCK, RamStore(ram_cap, make_policy(policy, ram_cap)), ssd, write_through=write_through)


def test_ssd_hit_is_promoted_to_ram(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cache = make(tmp_path)

    async def main() -> None:
        await cache.put(key(1), data(1))
        await cache.flush()
        assert key(1) in cache.ssd  # type: ignore[operator]
        cache.ram.clear()
        assert await cache.get(key(1)) == data(1)  # from the SSD ...
        assert key(1) in cache.ram  # ... and now in RAM
        assert cache.ssd.stats.hits == 1  # type: ignore[union-attr]
        assert await cache.get(key(1)) == data(1)
        assert cache.ssd.stats.hits == 1 and cache.ram.stats.hits == 1  # type: ignore[union-attr]
        assert await cache.get(key(2)) is None

    try:
        trio.run(main)
    finally:
        cache.close()


def test_write_through_puts_every_block_on_ssd(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cache = make(tmp_path, write_through=True)

    async def main() -> None:
        await cache.put(key(1), data(1))
        await cache.flush()
        assert key(1) in cache.ram and key(1) in cache.ssd  # type: ignore[operator]

    try:
        trio.run(main)
    finally:
        cache.close()


def test_demotion_puts_ram_victims_on_ssd(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cache = make(tmp_path, ram_blocks=2, write_through=False)

    async def main() -> None:
        for i in range(3):
            await cache.put(key(i), data(i))
        await cache.flush()
        assert key(0) not in cache.ram and key(0) in cache.ssd  # type: ignore[operator]  # the LRU victim
        assert key(2) in cache.ram and key(2) not in cache.ssd  # type: ignore[operator]  # not evicted yet
        assert await cache.get(key(0)) == data(0)

    try:
        trio.run(main)
    finally:
        cache.close()


def test_queued_block_is_served_before_it_reaches_the_ssd(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cache = make(tmp_path, ram_blocks=1)

    async def main() -> None:
        assert cache.writer is not None
        cache.writer._cond.acquire()  # hold the writer: the queue cannot drain
        try:
            await cache.put(key(1), data(1))
            cache.ram.clear()
            assert cache.writer.pending(key(1)) == data(1)
        finally:
            cache.writer._cond.release()
        assert await cache.get(key(1)) == data(1)

    try:
        trio.run(main)
    finally:
        cache.close()


def test_ssd_failure_is_a_miss(tmp_path, failing_disk, caplog) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    cache = make(tmp_path, disk=failing_disk)

    async def main() -> None:
        await cache.put(key(1), data(1))
        await cache.flush()
        cache.ram.clear()
        failing_disk.failing = True
        assert await cache.get(key(1)) is None  # EIO: a miss, not an exception
        await cache.put(key(2), data(2))  # ENOSPC in the writer: logged, the block stays in RAM
        await cache.flush()
        assert key(2) in cache.ram and key(2) not in cache.ssd  # type: ignore[operator]
        assert await cache.get(key(2)) == data(2)
        failing_disk.failing = False
        await cache.put(key(3), data(3))
        await cache.flush()
        assert key(3) in cache.ssd  # type: ignore[operator]

    with caplog.at_level(logging.WARNING, logger="vfs.cache"):
        try:
            trio.run(main)
        finally:
            cache.close()
    assert cache.ssd.errors >= 1 and cache.ssd.corrupt >= 1  # type: ignore[union-attr]
    assert any("injected" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("write_through", [True, False])
@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_both_budgets_held(tmp_path, policy: str, write_through: bool) -> None:  # type: ignore[no-untyped-def]
    cache = make(tmp_path, ram_blocks=3, ssd_blocks=8, write_through=write_through, policy=policy)
    assert cache.ssd is not None
    over: list[str] = []

    async def main() -> None:
        rng = random.Random(policy)
        for _ in range(300):
            i = rng.randrange(20)
            with cache.pinned(key(i)):
                got = await cache.get(key(i))
                if got is None:
                    await cache.put(key(i), data(i))
                else:
                    assert got == data(i)
            if cache.ram.used > cache.ram.capacity:
                over.append("ram")
            if cache.ssd.used > cache.ssd.capacity:  # type: ignore[union-attr]
                over.append("ssd")
        await cache.flush()

    try:
        trio.run(main)
        assert not over
        assert cache.ram.used == sum(len(data(k.index)) for k in map(key, range(20)) if k in cache.ram)
        assert cache.ssd.used == sum(cache.ssd.charge(k, data(k.index)) for k in map(key, range(20)) if k in cache.ssd)
        stats = cache.stats()
        assert stats["ram"]["hits"] + stats["ram"]["misses"] == 300
        assert stats["ssd"]["inserts"] > 0
    finally:
        cache.close()


def test_pinned_pins_every_tier(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cache = make(tmp_path)
    try:
        with cache.pinned(key(1)):
            assert cache.ram.is_pinned(key(1)) and cache.ssd.is_pinned(key(1))  # type: ignore[union-attr]
            with cache.pinned(key(1)):
                pass
            assert cache.ram.is_pinned(key(1)) and cache.ssd.is_pinned(key(1))  # type: ignore[union-attr]
        assert not cache.ram.is_pinned(key(1)) and not cache.ssd.is_pinned(key(1))  # type: ignore[union-attr]
    finally:
        cache.close()


def test_remount_serves_from_ssd_without_the_silo(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ssd_dir = str(tmp_path / "ssd")
    cache = build_cache(BLOCK, 2 * BLOCK, "lru", ssd_dir, 64 * BLOCK, "lru")

    async def fill() -> None:
        for i in range(10):
            await cache.put(key(i), data(i))

    trio.run(fill)
    cache.close()  # writes what is queued
    again = build_cache(BLOCK, 2 * BLOCK, "lru", ssd_dir, 64 * BLOCK, "lru")

    async def read() -> list[bytes | None]:
        return [await again.get(key(i)) for i in range(10)]

    try:
        assert trio.run(read) == [data(i) for i in range(10)]
    finally:
        again.close()


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_build_cache(tmp_path, policy: str) -> None:  # type: ignore[no-untyped-def]
    cache = build_cache(BLOCK, 8 * BLOCK, policy, str(tmp_path / "ssd"), 32 * BLOCK, policy)
    try:
        stats = cache.stats()
        assert stats["ram"]["policy"] == policy and stats["ssd"]["policy"] == policy
        assert stats["ram"]["capacity"] == 8 * BLOCK and stats["ssd"]["capacity"] == 32 * BLOCK
        assert cache.block_size == BLOCK
    finally:
        cache.close()
    ram_only = build_cache(BLOCK, 8 * BLOCK, policy, None, 0, policy)
    assert ram_only.ssd is None and set(ram_only.stats()) == {"ram"}
    with pytest.raises(ValueError):
        build_cache(BLOCK, 8 * BLOCK, "no-such-policy", None, 0, "lru")


def test_clear_and_stats(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cache = make(tmp_path)

    async def main() -> None:
        for i in range(3):
            await cache.put(key(i), data(i))
        await cache.flush()
        stats = cache.stats()
        for tier in ("ram", "ssd"):
            s = stats[tier]
            assert {"hits", "misses", "bytes", "evictions", "fill", "policy", "capacity"} <= set(s)
            assert s["fill"] == s["bytes"] / s["capacity"] > 0
        assert await cache.clear("ram") == {"ram": 3}
        assert len(cache.ram) == 0 and len(cache.ssd) == 3  # type: ignore[arg-type]
        assert await cache.clear() == {"ram": 0, "ssd": 3}
        assert cache.ssd.used == 0 and await cache.get(key(0)) is None  # type: ignore[union-attr]
        with pytest.raises(ValueError):
            await cache.clear("disk")

    try:
        trio.run(main)
    finally:
        cache.close()
    assert not [f for _r, _d, fs in os.walk(tmp_path / "ssd") for f in fs if f.endswith(".val")]


class SlowSsd(SsdStore):
    """An SSD store whose writes take a while, so the writer's queue fills up."""

    def put(self, key: BlockKey, data: bytes):  # type: ignore[no-untyped-def,override]
        import time

        time.sleep(0.002)
        return super().put(key, data)


def test_a_full_writer_queue_slows_readers_and_loses_no_block(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Demotions wait for room in the SSD queue instead of being dropped: every block put stays in a tier."""
    ram_cap, ssd_cap = 2 * BLOCK, 64 * (BLOCK + 64)
    ssd = SlowSsd(str(tmp_path / "ssd"), ssd_cap, make_policy("lru", ssd_cap))
    cache = BlockCache(BLOCK, RamStore(ram_cap, make_policy("lru", ram_cap)), ssd, write_through=False,
                       queue_bytes=BLOCK)  # room for one block

    async def main() -> None:
        for i in range(40):
            await cache.put(key(i), data(i))
        await cache.flush()
        assert all(key(i) in cache.ram or key(i) in ssd for i in range(40))
        assert cache.writer is not None and cache.writer.stats.waits > 0 and cache.writer.stats.dropped == 0
        for i in range(40):
            assert await cache.get(key(i)) == data(i)

    try:
        trio.run(main)
    finally:
        cache.close()
