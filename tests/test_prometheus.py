"""Prometheus metrics of a real mount: scraped over HTTP, parsed with prometheus_client's parser;
names, types and labels follow the conventions, counters move as reads happen, and no label holds
a file path. (That `.vfs/stats` renders the same children is tests/test_metrics.py's.)"""

from __future__ import annotations

import json
import os
import random
import threading
import urllib.request
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.kernel import VfsMount, read_file, vfs_mount
from tests.silos.local import write_tree
from vfs.metrics import Registry
from vfs.prometheus import MetricsServer, parse_addr

pytestmark = pytest.mark.kernel

BLOCK = 256 * 1024
FILES = {"big.bin": random.Random(5).randbytes(3 * BLOCK + 5), "dir/small.txt": b"small\n"}
LABELS = {"tier", "silo", "operation"}  # and vfs_build_info: version, python


def stats(m: VfsMount) -> dict:
    return json.loads(read_file(m.path / ".vfs" / "stats"))


def scrape(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=30) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        return {f.name: f for f in text_string_to_metric_families(r.read().decode())}


def value(families: dict, sample: str, **labels: str) -> float:
    family = families[sample.removesuffix("_total").removesuffix("_count").removesuffix("_sum")]
    found = [s.value for s in family.samples if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (sample, labels, family.samples)
    return found[0]


def test_parse_addr() -> None:
    assert parse_addr("127.0.0.1:9567") == ("127.0.0.1", 9567)
    assert parse_addr(":0") == ("127.0.0.1", 0)
    assert parse_addr("[::1]:9567") == ("::1", 9567)
    with pytest.raises(ValueError):
        parse_addr("9567x")


def test_a_scrape_reads_the_registry_on_the_trio_thread_and_a_taken_port_is_refused() -> None:
    registry = Registry()
    hits = registry.counter("cache_hits", "h", ("tier",), ("tiers", "{tier}", "hits"))
    threads: list[str] = []
    registry.gauge("probe", "which thread renders", ()).labels().set_function(
        lambda: threads.append(threading.current_thread().name) or 1)

    async def main() -> None:
        server = MetricsServer("127.0.0.1:0", registry, trio.lowlevel.current_trio_token())
        try:
            hits.labels("ram").inc(7)
            families = await trio.to_thread.run_sync(scrape, server.url)
            assert value(families, "vfs_cache_hits_total", tier="ram") == 7
            assert threads == [threading.current_thread().name]  # rendered here, not in the server's thread
            with pytest.raises(OSError):
                MetricsServer(f"127.0.0.1:{server.server.server_port}", registry, trio.lowlevel.current_trio_token())
        finally:
            await trio.to_thread.run_sync(server.close)

    trio.run(main)


def test_scrape_a_mount(tmp_path: Path) -> None:
    write_tree(tmp_path / "silo", FILES, [])
    cfg = {"metrics": {"addr": "127.0.0.1:0"},  # the port the mount got is in .vfs/stats
           "cache": {"block_size": BLOCK, "ram_size": 16 * BLOCK, "ssd_dir": str(tmp_path / "ssd"), "ssd_size": 64 * BLOCK},
           "mount": [{"path": "/data", "backend": "local", "root": str(tmp_path / "silo")}], "write": {"mode": "back"}}
    with vfs_mount(tmp_path, cfg) as m:
        url = stats(m)["metrics_url"]
        before = scrape(url)
        for name, data in FILES.items():
            assert read_file(m.path / "data" / name) == data
        assert read_file(m.path / "data/big.bin") == FILES["big.bin"]
        after = scrape(url)

    types = {name: f.type for name, f in after.items()}
    assert types["vfs_build_info"] == "gauge"
    for name in ("vfs_cache_hits", "vfs_cache_misses", "vfs_cache_evictions", "vfs_backend_read_bytes",
                 "vfs_backend_errors", "vfs_backend_retries", "vfs_commits"):
        assert types[name] == "counter", name
    for name in ("vfs_cache_used_bytes", "vfs_cache_fill_ratio", "vfs_uploads_pending", "vfs_reader_open_handles"):
        assert types[name] == "gauge", name
    assert types["vfs_backend_request_duration_seconds"] == types["vfs_fuse_request_duration_seconds"] == "histogram"
    assert all(name.startswith("vfs_") for name in after)

    # Counters moved with the reads.
    read = value(after, "vfs_backend_read_bytes_total", silo="/data")
    assert read - value(before, "vfs_backend_read_bytes_total", silo="/data") == sum(map(len, FILES.values()))
    gets = value(after, "vfs_backend_request_duration_seconds_count", silo="/data", operation="read_range")
    assert gets - value(before, "vfs_backend_request_duration_seconds_count", silo="/data", operation="read_range") >= 4
    assert value(after, "vfs_backend_request_duration_seconds_sum", silo="/data", operation="read_range") > 0
    lookups = value(after, "vfs_fuse_request_duration_seconds_count", operation="lookup")
    assert lookups > value(before, "vfs_fuse_request_duration_seconds_count", operation="lookup")
    assert value(after, "vfs_fuse_request_duration_seconds_count", operation="read") >= 1
    assert value(after, "vfs_cache_misses_total", tier="ram") >= 4
    assert value(after, "vfs_cache_capacity_bytes", tier="ram") == 16 * BLOCK
    buckets = [x for x in after["vfs_fuse_request_duration_seconds"].samples
               if x.name.endswith("_bucket") and x.labels["operation"] == "lookup"]
    assert buckets[-1].labels["le"] == "+Inf" and buckets[-1].value == lookups

    # Labels are bounded: tier, silo (a mount path), operation; no file path in any label.
    for family in after.values():
        for sample in family.samples:
            allowed = {"version", "python"} if family.name == "vfs_build_info" else LABELS
            assert set(sample.labels) - {"le"} <= allowed, sample
            for label, v in sample.labels.items():
                assert not any(os.path.basename(f) in v for f in FILES), sample
                if label == "silo":
                    assert v == "/data", sample
