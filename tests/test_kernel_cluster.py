"""The cluster tier through the kernel: three vfs mounts (own mountpoints, own SSD directories) over one
S3 silo (moto) share a real 3-node Redis Cluster started by the test (tests/redis_cluster.py).

- the three read the same dataset at once: the silo serves it about once (the duplicate share is
  measured and printed), every byte is right;
- a Redis node killed with SIGKILL during reads: reads go on, 0 wrong bytes, fallbacks counted; the
  node's return is noticed (hits again);
- a value corrupted in Redis by the test: detected, refetched from the silo, never served;
- a wrong password and an unreachable cluster at mount time: the mount works without the tier and says
  why in one line.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import redis

from tests.kernel import VfsMount, fuse_available, read_file, start_mount, stop_mount, vfs_mount, wait_until
from tests.redis_cluster import LocalCluster, redis_available, redis_cluster  # noqa: F401
from tests.silos.s3 import MotoS3, moto_server
from vfs.control import STATS_REFRESH

pytestmark = [pytest.mark.kernel, pytest.mark.skipif(fuse_available() is not None, reason=str(fuse_available())),
              pytest.mark.skipif(not redis_available(), reason="redis-server not installed (scripts/setup installs it)")]

BUCKET = "shared"
BLOCK = 128 * 1024
rnd = random.Random(11)
DATASET = {f"train/{i:03d}.bin": rnd.randbytes(rnd.randint(BLOCK // 2, 5 * BLOCK)) for i in range(48)}
DATASET_BYTES = sum(map(len, DATASET.values()))
SETTLE = 90.0


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    with moto_server(tmp_path_factory.mktemp("moto")) as m:
        client = m.client()
        client.create_bucket(Bucket=BUCKET)
        for key, data in DATASET.items():
            client.put_object(Bucket=BUCKET, Key=key, Body=data)
        yield m


def config(moto: MotoS3, tmp: Path, name: str, cluster: str, password: str, **cache: Any) -> dict[str, Any]:
    return {
        "cache": {"block_size": BLOCK, "ram_size": 64 * BLOCK, "ssd_dir": str(tmp / f"{name}-ssd"),
                  "ssd_size": 512 * BLOCK, "cluster": cluster, "cluster_password": password,
                  "cluster_timeout": 0.5, "cluster_lease": 10.0, **cache},
        "metadata": {"ttl": 600.0},
        "fuse": {"read_only": True},
        "mount": [{"path": "/s3", **moto.options(bucket=BUCKET)}],
    }


def stats(m: VfsMount) -> dict[str, Any]:
    """The mount's stats now (one rendering of .vfs/stats is served for STATS_REFRESH seconds)."""
    time.sleep(STATS_REFRESH + 0.1)
    return json.loads(read_file(m.path / ".vfs" / "stats"))


def silo_bytes(m: VfsMount) -> int:
    return stats(m)["backends"]["/s3"]["bytes"]


def read_all(m: VfsMount, order: list[str]) -> dict[str, bool]:
    return {key: read_file(m.path / "s3" / key) == DATASET[key] for key in order}


