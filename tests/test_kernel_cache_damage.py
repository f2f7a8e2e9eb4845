"""A damaged SSD tier through the real kernel and a real S3 silo (moto): the mount starts, says what it
found in one log line, and serves the silo's bytes. Flipped and truncated block files, a garbled or
truncated cache.db, a directory of another owner, a full disk (a small tmpfs, root only), and kill -9
while blocks are being written to the tier (the remount finds it consistent). The store-level cases:
tests/test_cache_damage.py."""

from __future__ import annotations

import concurrent.futures
import json
import os
import random
import signal
import sqlite3
import subprocess
import threading
from pathlib import Path
from typing import Iterator

import pytest

from tests.kernel import VfsMount, fuse_available, read_file, start_mount, stop_mount, vfs_mount, wait_until
from tests.silos.s3 import MotoS3, moto_server, seed
from vfs.cache.ssd import DB_NAME, cache_info, value_files

pytestmark = pytest.mark.kernel

BLOCK = 64 * 1024  # over diskcache's 32 KiB: every block is a value file of its own
BUCKET = "vfs-damage"
MiB = 2**20
ROOT = os.geteuid() == 0
rnd = random.Random(13)
FILES = {f"d{i % 4}/f{i:02d}.bin": rnd.randbytes(rnd.randrange(2 * BLOCK, 6 * BLOCK)) for i in range(24)}  # ~6 MiB
BIG = {f"big/b{i}.bin": rnd.randbytes(6 * MiB + i) for i in range(2)}  # 194 blocks: the kill -9 lands mid-way


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    reason = fuse_available()
    assert reason is None, reason
    with moto_server(tmp_path_factory.mktemp("moto")) as server:
        client = server.client()
        seed(client, BUCKET, {})
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda kv: client.put_object(Bucket=BUCKET, Key=kv[0], Body=kv[1]), {**FILES, **BIG}.items()))
        yield server


def config(moto: MotoS3, ssd: Path, ssd_size: int = 64 * MiB, ram_size: int = 4 * BLOCK) -> dict:
    return {
        "cache": {"block_size": BLOCK, "ram_size": ram_size, "ssd_dir": str(ssd), "ssd_size": ssd_size,
                  "prefetch_window": 2 * BLOCK},
        "mount": [{"path": "/s3", **moto.options(bucket=BUCKET)}],
    }


def stats(m: VfsMount) -> dict:
    return json.loads(read_file(m.path / ".vfs" / "stats"))


def silo_bytes(m: VfsMount) -> int:
    return stats(m)["backends"]["/s3"]["bytes"]


def read_all(m: VfsMount, files: dict[str, bytes] = FILES) -> None:
    """Every file, compared byte for byte with the silo's."""
    for name, data in files.items():
        assert read_file(m.path / "s3" / name) == data, name


