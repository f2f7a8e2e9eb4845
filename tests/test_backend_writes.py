"""The writable half of the Backend conformance suite: every silo in tests.silos.SILOS runs it.

What a WritableBackend promises (vfs/mounts/base.py): atomic whole-file commits that carry a
precondition (create only if absent, replace only the version seen), deletes, directories, renames
of files and directories (object stores: key by key, bounded), and a stored mtime. Each test works
in a directory of its own, so the order of tests does not matter.
"""

from __future__ import annotations

import errno
import itertools
import os
import random
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import pytest
import trio

from tests.silos import SILOS, Silo, open_silo
from vfs.mounts.base import Backend, ObjectMeta, WritableBackend

_dirs = itertools.count()


def run(fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
    return trio.run(lambda: fn(*args, **kwargs))


@pytest.fixture(scope="module", params=SILOS)
def silo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Silo]:
    with open_silo(request.param, tmp_path_factory.mktemp(request.param)) as s:
        yield s


@pytest.fixture
def w(silo: Silo) -> WritableBackend:
    assert isinstance(silo.backend, WritableBackend), f"{silo.backend.describe()} is not writable"
    return silo.backend


@pytest.fixture
def top(w: WritableBackend) -> str:
    """A fresh directory for one test."""
    path = f"w{next(_dirs)}"
    run(w.mkdir, path)
    return path


@pytest.fixture
def src(tmp_path: Path) -> Callable[[bytes], str]:
    def make(data: bytes) -> str:
        p = tmp_path / f"src-{len(list(tmp_path.iterdir()))}"
        p.write_bytes(data)
        return str(p)
    return make


