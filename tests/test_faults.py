"""Faults injected into a backend (vfs/mounts/faults.py): the `faults` table of a mount is checked
like any option; injected errors, delays and truncated bodies reach a reader as errors, never as wrong
bytes (a short body is never cached); and through the kernel, a local silo with 30% of its reads
failing serves every file byte-exact once its retries succeed, the failures counted in `.vfs/stats`.
"""

from __future__ import annotations

import errno
import json
import random
import tomllib
from pathlib import Path

import pytest
import trio

from tests.kernel import errno_of, fuse_available, read_file, vfs_mount
from tests.test_metadata import SlowMemory
from tests.test_reader import BS, cache, open_file
from vfs.config import ConfigError, parse
from vfs.mounts.faults import Faults, FaultSpec
from vfs.reader import Reader


def config_with(faults: str) -> dict:
    return tomllib.loads(f'[[mount]]\npath = "/m"\nbackend = "memory"\nfaults = {faults}\n')


def test_the_faults_table_is_checked_like_any_option() -> None:
    spec = parse(config_with('{ rate = 0.25, errno = "ETIMEDOUT", ops = "read_range, list_dir", seed = 7 }'), "f.toml").mounts[0].faults
    assert spec == FaultSpec(rate=0.25, errno="ETIMEDOUT", ops="read_range, list_dir", seed=7)
    assert spec.calls() == ("read_range", "list_dir")
    for bad, key in (('{ rate = 2 }', "rate"), ('{ errno = "EWHAT" }', "errno"), ('{ ops = "read" }', "ops"),
                     ('{ delay = -1 }', "delay"), ('{ rat = 0.1 }', "rat")):
        with pytest.raises(ConfigError) as info:
            parse(config_with(bad), "f.toml")
        assert "mount #1 (/m).faults" in str(info.value) and key in str(info.value), str(info.value)
    assert parse(config_with("{}"), "f.toml").mounts[0].faults == FaultSpec()


def test_injected_errors_and_cut_bodies_reach_the_reader_as_errors_never_as_bytes() -> None:
    backend = SlowMemory()
    data = random.Random(1).randbytes(3 * BS + 5)
    backend.put("obj", data)
    backend.faults = Faults(FaultSpec(ops="read_range", truncate=True))
    reader = Reader(cache())

    async def main() -> None:
        fh = open_file(reader, backend, "obj")
        backend.faults.inject(1)
        with pytest.raises(OSError) as cut:  # half a block came back: an error, and nothing cached
            await reader.read(fh, 0, BS)
        assert cut.value.errno == errno.EIO
        assert await reader.read(fh, 0, len(data)) == data
        backend.faults = Faults(FaultSpec(errno="EHOSTDOWN", ops="read_range"))
        fh2 = open_file(reader, backend, "obj")
        backend.faults.inject(1)
        assert await reader.read(fh2, 0, len(data)) == data  # cached: the silo is not asked
        assert backend.faults.injected == 0
        backend.put("other", b"x" * 10)
        backend.faults.inject(2)
        fh3 = open_file(reader, backend, "other")
        with pytest.raises(OSError) as down:
            await reader.read(fh3, 0, 10)
        assert down.value.errno == errno.EHOSTDOWN and backend.faults.injected == 1

    trio.run(main)


@pytest.mark.kernel
@pytest.mark.skipif(fuse_available() is not None, reason=str(fuse_available()))
def test_a_silo_failing_a_third_of_its_reads_serves_every_byte_right(tmp_path: Path) -> None:
    root = tmp_path / "silo"
    root.mkdir()
    files = {f"f{i:02}.bin": random.Random(i).randbytes(random.Random(i).randrange(1, 3 * 1024 * 1024)) for i in range(30)}
    for name, data in files.items():
        (root / name).write_bytes(data)
    config = {"cache": {"block_size": "1MiB"},
              "mount": [{"path": "/l", "backend": "local", "root": str(root),
                         "faults": {"rate": 0.3, "errno": "EIO", "ops": "read_range", "seed": 5}}]}
    with vfs_mount(tmp_path, config) as m:
        failed = wrong = 0
        for name, data in files.items():
            for _ in range(40):  # each try fetches only the blocks not cached yet
                err = errno_of(read_file, m.path / "l" / name)
                if err is None:
                    break
                assert err == errno.EIO
                failed += 1
            got = read_file(m.path / "l" / name)
            wrong += got != data
        stats = json.loads(read_file(m.path / ".vfs" / "stats"))["backends"]["/l"]
        print(f"30 files: {failed} reads failed (EIO) and were tried again, {wrong} wrong; silo errors {stats['errors']}")
        assert wrong == 0 and failed > 0 and stats["errors"] >= failed
    assert "faults injected" in m.log_text()
