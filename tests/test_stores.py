"""The ONE store conformance suite: every block store (RamStore, SsdStore) x every eviction policy in
vfs.cache.policy.POLICIES runs the same property-based checks; the SSD store's own promises (restart,
corruption, no pickle, directory mode, on-disk format, errors as misses, threads) follow."""

from __future__ import annotations

import errno
import logging
import os
import pickle
import random
import shutil
import stat
import struct
import tempfile
import threading
from typing import Iterator

import diskcache
import google_crc32c
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vfs.cache.block import BlockKey
from vfs.cache.policy import POLICIES
from vfs.cache.ram import RamStore
from vfs.cache.ssd import DISKCACHE_SETTINGS, BlockDisk, SsdStore, cache_clear, cache_info
from vfs.cache.tiered import make_policy

STORES = ("ram", "ssd")
KEYS = [BlockKey("/m", f"dir/obj{i % 3}", "v1", i) for i in range(8)]


class FailingDisk(BlockDisk):
    """Fault injection (the Mountpoint failure_client idea, at the disk seam): fails on command."""

    failing = False

    def store(self, value, read, key=diskcache.core.UNKNOWN):  # type: ignore[no-untyped-def]
        if FailingDisk.failing:
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return super().store(value, read, key)

    def fetch(self, mode, filename, value, read):  # type: ignore[no-untyped-def]
        if FailingDisk.failing:
            raise OSError(errno.EIO, "Input/output error (injected)")
        return super().fetch(mode, filename, value, read)


@pytest.fixture
def failing_disk() -> Iterator[type[FailingDisk]]:
    FailingDisk.failing = False
    yield FailingDisk
    FailingDisk.failing = False


def open_store(kind: str, policy: str, capacity: int, directory: str | None = None):  # type: ignore[no-untyped-def]
    if kind == "ram":
        return RamStore(capacity, make_policy(policy, capacity))
    assert directory is not None
    return SsdStore(directory, capacity, make_policy(policy, capacity))


def close_store(store) -> None:  # type: ignore[no-untyped-def]
    if isinstance(store, SsdStore):
        store.close()


def victim_keys(result) -> set[BlockKey]:  # type: ignore[no-untyped-def]
    """RamStore.put returns (key, bytes) pairs (for demotion), SsdStore.put returns keys."""
    return {v[0] if isinstance(v, tuple) else v for v in result}


def block(key: BlockKey, serial: int, size: int) -> bytes:
    seed = f"{key}/{serial}".encode()
    return (seed * (size // len(seed) + 1))[:size]


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, len(KEYS) - 1), st.integers(0, 1500)),
        st.tuples(st.just("get"), st.integers(0, len(KEYS) - 1), st.just(0)),
        st.tuples(st.just("discard"), st.integers(0, len(KEYS) - 1), st.just(0)),
        st.tuples(st.just("pin"), st.integers(0, len(KEYS) - 1), st.just(0)),
        st.tuples(st.just("unpin"), st.integers(0, len(KEYS) - 1), st.just(0)),
    ),
    max_size=60,
)
CAPACITY = 4000  # a few blocks of up to 1500 bytes: evictions on most put sequences


@pytest.mark.parametrize("policy", sorted(POLICIES))
@pytest.mark.parametrize("kind", STORES)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS)
def test_store_conformance(kind: str, policy: str, ops: list[tuple[str, int, int]]) -> None:
    """Budget never exceeded, victims only unpinned, accounting exact, reads return what was put."""
    tmp = tempfile.mkdtemp()
    store = open_store(kind, policy, CAPACITY, os.path.join(tmp, "ssd"))
    model: dict[BlockKey, bytes] = {}
    pins: dict[BlockKey, int] = {}
    try:
        for serial, (op, k, size) in enumerate(ops):
            key = KEYS[k]
            if op == "put":
                data = block(key, serial, size)
                before = set(model)
                victims = victim_keys(store.put(key, data))
                model.pop(key, None)  # replaced (or refused: the old copy is gone either way)
                if key in store:
                    model[key] = data
                gone = {k2 for k2 in before - {key} if k2 not in store}
                assert victims == gone
                assert not any(pins.get(v) for v in victims), "a pinned block was evicted"
                for v in victims:
                    del model[v]
                if store.charge(key, data) <= CAPACITY and key not in store:
                    # refused only when the pinned blocks leave no room
                    pinned = sum(store.charge(k2, d) for k2, d in model.items() if pins.get(k2))
                    assert pinned + store.charge(key, data) > CAPACITY
            elif op == "get":
                assert store.get(key) == model.get(key)
            elif op == "discard":
                store.discard(key)
                model.pop(key, None)
            elif op == "pin":
                store.pin(key)
                pins[key] = pins.get(key, 0) + 1
            elif pins.get(key):
                store.unpin(key)
                pins[key] -= 1
            assert store.used <= store.capacity
            assert store.used == sum(store.charge(k2, d) for k2, d in model.items())
            assert len(store) == len(model)
            assert {k2 for k2 in KEYS if k2 in store} == set(model)
            assert all(store.is_pinned(k2) == bool(pins.get(k2)) for k2 in KEYS)
    finally:
        close_store(store)
        shutil.rmtree(tmp)


