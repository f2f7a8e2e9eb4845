"""The tiered cache through the real kernel: `.vfs/stats`, `vfs stats`, the SSD tier surviving a
remount (the silo is not read again), `vfs cache clear/info`, and trace recording for the simulator."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kernel import VfsMount, read_file, vfs_mount, wait_until
from tests.silos.local import write_tree

pytestmark = pytest.mark.kernel

BLOCK = 256 * 1024
rnd = random.Random(3)
FILES = {"a.bin": rnd.randbytes(5 * BLOCK + 17), "b.bin": rnd.randbytes(3 * BLOCK), "small.txt": b"small\n"}


def vfs(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vfs", *map(str, args)], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parent.parent)


def stats(m: VfsMount) -> dict:
    return json.loads(read_file(m.path / ".vfs" / "stats"))


def config(tmp: Path, **cache: object) -> dict:
    return {
        "cache": {"block_size": BLOCK, "ram_size": 4 * BLOCK, "ram_policy": "sieve",
                  "ssd_dir": str(tmp / "ssd"), "ssd_size": 64 * BLOCK, "ssd_policy": "s3fifo", **cache},
        "mount": [{"path": "/data", "backend": "local", "root": str(tmp / "silo")}],
    }


def test_stats_file_is_hidden_but_readable(tmp_path: Path) -> None:
    write_tree(tmp_path / "silo", FILES, [])
    with vfs_mount(tmp_path, config(tmp_path)) as m:
        assert os.listdir(m.path) == ["data"]
        assert read_file(m.path / "data/a.bin") == FILES["a.bin"]
        s = stats(m)
        assert s["pid"] == m.proc.pid
        assert set(s["tiers"]) >= {"ram", "ssd"}
        assert s["tiers"]["ram"]["capacity"] == 4 * BLOCK and s["tiers"]["ram"]["used"] <= 4 * BLOCK
        assert s["backends"]["/data"]["bytes"] == len(FILES["a.bin"])
        assert os.listdir(m.path / ".vfs") == ["stats"]
        done = vfs("stats", m.path)
        assert done.returncode == 0 and "ram" in done.stdout and "/data" in done.stdout, done.stderr


def test_second_read_hits_the_cache_and_a_remount_reads_nothing_from_the_silo(tmp_path: Path) -> None:
    write_tree(tmp_path / "silo", FILES, [])
    cfg = config(tmp_path)
    with vfs_mount(tmp_path, cfg) as m:
        for name in FILES:
            assert read_file(m.path / "data" / name) == FILES[name]
        first = stats(m)["backends"]["/data"]["bytes"]
        assert first == sum(map(len, FILES.values()))
        subprocess.run(["sh", "-c", "echo 3 > /proc/sys/vm/drop_caches"], capture_output=True)  # where permitted
        for name in FILES:
            assert read_file(m.path / "data" / name) == FILES[name]
        s = stats(m)
        assert s["backends"]["/data"]["bytes"] == first  # nothing read twice from the silo
        assert s["tiers"]["ram"]["used"] <= 4 * BLOCK and s["tiers"]["ssd"]["used"] <= 64 * BLOCK
    info = vfs("cache", "info", "--dir", tmp_path / "ssd", "--json")
    assert info.returncode == 0 and json.loads(info.stdout)["blocks"] >= 5 + 3 + 1
    with vfs_mount(tmp_path, cfg) as again:
        for name in FILES:
            assert read_file(again.path / "data" / name) == FILES[name]
        s = stats(again)
        assert s["backends"]["/data"]["bytes"] == 0, s
        assert s["tiers"]["ssd"]["hits"] >= 9


def test_cache_clear_on_a_live_mount(tmp_path: Path) -> None:
    write_tree(tmp_path / "silo", FILES, [])
    with vfs_mount(tmp_path, config(tmp_path)) as m:
        read_file(m.path / "data/b.bin")
        assert stats(m)["tiers"]["ram"]["used"] > 0
        done = vfs("cache", "clear", "--mount", m.path, "--tier", "ram")
        assert done.returncode == 0, done.stderr
        wait_until(lambda: stats(m)["tiers"]["ram"]["used"] == 0, 30, "the RAM tier to be cleared")
        assert vfs("cache", "clear", "--dir", tmp_path / "ssd").returncode == 1  # in use: refused, not corrupted
    assert vfs("cache", "clear", "--dir", tmp_path / "ssd").returncode == 0
    assert json.loads(vfs("cache", "info", "--dir", tmp_path / "ssd", "--json").stdout)["blocks"] == 0


def test_trace_recording_feeds_the_simulator(tmp_path: Path) -> None:
    write_tree(tmp_path / "silo", FILES, [])
    trace = tmp_path / "blocks.trace"
    with vfs_mount(tmp_path, config(tmp_path, trace_file=str(trace))) as m:
        for _ in range(2):
            read_file(m.path / "data/a.bin")
    lines = trace.read_text().splitlines()
    keys = {line.split()[0] for line in lines}
    assert len(keys) == 6 and all(int(line.split()[1]) <= BLOCK for line in lines)
    done = vfs("cache", "simulate", "--trace", trace, "--policy", "lru", "arc", "--size", 8 * BLOCK)
    assert done.returncode == 0 and "lru" in done.stdout and "arc" in done.stdout, done.stderr