def vfs_cli(*args: object) -> str:
    done = subprocess.run([sys.executable, "-m", "vfs", *map(str, args)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def clear_local(m: VfsMount) -> None:
    """Drop the mount's RAM and SSD tiers and the kernel's pages of the dataset (the cluster tier keeps
    its blocks): the next read of a file reaches vfs and its lookups go past the local tiers."""
    done = subprocess.run([sys.executable, "-m", "vfs", "cache", "clear", "--mount", str(m.path)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    wait_until(lambda: all(t["blocks"] == 0 for name, t in stats(m)["tiers"].items() if name in ("ram", "ssd")),
               SETTLE, "the local tiers to be cleared", interval=0.2)
    for key in DATASET:
        fd = os.open(m.path / "s3" / key, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def flush_cluster(cluster: LocalCluster) -> None:
    for port in cluster.ports:
        cluster.cli(port, "flushall")


def vfs_keys(cluster: LocalCluster) -> list[tuple[int, str]]:
    """(port, key) of every block value in the cluster."""
    found = []
    for port in cluster.ports:
        node = redis.Redis(host="127.0.0.1", port=port, password=cluster.password)
        try:
            found += [(port, k.decode()) for k in node.scan_iter(match="vfs:b:*", count=1000)]
        finally:
            node.close()
    return found


@pytest.fixture
def three(moto: MotoS3, redis_cluster: LocalCluster, tmp_path: Path) -> Iterator[list[VfsMount]]:  # noqa: F811
    flush_cluster(redis_cluster)
    mounts: list[VfsMount] = []
    try:
        for name in ("node1", "node2", "node3"):
            mounts.append(start_mount(tmp_path, config(moto, tmp_path, name, redis_cluster.url, redis_cluster.password),
                                      name=name))
        yield mounts
    finally:
        for m in mounts:
            stop_mount(m)


def test_three_nodes_download_the_dataset_about_once(three: list[VfsMount], redis_cluster: LocalCluster) -> None:  # noqa: F811
    keys = sorted(DATASET)
    orders = [keys, keys[::-1], random.Random(3).sample(keys, len(keys))]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        results = list(pool.map(read_all, three, orders))
    assert all(all(r.values()) for r in results), "every byte right on every node"
    fetched = sum(silo_bytes(m) for m in three)
    tiers = [stats(m)["tiers"]["cluster"] for m in three]
    duplicate = fetched / DATASET_BYTES - 1
    print(f"\n3 nodes, {DATASET_BYTES} bytes each: the silo served {fetched} bytes ({fetched / DATASET_BYTES:.3f}x "
          f"the dataset, duplicate share {duplicate:.1%}); cluster hits {[t['hits'] for t in tiers]}, lease waits "
          f"{[t['lease_waits'] for t in tiers]}, leases expired {[t['lease_expired'] for t in tiers]}, "
          f"fallbacks {[t['fallbacks'] for t in tiers]}")
    assert fetched >= DATASET_BYTES
    assert fetched <= 1.5 * DATASET_BYTES, "without the tier the silo would serve 3x the dataset"
    assert sum(t["hits"] + t["lease_wait_hits"] for t in tiers) > 0
    assert all(t["corrupt"] == 0 and t["errors"] == 0 for t in tiers), tiers
    shown = vfs_cli("stats", three[0].path)
    assert "cluster tier: online" in shown and "\ncluster " in shown, shown
    status = json.loads(vfs_cli("status", "--json", three[1].path))
    assert status["cluster"]["online"] is True and status["cluster"]["hits"] == tiers[1]["hits"], status
    assert "cluster tier: online" in vfs_cli("status", three[2].path)
    # A fourth read, after each node drops its local tiers, comes from the cluster: no silo byte.
    before = [silo_bytes(m) for m in three]
    for m in three:
        clear_local(m)
    assert read_all(three[0], keys) == dict.fromkeys(keys, True)
    assert [silo_bytes(m) for m in three] == before


def test_a_redis_node_killed_during_reads(three: list[VfsMount], redis_cluster: LocalCluster) -> None:  # noqa: F811
    keys = sorted(DATASET)
    assert all(read_all(three[0], keys).values())  # the cluster holds the dataset
    redis_cluster.kill(1)
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            results = list(pool.map(read_all, three[1:], [keys, keys[::-1]]))
        assert all(all(r.values()) for r in results), "0 wrong bytes with a node gone"
        tiers = [stats(m)["tiers"]["cluster"] for m in three[1:]]
        assert all(t["fallbacks"] > 0 and t["errors"] > 0 for t in tiers), tiers
        assert all(m.alive() for m in three)
    finally:
        redis_cluster.restart(1)
    # The tier notices the node's return by itself (after its off time, if it switched off): new blocks are
    # stored on every node again and read back as hits.
    m = three[2]
    clear_local(m)
    hits = stats(m)["tiers"]["cluster"]["hits"]

    def hits_again() -> bool:
        assert all(read_all(m, keys).values())
        clear_local(m)
        return stats(m)["tiers"]["cluster"]["hits"] >= hits + len(keys)

    wait_until(hits_again, SETTLE, "cluster hits after the node's return", interval=1.0)


def test_a_corrupted_value_is_never_served(three: list[VfsMount], redis_cluster: LocalCluster) -> None:  # noqa: F811
    m = three[0]
    keys = sorted(DATASET)
    assert all(read_all(m, keys).values())
    blocks = sum(-(-len(data) // BLOCK) for data in DATASET.values())
    # Offers reach the cluster from a thread of their own, after the reads: wait for all of them.
    wait_until(lambda: len(vfs_keys(redis_cluster)) == blocks, SETTLE, "every block to reach the cluster", interval=0.2)
    stored = vfs_keys(redis_cluster)
    for port, key in stored:  # flip one byte in the middle of every stored value
        node = redis.Redis(host="127.0.0.1", port=port, password=redis_cluster.password)
        value = bytearray(node.get(key))
        value[len(value) // 2] ^= 0x40
        node.set(key, bytes(value))
        node.close()
    other = three[1]
    before = silo_bytes(other)
    assert all(read_all(other, keys).values()), "corrupt values are misses: the bytes come from the silo"
    tier = stats(other)["tiers"]["cluster"]
    assert tier["corrupt"] == blocks and tier["hits"] == 0, tier
    assert silo_bytes(other) - before == DATASET_BYTES


@pytest.mark.parametrize("case", ["wrong_password", "unreachable"])
def test_a_cluster_that_cannot_be_used_at_mount_time(moto: MotoS3, redis_cluster: LocalCluster, tmp_path: Path,  # noqa: F811
                                                       case: str) -> None:
    if case == "wrong_password":
        url, password = redis_cluster.url, "not-the-password"
    else:
        url, password = "redis://127.0.0.1:1", redis_cluster.password
    with vfs_mount(tmp_path, config(moto, tmp_path, "alone", url, password)) as m:
        assert all(read_all(m, sorted(DATASET)[:5]).values())
        assert "cluster" not in stats(m)["tiers"]
        lines = [line for line in m.log_text().splitlines() if "cluster tier" in line]
        assert len(lines) == 1, lines
        assert password not in m.log_text() and "Traceback" not in m.log_text()
        assert ("password" in lines[0].lower() or "auth" in lines[0].lower()) if case == "wrong_password" \
            else ("127.0.0.1:1" in lines[0]), lines[0]