@pytest.mark.parametrize("policy", sorted(POLICIES))
@pytest.mark.parametrize("kind", STORES)
def test_block_larger_than_tier_is_refused(kind: str, policy: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = open_store(kind, policy, 1000, str(tmp_path / "ssd"))
    try:
        store.put(KEYS[0], b"a" * 500)
        assert store.put(KEYS[1], b"b" * 1001) == []
        assert KEYS[1] not in store and KEYS[0] in store
        assert store.stats.refused == 1
    finally:
        close_store(store)


# -- the SSD store -------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_ssd_restart_keeps_contents_and_accounting(policy: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "ssd")
    rng = random.Random(7)
    blocks = {KEYS[i]: rng.randbytes(rng.choice([10, 40_000, 70_000])) for i in range(6)}  # inline and files
    with SsdStore(path, 10**6, make_policy(policy, 10**6)) as store:
        for key, data in blocks.items():
            store.put(key, data)
        used = store.used
    with SsdStore(path, 10**6, make_policy(policy, 10**6)) as store:
        assert store.used == used == sum(store.charge(k, d) for k, d in blocks.items())
        assert len(store) == len(blocks) == len(store.policy)
        for key, data in blocks.items():
            assert store.get(key) == data
        assert store.stats.hits == len(blocks) and store.stats.misses == 0


def test_ssd_restart_keeps_store_order_for_fifo(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "ssd")
    with SsdStore(path, 10**6, make_policy("fifo", 10**6)) as store:
        for key in (KEYS[5], KEYS[1], KEYS[3]):  # stored in an order that is not key order
            store.put(key, b"x" * 100)
    with SsdStore(path, 10**6, make_policy("fifo", 10**6)) as store:
        assert [store.policy.evict(store.is_pinned) for _ in range(3)] == [KEYS[5], KEYS[1], KEYS[3]]


def test_ssd_restart_with_smaller_budget_evicts_down(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "ssd")
    with SsdStore(path, 10**6, make_policy("lru", 10**6)) as store:
        for key in KEYS:
            store.put(key, b"y" * 1000)
        one = store.charge(KEYS[0], b"y" * 1000)
    with SsdStore(path, 3 * one, make_policy("lru", 3 * one)) as store:
        assert len(store) == 3 and store.used == 3 * one
    assert cache_info(path)["blocks"] == 3


def _value_files(path: str) -> list[str]:
    return sorted(os.path.join(root, name) for root, _d, files in os.walk(path) for name in files
                  if name.endswith(".val"))


@pytest.mark.parametrize("damage", ["flip_payload", "flip_key", "truncate", "extend", "bad_magic", "remove"])
def test_ssd_corrupt_block_is_a_deleted_miss(damage: str, tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "ssd")
    data = random.Random(1).randbytes(100_000)  # over 32 KiB: a value file
    with SsdStore(path, 10**6, make_policy("lru", 10**6)) as store:
        store.put(KEYS[0], data)
        store.put(KEYS[1], b"neighbour")
        [file] = _value_files(path)
        with open(file, "r+b") as f:
            if damage == "flip_payload":
                f.seek(50_000)
                byte = f.read(1)
                f.seek(50_000)
                f.write(bytes([byte[0] ^ 1]))
            elif damage == "flip_key":
                f.seek(24 + 3)
                f.write(b"X")
            elif damage == "truncate":
                f.truncate(60_000)
            elif damage == "extend":
                f.seek(0, os.SEEK_END)
                f.write(b"junk")
            elif damage == "bad_magic":
                f.write(b"XXXX")
        if damage == "remove":
            os.unlink(file)
        used = store.used
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="vfs.cache.ssd"):
            assert store.get(KEYS[0]) is None
            assert store.get(KEYS[0]) is None
        assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1  # logged once
        assert KEYS[0] not in store
        assert store.used == used - store.charge(KEYS[0], data)
        assert _value_files(path) == []
        assert store.get(KEYS[1]) == b"neighbour"
    assert cache_info(path)["blocks"] == 1


def test_ssd_corrupt_block_found_at_restart_is_deleted(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "ssd")
    with SsdStore(path, 10**6, make_policy("lru", 10**6)) as store:
        store.put(KEYS[0], b"z" * 50_000)
        store.put(KEYS[1], b"ok")
    [file] = _value_files(path)
    with open(file, "r+b") as f:
        f.truncate(10)
    with SsdStore(path, 10**6, make_policy("lru", 10**6)) as store:
        assert KEYS[0] not in store and store.corrupt == 1
        assert store.used == store.charge(KEYS[1], b"ok")
        assert store.get(KEYS[1]) == b"ok"
    assert _value_files(path) == []


