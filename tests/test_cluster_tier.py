"""The cluster cache tier (vfs/cache/cluster.py) against a real 3-node Redis Cluster on 127.0.0.1: round trips
spread over the nodes, keys that differ in every field, corrupt and misplaced values, the lease between two
nodes, a node killed and restarted, a wrong password and a dead address, the switch-off and back, 8 threads."""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import redis

from tests.redis_cluster import LocalCluster, local_cluster, redis_available, redis_cluster  # noqa: F401  (fixture)
from tests.servers import free_port
from vfs.cache.block import BlockKey
from vfs.cache.cluster import HEADER, ClusterTier

pytestmark = pytest.mark.skipif(not redis_available(), reason="redis-server not installed")

BS = 64 * 1024
SILO = "s3://bucket/prefix"


def block(i: int, n: int = BS) -> bytes:
    return random.Random(i).randbytes(n)


def key(i: int, path: str = "dir/obj", version: str = "v1", mount: str = "/s3") -> BlockKey:
    return BlockKey(mount, path, version, i)


@pytest.fixture
def tier(redis_cluster: LocalCluster) -> Iterator[ClusterTier]:  # noqa: F811
    t = ClusterTier.connect(redis_cluster.url, password=redis_cluster.password, block_size=BS, timeout=0.5)
    assert t is not None
    yield t
    t.close()


@pytest.fixture
def raw(redis_cluster: LocalCluster):  # type: ignore[no-untyped-def]  # noqa: F811
    from redis.cluster import ClusterNode, RedisCluster

    r = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in redis_cluster.seeds], password=redis_cluster.password)
    yield r
    r.close()


