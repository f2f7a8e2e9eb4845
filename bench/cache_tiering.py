"""Write-through vs demote-on-evict for the SSD tier (the choice recorded in vfs/cache/tiered.py).

Runs the real BlockCache (RamStore + SsdStore, LRU in both) in a temporary directory against an
in-memory "silo" (a dict of random blocks, each read costing --silo-ms), with a Zipf-distributed read sequence, once per mode:
- silo reads (misses in both tiers), SSD bytes written, hit ratio, reads per second;
- after a "remount" (close, reopen the SSD directory, empty RAM), how many of the hottest blocks
  must go back to the silo.
Also measures the SSD writer alone (SsdStore.put of fresh blocks, one thread).

    python bench/cache_tiering.py [--block-mib 1] [--ram-mib 32] [--ssd-mib 256] [--blocks 512] [--reads 6000]
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import tempfile
import time

import trio

from vfs.cache.block import BlockKey
from vfs.cache.policy import LRU
from vfs.cache.ram import RamStore
from vfs.cache.ssd import SsdStore
from vfs.cache.tiered import BlockCache


def zipf_sequence(n_blocks: int, n_reads: int, s: float, rng: random.Random) -> list[int]:
    weights = [1 / (rank + 1) ** s for rank in range(n_blocks)]
    order = list(range(n_blocks))
    rng.shuffle(order)  # hot blocks spread over the key space
    return [order[i] for i in rng.choices(range(n_blocks), weights, k=n_reads)]


def run_mode(write_through: bool, args: argparse.Namespace, silo: list[bytes], seq: list[int]) -> dict:
    block = len(silo[0])
    with tempfile.TemporaryDirectory() as tmp:
        ssd_dir = os.path.join(tmp, "ssd")
        cache = BlockCache(block, RamStore(args.ram_mib * 2**20, LRU()),
                           SsdStore(ssd_dir, args.ssd_mib * 2**20, LRU()), write_through=write_through)
        silo_reads = 0

        async def read(i: int) -> None:
            nonlocal silo_reads
            key = BlockKey("/bench", "object", "v1", i)
            with cache.pinned(key):
                if await cache.get(key) is None:
                    silo_reads += 1
                    await trio.sleep(args.silo_ms / 1000)  # the silo's round trip + transfer
                    await cache.put(key, silo[i])

        async def workload() -> float:
            start = time.perf_counter()
            for i in seq:
                await read(i)
            await cache.flush()
            return time.perf_counter() - start

        elapsed = trio.run(workload)
        stats = cache.stats()
        cache.close()

        hot = [i for i, _ in collections.Counter(seq).most_common(args.ram_mib * 2**20 // block)]
        cache = BlockCache(block, RamStore(args.ram_mib * 2**20, LRU()),
                           SsdStore(ssd_dir, args.ssd_mib * 2**20, LRU()), write_through=write_through)
        remount_silo_reads = 0

        async def remount() -> None:
            nonlocal remount_silo_reads
            for i in hot:
                if await cache.get(BlockKey("/bench", "object", "v1", i)) is None:
                    remount_silo_reads += 1

        trio.run(remount)
        cache.close()
    return {
        "mode": "write-through" if write_through else "demote-on-evict",
        "silo_reads": silo_reads,
        "ssd_written_mib": round(stats["ssd"]["insert_bytes"] / 2**20, 1),
        "hit_ratio": round(1 - silo_reads / len(seq), 3),
        "reads_per_s": round(len(seq) / elapsed),
        "writer_dropped": stats["ssd_writer"]["dropped"],
        "hot_blocks": len(hot),
        "remount_silo_reads_of_hot": remount_silo_reads,
    }


def writer_throughput(block: bytes, total_mib: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        store = SsdStore(os.path.join(tmp, "ssd"), 2 * total_mib * 2**20, LRU())
        n = total_mib * 2**20 // len(block)
        start = time.perf_counter()
        for i in range(n):
            store.put(BlockKey("/bench", "w", "v1", i), block)
        elapsed = time.perf_counter() - start
        store.close()
    return total_mib / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block-mib", type=float, default=1)
    parser.add_argument("--ram-mib", type=int, default=32)
    parser.add_argument("--ssd-mib", type=int, default=256)
    parser.add_argument("--blocks", type=int, default=512)
    parser.add_argument("--reads", type=int, default=6000)
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--order", choices=["wt-first", "demote-first"], default="wt-first")
    parser.add_argument("--silo-ms", type=float, default=5.0,
                        help="time per block read from the silo (5 ms = 1 MiB at 200 MiB/s, a fast S3)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    block = int(args.block_mib * 2**20)
    silo = [rng.randbytes(block) for _ in range(args.blocks)]
    seq = zipf_sequence(args.blocks, args.reads, args.zipf, rng)
    print(f"writer alone: {writer_throughput(silo[0], 256):.0f} MiB/s")
    for write_through in (args.order == "wt-first", args.order != "wt-first"):
        print(run_mode(write_through, args, silo, seq))


if __name__ == "__main__":
    main()
