"""The write benchmarks of vfs (`scripts/bench writes`): vfs's write modes against boto3, rclone mount
and a local disk, on ONE `rclone serve s3` of a temporary directory (bench/peers.py), in one command.

Scenarios (every measurement on a fresh mount; median of --runs runs with the min-max spread, and the
ratio vfs/baseline taken within each run):
  1  a 1 GiB file of random bytes written sequentially: `dd bs=1M conv=fsync` into a file on the mount
     in write mode `through` (dd returns once the silo holds the bytes). Baselines: boto3 `upload_file`
     of the same file (multipart, vfs's S3 part size and parallelism: 8 MiB x 4), and
     `rclone mount --vfs-cache-mode writes` (the same part size and parallelism, --vfs-write-back 0s:
     its upload starts at close, its best case) timed until the object is on the server.
  2  5,000 files of 100 KiB (one directory) copied in with `cp -r`, vfs in write mode `back`: files/s
     until every file is on the server, against rclone mount `writes` (the same write-back delay,
     --write-back-delay); and files/s until `cp` returns, against `cp -r` to a local disk directory.
  3  vfs's peak RSS (VmHWM of the mount process) while a 5 GiB file is written (mode `through`, 1 MiB
     writes, fsync; parts sent one at a time, see RSS_UPLOAD_CONCURRENCY), against the RAM budget
     (--ram) + 150 MiB. One run whatever --runs says.
Sizes and counts times --scale. dd writes to a descriptor this script opened (and keeps open in dd
too) and closes after dd exits, not to `of=FILE`: GNU dd opens `of=`, dup2()s it and closes the
original, and that first close commits an empty file (mode through) before the data arrives, which
against this server (no ETag on HEAD, an MD5 on PUT) makes the real commit ESTALE. The small files
are copied with `cp -r SRC/. DST` into one directory DST made on the server beforehand (an object
DST/.keep): `rclone serve s3` stores a directory marker `a/` as a FILE `a`, so a mkdir through vfs
(which writes that marker, as on S3) would leave nothing uploadable below it.

"On the server" is read from the served directory itself: every file there with its full size. Every
result is checked before it counts (sizes of all files, SHA-256 of the 1 GiB file and of a sample of
the small files, sampled 1 MiB pieces of the 5 GiB file, no commit pending or in conflict in vfs), so a
broken run fails instead of looking fast.

    scripts/bench writes [--scale 0.1] [--runs 3] [--only 1,2,3] [--ram 512MiB] [--write-back-delay 5]
                         [--skip-rclone] [--data-dir DIR] [--name writes] [--py-spy DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from common import MiB, mount_stats, run_scenarios, write_json

import peers
from compare import vm_hwm
from tests.kernel import fuse_available, start_mount, stop_mount, wait_until
from vfs.table import render
from vfs.units import parse_size

log = logging.getLogger("writes")

BUCKET = "bench"
# The sizes at --scale 1.
BIG_SIZE = 1024 * MiB
SMALL_COUNT = 5_000
SMALL_SIZE = 100 * 1024
RSS_SIZE = 5 * 1024 * MiB
# vfs's S3 defaults (vfs/mounts/s3.py S3Options), which boto3 and rclone are given too.
PART_SIZE = 8 * MiB
UPLOAD_CONCURRENCY = 4
# Scenario 3 sends its parts one at a time: `rclone serve s3` fails a 5 GiB upload whose parts come 4
# at a time (InvalidPart on the complete, "a part was rejected after it had been streamed to the
# backend"; boto3 upload_file as well), one at a time it takes it. 4 in flight would hold 3 more parts.
RSS_UPLOAD_CONCURRENCY = 1
DEFAULT_RAM = "512MiB"  # vfs's default [cache] ram_size
DEFAULT_WRITE_BACK = 5.0  # the default of both vfs (write_back_delay) and rclone (--vfs-write-back)
SAMPLE_FILES = 25  # small files whose SHA-256 is compared
SAMPLE_PIECES = 16  # 1 MiB pieces of the RSS file that are compared
POLL = 0.05  # seconds between two looks at the served directory
CMD_TIMEOUT = 3600.0
# Targets of the issue.
TARGET_SEQ_VS_BOTO3 = 0.8
TARGET_SEQ_VS_RCLONE = 1.5
TARGET_CP_UPLOADED_VS_RCLONE = 2.0
TARGET_CP_RETURN_VS_LOCAL = 0.5
TARGET_RSS_SLACK = 150 * MiB


# --- data ---------------------------------------------------------------------------------------------

class Data:
    """The sources of one scale, generated once into --data-dir and kept: `big` (random bytes) and the
    `small` tree of SMALL_COUNT files."""

    def __init__(self, data_dir: Path, scale: float) -> None:
        self.big_size = max(16 * MiB, int(BIG_SIZE * scale) // MiB * MiB)
        self.small_count = max(50, int(SMALL_COUNT * scale))
        self.rss_size = max(32 * MiB, int(RSS_SIZE * scale) // MiB * MiB)
        self.root = data_dir / f"writes-scale-{scale:g}"
        self.big = self.root / "big.bin"
        self.small = self.root / "small"
        self.big_sha256 = ""

    def params(self) -> dict[str, Any]:
        return {"big_size": self.big_size, "small_count": self.small_count, "small_size": SMALL_SIZE, "version": 2}

    def small_names(self) -> list[str]:
        return [f"f{i:05d}.bin" for i in range(self.small_count)]

    def ensure(self) -> None:
        marker = self.root / "complete.json"
        if marker.exists():
            saved = json.loads(marker.read_text())
            if saved.get("params") == self.params():
                self.big_sha256 = saved["big_sha256"]
                log.info("data: reusing %s", self.root)
                return
        log.info("data: writing %s (%d MiB, %d x 100 KiB)", self.root, self.big_size // MiB, self.small_count)
        if self.root.exists():
            shutil.rmtree(self.root)
        self.small.mkdir(parents=True)
        digest = hashlib.sha256()
        with open(self.big, "wb") as f:
            for _ in range(self.big_size // (16 * MiB)):
                piece = os.urandom(16 * MiB)
                digest.update(piece)
                f.write(piece)
            rest = os.urandom(self.big_size % (16 * MiB))
            digest.update(rest)
            f.write(rest)
        blob = os.urandom(SMALL_SIZE * 16)
        for i, name in enumerate(self.small_names()):
            p = self.small / name
            off = (i * 4099) % (len(blob) - SMALL_SIZE)
            p.write_bytes(blob[off: off + SMALL_SIZE])
        self.big_sha256 = digest.hexdigest()
        os.sync()
        marker.write_text(json.dumps({"params": self.params(), "big_sha256": self.big_sha256}))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(8 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


# --- the bench's shared state -------------------------------------------------------------------------

@dataclasses.dataclass
class Bench:
    args: argparse.Namespace
    data: Data
    s3: peers.S3Server
    served: Path  # the directory rclone serves: served / BUCKET is the bucket
    tmp: Path
    results: dict[str, list[dict[str, float]]] = dataclasses.field(default_factory=dict)
    errors: dict[str, str] = dataclasses.field(default_factory=dict)
    n: int = 0

    @property
    def ram(self) -> int:
        return parse_size(self.args.ram)

    def put(self, row: str, run: dict[str, float]) -> None:
        self.results.setdefault(row, []).append(run)

    def fresh(self, what: str) -> tuple[Path, str]:
        """A new work directory and a key prefix nobody used in this run."""
        self.n += 1
        d = self.tmp / f"{what}{self.n}"
        d.mkdir()
        return d, f"{what}{self.n}"

    @contextlib.contextmanager
    def vfs(self, mode: str, upload_concurrency: int = UPLOAD_CONCURRENCY) -> Iterator[tuple[Path, int]]:
        """A fresh vfs mount in write mode `mode`: (the bucket's directory in it, the mount's pid)."""
        d, _ = self.fresh("vfs")
        config = {
            "cache": {"ram_size": self.ram},
            "write": {"mode": mode, "write_back_delay": self.args.write_back_delay, "staging_dir": str(d / "staging")},
            "mount": [{"path": f"/{BUCKET}", "backend": "s3", "bucket": BUCKET, "endpoint_url": self.s3.endpoint,
                       "region": self.s3.region, "access_key_id": self.s3.access_key,
                       "secret_access_key": self.s3.secret_key,
                       "part_size": PART_SIZE, "upload_concurrency": upload_concurrency}],
        }
        m = start_mount(d, config, extra_args=["--log-level", "warning"])
        try:
            with self.profiled(m.proc.pid, f"vfs{self.n}-{mode}"):
                yield m.path / BUCKET, m.proc.pid
            if not m.alive():
                raise RuntimeError(f"vfs exited:\n{m.log_text()[-3000:]}")
        except BaseException:
            log.error("vfs's log:\n%s", m.log_text()[-3000:])
            raise
        finally:
            stop_mount(m)
            shutil.rmtree(d, ignore_errors=True)

    @contextlib.contextmanager
    def profiled(self, pid: int, label: str) -> Iterator[None]:
        """With --py-spy DIR: `py-spy record` of `pid` for the block, collapsed stacks (per thread,
        idle included) in DIR/LABEL.txt; py-spy is not a dependency (pip install py-spy)."""
        if not self.args.py_spy:
            yield
            return
        self.args.py_spy.mkdir(parents=True, exist_ok=True)
        out = self.args.py_spy / f"{label}.txt"
        spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
        if spy is None:
            raise RuntimeError("--py-spy: py-spy is not installed (.venv/bin/pip install py-spy)")
        proc = subprocess.Popen([spy, "record", "-p", str(pid), "-r", "200", "--format", "raw", "--threads", "--idle",
                                 "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            yield
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    @contextlib.contextmanager
    def rclone(self, write_back: float) -> Iterator[Path]:
        """A fresh `rclone mount --vfs-cache-mode writes` of the bucket, with vfs's part size and
        parallelism, uploading `write_back` seconds after a close."""
        d, _ = self.fresh("rclone")
        extra = ("--vfs-write-back", f"{write_back:g}s", "--s3-chunk-size", f"{PART_SIZE // MiB}M",
                 "--s3-upload-concurrency", str(UPLOAD_CONCURRENCY))
        try:
            with peers.rclone_mount(self.s3, BUCKET, d / "mnt", d / "cache", d, extra=extra, cache_mode="writes",
                                    read_only=False) as rm:
                yield rm.path
        finally:
            shutil.rmtree(d / "cache", ignore_errors=True)

    def on_server(self, key: str) -> Path:
        return self.served / BUCKET / key

    def forget(self, key: str) -> None:
        """Remove what landed under `key` from the served directory (disk space; keys are never reused)."""
        p = self.on_server(key)
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def dd_into(path: Path, source: str, count: int, bs: str = "1M") -> float:
    """Seconds of `dd if=SOURCE bs=1M count=N conv=fsync` writing to `path`, which this process opens
    (and closes after dd exits: timed too); see the module docstring for why not `of=`."""
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        # pass_fds: the child keeps `fd` open too, so its close (after dd's fsync) flushes nothing.
        r = subprocess.run(["dd", f"if={source}", f"bs={bs}", f"count={count}", "conv=fsync", "status=none"],
                           stdout=fd, stderr=subprocess.PIPE, pass_fds=(fd,), timeout=CMD_TIMEOUT)
    finally:
        os.close(fd)
    seconds = time.perf_counter() - start
    if r.returncode:
        raise RuntimeError(f"dd into {path} failed ({r.returncode}): {r.stderr.decode(errors='replace').strip()}")
    return seconds


def wait_landed(files: dict[Path, int], what: str, timeout: float) -> None:
    """Wait (at most `timeout` seconds) until every file of `files` exists on the server with its size."""
    todo = dict(files)

    def landed() -> bool:
        for p, size in list(todo.items()):
            try:
                if os.stat(p).st_size == size:
                    del todo[p]
            except FileNotFoundError:
                pass
        return not todo

    wait_until(landed, timeout, f"{what}: {len(files)} file(s) on the server", interval=POLL)


def check_big(b: Bench, key: str) -> None:
    p = b.on_server(key)
    size = p.stat().st_size
    if size != b.data.big_size:
        raise RuntimeError(f"{key}: {size} bytes on the server, expected {b.data.big_size}")
    if sha256_of(p) != b.data.big_sha256:
        raise RuntimeError(f"{key}: the bytes on the server differ from the source (SHA-256)")


def check_tree(b: Bench, key: str) -> None:
    base = b.on_server(key)
    names = b.data.small_names()
    found = sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file() and p.name != KEEP)
    if found != sorted(names):
        raise RuntimeError(f"{key}: {len(found)} files on the server, expected {len(names)} (or other names)")
    bad = [n for n in names if (base / n).stat().st_size != SMALL_SIZE]
    if bad:
        raise RuntimeError(f"{key}: {len(bad)} file(s) with a wrong size, e.g. {bad[0]}")
    for name in random.Random(key).sample(names, min(SAMPLE_FILES, len(names))):
        if sha256_of(base / name) != sha256_of(b.data.small / name):
            raise RuntimeError(f"{key}/{name}: the bytes on the server differ from the source")


def check_vfs_writes(stats: dict[str, Any], what: str) -> dict[str, Any]:
    """vfs's own account of its writes after a scenario: nothing pending, no conflict, no failure."""
    w = stats.get("writes") or {}
    if w.get("pending_commits") or w.get("conflicts") or w.get("commit_failures"):
        raise RuntimeError(f"{what}: vfs reports {w}")
    return w


