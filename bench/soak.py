"""The soak: many concurrent readers for a long time over a working set larger than the RAM tier,
every byte they read checked, and the vfs process's memory watched.

A moto S3 server (started here, on 127.0.0.1) holds `--files` objects of `--file-size` bytes whose
contents are known without storing them: the file is a run of little-endian 64-bit words, word i of
file f being (f << 40) | i, so any range at any offset can be checked by recomputing it. vfs mounts
the bucket with a small RAM tier (`--ram`, default 64 MiB) and no SSD tier (or `--ssd SIZE`), and
`--readers` processes read until the time is up: half of their reads are whole files in 1 MiB
pieces, half are ranges of random length at random (unaligned) offsets; after each read the kernel's
page cache of the file is dropped (POSIX_FADV_DONTNEED) so the next read reaches vfs.

Every `--interval` seconds a line: elapsed time, RSS and peak RSS (VmHWM) of the vfs process,
throughput over the interval, reads, errors and wrong bytes so far. At the end a summary (also as
JSON with `--json FILE`), and exit status 1 on any error, any wrong byte, a peak RSS above the RAM
tier plus rss_allowance(), or a dead mount.

    python bench/soak.py --minutes 3 --readers 32        (scripts/soak runs scripts/setup first)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, MutableSequence

import numpy as np

from common import MiB  # common also puts the repository on sys.path
from tests.kernel import fuse_available, start_mount, stop_mount
from tests.silos.s3 import moto_server
from vfs.cache.tiered import SSD_QUEUE_BYTES
from vfs.units import format_size, parse_size

log = logging.getLogger("soak")

BUCKET = "soak"
# What the vfs process may hold beyond its RAM tier (rss_allowance), measured with 4 MiB blocks and
# no SSD tier (peak VmHWM minus the RAM tier): 195-203 MiB with 8 readers over 32 MiB, 301 MiB with
# 32 readers over 64 MiB. Of that, ~67 MiB is the process before its first read (the interpreter with
# pyfuse3, trio, boto3, pycurl), ~70 MiB is glibc keeping freed block buffers in its per-thread arenas
# (MALLOC_ARENA_MAX=2 brings 8 readers from 235 to 177 MiB), and the rest grows by about one block per
# concurrent reader (blocks being fetched and served outside the RAM tier). With a 128 MiB SSD tier,
# 32 readers peaked at 534-640 MiB, 352 MiB with MALLOC_ARENA_MAX=2: the arenas again.
RSS_BASE_ALLOWANCE = 224 * MiB
BLOCK_SIZE = 4 * MiB  # the cache block of the mount (the config's default, set explicitly below)
CHUNK = MiB
MAX_RANGE = 2 * MiB
WORD = 8
# Per-reader counters in one shared array: bytes, reads, errors, wrong bytes.
FIELDS = ("bytes", "reads", "errors", "wrong")


def rss_allowance(readers: int, block_size: int, ssd: bool = False) -> int:
    """Bytes of RSS the soak allows the vfs process beyond its RAM tier: a fixed part, two blocks per
    concurrent reader, and with an SSD tier the blocks queued for its writer (SSD_QUEUE_BYTES)."""
    return RSS_BASE_ALLOWANCE + 2 * readers * block_size + (SSD_QUEUE_BYTES if ssd else 0)


def expected(file_id: int, offset: int, length: int) -> bytes:
    """The bytes of file `file_id` at [offset, offset + length)."""
    first, last = offset // WORD, (offset + length + WORD - 1) // WORD
    words = np.arange(first, last, dtype="<u8") | np.uint64(file_id << 40)
    skip = offset - first * WORD
    return words.tobytes()[skip: skip + length]


def key(file_id: int) -> str:
    return f"d{file_id % 8}/f{file_id:04d}.bin"


def seed(client: Any, files: int, size: int) -> None:
    client.create_bucket(Bucket=BUCKET)
    for f in range(files):
        client.put_object(Bucket=BUCKET, Key=key(f), Body=expected(f, 0, size))


def wrong_bytes(got: bytes, want: bytes) -> int:
    """How many bytes differ (a short read counts its missing bytes)."""
    n = min(len(got), len(want))
    a = np.frombuffer(got, dtype=np.uint8, count=n)
    b = np.frombuffer(want, dtype=np.uint8, count=n)
    return int(np.count_nonzero(a != b)) + abs(len(want) - len(got))


class Reader:
    """One reader process: reads and checks until `stop` is set, counting into its slot of `counters`."""

    def __init__(self, index: int, root: str, files: int, size: int, counters: MutableSequence[int],
                 stop: Any, problems: Any) -> None:
        self.slot = index * len(FIELDS)
        self.root, self.files, self.size = root, files, size
        self.counters, self.stop, self.problems = counters, stop, problems
        self.rng = random.Random(index)
        self.reported = 0

    def add(self, field: str, n: int) -> None:
        i = self.slot + FIELDS.index(field)
        self.counters[i] += n  # this process is the slot's only writer

    def problem(self, text: str) -> None:
        if self.reported < 3:  # the first few per reader are enough to say what went wrong
            self.reported += 1
            self.problems.put(text)

    def run(self) -> None:
        while not self.stop.is_set():
            f = self.rng.randrange(self.files)
            path = os.path.join(self.root, key(f))
            try:
                if self.rng.random() < 0.5:
                    self.whole(f, path)
                else:
                    self.ranged(f, path)
            except OSError as exc:
                self.add("errors", 1)
                self.problem(f"{path}: {exc}")

    def check(self, f: int, path: str, offset: int, got: bytes, length: int) -> None:
        bad = wrong_bytes(got, expected(f, offset, length))
        self.add("bytes", len(got))
        self.add("reads", 1)
        if bad:
            self.add("wrong", bad)
            self.problem(f"{path}: {bad} wrong bytes in [{offset}, {offset + length})")

    def whole(self, f: int, path: str) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            for offset in range(0, self.size, CHUNK):
                if self.stop.is_set():
                    break
                length = min(CHUNK, self.size - offset)
                self.check(f, path, offset, os.pread(fd, length, offset), length)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)

    def ranged(self, f: int, path: str) -> None:
        length = self.rng.randrange(1, MAX_RANGE)
        offset = self.rng.randrange(0, self.size - length)
        fd = os.open(path, os.O_RDONLY)
        try:
            self.check(f, path, offset, os.pread(fd, length, offset), length)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _reader_main(*args: Any) -> None:
    Reader(*args).run()


def proc_kib(pid: int, field: str) -> int:
    """A /proc/PID/status field in bytes (VmRSS, VmHWM), 0 if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def totals(counters: MutableSequence[int], readers: int) -> dict[str, int]:
    values = counters[:]
    return {name: sum(values[r * len(FIELDS) + i] for r in range(readers)) for i, name in enumerate(FIELDS)}