def populate(tmp: Path, moto: MotoS3) -> Path:
    """An SSD directory holding every block of FILES (unmount writes RAM's blocks out too)."""
    ssd = tmp / "ssd"
    with vfs_mount(tmp, config(moto, ssd), name="fill") as m:
        read_all(m)
    assert cache_info(str(ssd))["blocks"] == sum((len(d) + BLOCK - 1) // BLOCK for d in FILES.values())
    return ssd


def lines(m: VfsMount, text: str) -> list[str]:
    return [line for line in m.log_text().splitlines() if text in line]


def test_flipped_and_truncated_block_files_are_never_served(tmp_path: Path, moto: MotoS3) -> None:
    ssd = populate(tmp_path, moto)
    files = sorted(value_files(str(ssd)))
    flipped, truncated = files[:3], files[3:6]
    for file in flipped:
        with open(file, "r+b") as f:
            f.seek(-100, os.SEEK_END)
            byte = f.read(1)
            f.seek(-100, os.SEEK_END)
            f.write(bytes([byte[0] ^ 0x01]))
    for file in truncated:
        os.truncate(file, os.path.getsize(file) // 2)
    with vfs_mount(tmp_path, config(moto, ssd)) as m:
        read_all(m)
        s = stats(m)["tiers"]["ssd"]
        assert s["corrupt"] == 6, s
        assert 0 < silo_bytes(m) <= 6 * BLOCK  # only the six bad blocks came from the silo again
        assert len(lines(m, "bad or foreign block(s) deleted at start")) == 1  # the truncated ones, one line
        assert len(lines(m, "is bad (crc32c")) == 3  # each flipped block once, when read


@pytest.mark.parametrize("damage", ["garbled", "truncated"])
def test_a_damaged_cache_db_does_not_stop_the_mount(damage: str, tmp_path: Path, moto: MotoS3) -> None:
    ssd = populate(tmp_path, moto)
    db = ssd / DB_NAME
    with open(db, "r+b") as f:
        if damage == "garbled":
            f.write(random.Random(5).randbytes(4096))
        else:
            f.truncate(db.stat().st_size // 3)
    with vfs_mount(tmp_path, config(moto, ssd)) as m:
        [line] = lines(m, "is damaged")
        assert "cache.db.damaged" in line and "the tier starts empty" in line
        read_all(m)
        assert silo_bytes(m) == sum(map(len, FILES.values()))
        assert stats(m)["tiers"]["ssd"]["damaged_db"]
    assert (ssd / (DB_NAME + ".damaged")).exists()
    with vfs_mount(tmp_path, config(moto, ssd), name="again") as m:  # the rebuilt tier works
        assert lines(m, "is damaged") == []
        read_all(m)
        assert silo_bytes(m) == 0


@pytest.mark.skipif(not ROOT, reason="chown to another user needs root")
def test_a_cache_directory_of_another_owner_turns_the_tier_off(tmp_path: Path, moto: MotoS3) -> None:
    ssd = tmp_path / "ssd"
    ssd.mkdir(mode=0o700)
    os.chown(ssd, 65534, 65534)
    with vfs_mount(tmp_path, config(moto, ssd)) as m:
        [line] = lines(m, "SSD tier off")
        assert str(ssd) in line and "uid 65534" in line
        read_all(m)
        assert "ssd" not in stats(m)["tiers"]
    assert os.listdir(ssd) == []


@pytest.mark.skipif(not ROOT, reason="mounts a tmpfs: root only")
def test_a_full_disk_under_the_tier_keeps_reads_right(tmp_path: Path, moto: MotoS3) -> None:
    ssd = tmp_path / "ssd"
    ssd.mkdir(mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs", str(ssd)], check=True, capture_output=True)
    try:
        with vfs_mount(tmp_path, config(moto, ssd, ssd_size=64 * MiB)) as m:
            read_all(m)  # ~6 MiB of blocks into a 3 MiB disk
            wait_until(lambda: stats(m)["tiers"]["ssd_writer"]["queued_bytes"] == 0, 30, "the SSD writer to drain")
            s = stats(m)["tiers"]["ssd"]
            assert s["disk_full"] >= 1 and s["capacity"] < 3 * MiB < s["budget"], s
            assert s["inserts"] > s["blocks"] > 0 and s["evictions"] > 0  # it kept taking blocks, by evicting
            read_all(m)
            assert len(lines(m, "disk full")) == 1 and lines(m, "SSD cache delete error") == []
        assert indexed_files(ssd) == {os.path.relpath(f, ssd) for f in value_files(str(ssd))}  # no half-written file
    finally:
        if subprocess.run(["umount", str(ssd)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(ssd)], capture_output=True)


def test_kill_9_while_blocks_are_written_leaves_a_consistent_tier(tmp_path: Path, moto: MotoS3) -> None:
    ssd = tmp_path / "ssd"
    cfg = config(moto, ssd, ram_size=2 * BLOCK)  # RAM holds 2 blocks: nearly every block goes to the SSD
    m = start_mount(tmp_path, cfg, name="killed")
    stop = threading.Event()
    wrong: list[str] = []
    everything = {**BIG, **FILES}

    def reader(names: list[str]) -> None:  # reads until the process dies under it (then reads fail: expected)
        while not stop.is_set():
            for name in names:
                try:
                    data = read_file(m.path / "s3" / name)
                except OSError:
                    return
                if data != everything[name]:
                    wrong.append(name)

    try:
        orders = [list(BIG), list(reversed(BIG)), list(FILES)]
        threads = [threading.Thread(target=reader, args=(names,), daemon=True) for names in orders]
        for t in threads:
            t.start()
        wait_until(lambda: stats(m)["tiers"]["ssd_writer"]["written"] >= 40, 60, "blocks to reach the SSD tier", 0.01)
        os.kill(m.proc.pid, signal.SIGKILL)
        m.proc.wait(30)
        stop.set()
        for t in threads:
            t.join(30)
    finally:
        stop.set()
        stop_mount(m)  # the dead process's mount goes too
    assert wrong == []
    with vfs_mount(tmp_path, cfg) as again:
        assert lines(again, "bad or foreign") == []  # every row has its whole value file
        s = stats(again)["tiers"]["ssd"]
        assert 40 <= s["blocks"] < sum((len(d) + BLOCK - 1) // BLOCK for d in everything.values()), s  # mid-fill
        assert s["corrupt"] == 0, s
        read_all(again, everything)
        # .vfs/stats is one rendering for STATS_REFRESH (1 s): wait for one made after these reads
        wait_until(lambda: stats(again)["tiers"]["ssd"]["hits"] >= 40, 30, "the SSD hits to show")
        assert stats(again)["tiers"]["ssd"]["corrupt"] == 0
    assert cache_info(str(ssd))["bad_rows"] == 0
    assert indexed_files(ssd) == {os.path.relpath(f, ssd) for f in value_files(str(ssd))}  # no orphan, none missing


def indexed_files(ssd: Path) -> set[str]:
    """The value files the rows of cache.db point to."""
    con = sqlite3.connect(ssd / DB_NAME)
    try:
        return {name for (name,) in con.execute("SELECT filename FROM Cache WHERE filename IS NOT NULL")}
    finally:
        con.close()