# --- scenario 1: one large file written sequentially ---------------------------------------------------

def scenario_1(b: Bench) -> None:
    size, count = b.data.big_size, b.data.big_size // MiB
    src = str(b.data.big)
    for run in range(b.args.runs):
        log.info("1: run %d/%d", run + 1, b.args.runs)
        got: dict[str, float] = {}
        _, key = b.fresh("big-vfs-")
        os.sync()
        with b.vfs("through") as (root, _), b_stats(root) as stats:
            got["vfs"] = size / dd_into(root / f"{key}.bin", src, count) / 1e6
        check_vfs_writes(stats["after"], "1 vfs")
        check_big(b, f"{key}.bin")
        b.forget(f"{key}.bin")

        _, key = b.fresh("big-boto3-")
        os.sync()
        got["boto3"] = size / boto3_upload(b, src, f"{key}.bin") / 1e6
        check_big(b, f"{key}.bin")
        b.forget(f"{key}.bin")

        if not b.args.skip_rclone:
            _, key = b.fresh("big-rclone-")
            os.sync()
            with b.rclone(0.0) as root:
                start = time.perf_counter()
                dd_into(root / f"{key}.bin", src, count)
                wait_landed({b.on_server(f"{key}.bin"): size}, "1 rclone", b.args.land_timeout)
                got["rclone"] = size / (time.perf_counter() - start) / 1e6
            check_big(b, f"{key}.bin")
            b.forget(f"{key}.bin")
        b.put("1.seq", got)