def watch(args: argparse.Namespace, pid: int, counters: MutableSequence[int], readers: list[Any],
          problems: Any) -> dict[str, Any]:
    """Print a line every interval until the time is up (or every reader died); the samples."""
    start = time.monotonic()
    end = start + args.seconds
    samples: list[dict[str, Any]] = []
    last_bytes, last_t = 0, start
    print(f"{'time':>6} {'rss':>10} {'peak rss':>10} {'MB/s':>8} {'reads':>9} {'errors':>7} {'wrong':>6}", flush=True)
    while time.monotonic() < end and any(p.is_alive() for p in readers):
        time.sleep(min(args.interval, max(0.0, end - time.monotonic())))
        now = time.monotonic()
        t = totals(counters, len(readers))
        s = {"t": round(now - start, 1), "rss": proc_kib(pid, "VmRSS"), "hwm": proc_kib(pid, "VmHWM"),
             "mb_s": round((t["bytes"] - last_bytes) / (now - last_t) / 1e6, 1), **t}
        last_bytes, last_t = t["bytes"], now
        samples.append(s)
        print(f"{s['t']:>5.0f}s {format_size(s['rss']):>10} {format_size(s['hwm']):>10} {s['mb_s']:>8.1f} "
              f"{s['reads']:>9} {s['errors']:>7} {s['wrong']:>6}", flush=True)
        while not problems.empty():
            print(f"  problem: {problems.get()}", flush=True)
    return {"samples": samples, "seconds": time.monotonic() - start}


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    ram = parse_size(args.ram)
    with moto_server(tmp) as s3:
        log.info("seeding %d x %s = %s into moto (RAM tier %s)", args.files, format_size(args.file_size),
                 format_size(args.files * args.file_size), format_size(ram))
        seed(s3.client(), args.files, args.file_size)
        config = {
            "cache": {"block_size": BLOCK_SIZE, "ram_size": ram, "ssd_size": parse_size(args.ssd),
                      "ssd_dir": str(tmp / "ssd")},
            "mount": [{"path": f"/{BUCKET}", "bucket": BUCKET, **s3.options()}],
        }
        m = start_mount(tmp, config, extra_args=["--log-level", "warning"])
        try:
            result = soak(args, m.proc.pid, str(m.path / BUCKET))
            result["mount_alive"] = m.alive()
            with contextlib.suppress(OSError, ValueError):
                result["vfs_stats"] = json.loads((m.path / ".vfs" / "stats").read_text())
        finally:
            stop_mount(m)
    result["ram_budget"] = ram
    result["rss_allowance"] = rss_allowance(args.readers, BLOCK_SIZE, parse_size(args.ssd) > 0)
    return result


