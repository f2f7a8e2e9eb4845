"""Reads under faults, through a real kernel mount of S3 (moto) behind the fault proxy
(tests/fault_proxy.py): 300 small objects and one of 64 MiB, read by 8 threads with 10% and 30% of
the object GETs answered 503/500/429, reset before or in the middle of the answer, or answered and
lost. Not one wrong byte; a read fails only when every try of one of its GETs met a fault, and then
with the errno README's table promises (EIO: read() never answers EAGAIN); the retries show in
`vfs stats --json`. With every request failing (100% 503s, every request reset, connections refused)
an uncached read gets its errno within the bound the configured tries and timeouts give, the mount
stays up and serves what it cached, and the read succeeds again once the silo heals.

Figures (failed reads, faults, retries, how long a reader waited) are printed:
`pytest -s tests/test_kernel_read_faults.py`.
"""

from __future__ import annotations

import concurrent.futures
import errno
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.fault_proxy import FaultProxy
from tests.kernel import VfsMount, errno_of, fuse_available, read_file, vfs_mount, wait_until
from tests.silos.s3 import MotoS3, moto_server
from vfs.mounts.s3 import S3Options

pytestmark = [pytest.mark.kernel, pytest.mark.skipif(fuse_available() is not None, reason=str(fuse_available()))]

BUCKET = "reads"
SMALL = 300  # objects of 1-200 KiB: one block, one GET each
BIG = 64 << 20  # one object of 16 blocks of 4 MiB, read sequentially (prefetch, parallel GETs)
THREADS = 8
# The mix of faults on object GETs ("stall" is left out: it costs time, and timeouts are their own test).
KINDS = ("503", "500", "429", "reset_before", "reset_response", "lost_response")
OBJECT_GETS = rf"^GET /{BUCKET}/"  # not the listings (GET /reads?list-type=2...)
# Small timeouts keep a dead silo's cost short: 2 s to connect, 3 s without a byte (libcurl's
# LOW_SPEED_TIME, whole seconds) to read.
CONNECT_TIMEOUT, READ_TIMEOUT = 2.0, 3.0
# vfs/mounts/s3_curl.py: a block GET is tried up to max_attempts times, and waits up to
# min(20, 0.05 * 2**k) s (full jitter) before try k + 1.
CURL_BACKOFF_BASE, CURL_BACKOFF_CAP = 0.05, 20.0
# A failed read(2) of a file's first pages costs the kernel two FUSE reads: its readahead (whose
# error is dropped) and then the read of the page itself (whose error the reader gets).
KERNEL_TRIES = 2
HEAL_WAIT = 60.0  # bound on the wait for a read to succeed after the silo heals (the probe backs off to 15 s)


def errno_names(errnos: list[int]) -> list[str]:
    return sorted(errno.errorcode.get(e, str(e)) for e in errnos)


def worst_read_seconds(max_attempts: int) -> float:
    """The longest a read of one uncached block may take while every try fails: each try bounded by
    the connect and read timeouts, plus the longest backoffs, for each FUSE read the kernel sends."""
    backoff = sum(min(CURL_BACKOFF_CAP, CURL_BACKOFF_BASE * 2**k) for k in range(1, max_attempts))
    return KERNEL_TRIES * (max_attempts * (CONNECT_TIMEOUT + READ_TIMEOUT) + backoff)


def objects() -> dict[str, bytes]:
    """The read set (small/, big/) and cold/: files only the outage tests read, one each, in a directory
    of their own (two files read in one directory make vfs fetch all its small files: vfs/sweep.py)."""
    rng = random.Random(2026)
    files = {f"small/f{i:03d}.bin": rng.randbytes(rng.randrange(1 << 10, 200 << 10)) for i in range(SMALL)}
    files["big/large.bin"] = rng.randbytes(BIG)
    files["cold/c.bin"] = rng.randbytes(300 << 10)
    return files