def boto3_upload(b: Bench, src: str, key: str) -> float:
    from boto3.s3.transfer import TransferConfig

    client = b.s3.boto3_client()
    config = TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE,
                            max_concurrency=UPLOAD_CONCURRENCY, use_threads=True)
    start = time.perf_counter()
    client.upload_file(src, BUCKET, key, Config=config)
    return time.perf_counter() - start


@contextlib.contextmanager
def b_stats(root: Path) -> Iterator[dict[str, Any]]:
    """The mount's /.vfs/stats at the block's end (root is the bucket's directory in the mount)."""
    out: dict[str, Any] = {}
    yield out
    out["after"] = mount_stats(root.parent)


# --- scenario 2: many small files with cp -r ----------------------------------------------------------

KEEP = ".keep"  # what makes a destination directory exist on the server without a marker


def timed_cp(src: Path, dst: Path) -> float:
    """Seconds of `cp -r SRC/. DST`: SRC's files into the existing directory DST."""
    start = time.perf_counter()
    subprocess.run(["cp", "-r", f"{src}/.", str(dst)], check=True, timeout=CMD_TIMEOUT)
    return time.perf_counter() - start


def server_dir(b: Bench, key: str) -> None:
    """Make the directory `key` exist on the server, untimed, by an object inside it (KEEP): a mkdir
    through a mount would write the marker `key/`, which `rclone serve s3` stores as a file."""
    b.s3.boto3_client().put_object(Bucket=BUCKET, Key=f"{key}/{KEEP}", Body=b"")


