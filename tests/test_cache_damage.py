"""A damaged SSD tier, against the store itself: flipped and truncated block files, a garbled, truncated,
emptied or lost `cache.db`, value files no row points to (what a kill -9 between a value file and its
row leaves), a directory the tier cannot use, and a full disk (a small tmpfs, as root). Each is detected,
logged in one line, the bad parts dropped (or the tier switched off), and every byte served is right.
Through the kernel: tests/test_kernel_cache_damage.py."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sqlite3
import stat
import subprocess
import threading
from pathlib import Path
from typing import Iterator

import pytest

from vfs.cache.block import BlockKey
from vfs.cache.ssd import DB_NAME, SsdStore, cache_clear, cache_info, is_full, value_files
from vfs.cache.tiered import build_cache, make_policy

MiB = 2**20
ROOT = os.geteuid() == 0


def keys(n: int) -> list[BlockKey]:
    return [BlockKey("/m", f"dir/f{i}", "v1", i) for i in range(n)]


def payload(key: BlockKey, size: int = 40_000) -> bytes:
    """Different bytes per key, over 32 KiB so that diskcache keeps them in value files."""
    return random.Random(str(key)).randbytes(size)


def open_store(path: Path | str, capacity: int = 64 * MiB) -> SsdStore:
    return SsdStore(str(path), capacity, make_policy("lru", capacity))


def fill(path: Path, n: int, size: int = 40_000) -> list[BlockKey]:
    ks = keys(n)
    with open_store(path) as store:
        for k in ks:
            store.put(k, payload(k, size))
        assert len(store) == n
    return ks


def file_of(path: Path, key: BlockKey) -> str:
    """The value file holding `key` (found by the key bytes in its header)."""
    needle = str(key).encode()
    [found] = [f for f in value_files(str(path)) if Path(f).read_bytes()[24:24 + len(needle)] == needle]
    return found


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_flipped_and_truncated_block_files_are_dropped_and_never_served(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    ks = fill(tmp_path, 8)
    flipped, truncated = ks[:3], ks[3:5]
    for k in flipped:
        with open(file_of(tmp_path, k), "r+b") as f:
            f.seek(30_000)
            byte = f.read(1)
            f.seek(30_000)
            f.write(bytes([byte[0] ^ 0x10]))
    for k in truncated:
        os.truncate(file_of(tmp_path, k), 20_000)
    with caplog.at_level(logging.INFO, logger="vfs.cache"):
        with open_store(tmp_path) as store:
            assert store.corrupt == 2  # truncated: found by the header check at start
            assert len(warnings(caplog)) == 1 and "2 bad" in warnings(caplog)[0]
            caplog.clear()
            for _ in range(2):
                for k in ks:
                    got = store.get(k)
                    assert got is None if k in flipped + truncated else got == payload(k)
            assert len(warnings(caplog)) == len(flipped)  # one line per flipped block, on its first read
            assert store.corrupt == 5 and len(store) == 3
            assert store.used == sum(store.charge(k, payload(k)) for k in ks[5:])
    assert len(list(value_files(str(tmp_path)))) == 3


DB_DAMAGE = {
    "garbled_head": lambda f, size: f.write(b"this is not sqlite" * 4),
    "truncated_half": lambda f, size: f.truncate(size // 2),
    "truncated_100": lambda f, size: f.truncate(100),
    "garbled_middle": lambda f, size: (f.seek(size // 2), f.write(random.Random(7).randbytes(8192))),
    "garbled_page_2": lambda f, size: (f.seek(4096), f.write(random.Random(8).randbytes(4096))),
}


@pytest.mark.parametrize("damage", sorted(DB_DAMAGE))
def test_a_damaged_cache_db_is_set_aside_and_the_tier_starts_empty(damage: str, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    ks = fill(tmp_path, 60, size=20_000)  # inline in sqlite: a db of many pages
    fill_big = keys(64)[60:]
    with open_store(tmp_path) as store:  # and a few value files, which the damaged db will orphan
        for k in fill_big:
            store.put(k, payload(k))
    db = tmp_path / DB_NAME
    with open(db, "r+b") as f:
        DB_DAMAGE[damage](f, db.stat().st_size)
    assert cache_info(str(tmp_path))["damaged"]
    with caplog.at_level(logging.INFO, logger="vfs.cache"):
        with open_store(tmp_path) as store:
            assert store.damaged_db and len(store) == 0 and store.used == 0
            [line] = warnings(caplog)
            assert "cache.db is damaged" in line and "cache.db.damaged" in line and "4 block file(s)" in line
            assert all(store.get(k) is None for k in ks + fill_big)
            store.put(ks[0], payload(ks[0]))
            assert store.get(ks[0]) == payload(ks[0])
    assert (tmp_path / (DB_NAME + ".damaged")).exists()
    assert len(list(value_files(str(tmp_path)))) == 1
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vfs.cache"):
        with open_store(tmp_path) as store:  # the new db is whole: nothing to report
            assert store.damaged_db is None and store.get(ks[0]) == payload(ks[0])
    assert warnings(caplog) == []


@pytest.mark.parametrize("loss", ["emptied", "deleted"])
def test_a_lost_cache_db_leaves_no_block_file_outside_the_budget(loss: str, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    fill(tmp_path, 5)
    db = tmp_path / DB_NAME
    if loss == "emptied":
        os.truncate(db, 0)
    else:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(str(db) + suffix)
    with caplog.at_level(logging.INFO, logger="vfs.cache"):
        with open_store(tmp_path) as store:
            assert len(store) == 0 and store.orphans == 5
    [line] = warnings(caplog)
    assert "5 block file(s)" in line and "no row" in line
    assert list(value_files(str(tmp_path))) == []


def test_a_value_file_without_its_row_is_deleted_at_start(tmp_path: Path) -> None:
    """What a kill -9 between writing a value file and committing its row leaves behind."""
    ks = fill(tmp_path, 4)
    orphan = Path(file_of(tmp_path, ks[0])).with_name("0123456789abcdef0123456789ab.val")
    orphan.write_bytes(b"half a block")
    with open_store(tmp_path) as store:
        assert store.orphans == 1 and len(store) == 4
        assert all(store.get(k) == payload(k) for k in ks)
    assert not orphan.exists() and len(list(value_files(str(tmp_path)))) == 4


def test_cache_clear_of_a_damaged_directory(tmp_path: Path) -> None:
    fill(tmp_path, 3)
    with open(tmp_path / DB_NAME, "r+b") as f:
        f.write(b"garbage" * 20)
    assert cache_clear(str(tmp_path)) == 0
    assert list(value_files(str(tmp_path))) == [] and cache_info(str(tmp_path))["blocks"] == 0


@contextlib.contextmanager
def tmpfs(path: Path, size: str, *options: str) -> Iterator[Path]:
    """A tmpfs of `size` at `path` for the test's duration (root only)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", "mode=0700", *options]), "tmpfs", str(path)],
                   check=True, capture_output=True)
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def unusable_directory(kind: str, tmp_path: Path, stack: contextlib.ExitStack) -> Path:
    ssd = tmp_path / "ssd"
    if kind == "other_owner":
        ssd.mkdir(mode=0o700)
        os.chown(ssd, 65534, 65534)
    elif kind == "read_only_fs":
        stack.enter_context(tmpfs(ssd, "1m", "ro"))
    elif kind == "in_use":
        stack.enter_context(open_store(ssd))
    return ssd


