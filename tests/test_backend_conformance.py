"""The one Backend conformance suite: every silo in tests.silos.SILOS runs every test here.

Modelled on rclone's fstests: the same dataset, the same questions, the same answers expected of
S3, GCS, NFS, Drive, a local directory and memory. Extras a backend lacks are skipped by capability
(`Silo.flat_keys`, `Silo.denied`), never faked.
"""

from __future__ import annotations

import errno
import random
from typing import Any, Awaitable, Callable, Iterator

import pytest
import trio

from tests.silos import EMPTY_DIRS, FILES, SILOS, Silo, open_silo
from vfs.mounts.base import ObjectMeta


def run(fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    return trio.run(fn, *args)


@pytest.fixture(scope="module", params=SILOS)
def silo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Silo]:
    with open_silo(request.param, tmp_path_factory.mktemp(request.param)) as s:
        yield s


def names(metas: list[ObjectMeta]) -> dict[str, ObjectMeta]:
    return {m.name: m for m in metas}


def expect_errno(err: int, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
    with pytest.raises(OSError) as info:
        run(fn, *args)
    assert info.value.errno == err, f"expected {errno.errorcode[err]}, got {info.value!r}"


def test_root_is_a_directory(silo: Silo) -> None:
    meta = run(silo.backend.stat, "")
    assert meta.is_dir and meta.path == ""


def test_stat_file(silo: Silo) -> None:
    meta = run(silo.backend.stat, "data/blob.bin")
    assert (meta.is_dir, meta.size, meta.path, meta.name) == (False, len(FILES["data/blob.bin"]), "data/blob.bin", "blob.bin")
    assert meta.version
    assert meta.mtime_ns is None or meta.mtime_ns > 1_500_000_000 * 10**9


def test_stat_directories(silo: Silo) -> None:
    for path in ["data", "data/nested", "data/nested/deep", "many", "odd names", *EMPTY_DIRS]:
        assert run(silo.backend.stat, path).is_dir, path


def test_stat_empty_file(silo: Silo) -> None:
    meta = run(silo.backend.stat, "empty.bin")
    assert (meta.is_dir, meta.size) == (False, 0)


def test_stat_missing_is_enoent(silo: Silo) -> None:
    for path in ["nope", "data/nope", "nope/deeper", "hello.tx", "dat"]:
        expect_errno(errno.ENOENT, silo.backend.stat, path)


def test_list_root(silo: Silo) -> None:
    got = names(run(silo.backend.list_dir, ""))
    expected_dirs = {"data", "odd names", "many", *EMPTY_DIRS} | ({"both"} if silo.flat_keys else set())
    assert {n for n, m in got.items() if m.is_dir} == expected_dirs
    assert {n for n, m in got.items() if not m.is_dir} == {"hello.txt", "empty.bin"}
    assert got["hello.txt"].size == len(FILES["hello.txt"]) and got["hello.txt"].version
    assert got["hello.txt"].path == "hello.txt"


def test_listing_metadata_matches_stat(silo: Silo) -> None:
    """ls -l fills attributes from the listing; they must agree with a stat of each file."""
    for meta in run(silo.backend.list_dir, "data"):
        if not meta.is_dir:
            assert run(silo.backend.stat, meta.path) == meta


def test_list_nested_and_odd_names(silo: Silo) -> None:
    assert set(names(run(silo.backend.list_dir, "data/nested"))) == {"deep"}
    assert set(names(run(silo.backend.list_dir, "data/nested/deep"))) == {"leaf.txt"}
    odd = [k.split("/")[1] for k in FILES if k.startswith("odd names/")]
    listed = run(silo.backend.list_dir, "odd names")
    assert [m.name for m in listed] == odd
    assert run(silo.backend.read_range, listed[0].path, 0, 100, listed[0].version) == b"odd\n"


def test_list_many_pages(silo: Silo) -> None:
    got = run(silo.backend.list_dir, "many")
    assert sorted(m.name for m in got) == [f"f{i:04d}" for i in range(25)]
    assert all(not m.is_dir and m.size == len(f"file {int(m.name[1:])}\n") for m in got)


def test_list_empty_dir(silo: Silo) -> None:
    assert run(silo.backend.list_dir, EMPTY_DIRS[0]) == []


def test_list_file_is_enotdir(silo: Silo) -> None:
    expect_errno(errno.ENOTDIR, silo.backend.list_dir, "hello.txt")


def test_list_missing_is_enoent(silo: Silo) -> None:
    expect_errno(errno.ENOENT, silo.backend.list_dir, "nope")


def test_read_ranges(silo: Silo) -> None:
    data = FILES["data/blob.bin"]
    meta = run(silo.backend.stat, "data/blob.bin")
    rnd = random.Random(7)
    ranges = [(0, len(data)), (0, 1), (len(data) - 1, len(data)), (100, 100)]
    ranges += [(a, a + rnd.randrange(1, 300_000)) for a in (rnd.randrange(len(data)) for _ in range(20))]
    for start, end in ranges:
        assert run(silo.backend.read_range, "data/blob.bin", start, end, meta.version) == data[start:end], (start, end)


def test_read_past_eof_is_short(silo: Silo) -> None:
    meta = run(silo.backend.stat, "hello.txt")
    assert run(silo.backend.read_range, "hello.txt", 5, 1000, meta.version) == FILES["hello.txt"][5:]


def test_read_empty_file(silo: Silo) -> None:
    meta = run(silo.backend.stat, "empty.bin")
    assert run(silo.backend.read_range, "empty.bin", 0, 10, meta.version) == b""


def test_read_missing_is_enoent(silo: Silo) -> None:
    expect_errno(errno.ENOENT, silo.backend.read_range, "nope", 0, 10, "v")


def test_replaced_object_gets_new_version_and_old_is_stale(silo: Silo) -> None:
    silo.replace("mutable.txt", b"first version")
    old = run(silo.backend.stat, "mutable.txt")
    silo.replace("mutable.txt", b"second version, longer")
    new = run(silo.backend.stat, "mutable.txt")
    assert new.version != old.version and new.size == len(b"second version, longer")
    assert run(silo.backend.read_range, "mutable.txt", 0, 100, new.version) == b"second version, longer"
    expect_errno(errno.ESTALE, silo.backend.read_range, "mutable.txt", 0, 100, old.version)


def test_concurrent_reads(silo: Silo) -> None:
    data = FILES["data/blob.bin"]
    meta = run(silo.backend.stat, "data/blob.bin")
    step = 256 * 1024
    got: dict[int, bytes] = {}

    async def main() -> None:
        async def one(start: int) -> None:
            got[start] = await silo.backend.read_range("data/blob.bin", start, start + step, meta.version)

        async with trio.open_nursery() as nursery:
            for start in range(0, len(data), step):
                nursery.start_soon(one, start)

    run(main)
    assert b"".join(got[k] for k in sorted(got)) == data


def test_a_backend_rooted_below_the_top(silo: Silo) -> None:
    if silo.rooted is None:
        pytest.skip("this silo has no way to root a backend below its top")
    backend = silo.rooted("data")
    assert run(backend.stat, "").is_dir
    assert {m.name: m.is_dir for m in run(backend.list_dir, "")} == {"blob.bin": False, "nested": True}
    meta = run(backend.stat, "blob.bin")
    assert run(backend.read_range, "blob.bin", 10, 20, meta.version) == FILES["data/blob.bin"][10:20]
    assert set(names(run(backend.list_dir, "nested/deep"))) == {"leaf.txt"}
    expect_errno(errno.ENOENT, backend.stat, "hello.txt")


def test_object_and_prefix_is_a_directory(silo: Silo) -> None:
    if not silo.flat_keys:
        pytest.skip("only object stores can hold a key that is also a prefix")
    assert run(silo.backend.stat, "both").is_dir
    listing = run(silo.backend.list_dir, "")
    assert [m.is_dir for m in listing if m.name == "both"] == [True]
    assert set(names(run(silo.backend.list_dir, "both"))) == {"child"}


def test_refused_credentials_are_eacces(silo: Silo) -> None:
    if silo.denied is None:
        pytest.skip("this server does not check credentials")
    backend = silo.denied()
    expect_errno(errno.EACCES, backend.stat, "hello.txt")
    expect_errno(errno.EACCES, backend.list_dir, "")


def test_stats_count_calls_errors_and_bytes(silo: Silo) -> None:
    before = silo.backend.stats.totals()
    meta = run(silo.backend.stat, "hello.txt")
    run(silo.backend.read_range, "hello.txt", 0, 5, meta.version)
    expect_errno(errno.ENOENT, silo.backend.stat, "nope")
    after = silo.backend.stats.totals()
    assert after["requests"] - before["requests"] == 3
    assert after["bytes"] - before["bytes"] == 5
    assert after["errors"] == before["errors"]  # ENOENT is an answer, not an error
    assert silo.backend.stats.calls["stat"].count >= 2 and silo.backend.stats.calls["stat"].sum > 0  # timed