def scenario_2(b: Bench) -> None:
    n = b.data.small_count
    names = b.data.small_names()
    for run in range(b.args.runs):
        log.info("2: run %d/%d", run + 1, b.args.runs)
        got: dict[str, float] = {}
        d, _ = b.fresh("local")
        os.sync()
        got["local_return"] = n / timed_cp(b.data.small, d)
        shutil.rmtree(d, ignore_errors=True)

        _, key = b.fresh("tree-vfs-")
        server_dir(b, key)
        os.sync()
        with b.vfs("back") as (root, _), b_stats(root) as stats:
            start = time.perf_counter()
            timed_cp(b.data.small, root / key)
            got["vfs_return"] = n / (time.perf_counter() - start)
            wait_landed({b.on_server(f"{key}/{name}"): SMALL_SIZE for name in names}, "2 vfs",
                        b.args.land_timeout)
            got["vfs_uploaded"] = n / (time.perf_counter() - start)
            wait_until(lambda: not mount_stats(root.parent)["writes"]["pending_commits"], 60.0,
                       "vfs to count its commits done")
        check_vfs_writes(stats["after"], "2 vfs")
        check_tree(b, key)
        b.forget(key)

        if not b.args.skip_rclone:
            _, key = b.fresh("tree-rclone-")
            server_dir(b, key)
            os.sync()
            with b.rclone(b.args.write_back_delay) as root:
                start = time.perf_counter()
                timed_cp(b.data.small, root / key)
                got["rclone_return"] = n / (time.perf_counter() - start)
                wait_landed({b.on_server(f"{key}/{name}"): SMALL_SIZE for name in names}, "2 rclone",
                            b.args.land_timeout)
                got["rclone_uploaded"] = n / (time.perf_counter() - start)
            check_tree(b, key)
            b.forget(key)
        b.put("2.cp", got)