def read_raw(path: Path) -> bytes:
    """The whole file by read(2) until it returns 0 bytes; an error raises with its errno. Not Python's
    `open().read()`, which on EAGAIN would return what it has (or None) and no error (vfs answers EIO
    instead: test_a_throttled_read_is_an_error_to_python)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def silo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MotoS3, dict[str, bytes]]]:
    files = objects()
    with moto_server(tmp_path_factory.mktemp("moto")) as m:
        client = m.client()
        client.create_bucket(Bucket=BUCKET)
        with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(lambda kv: client.put_object(Bucket=BUCKET, Key=kv[0], Body=kv[1]), files.items()))
        yield m, files


def config(moto: MotoS3, proxy: FaultProxy, max_attempts: int | None = None) -> dict[str, Any]:
    tries = {} if max_attempts is None else {"max_attempts": max_attempts}
    return {
        "cache": {"ram_size": 256 << 20},  # everything read stays cached: a second read asks no silo
        "metadata": {"ttl": 600, "negative_ttl": 600},  # one listing before the faults answers every lookup
        "mount": [{"path": "/s3", **moto.options(bucket=BUCKET, endpoint_url=proxy.url, **tries,
                                                 connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT)}],
    }


def silo_stats(m: VfsMount) -> dict[str, Any]:
    return json.loads(read_file(m.path / ".vfs" / "stats"))["backends"]["/s3"]


def cli_stats(m: VfsMount) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "vfs", "stats", "--json", str(m.path)], capture_output=True,
                          text=True, timeout=60, cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["backends"]["/s3"]


def wrong_bytes(got: bytes, want: bytes) -> int:
    """Bytes that differ, a missing or extra byte counting as wrong."""
    if got == want:
        return 0
    return sum(a != b for a, b in zip(got, want)) + abs(len(got) - len(want))


def read_all(top: Path, names: list[str], files: dict[str, bytes]) -> tuple[int, dict[str, int]]:
    """Read `names` through the kernel with THREADS threads: (wrong bytes, {name: errno} of failed reads)."""
    def one(name: str) -> tuple[str, int, int | None]:
        try:
            return name, wrong_bytes(read_raw(top / name), files[name]), None
        except OSError as exc:
            return name, 0, exc.errno

    wrong, failed = 0, {}
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        for name, bad, err in pool.map(one, names):
            wrong += bad
            if err is not None:
                failed[name] = err
    return wrong, failed


def listed(top: Path, files: dict[str, bytes]) -> None:
    """Look at every name once (faults off): the listings answer the kernel's lookups from now on."""
    for d in ("small", "big", "cold"):
        assert sorted(os.listdir(top / d)) == sorted(n.removeprefix(f"{d}/") for n in files if n.startswith(f"{d}/"))