def expect_errno(err: int, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> None:
    with pytest.raises(OSError) as info:
        run(fn, *args, **kwargs)
    assert info.value.errno == err, f"expected {errno.errorcode[err]}, got {info.value!r}"


def read_all(b: Backend, path: str) -> bytes:
    meta = run(b.stat, path)
    return run(b.read_range, path, 0, meta.size, meta.version) if meta.size else b""


def listed(b: Backend, path: str) -> dict[str, ObjectMeta]:
    return {m.name: m for m in run(b.list_dir, path)}


def test_create_then_read_back(w: WritableBackend, silo: Silo, top: str, src: Callable[[bytes], str]) -> None:
    data = random.Random(1).randbytes(100_000)
    meta = run(w.write_file, f"{top}/new.bin", src(data), None)
    assert (meta.path, meta.is_dir, meta.size) == (f"{top}/new.bin", False, len(data)) and meta.version
    assert run(w.stat, f"{top}/new.bin").version == meta.version
    assert read_all(w, f"{top}/new.bin") == data
    assert listed(w, top)["new.bin"].size == len(data)
    if silo.fetch is not None:
        assert silo.fetch(f"{top}/new.bin") == data


def test_create_empty_file(w: WritableBackend, top: str, src: Callable[[bytes], str]) -> None:
    meta = run(w.write_file, f"{top}/empty", src(b""), None)
    assert meta.size == 0 and run(w.stat, f"{top}/empty").size == 0


def test_create_over_an_existing_file_is_estale(w: WritableBackend, top: str, src: Callable[[bytes], str]) -> None:
    run(w.write_file, f"{top}/f", src(b"first"), None)
    expect_errno(errno.ESTALE, w.write_file, f"{top}/f", src(b"second"), None)
    assert read_all(w, f"{top}/f") == b"first"


def test_replace_with_the_version_seen(w: WritableBackend, top: str, src: Callable[[bytes], str]) -> None:
    old = run(w.write_file, f"{top}/f", src(b"old bytes"), None)
    new = run(w.write_file, f"{top}/f", src(b"new bytes, longer"), old.version)
    assert new.version != old.version and new.size == len(b"new bytes, longer")
    assert read_all(w, f"{top}/f") == b"new bytes, longer"
    expect_errno(errno.ESTALE, w.read_range, f"{top}/f", 0, 5, old.version)


def test_a_concurrent_writer_is_never_overwritten(w: WritableBackend, silo: Silo, top: str, src: Callable[[bytes], str]) -> None:
    seen = run(w.write_file, f"{top}/f", src(b"ours, first"), None)
    silo.replace(f"{top}/f", b"theirs, written behind our back")
    expect_errno(errno.ESTALE, w.write_file, f"{top}/f", src(b"ours, second"), seen.version)
    assert read_all(w, f"{top}/f") == b"theirs, written behind our back"


def test_replacing_a_deleted_file_is_estale(w: WritableBackend, top: str, src: Callable[[bytes], str]) -> None:
    seen = run(w.write_file, f"{top}/f", src(b"x"), None)
    run(w.delete, f"{top}/f")
    expect_errno(errno.ESTALE, w.write_file, f"{top}/f", src(b"y"), seen.version)
    expect_errno(errno.ENOENT, w.stat, f"{top}/f")


def test_large_file_in_parts(silo: Silo, w: WritableBackend, top: str, src: Callable[[bytes], str]) -> None:
    b = silo.small_parts() if silo.small_parts is not None else w
    assert isinstance(b, WritableBackend)
    data = random.Random(2).randbytes(12 * 1024 * 1024 + 777)
    meta = run(b.write_file, f"{top}/big.bin", src(data), None)
    assert meta.size == len(data)
    got = run(b.read_range, f"{top}/big.bin", 0, len(data), meta.version)
    assert got == data
    replaced = data[::-1]
    meta2 = run(b.write_file, f"{top}/big.bin", src(replaced), meta.version)
    assert run(b.read_range, f"{top}/big.bin", 0, len(data), meta2.version) == replaced


def test_mtime_is_kept(w: WritableBackend, top: str, src: Callable[[bytes], str]) -> None:
    when = 1_600_000_000 * 10**9
    meta = run(w.write_file, f"{top}/f", src(b"dated"), None, when)
    assert meta.mtime_ns == when
    assert run(w.stat, f"{top}/f").mtime_ns == when
    later = when + 86400 * 10**9
    after = run(w.set_mtime, f"{top}/f", later)
    assert after.mtime_ns == later and run(w.stat, f"{top}/f").mtime_ns == later
    assert read_all(w, f"{top}/f") == b"dated"


def test_odd_names(w: WritableBackend, top: str, src: Callable[[bytes], str]) -> None:
    name = "sp ace \u00fc\u00f1\u4e2d%+&=#'.txt"
    run(w.write_file, f"{top}/{name}", src(b"odd"), None)
    assert set(listed(w, top)) == {name}
    assert read_all(w, f"{top}/{name}") == b"odd"


def test_delete(w: WritableBackend, top: str, src: Callable[[bytes], str]) -> None:
    run(w.write_file, f"{top}/f", src(b"x"), None)
    run(w.delete, f"{top}/f")
    expect_errno(errno.ENOENT, w.stat, f"{top}/f")
    assert listed(w, top) == {}
    expect_errno(errno.ENOENT, w.delete, f"{top}/f")


def test_mkdir_and_rmdir(w: WritableBackend, top: str, src: Callable[[bytes], str]) -> None:
    run(w.mkdir, f"{top}/d")
    assert run(w.stat, f"{top}/d").is_dir and listed(w, top)["d"].is_dir
    assert run(w.list_dir, f"{top}/d") == []
    expect_errno(errno.EEXIST, w.mkdir, f"{top}/d")
    run(w.write_file, f"{top}/d/f", src(b"x"), None)
    expect_errno(errno.ENOTEMPTY, w.rmdir, f"{top}/d")
    expect_errno(errno.ENOTDIR, w.rmdir, f"{top}/d/f")
    run(w.delete, f"{top}/d/f")
    assert run(w.stat, f"{top}/d").is_dir, "an emptied directory made by mkdir stays"
    run(w.rmdir, f"{top}/d")
    expect_errno(errno.ENOENT, w.stat, f"{top}/d")
    expect_errno(errno.ENOENT, w.rmdir, f"{top}/d")


def test_mkdir_over_a_file_is_eexist(w: WritableBackend, top: str, src: Callable[[bytes], str]) -> None:
    run(w.write_file, f"{top}/f", src(b"x"), None)
    expect_errno(errno.EEXIST, w.mkdir, f"{top}/f")


def test_rename_file(w: WritableBackend, top: str, src: Callable[[bytes], str]) -> None:
    run(w.write_file, f"{top}/a", src(b"aaa"), None)
    run(w.rename, f"{top}/a", f"{top}/b")
    expect_errno(errno.ENOENT, w.stat, f"{top}/a")
    assert read_all(w, f"{top}/b") == b"aaa"
    assert set(listed(w, top)) == {"b"}


def test_rename_file_replaces_target(w: WritableBackend, top: str, src: Callable[[bytes], str]) -> None:
    run(w.write_file, f"{top}/a", src(b"new"), None)
    run(w.write_file, f"{top}/b", src(b"old target"), None)
    run(w.rename, f"{top}/a", f"{top}/b")
    assert read_all(w, f"{top}/b") == b"new" and set(listed(w, top)) == {"b"}


def test_rename_noreplace_is_eexist(w: WritableBackend, top: str, src: Callable[[bytes], str]) -> None:
    run(w.write_file, f"{top}/a", src(b"a"), None)
    run(w.write_file, f"{top}/b", src(b"b"), None)
    expect_errno(errno.EEXIST, w.rename, f"{top}/a", f"{top}/b", replace=False)
    assert read_all(w, f"{top}/a") == b"a" and read_all(w, f"{top}/b") == b"b"


def test_rename_missing_is_enoent(w: WritableBackend, top: str) -> None:
    expect_errno(errno.ENOENT, w.rename, f"{top}/nope", f"{top}/other")


def test_rename_directory(w: WritableBackend, top: str, src: Callable[[bytes], str]) -> None:
    run(w.mkdir, f"{top}/d")
    run(w.mkdir, f"{top}/d/sub")
    run(w.mkdir, f"{top}/d/emptysub")
    for name, data in {"d/x": b"x", "d/sub/y": b"yy"}.items():
        run(w.write_file, f"{top}/{name}", src(data), None)
    run(w.rename, f"{top}/d", f"{top}/e")
    expect_errno(errno.ENOENT, w.stat, f"{top}/d")
    assert set(listed(w, top)) == {"e"}
    assert set(listed(w, f"{top}/e")) == {"x", "sub", "emptysub"}
    assert read_all(w, f"{top}/e/sub/y") == b"yy"
    assert run(w.list_dir, f"{top}/e/emptysub") == []


def test_rename_directory_over_a_limit(w: WritableBackend, top: str, src: Callable[[bytes], str]) -> None:
    run(w.mkdir, f"{top}/d")
    for i in range(5):
        run(w.write_file, f"{top}/d/f{i}", src(b"x"), None)
    if w.atomic_dir_rename:
        run(w.rename, f"{top}/d", f"{top}/e", limit=2)  # one call of the silo: no limit applies
        assert len(listed(w, f"{top}/e")) == 5
        return
    expect_errno(errno.EXDEV, w.rename, f"{top}/d", f"{top}/e", limit=2)
    assert len(listed(w, f"{top}/d")) == 5
    expect_errno(errno.ENOENT, w.stat, f"{top}/e")


def test_rename_directory_onto_a_non_empty_one_is_enotempty(w: WritableBackend, top: str, src: Callable[[bytes], str]) -> None:
    run(w.mkdir, f"{top}/d")
    run(w.mkdir, f"{top}/e")
    run(w.write_file, f"{top}/e/f", src(b"x"), None)
    expect_errno(errno.ENOTEMPTY, w.rename, f"{top}/d", f"{top}/e")


def test_writes_are_counted(w: WritableBackend, top: str, src: Callable[[bytes], str]) -> None:
    before = (w.stats.requests, w.stats.written)
    run(w.write_file, f"{top}/f", src(b"12345"), None)
    assert (w.stats.requests - before[0], w.stats.written - before[1]) == (1, 5)