def soak(args: argparse.Namespace, pid: int, root: str) -> dict[str, Any]:
    rss_before = proc_kib(pid, "VmRSS")  # the mounted process before any read: the interpreter's share
    ctx = multiprocessing.get_context("fork")
    counters = ctx.Array("q", args.readers * len(FIELDS), lock=False)
    stop = ctx.Event()
    problems = ctx.Queue()
    readers = [ctx.Process(target=_reader_main, args=(i, root, args.files, args.file_size, counters, stop, problems),
                           daemon=True) for i in range(args.readers)]
    for p in readers:
        p.start()
    try:
        result = watch(args, pid, counters, readers, problems)
    finally:
        stop.set()
        for p in readers:
            p.join(60)
            if p.is_alive():
                p.kill()
    result.update(totals(counters, args.readers))
    result["readers_died"] = sum(1 for p in readers if p.exitcode not in (0, None))
    result["peak_rss"] = proc_kib(pid, "VmHWM")
    result["rss_before"] = rss_before
    result["problems"] = [problems.get() for _ in range(50) if not problems.empty()]
    return result


def verdict(result: dict[str, Any]) -> list[str]:
    """What failed, one line each; empty when the soak passed."""
    failed = []
    if result["errors"]:
        failed.append(f"{result['errors']} read errors")
    if result["wrong"]:
        failed.append(f"{result['wrong']} wrong bytes")
    if result["readers_died"]:
        failed.append(f"{result['readers_died']} readers died")
    if not result["mount_alive"]:
        failed.append("the vfs process died")
    if result["peak_rss"] > result["ram_budget"] + result["rss_allowance"]:
        failed.append(f"peak RSS {format_size(result['peak_rss'])} above the RAM tier "
                      f"{format_size(result['ram_budget'])} + {format_size(result['rss_allowance'])}")
    if not result["reads"]:
        failed.append("no read completed")
    return failed


def summary(args: argparse.Namespace, result: dict[str, Any]) -> str:
    mb_s = result["bytes"] / result["seconds"] / 1e6 if result["seconds"] else 0.0
    tiers = result.get("vfs_stats", {}).get("tiers", {})
    ram_tier = tiers.get("ram", {}) if isinstance(tiers.get("ram"), dict) else {}
    return (f"soak: {args.readers} readers, {result['seconds']:.0f} s, {args.files} files x "
            f"{format_size(args.file_size)} over a {format_size(result['ram_budget'])} RAM tier: "
            f"{result['reads']} reads, {format_size(result['bytes'])} checked, {mb_s:.1f} MB/s, "
            f"{result['errors']} errors, {result['wrong']} wrong bytes; vfs peak RSS "
            f"{format_size(result['peak_rss'])} (RAM tier + {format_size(result['peak_rss'] - result['ram_budget'])}; "
            f"{format_size(result['rss_before'])} before the first read); "
            f"RAM tier hits {ram_tier.get('hits', '-')}, misses {ram_tier.get('misses', '-')}, "
            f"evictions {ram_tier.get('evictions', '-')}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="soak")
    p.add_argument("--minutes", type=float, default=None, help="how long the readers read (default 3)")
    p.add_argument("--seconds", type=float, default=None, help="the same in seconds (for short runs)")
    p.add_argument("--readers", type=int, default=32, help="concurrent reader processes (default 32)")
    p.add_argument("--files", type=int, default=48, help="objects in the bucket (default 48)")
    p.add_argument("--file-size", type=parse_size, default=8 * MiB, help="bytes per object (default 8MiB)")
    p.add_argument("--ram", default="64MiB", help="the RAM tier (default 64MiB)")
    p.add_argument("--ssd", default="0", help="the SSD tier (default 0: none)")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between progress lines (default 10)")
    p.add_argument("--json", type=Path, help="write the result here as JSON")
    args = p.parse_args(argv)
    if args.minutes is not None and args.seconds is not None:
        p.error("give --minutes or --seconds, not both")
    args.seconds = args.seconds if args.seconds is not None else (args.minutes if args.minutes is not None else 3.0) * 60
    if args.file_size <= MAX_RANGE:
        p.error(f"--file-size must be above {format_size(MAX_RANGE)}")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    reason = fuse_available()
    if reason:
        print(f"soak: {reason}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="vfs-soak-") as tmp:
        result = run(args, Path(tmp))
    print(summary(args, result), flush=True)
    failed = verdict(result)
    result["failed"] = failed
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    for line in failed:
        print(f"soak: FAILED: {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