# --- scenario 3: peak RSS while writing a large file ----------------------------------------------------

def scenario_3(b: Bench) -> None:
    size = b.data.rss_size
    rnd = random.Random(3)
    blob = os.urandom(32 * MiB)

    def piece(i: int) -> bytes:  # 1 MiB piece number i: distinct for neighbours, cheap to recompute
        off = (i * 7 * MiB + (i // 31) * 4096) % (len(blob) - MiB)
        return blob[off: off + MiB]

    _, key = b.fresh("rss-")
    os.sync()
    with b.vfs("through", RSS_UPLOAD_CONCURRENCY) as (root, pid), b_stats(root) as stats:
        idle = vm_hwm(pid)
        start = time.perf_counter()
        fd = os.open(root / f"{key}.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for i in range(size // MiB):
                os.write(fd, piece(i))
            os.fsync(fd)
        finally:
            os.close(fd)
        seconds = time.perf_counter() - start
        peak = vm_hwm(pid)
    check_vfs_writes(stats["after"], "3 vfs")
    p = b.on_server(f"{key}.bin")
    if p.stat().st_size != size:
        raise RuntimeError(f"{key}.bin: {p.stat().st_size} bytes on the server, expected {size}")
    with open(p, "rb") as f:
        for i in rnd.sample(range(size // MiB), min(SAMPLE_PIECES, size // MiB)):
            f.seek(i * MiB)
            if f.read(MiB) != piece(i):
                raise RuntimeError(f"{key}.bin: piece {i} on the server differs from what was written")
    b.forget(f"{key}.bin")
    b.put("3.rss", {"vfs_peak": peak / MiB, "vfs_idle": idle / MiB, "budget": (b.ram + TARGET_RSS_SLACK) / MiB,
                    "MB/s": size / seconds / 1e6})


SCENARIOS: dict[str, Callable[[Bench], None]] = {"1": scenario_1, "2": scenario_2, "3": scenario_3}


# --- report --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Row:
    label: str
    unit: str
    key: str  # results key
    vfs: str  # field of the vfs figure
    baseline_name: str
    baseline: str  # field of the baseline figure
    target: float | None  # wanted ratio vfs/baseline (>=); None: no target on this row
    higher_better: bool = True


def size_label(n: int) -> str:
    return f"{n / MiB / 1024:g} GiB" if n >= 1024 * MiB else f"{n // MiB} MiB"


def rows(data: Data) -> list[Row]:
    big = size_label(data.big_size)
    many = f"{data.small_count:,} x 100 KiB"
    return [
        Row(f"1 {big} dd conv=fsync, mode through", "MB/s", "1.seq", "vfs", "boto3 upload_file", "boto3",
            TARGET_SEQ_VS_BOTO3),
        Row(f"1 {big} dd conv=fsync, mode through", "MB/s", "1.seq", "vfs", "rclone writes, until uploaded", "rclone",
            TARGET_SEQ_VS_RCLONE),
        Row(f"2 {many} cp -r, mode back, until uploaded", "files/s", "2.cp", "vfs_uploaded",
            "rclone writes, until uploaded", "rclone_uploaded", TARGET_CP_UPLOADED_VS_RCLONE),
        Row(f"2 {many} cp -r, until cp returns", "files/s", "2.cp", "vfs_return", "cp -r to local disk",
            "local_return", TARGET_CP_RETURN_VS_LOCAL),
        Row(f"2 {many} cp -r, until cp returns", "files/s", "2.cp", "vfs_return", "rclone writes, cp returns",
            "rclone_return", None),
        Row(f"3 peak RSS writing {size_label(data.rss_size)}, mode through, 1 part at a time", "MiB", "3.rss", "vfs_peak",
            "RAM budget + 150 MiB", "budget", 1.0, higher_better=False),
    ]


def spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarise(b: Bench) -> list[dict[str, Any]]:
    """Per row: vfs, baseline and the same-run ratio vfs/baseline, each as median with min-max."""
    out = []
    for row in rows(b.data):
        runs = b.results.get(row.key, [])
        pairs = [(r[row.vfs], r[row.baseline]) for r in runs if row.vfs in r and row.baseline in r]
        if not pairs:
            continue
        ratios = [v / base for v, base in pairs if base]
        s = {"row": dataclasses.asdict(row), "vfs": spread([v for v, _ in pairs]),
             "baseline": spread([base for _, base in pairs]), "ratio": spread(ratios)}
        if row.target is not None and s["ratio"]:
            r = s["ratio"]["median"]
            s["met"] = r >= row.target if row.higher_better else r <= row.target
        out.append(s)
    return out


def cell(s: dict[str, float] | None, suffix: str = "") -> str:
    if s is None:
        return "-"

    def f(v: float) -> str:
        return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}" if abs(v) < 1 else f"{v:.1f}"

    middle = f"{f(s['median'])}{suffix}"
    return middle if s["n"] == 1 else f"{middle} [{f(s['min'])}-{f(s['max'])}]"


def report(b: Bench, summary: list[dict[str, Any]], elapsed: float) -> str:
    a = b.args
    title = (f"vfs writes vs boto3 / rclone mount / local disk: scale {a.scale:g}, median of {a.runs} run(s) "
             f"[min-max], ratio = vfs/baseline within each run; RAM {a.ram}; write-back delay {a.write_back_delay:g} s "
             f"in 2 (vfs and rclone), rclone's 0 s in 1; parts {PART_SIZE // MiB} MiB x {UPLOAD_CONCURRENCY}")
    table = [[s["row"]["label"], s["row"]["unit"], cell(s["vfs"]), s["row"]["baseline_name"], cell(s["baseline"]),
              cell(s["ratio"], "x")] for s in summary]
    text = render(["scenario", "unit", "vfs", "baseline", "baseline figure", "vfs/baseline"], table, title)
    wanted = [[f"{s['row']['label']} vs {s['row']['baseline_name']}",
               f"{'>=' if s['row']['higher_better'] else '<='} {s['row']['target']:g}x", cell(s["ratio"], "x"),
               "yes" if s["met"] else "NO"] for s in summary if "met" in s]
    text += "\n" + render(["target", "wanted", "measured", "met"], wanted, "Targets")
    rss = b.results.get("3.rss")
    if rss:
        text += (f"\nscenario 3: vfs VmHWM {rss[0]['vfs_idle']:.0f} MiB after mounting, {rss[0]['vfs_peak']:.0f} MiB "
                 f"after writing ({rss[0]['MB/s']:.0f} MB/s)\n")
    for name, err in b.errors.items():
        text += f"SCENARIO {name} FAILED: {err}\n"
    return text + f"total {elapsed:.0f} s\n"


# --- main ----------------------------------------------------------------------------------------------

def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench writes", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="size and count factor (default 1: 1 GiB, 5,000 "
                                                                  "files, 5 GiB)")
    parser.add_argument("--runs", type=int, default=3, help="runs of scenarios 1 and 2 (default 3); medians shown")
    parser.add_argument("--only", default="1,2,3", help="scenarios to run, e.g. 1,3")
    parser.add_argument("--ram", default=DEFAULT_RAM, help="vfs RAM cache budget (default 512MiB, vfs's default)")
    parser.add_argument("--write-back-delay", type=float, default=DEFAULT_WRITE_BACK,
                        help="seconds after close before a write-back upload, vfs and rclone (default 5, both defaults)")
    parser.add_argument("--skip-rclone", action="store_true", help="leave rclone mount out (rclone still serves S3)")
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/vfs-bench-data"),
                        help="generated sources, kept between runs")
    parser.add_argument("--land-timeout", type=float, default=1800.0,
                        help="seconds to wait for uploads to reach the server before calling the run failed")
    parser.add_argument("--name", default="writes", help="output: bench/out/NAME.json")
    parser.add_argument("--py-spy", type=Path, metavar="DIR",
                        help="record every vfs mount with py-spy (collapsed stacks in DIR/vfsN-MODE.txt)")
    args = parser.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    if bad := [s for s in args.only if s not in SCENARIOS]:
        parser.error(f"--only: unknown scenario(s) {', '.join(bad)}; choose from 1,2,3")
    if args.runs < 1 or args.scale <= 0:
        parser.error("--runs must be 1 or more and --scale above 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    problems = [p for p in (fuse_available(),) if p]
    try:
        peers.rclone_binary()
    except RuntimeError as exc:
        problems.append(str(exc))
    if problems:
        sys.exit("writes: cannot run:\n  " + "\n  ".join(problems))
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so every mount and server is still stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    os.environ.update(peers.client_env())  # vfs and rclone inherit it: no per-request checksums anywhere

    started = time.perf_counter()
    data = Data(args.data_dir, args.scale)
    data.ensure()
    with tempfile.TemporaryDirectory(prefix="vfs-bench-writes-") as tmp_name:
        tmp = Path(tmp_name)
        served = tmp / "served"
        (served / BUCKET).mkdir(parents=True)
        with peers.serve_s3(served, tmp) as s3:
            b = Bench(args, data, s3, served, tmp)
            run_scenarios(SCENARIOS, args.only, b)
    elapsed = time.perf_counter() - started
    summary = summarise(b)
    print(report(b, summary, elapsed), end="")
    path = write_json(args.name, {"args": {k: str(v) for k, v in vars(args).items()}, "data": data.params(),
                                  "results": b.results, "summary": summary, "errors": b.errors, "seconds": elapsed})
    print(f"wrote {path}")
    return 1 if b.errors else 0


if __name__ == "__main__":
    sys.exit(main())