def test_round_trip_spread_over_nodes(tier: ClusterTier, raw) -> None:  # type: ignore[no-untyped-def]
    blocks = {i: block(i, BS if i % 3 else BS // 3) for i in range(48)}
    for i, data in blocks.items():
        tier.put(key(i), SILO, data)
    for i, data in blocks.items():
        assert tier.get(key(i), SILO) == data
    ports = {raw.get_node_from_key(tier.keys(key(i), SILO)[0]).port for i in blocks}
    assert len(ports) > 1, ports
    s = tier.stats()
    assert s["stores"] == 48 and s["hits"] == 48 and s["hit_bytes"] == sum(map(len, blocks.values()))
    assert s["errors"] == 0 and s["corrupt"] == 0


def test_empty_version_never_stored(tier: ClusterTier, raw) -> None:  # type: ignore[no-untyped-def]
    k = key(0, path="unversioned", version="")
    tier.put(k, SILO, block(1))
    assert tier.get(k, SILO) is None
    assert raw.exists(tier.keys(k, SILO)[0]) == 0
    assert tier.claim_or_wait(k, SILO) is None and raw.exists(tier.keys(k, SILO)[1]) == 0
    assert tier.stats()["stores"] == 0


def test_every_field_changes_the_key(redis_cluster: LocalCluster, tier: ClusterTier) -> None:  # noqa: F811
    base = key(3, path="f", version="v1", mount="/s3")
    variants = [(key(4, path="f"), SILO), (key(3, path="g"), SILO), (key(3, path="f", version="v2"), SILO),
                (key(3, path="f", mount="/s3b"), SILO), (base, SILO + "x")]
    names = {tier.keys(base, SILO)[0]} | {tier.keys(k, s)[0] for k, s in variants}
    assert len(names) == len(variants) + 1
    assert all(n.startswith("vfs:b:{") for n in names)
    tier.put(base, SILO, block(3))
    for k, s in variants:
        assert tier.get(k, s) is None
    other = ClusterTier.connect(redis_cluster.url, password=redis_cluster.password, block_size=BS * 2)
    assert other is not None
    try:
        assert other.keys(base, SILO)[0] != tier.keys(base, SILO)[0]
        assert other.get(base, SILO) is None
    finally:
        other.close()
    assert tier.get(base, SILO) == block(3)  # still there for its own block size


def test_corrupt_values_are_misses_and_deleted(tier: ClusterTier, raw) -> None:  # type: ignore[no-untyped-def]
    data = block(7)
    good = None
    damage = {
        "flipped byte": lambda v: v[:HEADER.size + 100] + bytes([v[HEADER.size + 100] ^ 1]) + v[HEADER.size + 101:],
        "garbage": lambda v: b"not a block at all",
        "bad magic": lambda v: b"XXXX" + v[4:],
        "bad format": lambda v: v[:4] + b"\x09" + v[5:],
        "truncated": lambda v: v[:-10],
        "too long": lambda v: v + b"\0" * (BS + 1),
        "empty": lambda v: b"",
    }
    for n, (what, f) in enumerate(damage.items()):
        k = key(100 + n)
        tier.put(k, SILO, data)
        name = tier.keys(k, SILO)[0]
        good = raw.get(name)
        assert good is not None and len(good) == HEADER.size + len(data)
        raw.set(name, f(good))
        before = tier.stats()["corrupt"]
        assert tier.get(k, SILO) is None, what
        assert tier.stats()["corrupt"] == before + 1, what
        assert raw.exists(name) == 0, what
    assert tier.stats()["hits"] == 0


def test_value_under_another_keys_name_is_detected(tier: ClusterTier, raw) -> None:  # type: ignore[no-untyped-def]
    a, b = key(200), key(201)
    tier.put(a, SILO, block(200))
    raw.set(tier.keys(b, SILO)[0], raw.get(tier.keys(a, SILO)[0]))  # a valid value, wrong name
    assert tier.get(b, SILO) is None
    assert tier.stats()["corrupt"] == 1
    assert raw.exists(tier.keys(b, SILO)[0]) == 0
    assert tier.get(a, SILO) == block(200)


def test_oversized_block_not_stored(tier: ClusterTier, raw) -> None:  # type: ignore[no-untyped-def]
    k = key(300)
    tier.put(k, SILO, b"x" * (BS + 1))
    assert raw.exists(tier.keys(k, SILO)[0]) == 0
    assert tier.get(k, SILO) is None


def _tier(cluster: LocalCluster, **kw) -> ClusterTier:  # type: ignore[no-untyped-def]
    t = ClusterTier.connect(cluster.url, password=cluster.password, block_size=BS, **kw)
    assert t is not None
    return t


def _in_thread(fn, *args):  # type: ignore[no-untyped-def]
    box: dict = {}

    def run() -> None:
        try:
            box["result"] = fn(*args)
        except BaseException as e:  # noqa: BLE001
            box["error"] = e

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th, box


def test_lease_one_fetch_then_waiter_gets_the_block(redis_cluster: LocalCluster) -> None:  # noqa: F811
    a, b = _tier(redis_cluster, lease_seconds=10), _tier(redis_cluster, lease_seconds=10)
    try:
        k, data = key(400), block(400)
        assert a.get(k, SILO) is None and a.claim_or_wait(k, SILO) is None
        assert a.stats()["lease_won"] == 1
        assert b.get(k, SILO) is None
        th, box = _in_thread(b.claim_or_wait, k, SILO)
        time.sleep(0.2)
        assert th.is_alive(), "B did not wait for A's lease"
        a.put(k, SILO, data)
        th.join(15)
        assert not th.is_alive() and "error" not in box
        assert box["result"] == data
        s = b.stats()
        assert s["lease_waits"] == 1 and s["lease_wait_hits"] == 1 and s["fallbacks"] == 0 and s["lease_won"] == 0
        # the lease is gone: the next claim of that block (after a miss elsewhere) wins at once
        assert b.claim_or_wait(key(401), SILO) is None and b.stats()["lease_won"] == 1
        b.release(key(401), SILO)
    finally:
        a.close()
        b.close()


def test_lease_expires_without_a_block(redis_cluster: LocalCluster) -> None:  # noqa: F811
    a, b = _tier(redis_cluster, lease_seconds=0.3), _tier(redis_cluster, lease_seconds=0.3)
    try:
        k = key(410)
        assert a.claim_or_wait(k, SILO) is None  # A won and never puts
        th, box = _in_thread(b.claim_or_wait, k, SILO)
        th.join(20)
        assert not th.is_alive() and box.get("result", b"x") is None
        s = b.stats()
        assert s["lease_waits"] == 1 and s["lease_expired"] == 1 and s["fallbacks"] == 1 and s["lease_wait_hits"] == 0
    finally:
        a.close()
        b.close()


def test_release_lets_the_waiter_fall_back_at_once(redis_cluster: LocalCluster) -> None:  # noqa: F811
    a, b = _tier(redis_cluster, lease_seconds=60), _tier(redis_cluster, lease_seconds=60)
    try:
        k = key(420)
        assert a.claim_or_wait(k, SILO) is None
        th, box = _in_thread(b.claim_or_wait, k, SILO)
        time.sleep(0.2)
        assert th.is_alive()
        a.release(k, SILO)  # the silo fetch failed
        th.join(20)  # far less than the 60 s lease
        assert not th.is_alive() and box.get("result", b"x") is None
        assert b.stats()["fallbacks"] == 1 and b.stats()["lease_expired"] == 1
    finally:
        a.close()
        b.close()


def test_release_does_not_drop_another_nodes_lease(redis_cluster: LocalCluster, raw) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    a, b = _tier(redis_cluster, lease_seconds=0.2), _tier(redis_cluster, lease_seconds=30)
    try:
        k = key(430)
        assert a.claim_or_wait(k, SILO) is None
        time.sleep(0.5)  # A's lease expired
        assert b.claim_or_wait(k, SILO) is None and b.stats()["lease_won"] == 1
        a.put(k, SILO, block(430))  # A is late: its block is stored, B's lease stays
        assert raw.exists(b.keys(k, SILO)[1]) == 1
        b.release(k, SILO)
        assert raw.exists(b.keys(k, SILO)[1]) == 0
    finally:
        a.close()
        b.close()


def test_eight_threads_byte_exact(tier: ClusterTier) -> None:
    errors: list[BaseException] = []
    wrong: list[tuple[int, int]] = []
    shared = {i: block(1000 + i) for i in range(8)}

    def work(t: int) -> None:
        try:
            for j in range(25):
                i = 500 + t * 100 + j
                data = block(i, BS // 2)
                tier.put(key(i), SILO, data)
                got = tier.get(key(i), SILO)
                if got != data:
                    wrong.append((t, j))
                s = j % 8
                tier.put(key(2000 + s), SILO, shared[s])
                got = tier.get(key(2000 + s), SILO)
                if got is not None and got != shared[s]:
                    wrong.append((t, -s))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors and not wrong
    assert tier.stats()["errors"] == 0 and tier.stats()["corrupt"] == 0


def test_full_node_write_is_counted_not_raised(redis_cluster: LocalCluster, tier: ClusterTier) -> None:  # noqa: F811
    for p in redis_cluster.ports:
        redis_cluster.cli(p, "config", "set", "maxmemory-policy", "noeviction")
        redis_cluster.cli(p, "config", "set", "maxmemory", "1")
    try:
        before = tier.stats()["errors"]
        tier.put(key(0, path="oom"), SILO, block(600))  # OOM command not allowed
        assert tier.stats()["errors"] == before + 1
        assert tier.get(key(0, path="oom"), SILO) is None
    finally:
        for p in redis_cluster.ports:
            redis_cluster.cli(p, "config", "set", "maxmemory", "64mb")
            redis_cluster.cli(p, "config", "set", "maxmemory-policy", "allkeys-lru")


def test_wrong_password_unreachable_and_bad_url(redis_cluster: LocalCluster, caplog) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    secret = "Sup3r-s3cret-PW"
    with caplog.at_level(logging.INFO, logger="vfs.cache.cluster"):
        assert ClusterTier.connect(redis_cluster.url, password=secret, block_size=BS) is None
        assert ClusterTier.connect(f"redis://:{secret}@127.0.0.1:{redis_cluster.ports[0]}", block_size=BS) is None
        assert ClusterTier.connect(f"redis://127.0.0.1:{free_port()}", password=secret, block_size=BS) is None
        assert ClusterTier.connect("http://127.0.0.1:1", password=secret, block_size=BS) is None
        assert ClusterTier.connect("redis://127.0.0.1:notaport", password=secret, block_size=BS) is None
    lines = [r for r in caplog.records if r.name == "vfs.cache.cluster"]
    assert len(lines) == 5, [r.getMessage() for r in lines]
    for r in lines:
        assert r.levelno == logging.WARNING and r.exc_info is None
        assert secret not in r.getMessage() and "\n" not in r.getMessage()
    msgs = [r.getMessage() for r in lines]
    assert "password" in msgs[0].lower() or "auth" in msgs[0].lower(), msgs[0]
    assert "refused" in msgs[2].lower() or "connect" in msgs[2].lower(), msgs[2]
    assert "bad url" in msgs[3] and "bad url" in msgs[4]


def test_node_killed_and_restarted(redis_cluster: LocalCluster, raw) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    t = _tier(redis_cluster, timeout=0.5, fail_limit=3, off_seconds=0.5)
    victim = 1
    try:
        blocks = {i: block(i) for i in range(700, 730)}
        on_victim = [i for i in blocks if raw.get_node_from_key(t.keys(key(i), SILO)[0]).port == redis_cluster.ports[victim]]
        assert on_victim
        for i, d in blocks.items():
            t.put(key(i), SILO, d)
        redis_cluster.kill(victim)
        for _ in range(3):
            for i, d in blocks.items():
                got = t.get(key(i), SILO)
                assert got is None or got == d
                if got is None:
                    t.claim_or_wait(key(i), SILO)
                    t.put(key(i), SILO, d)
        s = t.stats()
        assert s["errors"] > 0 and s["fallbacks"] > 0
        redis_cluster.restart(victim)
        i = on_victim[0]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            t.put(key(i), SILO, blocks[i])
            if t.get(key(i), SILO) == blocks[i]:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"no hit on the restarted node's slots: {t.stats()}")
        assert not t.stats()["off"]
    finally:
        t.close()


def test_slow_node_costs_one_timeout_per_call(redis_cluster: LocalCluster, raw) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """A node that accepts but never answers (SIGSTOP): each call gives up after one `timeout`, not after
    redis-py's default retries and refreshes (4 attempts of 1 s would be >= 4 s)."""
    t = _tier(redis_cluster, timeout=1.0, fail_limit=1000)
    victim = 2
    proc = redis_cluster.procs[victim]
    assert proc is not None
    try:
        ks = [key(i, path="slow") for i in range(12)]
        for i, k in enumerate(ks):
            t.put(k, SILO, block(i))
        slow = [k for k in ks if raw.get_node_from_key(t.keys(k, SILO)[0]).port == redis_cluster.ports[victim]]
        assert slow
        os.kill(proc.pid, signal.SIGSTOP)
        worst = 0.0
        for k in ks:
            start = time.monotonic()
            got = t.get(k, SILO)
            worst = max(worst, time.monotonic() - start)
            assert got is None or got == block(ks.index(k))
            assert (got is None) == (k in slow)
        s = t.stats()
        assert s["errors"] == len(slow) and s["fallbacks"] == len(slow), s
        assert worst < 3.5, worst
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        t.close()
    redis_cluster.wait_all_up()


def test_switch_off_and_back(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    with local_cluster(tmp_path / "redis") as cluster:
        t = _tier(cluster, timeout=0.5, fail_limit=3, off_seconds=1.0)
        try:
            k, data = key(800), block(800)
            t.put(k, SILO, data)
            assert t.get(k, SILO) == data
            for i in range(3):
                cluster.kill(i)
            with caplog.at_level(logging.INFO, logger="vfs.cache.cluster"):
                start = time.monotonic()
                for _ in range(100):
                    assert t.get(k, SILO) is None
                    assert t.claim_or_wait(k, SILO) is None
                took = time.monotonic() - start
                s = t.stats()
                assert s["off"] and s["switched_off"] == 1
                assert s["errors"] < 10, s  # the rest returned at once, without Redis
                assert s["fallbacks"] == 100, s  # one per read: get() and its claim_or_wait() count once
                assert took < 10, took
                offs = [r for r in caplog.records if "cluster tier off for" in r.getMessage()]
                assert len(offs) == 1 and offs[0].levelno == logging.WARNING and offs[0].exc_info is None
                assert cluster.password not in offs[0].getMessage()
                for i in range(3):
                    cluster.restart(i, wait=False)
                cluster.wait_all_up()
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    t.put(k, SILO, data)  # the restarted nodes kept nothing
                    if t.get(k, SILO) == data:
                        break
                    time.sleep(0.2)
                else:
                    pytest.fail(f"tier not back: {t.stats()}")
            backs = [r for r in caplog.records if r.getMessage() == "cluster tier back"]
            assert len(backs) == 1 and backs[0].levelno == logging.INFO
            assert not t.stats()["off"] and t.stats()["switched_off"] == 1
        finally:
            t.close()


def test_the_documented_redis_conf_is_accepted_by_redis_server(tmp_path: Path) -> None:
    """docs/redis-cache.conf, as the README tells people to use it, starts a cluster-enabled cache node."""
    from tests.redis_cluster import cluster_port
    from tests.servers import HOST, server

    port = cluster_port(set())  # its cluster bus port, +10000, must be free and below 65536 too
    text = (Path(__file__).parent.parent / "docs" / "redis-cache.conf").read_text()
    text = text.replace("port 7000", f"port {port}").replace("bind 0.0.0.0", f"bind {HOST}")
    (tmp_path / "redis.conf").write_text(text + f"\ndir {tmp_path}\n")
    with server(["redis-server", str(tmp_path / "redis.conf")], port, tmp_path / "redis.log"):
        node = redis.Redis(host=HOST, port=port, password="CHANGE-ME")
        try:
            got = {k: node.config_get(k)[k] for k in ("maxmemory-policy", "save", "appendonly", "cluster-require-full-coverage")}
            assert got == {"maxmemory-policy": "allkeys-lru", "save": "", "appendonly": "no",
                           "cluster-require-full-coverage": "no"}
            assert node.info("cluster")["cluster_enabled"] == 1
        finally:
            node.close()