def test_ssd_inline_block_for_another_key_is_a_miss(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A small (inline, in sqlite) block overwritten by another's bytes: the key check catches it."""
    path = str(tmp_path / "ssd")
    with SsdStore(path, 10**6, make_policy("lru", 10**6)) as store:
        store.put(KEYS[0], b"zero")
        store.put(KEYS[1], b"one")
        raw = diskcache.Cache(path, disk=BlockDisk, **DISKCACHE_SETTINGS)
        raw.set(str(KEYS[0]), raw.get(str(KEYS[1])))
        raw.close()
        assert store.get(KEYS[0]) is None and KEYS[0] not in store
        assert store.get(KEYS[1]) == b"one"


def test_ssd_refuses_non_bytes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with SsdStore(str(tmp_path / "ssd"), 10**6, make_policy("lru", 10**6)) as store:
        for value in (bytearray(b"abc"), memoryview(b"abc"), "abc", 3, [b"a"], {"a": 1}):
            with pytest.raises(TypeError):
                store.put(KEYS[0], value)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            store.put(("not", "a", "key"), b"abc")  # type: ignore[arg-type]
        assert len(store) == 0 and store.used == 0
    raw = diskcache.Cache(str(tmp_path / "ssd"), disk=BlockDisk, **DISKCACHE_SETTINGS)
    try:
        for value in ({"a": 1}, "text", 3):
            with pytest.raises(TypeError):
                raw.set("k", value)
        with pytest.raises(TypeError):
            raw.set(("tuple", "key"), b"abc")
        assert len(raw) == 0
    finally:
        raw.close()


UNPICKLED: list[str] = []


def _record_unpickle(tag: str) -> str:
    UNPICKLED.append(tag)
    return tag


class Bomb:
    """Its unpickling records a call: proof of whether anyone ever unpickled it."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (_record_unpickle, (self.tag,))


def test_ssd_never_unpickles(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    """Rows written by a plain (pickling) diskcache in our directory are deleted, never decoded."""
    path = str(tmp_path / "ssd")
    os.makedirs(path, mode=0o700)
    UNPICKLED.clear()
    plain = diskcache.Cache(path, **DISKCACHE_SETTINGS)
    plain.set(str(KEYS[0]), Bomb("value-inline"))
    plain.set(str(KEYS[1]), [Bomb("value-file"), b"x" * 100_000])
    plain.set(("pickled", "key"), Bomb("pickled-key"))
    plain.set(str(KEYS[2]), "a str value is not ours either")
    assert pickle.loads(pickle.dumps(Bomb("self-test"))) == "self-test" and UNPICKLED == ["self-test"]
    UNPICKLED.clear()
    with SsdStore(path, 10**6, make_policy("lru", 10**6)) as store:
        assert len(store) == 0 and store.used == 0 and store.corrupt == 4
        assert len(plain) == 0
        store.put(KEYS[3], b"real block")
        plain.set(str(KEYS[3]), Bomb("swapped-under-a-live-store"))  # a resident key's value replaced
        assert store.get(KEYS[3]) is None and KEYS[3] not in store
    plain.close()
    assert UNPICKLED == []
    assert cache_info(path)["blocks"] == 0


def test_ssd_directory_mode(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    fresh = str(tmp_path / "a" / "ssd")
    old = os.umask(0o022)
    try:
        with SsdStore(fresh, 1000, make_policy("lru", 1000)):
            assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o700
        loose = str(tmp_path / "loose")
        os.mkdir(loose, 0o755)
        os.chmod(loose, 0o755)
        with caplog.at_level(logging.WARNING, logger="vfs.cache.ssd"):
            with SsdStore(loose, 1000, make_policy("lru", 1000)):
                assert stat.S_IMODE(os.stat(loose).st_mode) == 0o700
        assert any("0755" in r.getMessage() for r in caplog.records)
    finally:
        os.umask(old)


def test_ssd_directory_is_one_process_at_a_time(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "ssd")
    with SsdStore(path, 1000, make_policy("lru", 1000)):
        with pytest.raises(BlockingIOError):
            SsdStore(path, 1000, make_policy("lru", 1000))
        assert cache_info(path)["in_use"] is True
        with pytest.raises(BlockingIOError):
            cache_clear(path)
    with SsdStore(path, 1000, make_policy("lru", 1000)):
        pass


def test_ssd_on_disk_format_is_pinned(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Changing this layout needs FORMAT_VERSION + 1: old directories must read as misses, not garbage."""
    path = str(tmp_path / "ssd")
    key = BlockKey("/s3/a", "dir/file.bin", "etag-1", 7)
    payload = bytes(range(256)) * 200  # 51,200 bytes: stored as a value file
    with SsdStore(path, 10**6, make_policy("lru", 10**6)) as store:
        store.put(key, payload)
        assert store.used == 24 + len(b"/s3/a\0dir/file.bin\0etag-1\0007") + len(payload)
    [file] = _value_files(path)
    raw = open(file, "rb").read()
    key_bytes = b"/s3/a\x00dir/file.bin\x00etag-1\x007"
    assert raw[:4] == b"VFSB"
    assert raw[4:6] == b"\x01\x00"  # format version 1, little-endian
    assert raw[6:8] == b"\x00\x00"
    assert raw[8:12] == struct.pack("<I", len(key_bytes))
    assert raw[12:20] == struct.pack("<Q", len(payload))
    crc = google_crc32c.value(raw[:20] + key_bytes + payload)
    assert raw[20:24] == struct.pack("<I", crc)
    assert raw[24:24 + len(key_bytes)] == key_bytes
    assert raw[24 + len(key_bytes):] == payload
    assert raw[:20].hex() == "56465342" "0100" "0000" "1b000000" "00c8000000000000"
    assert raw[20:24].hex() == "3fd70e4d"  # CRC32C (Castagnoli), not zlib's CRC32


def test_ssd_errors_are_misses(tmp_path, failing_disk, caplog) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "ssd")
    with SsdStore(path, 10**6, make_policy("lru", 10**6), disk=failing_disk) as store:
        store.put(KEYS[0], b"a" * 50_000)
        store.put(KEYS[1], b"b" * 10)
        used = store.used
        failing_disk.failing = True
        with caplog.at_level(logging.ERROR, logger="vfs.cache.ssd"):
            assert store.get(KEYS[0]) is None  # EIO on read: a miss (and the block is given up)
            assert store.put(KEYS[2], b"c" * 50_000) == []  # ENOSPC on write: not stored, not raised
        assert KEYS[2] not in store
        assert store.errors == 1 and any("injected" in r.getMessage() for r in caplog.records)
        assert store.corrupt == 1  # diskcache reports an unopenable value file as missing: given up
        assert KEYS[0] not in store
        failing_disk.failing = False
        assert store.get(KEYS[1]) == b"b" * 10
        assert store.used == store.charge(KEYS[1], b"b" * 10) < used


