"""The metrics registry (vfs/metrics.py): typed families with bounded labels, the `.vfs/stats`
snapshot and the samples Prometheus gets come from the same children; and a namespace over a memory
silo registers the figures of every owner (tiers, reader, backends, commits)."""

from __future__ import annotations

import json

import pytest
import trio

from vfs.cache.tiered import build_cache
from vfs.metrics import MAX_CHILDREN, Counter, Histogram, Registry
from vfs.mount_table import Mount, MountTable
from vfs.mounts.memory import MemoryBackend
from vfs.namespace import Namespace
from vfs.observe import format_stats
from vfs.reader import Reader
from vfs.staging import StagingArea

BS = 4096


def test_histogram_buckets_are_cumulative_with_le_bounds() -> None:
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 3.0):
        h.observe(v)
    got = h.get()
    assert got.buckets == [(0.1, 2), (1.0, 3), (float("inf"), 4)]
    assert (got.count, round(got.sum, 6)) == (4, 3.65)


def test_snapshot_nests_by_label_and_sums_labels_it_leaves_out() -> None:
    r = Registry()
    calls = r.histogram("calls_seconds", "h", ("silo", "operation"), stats=("backends", "{silo}", "requests"),
                        stats_sum=("backends", "{silo}", "seconds"))
    calls.labels("/a", "stat").observe(0.5)
    calls.labels("/a", "list_dir").observe(0.25)
    calls.labels("/b", "stat").observe(1.0)
    hits = r.counter("hits", "c", ("tier",), ("tiers", "{tier}", "hits"))
    hits.labels("ram").inc(3)
    r.gauge("used_bytes", "g", ("tier",), ("tiers", "{tier}", "used")).labels("ram").set_function(lambda: 42)
    r.counter("hidden", "Prometheus only", ()).labels().inc()
    r.static(("tiers", "ram", "policy"), "lru")
    s = r.snapshot()
    assert s["backends"] == {"/a": {"requests": 2, "seconds": 0.75}, "/b": {"requests": 1, "seconds": 1.0}}
    assert s["tiers"] == {"ram": {"hits": 3, "used": 42, "policy": "lru"}}
    assert "hidden" not in json.dumps(s)
    by_name = {m.name: m for m in r.collect()}
    assert by_name["hits"].samples == [(("ram",), 3)] and by_name["used_bytes"].samples == [(("ram",), 42)]
    assert by_name["hidden"].samples == [((), 1)]
    assert by_name["build_info"].kind == "gauge" and by_name["build_info"].labelnames == ("version", "python")


def test_labels_are_checked_and_bounded() -> None:
    r = Registry()
    fam = r.counter("ops", "c", ("operation",), ("ops", "{operation}"))
    with pytest.raises(ValueError):
        fam.labels("a", "b")  # one label, two values
    with pytest.raises(ValueError):
        r.gauge("ops", "g", ("operation",))  # same name, another kind
    with pytest.raises(ValueError):
        r.counter("x", "c", ("tier",), ("x", "{silo}"))  # the path names a label the family lacks
    assert r.counter("ops", "c", ("operation",), ("ops", "{operation}")) is fam  # registered again: the same family
    for i in range(MAX_CHILDREN):
        fam.labels(str(i))
    with pytest.raises(ValueError, match="not bounded"):
        fam.labels("/some/file/path")
    own = Counter()
    own.inc(5)
    assert r.counter("own", "c", ("silo",), ("own", "{silo}")).attach(("/m",), own) is own
    assert r.snapshot()["own"] == {"/m": 5}


def test_a_namespace_registers_every_owner_and_stats_render_from_the_registry(tmp_path) -> None:
    backend = MemoryBackend()
    backend.put("d/f.bin", b"x" * (3 * BS))
    table = MountTable([Mount("/m", backend, 60.0, 2.0, write_mode="back")])
    reader = Reader(build_cache(BS, 64 * BS, "lru", str(tmp_path / "ssd"), 256 * BS, "lru"))
    ns = Namespace(table, reader, default_ttl=60.0, staging=StagingArea(str(tmp_path / "staging"), 1 << 20))

    async def main() -> None:
        meta = await backend.stat("d/f.bin")
        fh = reader.open(table.by_path["/m"], "d/f.bin", meta.version, meta.size)
        assert await reader.read(fh, 0, 3 * BS) == b"x" * (3 * BS)
        assert await reader.read(fh, 0, BS) == b"x" * BS  # a RAM hit
        reader.release(fh)

    trio.run(main)
    s = ns.stats()
    assert s["backends"]["/m"]["silo"] == backend.describe()
    assert s["backends"]["/m"]["bytes"] == 3 * BS and s["backends"]["/m"]["requests"] == 4  # stat + 3 blocks
    assert s["tiers"]["ram"]["hits"] >= 1 and s["tiers"]["ram"]["misses"] >= 3 and s["tiers"]["ram"]["used"] == 3 * BS
    assert s["tiers"]["ram"]["policy"] and s["tiers"]["ssd"]["directory"] == str(tmp_path / "ssd")
    assert s["reader"] == {"block_size": BS, "open_handles": 0, "blocks_in_flight": 0, "prefetches": 0,
                           "prefetches_skipped": 0}
    assert s["writes"]["pending_commits"] == 0 and s["writes"]["staging_capacity"] == 1 << 20
    names = {m.name for m in ns.metrics.collect()}
    assert {"cache_hits", "cache_fill_ratio", "backend_request_duration_seconds", "backend_read_bytes",
            "uploads_pending", "commit_failures", "reader_prefetches", "ssd_writer_written"} <= names
    text = format_stats(s)
    assert "/m" in text and "ram" in text and "hit ratio" in text
    reader.close()
