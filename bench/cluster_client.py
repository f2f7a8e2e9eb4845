"""Which Redis Cluster client the cluster tier uses: redis-py (RedisCluster + hiredis) from trio worker
threads against coredis (anyio; native on trio), on 4 MiB blocks.

Starts its own 3-node cluster on 127.0.0.1 (tests/redis_cluster.py), stores `--ops` 4 MiB values (SET) and
reads them back (GET, length checked) with each client at concurrency 1, 4 and 8; `--runs` runs each, the two
clients interleaved run by run. Prints MiB/s (median, min-max over the runs), the median per-op latency, and
the ratio coredis / redis-py. Every redis-server it started is stopped on exit.

    .venv/bin/python bench/cluster_client.py [--runs 5] [--ops 32] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.redis_cluster import local_cluster  # noqa: E402

BLOCK = 4 << 20
CONCURRENCY = (1, 4, 8)


async def run_ops(n_ops: int, concurrency: int, op: Callable[[int], Awaitable[None]]) -> tuple[float, list[float]]:
    """`n_ops` calls of op(i) by `concurrency` tasks; (seconds, per-op latencies)."""
    next_i = iter(range(n_ops))
    lat: list[float] = []

    async def worker() -> None:
        for i in next_i:
            t = time.perf_counter()
            await op(i)
            lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    async with trio.open_nursery() as n:
        for _ in range(concurrency):
            n.start_soon(worker)
    return time.perf_counter() - t0, lat


class RedisPy:
    name = "redis-py+hiredis (threads)"

    def __init__(self, seeds: list[tuple[str, int]], password: str, concurrency: int) -> None:
        from redis.backoff import NoBackoff
        from redis.cluster import ClusterNode, RedisCluster
        from redis.retry import Retry
        from redis.utils import HIREDIS_AVAILABLE

        assert HIREDIS_AVAILABLE, "hiredis is not installed"
        self.r = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in seeds], password=password,
                              socket_timeout=10, socket_connect_timeout=10, retry=Retry(NoBackoff(), 0))
        self.limiter = trio.CapacityLimiter(concurrency)

    async def __aenter__(self) -> "RedisPy":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.r.close()

    async def set(self, key: bytes, value: bytes) -> None:
        # A memoryview: redis-py's hiredis packer copies a bytes value into one packed buffer (~3x slower on
        # 4 MiB); with a memoryview it takes its Python packer, which sends the value as a chunk of its own.
        await trio.to_thread.run_sync(self.r.set, key, memoryview(value), limiter=self.limiter)

    async def get(self, key: bytes) -> bytes:
        return await trio.to_thread.run_sync(self.r.get, key, limiter=self.limiter)


class Coredis:
    name = "coredis (trio)"

    def __init__(self, seeds: list[tuple[str, int]], password: str, concurrency: int) -> None:
        import coredis
        from coredis.connection import TCPLocation

        self.r = coredis.RedisCluster(startup_nodes=[TCPLocation(h, p) for h, p in seeds], password=password,
                                      stream_timeout=10, connect_timeout=10)

    async def __aenter__(self) -> "Coredis":
        await self.r.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.r.__aexit__(*exc)

    async def set(self, key: bytes, value: bytes) -> None:
        await self.r.set(key, value)

    async def get(self, key: bytes) -> bytes:
        return await self.r.get(key)  # type: ignore[return-value]


async def measure(client_cls: Any, seeds: list[tuple[str, int]], password: str, c: int, ops: int,
                  values: list[bytes], run: int) -> dict[str, tuple[float, float]]:
    """One run: (MiB/s, median latency ms) of SET then GET."""
    out = {}
    keys = [f"bench:{client_cls.__name__}:{run}:{i}".encode() for i in range(ops)]
    async with client_cls(seeds, password, c) as cl:
        await cl.set(b"warm", b"x")  # connect outside the timing

        async def do_set(i: int) -> None:
            await cl.set(keys[i], values[i % len(values)])

        async def do_get(i: int) -> None:
            v = await cl.get(keys[i])
            assert v is not None and len(v) == BLOCK, f"GET {keys[i]!r}: {None if v is None else len(v)} bytes"

        for name, op in (("SET", do_set), ("GET", do_get)):
            secs, lat = await run_ops(ops, c, op)
            out[name] = (ops * BLOCK / (1 << 20) / secs, statistics.median(lat) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--ops", type=int, default=32, help="4 MiB values per run and op (default 32 = 128 MiB)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    clients = [RedisPy]
    try:
        import coredis  # noqa: F401

        clients.append(Coredis)
    except ImportError:
        print("coredis not installed: measuring redis-py only", file=sys.stderr)
    values = [os.urandom(BLOCK) for _ in range(4)]
    # results[client][op][c] = [(mib_s, lat_ms) per run]
    results: dict[str, dict[str, dict[int, list[tuple[float, float]]]]] = {
        cl.name: {"SET": {c: [] for c in CONCURRENCY}, "GET": {c: [] for c in CONCURRENCY}} for cl in clients}
    with local_cluster(Path(tempfile.mkdtemp(prefix="vfs-bench-redis-")), maxmemory="1gb") as cluster:
        for c in CONCURRENCY:
            for run in range(args.runs):
                for cl in clients:
                    r = trio.run(measure, cl, cluster.seeds, cluster.password, c, args.ops, values, run)
                    for op, v in r.items():
                        results[cl.name][op][c].append(v)
                for p in cluster.ports:  # keep memory flat between runs
                    cluster.cli(p, "flushall")
    a = clients[0].name
    b = clients[1].name if len(clients) > 1 else None
    head = f"{'op':4} {'c':>2} | {a + ' MiB/s':>34} {'p50 ms':>7}"
    if b:
        head += f" | {b + ' MiB/s':>28} {'p50 ms':>7} | {'b/a':>5}"
    print(f"4 MiB blocks, 3-node Redis Cluster on 127.0.0.1, {args.runs} runs x {args.ops} ops, median (min-max)")
    print(head)
    print("-" * len(head))

    def cell(runs: list[tuple[float, float]]) -> tuple[str, float, float]:
        mib = [x[0] for x in runs]
        return f"{statistics.median(mib):7.0f} ({min(mib):5.0f}-{max(mib):5.0f})", statistics.median(mib), \
            statistics.median(x[1] for x in runs)

    for op in ("SET", "GET"):
        for c in CONCURRENCY:
            ta, ma, la = cell(results[a][op][c])
            line = f"{op:4} {c:>2} | {ta:>34} {la:7.1f}"
            if b:
                tb, mb, lb = cell(results[b][op][c])
                line += f" | {tb:>28} {lb:7.1f} | {mb / ma:5.2f}"
            print(line)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