def test_ssd_value_files_gone_is_a_miss(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    """A real fault: the directory's files vanish under a live store (rm -rf by a user)."""
    path = str(tmp_path / "ssd")
    with SsdStore(path, 10**6, make_policy("lru", 10**6)) as store:
        store.put(KEYS[0], b"a" * 50_000)
        for file in _value_files(path):
            os.unlink(file)
        assert store.get(KEYS[0]) is None
        assert KEYS[0] not in store and store.used == 0


def test_ssd_concurrent_callers_keep_the_budget(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "ssd")
    keys = [BlockKey("/m", "f", "v", i) for i in range(24)]
    data = {k: block(k, 0, 20_000 + 997 * k.index) for k in keys}  # fixed content per key
    capacity = 200_000
    store = SsdStore(path, capacity, make_policy("lru", capacity))
    over: list[int] = []
    wrong: list[BlockKey] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(150):
            key = rng.choice(keys)
            op = rng.random()
            if op < 0.5:
                store.put(key, data[key])
            elif op < 0.9:
                got = store.get(key)
                if got is not None and got != data[key]:
                    wrong.append(key)
            else:
                store.discard(key)
            if store.used > capacity:
                over.append(store.used)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert not over and not wrong
        assert store.used == sum(store.charge(k, data[k]) for k in keys if k in store)
        assert len(store.policy) == len(store)
    finally:
        store.close()
    with SsdStore(path, capacity, make_policy("lru", capacity)) as again:
        assert again.used == sum(again.charge(k, data[k]) for k in keys if k in again)
        assert all(again.get(k) == data[k] for k in keys if k in again)


def test_cache_info_and_clear(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "ssd")
    assert cache_info(path)["exists"] is False
    with SsdStore(path, 10**6, make_policy("lru", 10**6)) as store:
        store.put(KEYS[0], b"a" * 40_000)
        store.put(BlockKey("/gcs", "x", "1", 0), b"b" * 100)
        used = store.used
    info = cache_info(path)
    assert info["blocks"] == 2 and info["bytes"] == used and info["in_use"] is False
    assert set(info["bytes_by_mount"]) == {"/m", "/gcs"}
    assert cache_clear(path) == 2
    assert cache_info(path)["blocks"] == 0 and _value_files(path) == []
    with SsdStore(path, 10**6, make_policy("lru", 10**6)) as store:
        assert len(store) == 0 and store.used == 0