# The mount's own retry budget (S3Options' default, 5 tries per block GET) at both rates. A read fails
# only when every try of its block met a fault: at least 5 in a row (the reader's own load), and for a
# small file far more (the kernel's readahead and its read of the page, vfs's sweep of the directory,
# each with 5 tries). At 10%: <= 1e-5 per block, ~3e-3 for the ~320 blocks read: none may fail. At 30%:
# <= 0.3**5 = 2.4e-3 per block, < 1 expected; a failure must carry a promised errno and read right
# when read again, and more than 8 (a chance < 1e-6 with working retries) means the retries are broken.
@pytest.mark.parametrize("rate", [0.10, 0.30], ids=["10pct", "30pct"])
def test_reads_under_faults_are_byte_exact(silo: tuple[MotoS3, dict[str, bytes]], tmp_path: Path, rate: float) -> None:
    moto, files = silo
    names = sorted(n for n in files if not n.startswith("cold/"))
    max_attempts = S3Options.__dataclass_fields__["max_attempts"].default
    with FaultProxy(moto.endpoint, seed=int(rate * 100)) as proxy, vfs_mount(tmp_path, config(moto, proxy)) as m:
        top = m.path / "s3"
        listed(top, files)
        retries_before = silo_stats(m)["retries"]
        proxy.set_faults(rate, KINDS, match=OBJECT_GETS)
        start = time.monotonic()
        wrong, failed = read_all(top, names, files)
        took = time.monotonic() - start
        requests, faults, _ = proxy.snapshot()
        proxy.set_faults(0.0)
        stats, cli = silo_stats(m), cli_stats(m)
        # What failed reads again, right, once the faults stop (the failed block was never cached).
        wrong_again, failed_again = read_all(top, sorted(failed), files)
        # Everything read is cached: a third pass sends no request and reads the same bytes.
        before = proxy.requests
        wrong_cached, failed_cached = read_all(top, names, files)
        assert proxy.requests == before
    assert "Traceback" not in m.log_text(), m.log_text()[-3000:]
    print(f"\n{rate:.0%} of object GETs faulted, {max_attempts} tries per GET: {len(names)} files "
          f"({sum(len(files[n]) for n in names) >> 20} MiB) read by {THREADS} threads in {took:.1f} s; "
          f"{wrong} wrong bytes; "
          f"{len(failed)} reads failed {errno_names(list(failed.values()))}; {requests} requests, {faults} faults "
          f"{dict(proxy.faults)}; retries in vfs stats: {stats['retries'] - retries_before}")
    assert wrong == 0 and wrong_again == 0 and wrong_cached == 0
    assert not failed_again and not failed_cached
    # README: EIO for a read that still meets throttling (503, 429) after the retries, and for "anything
    # else" (500, a connection reset, a body cut short); ETIMEDOUT needs a stall, which is not in the mix.
    assert set(failed.values()) <= {errno.EIO}, errno_names(list(failed.values()))
    if rate <= 0.10:
        assert not failed
    else:
        assert len(failed) <= 8, failed
    assert faults >= rate * SMALL / 2  # the faults really happened
    retries = stats["retries"] - retries_before
    assert 0 < retries <= faults  # every try after a fault, and nothing else
    assert cli["retries"] >= stats["retries"]  # `vfs stats --json` shows the same counter (read just after)


# What a reader of an uncached file gets while every request fails, by the kind of failure:
# - "503": each try answered 503 ServiceUnavailable -> EIO (README: EAGAIN "the silo still throttles
#   after the retries", but read() answers EIO instead: Python's read() takes EAGAIN for "no data yet"
#   and returns a short result); an answer, so the silo stays online for the breaker.
# - "reset": each connection reset once the request is read -> EIO (README: "anything else"); a live
#   host resetting is not "cannot be reached" either (vfs/mounts/health.py UNREACHABLE).
# - "refuse": connections refused -> EHOSTDOWN: the breaker takes the silo offline at the first refused
#   call, and later reads of uncached bytes fail at once without a request; its probe (1, 2, 4, 8 s,
#   then every 15 s) brings it back online when the silo heals.
OUTAGES = {"503": errno.EIO, "reset": errno.EIO, "refuse": errno.EHOSTDOWN}
OUTAGE_ATTEMPTS = 3