@pytest.mark.parametrize("kind", ["other_owner", "read_only_fs", "in_use"])
def test_a_directory_the_tier_cannot_use_switches_it_off_in_one_line(kind: str, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    if kind != "in_use" and not ROOT:
        pytest.skip("chown and mount need root")
    with contextlib.ExitStack() as stack:
        ssd = unusable_directory(kind, tmp_path, stack)
        with caplog.at_level(logging.INFO, logger="vfs.cache"):
            cache = build_cache(64 * 1024, MiB, "lru", str(ssd), 64 * MiB, "lru")
        try:
            assert cache.ssd is None and set(cache.stats()) == {"ram"}
            [line] = warnings(caplog)
            assert line.startswith("SSD tier off: ") and str(ssd) in line
        finally:
            cache.close()


def test_is_full_knows_the_disk_full_errors() -> None:
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
    assert is_full(OSError(28, "No space left on device")) and is_full(full)
    assert not is_full(OSError(5, "Input/output error")) and not is_full(sqlite3.OperationalError("locked"))


@pytest.mark.skipif(not ROOT, reason="mounts a tmpfs: root only")
def test_a_full_disk_lowers_the_budget_and_reads_stay_right(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    with tmpfs(tmp_path / "disk", "8m") as disk:
        filler = disk / "someone-elses-file"
        filler.write_bytes(b"\0" * (4 * MiB))
        ks = [BlockKey("/m", "big", "v", i) for i in range(40)]
        with caplog.at_level(logging.DEBUG, logger="vfs.cache"):
            with open_store(disk / "ssd", capacity=5 * MiB) as store:
                for k in ks:  # 40 x 200 KiB = 8 MiB into ~4 MiB of free space
                    store.put(k, payload(k, 200 * 1024))
                assert store.disk_full >= 1 and store.capacity < store.budget
                assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1  # the first full, only
                assert store.stats.inserts > 20 and store.stats.evictions > 0  # kept taking blocks by evicting
                resident = [k for k in ks if k in store]
                assert resident and all(store.get(k) == payload(k, 200 * 1024) for k in resident)
                assert all(store.get(k) is None for k in ks if k not in store)
                files = list(value_files(str(disk / "ssd")))
                assert len(files) == len(store)  # no half-written value file left behind
                assert sum(os.path.getsize(f) for f in files) <= store.used <= store.capacity
                filler.unlink()  # the disk has room again: the budget grows back
                store.put(ks[0], payload(ks[0], 200 * 1024))
                assert store.capacity == store.budget and store.get(ks[0]) == payload(ks[0], 200 * 1024)


def test_a_cache_db_that_goes_bad_while_running_turns_the_tier_off(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    ks = fill(tmp_path, 4)
    store = open_store(tmp_path)
    try:
        assert store.get(ks[0]) == payload(ks[0])
        with open(tmp_path / DB_NAME, "r+b") as f:
            f.write(b"not a database any more" * 8)
        got: list[bytes | None] = []
        with caplog.at_level(logging.INFO, logger="vfs.cache"):
            worker = threading.Thread(target=lambda: got.extend(store.get(k) for k in ks))  # a new sqlite connection
            worker.start()
            worker.join(30)
            store.put(keys(5)[4], payload(keys(5)[4]))
        assert got == [None] * 4 and store.off and "not a database" in store.off
        [line] = warnings(caplog)
        assert "went bad while running" in line
        assert store.get(ks[0]) is None and keys(5)[4] not in store  # off: misses, nothing stored
    finally:
        store.close()
    with caplog.at_level(logging.INFO, logger="vfs.cache"):
        with open_store(tmp_path) as again:  # the next start sets it aside
            assert again.damaged_db and again.off is None and len(again) == 0
            again.put(ks[0], payload(ks[0]))
            assert again.get(ks[0]) == payload(ks[0])


@pytest.mark.parametrize("mode", [0o500, 0o000, 0o777])
def test_a_directory_of_ours_with_a_wrong_mode_is_repaired(mode: int, tmp_path: Path) -> None:
    ssd = tmp_path / "ssd"
    ssd.mkdir()
    os.chmod(ssd, mode)
    with open_store(ssd) as store:
        assert stat.S_IMODE(os.stat(ssd).st_mode) == 0o700
        k = keys(1)[0]
        store.put(k, payload(k))
        assert store.get(k) == payload(k)