@pytest.mark.parametrize("outage", sorted(OUTAGES))
def test_a_dead_silo_fails_reads_in_bounded_time_and_heals(silo: tuple[MotoS3, dict[str, bytes]], tmp_path: Path,
                                                           outage: str) -> None:
    moto, files = silo
    cached, uncached = "small/f000.bin", "cold/c.bin"
    # The longest the read may take by the configuration: 2 FUSE reads x (3 tries x (2 s connect + 3 s
    # read) + 0.1 + 0.2 s backoff) = 30.6 s. Measured: a few ms to ~0.5 s (the failures are immediate).
    bound = worst_read_seconds(OUTAGE_ATTEMPTS)
    with FaultProxy(moto.endpoint, seed=7) as proxy, vfs_mount(tmp_path, config(moto, proxy, OUTAGE_ATTEMPTS)) as m:
        top = m.path / "s3"
        listed(top, files)
        assert read_file(top / cached) == files[cached]
        requests_before = proxy.requests
        if outage == "503":
            proxy.set_faults(1.0, ("503",))
        else:
            proxy.mode = outage
        start = time.monotonic()
        got = errno_of(read_raw, top / uncached)
        waited = time.monotonic() - start
        tries = proxy.requests - requests_before
        assert got == OUTAGES[outage], errno.errorcode.get(got or 0, got)
        assert waited < bound, f"{waited:.1f} s"
        if outage != "refuse":  # every try reached the proxy: at most the configured tries per FUSE read
            assert 0 < tries <= KERNEL_TRIES * OUTAGE_ATTEMPTS, tries
        # The mount is up: the mountpoint stats, cached bytes read, listings answer, the process lives.
        assert os.stat(m.path).st_ino and m.alive()
        assert read_file(top / cached) == files[cached]
        assert os.listdir(top / "cold") == ["c.bin"]
        stats = silo_stats(m)
        assert stats["online"] == (0 if outage == "refuse" else 1), stats
        again = time.monotonic()
        assert errno_of(read_raw, top / uncached) == OUTAGES[outage]  # the failed block was not cached
        again = time.monotonic() - again
        # The silo heals; nothing is restarted or remounted.
        if outage == "503":
            proxy.set_faults(0.0)
        else:
            proxy.mode = "pass"
        healed = time.monotonic()
        wait_until(lambda: errno_of(read_raw, top / uncached) is None, HEAL_WAIT, "the read to succeed", interval=0.2)
        healed = time.monotonic() - healed
        assert read_raw(top / uncached) == files[uncached]
        assert silo_stats(m)["online"] == 1
    log = m.log_text()
    assert "Traceback" not in log, log[-3000:]
    print(f"\nsilo failing every request ({outage}): an uncached read failed with "
          f"{errno.errorcode[OUTAGES[outage]]} after {waited:.2f} s ({tries} requests; configured bound "
          f"{bound:.1f} s), again after {again:.2f} s; it read right {healed:.1f} s after the silo healed")


def test_the_retries_of_a_read_that_failed_show_in_stats(silo: tuple[MotoS3, dict[str, bytes]],
                                                        tmp_path: Path) -> None:
    moto, files = silo
    with FaultProxy(moto.endpoint, seed=8) as proxy, vfs_mount(tmp_path, config(moto, proxy, OUTAGE_ATTEMPTS)) as m:
        listed(m.path / "s3", files)
        retries_before, requests_before = silo_stats(m)["retries"], proxy.requests
        proxy.set_faults(1.0, ("503",))
        assert errno_of(read_raw, m.path / "s3" / "cold" / "c.bin") == errno.EIO
        tries = proxy.requests - requests_before  # 2 FUSE reads x 3 tries
        time.sleep(1.5)  # one rendering of .vfs/stats is served for a second (vfs/control.py STATS_REFRESH)
        retries = silo_stats(m)["retries"] - retries_before
    print(f"\na read failed after {tries} GETs; vfs stats counted {retries} retries")
    assert tries == KERNEL_TRIES * OUTAGE_ATTEMPTS
    assert retries == tries - KERNEL_TRIES  # every GET after the first of each FUSE read


def test_a_throttled_read_is_an_error_to_python(silo: tuple[MotoS3, dict[str, bytes]], tmp_path: Path) -> None:
    moto, files = silo
    with FaultProxy(moto.endpoint, seed=9) as proxy, vfs_mount(tmp_path, config(moto, proxy, OUTAGE_ATTEMPTS)) as m:
        listed(m.path / "s3", files)
        outcomes: list[object] = []
        with open(m.path / "s3" / "big" / "large.bin", "rb") as f:
            head = f.read(1 << 20)  # block 0 read (and the next prefetched); then the silo throttles
            proxy.set_faults(1.0, ("503",))
            try:
                rest = f.read()
                outcomes.append(None if rest is None else len(head) + len(rest))
            except OSError as exc:
                outcomes.append(errno.errorcode[exc.errno])
        try:
            outcomes.append(read_file(m.path / "s3" / "cold" / "c.bin"))
        except OSError as exc:
            outcomes.append(errno.errorcode[exc.errno])
    print(f"\nPython's read() of a 64 MiB and a 300 KiB file while the silo throttles: {outcomes}")
    assert outcomes == ["EIO", "EIO"]  # each read raised, none came back short
