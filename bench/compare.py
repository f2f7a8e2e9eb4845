"""vfs side by side with boto3, a local copy and `rclone mount --vfs-cache-mode full`, in one command.

Everything runs on 127.0.0.1 against ONE `rclone serve s3` of a local directory (bench/peers.py);
with --delay-ms an asyncio TCP proxy in front of it adds that latency each way and every client
(vfs, boto3, rclone mount) goes through it. The data is written straight into the served directory
and kept in --data-dir between runs:

  big.bin                      1 GiB of random bytes
  dl/dNN/fNNNNN.bin            20,000 files of 100 KiB (1,000 per directory)
  find/pNN/oNNNNNN             100,000 one-byte objects over 100 prefixes
(counts and the big file's size times --scale). The "local" column reads that directory itself.

Scenarios (every "cold" starts with `echo 3 > /proc/sys/vm/drop_caches` and, for a mount, a fresh
mount with an empty cache; vfs and rclone are mounted afresh for every scenario):
  a  1 GiB read sequentially in 1 MiB reads. cold; warm = page cache dropped again, so the mount's
     own cache answers (for local, warm = the page cache). boto3: parallel ranged GETs, cold only.
  b  random 1 MiB reads at 1 MiB-aligned offsets of big.bin (512 x scale, 4 threads, os.pread on one
     fd): cold, then warm (page cache dropped; the same offsets); MB/s, p50 and p99 latency.
     boto3: the same ranges as ranged GETs with 4 threads.
  c  a PyTorch DataLoader (4 workers, batches of 64, shuffled) reading every dl/ file fully:
     epoch 1 after dropping the page cache, epoch 2 straight after (what training sees); files/s.
     The file list is made (untimed) right after mounting. boto3: one GET per file, 4 threads.
  d  `find` over find/: cold (fresh mount, page cache dropped) and warm (run again); seconds.
     boto3: a paginated ListObjectsV2 of the prefix without delimiter.
Also vfs's peak RSS (VmHWM of the mount process, max over its mounts) against the RAM budget.

Runs: the whole set runs --runs times (default 3; run after run, so a burst of load elsewhere
hits one run of a figure rather than all of them), each scenario with fresh mounts and the page
cache dropped where it says cold. Every figure is the median of its runs with their min-max; a
figure whose runs spread more than 15% ((max - min) / median) is marked `~`. Around every timed
measurement bench/noise.py sums the CPU used by processes outside the benchmark (not it, not its
mounts, servers, proxy or DataLoader workers), over at least 0.5 s (/proc counts 10 ms ticks, so
a shorter measurement is followed by a pause, outside its timing, before the next step); a run taken
while they used more than half a core is noisy, and a figure with noisy runs is marked `!k` (k of its
runs). All runs count in the median.

--delay-ms takes a list: `--delay-ms 0,10` runs the whole set on loopback and again through a proxy
adding 10 ms each way (a cloud-like round trip), and prints a table per delay and a summary with
one column per system and delay.

Output: per delay a table of every scenario (vfs, boto3, local, rclone and the ratios vfs/x of the
medians; for seconds and latencies lower is better, so a ratio < 1 favours vfs there) and a table of
the targets and whether they were met; a summary over the delays; bench/out/compare.json (the
first delay's figures under the keys of a single run: results = medians, targets, ...; every delay
under by_delay, each figure's runs, spread and noise under summary) and the chart
bench/out/compare.png (the first delay; compare-delayNms.png for the others).

    scripts/bench [--scale 0.1] [--runs 3] [--delay-ms 0,10] [--only a,c] [--ram 2GiB] [--data-dir DIR] [--skip-rclone]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from common import (MiB, OUT, SPREAD_LIMIT, drop_page_cache, mb_per_s, median_value, mount_stats, percentile, ratio,
                    read_whole, run_scenarios, run_summary, write_json)
from noise import NOISY_CORES, Noise, Outsiders

import peers
from tests.kernel import VfsMount, fuse_available, start_mount, stop_mount
from vfs.table import render
from vfs.units import parse_size

log = logging.getLogger("compare")

BUCKET = "bench"
# The task's data set at --scale 1.
BIG_SIZE = 1024 * MiB
DL_COUNT = 20_000
DL_SIZE = 100 * 1024
DL_PER_DIR = 1_000  # a DataLoader's dataset is usually spread over directories; 1,000 per directory
FIND_COUNT = 100_000
FIND_PREFIXES = 100
FIND_SIZE = 1  # "keep them tiny": find lists and stats, it does not read
RANDOM_READS = 512
RANDOM_THREADS = 4
BOTO3_DL_THREADS = 4  # the same parallelism as the DataLoader's 4 workers
# boto3's sequential reader: ranged GETs of CHUNK bytes on a pool of THREADS, every configuration
# tried and the fastest kept ("as fast as we can make a boto3 reader"). 8 MiB is boto3's own
# multipart_chunksize; 8 threads x 4 MiB matches vfs's default prefetch window (32 MiB of 4 MiB blocks).
BOTO3_SEQ_CONFIGS = ((4, 8 * MiB), (8, 4 * MiB), (16, 8 * MiB))
DEFAULT_RAM = "2GiB"
DEFAULT_SSD = "8GiB"  # more than the data set, so the SSD tier never evicts in these runs
# Targets of the issue.
TARGET_COLD_SEQ_VS_BOTO3 = 0.9
TARGET_WARM_SEQ_MBPS = 1500.0  # 1.5 GB/s
TARGET_EPOCH2_VS_LOCAL = 0.8
TARGET_EPOCH1_VS_RCLONE = 2.0
TARGET_FIND_VS_LIST = 1.2
TARGET_RSS_SLACK = 150 * MiB
SYSTEMS = ("vfs", "boto3", "local", "rclone")


# --- data -------------------------------------------------------------------------------------------

class Data:
    """The seeded data set of one scale: `root` is what rclone serves, `bucket` the local copy."""

    def __init__(self, data_dir: Path, scale: float) -> None:
        self.scale = scale
        self.big_size = max(16 * MiB, int(BIG_SIZE * scale) // MiB * MiB)
        self.dl_count = max(2 * 64, int(DL_COUNT * scale))
        self.find_count = max(FIND_PREFIXES, int(FIND_COUNT * scale))
        self.random_reads = max(32, int(RANDOM_READS * scale))
        self.root = data_dir / f"scale-{scale:g}"
        self.bucket = self.root / BUCKET

    def params(self) -> dict[str, Any]:
        return {"big_size": self.big_size, "dl_count": self.dl_count, "dl_size": DL_SIZE,
                "find_count": self.find_count, "find_prefixes": FIND_PREFIXES, "version": 1}

    def dl_keys(self) -> list[str]:
        return [f"dl/d{i // DL_PER_DIR:02d}/f{i:05d}.bin" for i in range(self.dl_count)]

    def find_keys(self) -> list[str]:
        return [f"find/p{i % FIND_PREFIXES:02d}/o{i:06d}" for i in range(self.find_count)]

    def ensure(self) -> None:
        marker = self.root / "complete.json"
        if marker.exists() and json.loads(marker.read_text()) == self.params():
            log.info("data: reusing %s", self.root)
            return
        log.info("data: writing %s (big %d MiB, %d x 100 KiB, %d tiny objects)", self.root,
                 self.big_size // MiB, self.dl_count, self.find_count)
        if self.root.exists():
            shutil.rmtree(self.root)
        self.bucket.mkdir(parents=True)
        start = time.perf_counter()
        with open(self.bucket / "big.bin", "wb") as f:
            for _ in range(self.big_size // (16 * MiB) + 1):
                f.write(os.urandom(16 * MiB)[: self.big_size - f.tell()])
        blob = os.urandom(DL_SIZE * 16)  # distinct-enough contents without 2 GB of urandom
        for i, key in enumerate(self.dl_keys()):
            p = self.bucket / key
            p.parent.mkdir(parents=True, exist_ok=True)
            off = (i * 4099) % (len(blob) - DL_SIZE)
            p.write_bytes(blob[off: off + DL_SIZE])
        for key in self.find_keys():
            p = self.bucket / key
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"x")
        os.sync()
        marker.write_text(json.dumps(self.params()))
        log.info("data: written in %.1f s", time.perf_counter() - start)


# --- the systems under test ------------------------------------------------------------------------

class Bench:
    """The run's shared state: the server, the temporary directory, the results."""

    def __init__(self, args: argparse.Namespace, data: Data, s3: peers.S3Server, tmp: Path, delay_ms: float = 0.0) -> None:
        self.args = args
        self.data = data
        self.s3 = s3
        self.tmp = tmp
        self.delay_ms = delay_ms
        self.ram = parse_size(args.ram)
        # scenario key -> system -> one value per run, and the outsiders' CPU (noise) of each run
        self.runs: dict[str, dict[str, list[Any]]] = {}
        self.noise: dict[str, dict[str, list[dict[str, Any] | None]]] = {}
        self.last_noise: Noise | None = None
        self.rss_peak = 0
        self.vfs_stats: dict[str, Any] = {}
        self.read_ahead_kb: dict[str, Any] = {}
        self.dropped = True
        self.errors: dict[str, str] = {}
        self.seconds = 0.0  # spent running this delay's scenarios
        self._n = 0

    def measured(self, fn: Callable[[], Any]) -> Any:
        """fn(), with the CPU used by processes outside the benchmark meanwhile kept for the next put()."""
        o = Outsiders()
        o.start()
        value = fn()
        self.last_noise = o.stop()
        return value

    def put(self, scenario: str, system: str, value: Any, noise: Noise | None = None) -> None:
        """One run's figure, with the noise of its measurement (default: of the last measured())."""
        noise = noise or self.last_noise
        self.runs.setdefault(scenario, {}).setdefault(system, []).append(value)
        self.noise.setdefault(scenario, {}).setdefault(system, []).append(noise.as_json() if noise else None)

    @property
    def results(self) -> dict[str, dict[str, Any]]:
        """The median of every figure's runs, in the shape of one run's results."""
        return {k: {s: median_value(v) for s, v in by.items()} for k, by in self.runs.items()}

    def drop(self) -> None:
        self.dropped = drop_page_cache() and self.dropped

    def systems(self) -> list[str]:
        return [s for s in ("local", "boto3", "vfs", "rclone") if not (s == "rclone" and self.args.skip_rclone)]

    @contextlib.contextmanager
    def mount(self, system: str) -> Iterator[Path]:
        """A fresh mount (empty cache) of the bucket for vfs or rclone, or the local copy; yields the bucket's root."""
        self._n += 1
        if system == "local":
            yield self.data.bucket
            return
        d = self.tmp / f"{system}{self._n}-delay{self.delay_ms:g}ms"
        d.mkdir()
        if system == "vfs":
            m = start_mount(d, self.vfs_config(d), extra_args=["--log-level", "warning"])
            try:
                self._note_read_ahead("vfs", m.path)
                yield m.path / BUCKET
                self._note_vfs(m)
            finally:
                stop_mount(m)
                shutil.rmtree(d / "ssd", ignore_errors=True)
        elif system == "rclone":
            with peers.rclone_mount(self.s3, BUCKET, d / "mnt", d / "cache", d) as rm:
                self._note_read_ahead("rclone", rm.path)
                yield rm.path
            shutil.rmtree(d / "cache", ignore_errors=True)
        else:
            raise ValueError(system)

    def vfs_config(self, d: Path) -> dict[str, Any]:
        return {
            "cache": {"ram_size": self.ram, "ssd_dir": str(d / "ssd"), "ssd_size": parse_size(self.args.ssd)},
            "write": {"mode": self.args.write_mode},
            "mount": [{"path": f"/{BUCKET}", "backend": "s3", "bucket": BUCKET, "endpoint_url": self.s3.endpoint,
                       "region": self.s3.region, "access_key_id": self.s3.access_key,
                       "secret_access_key": self.s3.secret_key}],
        }

    def _note_vfs(self, m: VfsMount) -> None:
        self.rss_peak = max(self.rss_peak, vm_hwm(m.proc.pid))
        with contextlib.suppress(Exception):
            self.vfs_stats[f"mount{self._n}"] = mount_stats(m.path)

    def _note_read_ahead(self, system: str, path: Path) -> None:
        with contextlib.suppress(Exception):
            st = os.stat(path)
            dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
            self.read_ahead_kb[system] = int(Path(f"/sys/class/bdi/{dev}/read_ahead_kb").read_text())


def vm_hwm(pid: int) -> int:
    """Peak resident set size of a process in bytes (VmHWM), 0 if unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def parallel_timed(fn: Callable[[Any], int], items: list[Any], threads: int) -> tuple[float, list[float], int]:
    """Run fn over items on `threads` threads: (wall seconds, per-item seconds, total of fn's results)."""
    lat: list[float] = []
    lock = threading.Lock()

    def one(item: Any) -> int:
        t = time.perf_counter()
        n = fn(item)
        with lock:
            lat.append(time.perf_counter() - t)
        return n

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        start = time.perf_counter()
        total = sum(pool.map(one, items))
        return time.perf_counter() - start, lat, total


# --- scenarios ---------------------------------------------------------------------------------------

def timed_read(path: Path, size: int) -> float:
    start = time.perf_counter()
    n = read_whole(path)
    seconds = time.perf_counter() - start
    if n != size:
        raise RuntimeError(f"{path}: read {n} bytes, expected {size}")
    return mb_per_s(n, seconds)


def scenario_a(b: Bench) -> None:
    size = b.data.big_size
    for system in b.systems():
        log.info("a: %s", system)
        if system == "boto3":
            client = b.s3.boto3_client()
            trials = {}
            noises = {}
            for threads, chunk in BOTO3_SEQ_CONFIGS:
                b.drop()
                name = f"{threads}x{chunk // MiB}MiB"
                trials[name] = b.measured(lambda: boto3_sequential(client, size, threads, chunk))
                noises[name] = b.last_noise
            best = max(trials, key=trials.get)  # type: ignore[arg-type]
            b.put("a.cold", "boto3", trials[best], noises[best])
            b.put("a.boto3_trials", "boto3", {"MB/s": trials, "best": best}, noises[best])
            continue
        with b.mount(system) as root:
            b.drop()
            b.put("a.cold", system, b.measured(lambda: timed_read(root / "big.bin", size)))
            if system != "local":
                b.drop()
            b.put("a.warm", system, b.measured(lambda: timed_read(root / "big.bin", size)))


def boto3_sequential(client: Any, size: int, threads: int, chunk: int) -> float:
    """MB/s of reading one object with ranged GETs of `chunk` bytes on `threads` threads.

    Each body is read into one preallocated buffer per thread with readinto (no bytes objects).
    """
    local = threading.local()

    def get(start: int) -> int:
        buf = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = memoryview(bytearray(chunk))
        end = min(start + chunk, size)
        body = client.get_object(Bucket=BUCKET, Key="big.bin", Range=f"bytes={start}-{end - 1}")["Body"]
        raw = body._raw_stream  # urllib3 response: readinto avoids building an 8 MiB bytes per GET
        n = 0
        while n < end - start and (k := raw.readinto(buf[n:end - start])):
            n += k
        body.close()
        return n

    seconds, _, total = parallel_timed(get, list(range(0, size, chunk)), threads)
    if total != size:
        raise RuntimeError(f"boto3 read {total} bytes of {size}")
    return mb_per_s(total, seconds)


def random_offsets(data: Data) -> list[int]:
    rnd = random.Random(42)
    return [rnd.randrange(data.big_size // MiB) * MiB for _ in range(data.random_reads)]


def random_summary(seconds: float, lat: list[float], nbytes: int) -> dict[str, float]:
    return {"MB/s": mb_per_s(nbytes, seconds), "p50_ms": percentile(lat, 0.5) * 1000,
            "p99_ms": percentile(lat, 0.99) * 1000}


def random_reads(path: Path, offsets: list[int]) -> dict[str, float]:
    fd = os.open(path, os.O_RDONLY)
    try:
        seconds, lat, total = parallel_timed(lambda off: len(os.pread(fd, MiB, off)), offsets, RANDOM_THREADS)
    finally:
        os.close(fd)
    return random_summary(seconds, lat, total)


def scenario_b(b: Bench) -> None:
    offsets = random_offsets(b.data)
    for system in b.systems():
        log.info("b: %s", system)
        if system == "boto3":
            client = b.s3.boto3_client()

            def get(off: int) -> int:
                r = client.get_object(Bucket=BUCKET, Key="big.bin", Range=f"bytes={off}-{off + MiB - 1}")
                return len(r["Body"].read())

            b.drop()
            b.put("b.cold", "boto3", b.measured(lambda: random_summary(*parallel_timed(get, offsets, RANDOM_THREADS))))
            continue
        with b.mount(system) as root:
            b.drop()
            b.put("b.cold", system, b.measured(lambda: random_reads(root / "big.bin", offsets)))
            if system != "local":
                b.drop()
            b.put("b.warm", system, b.measured(lambda: random_reads(root / "big.bin", offsets)))


def scenario_c(b: Bench) -> None:
    from dataloader import epochs

    keys = b.data.dl_keys()
    for system in b.systems():
        log.info("c: %s", system)
        if system == "boto3":
            client = b.s3.boto3_client()
            b.drop()
            seconds, _, total = b.measured(lambda: parallel_timed(
                lambda k: len(client.get_object(Bucket=BUCKET, Key=k)["Body"].read()), keys, BOTO3_DL_THREADS))
            if total != len(keys) * DL_SIZE:
                raise RuntimeError(f"boto3 read {total} bytes of {len(keys) * DL_SIZE}")
            b.put("c.epoch1", "boto3", len(keys) / seconds)
            continue
        with b.mount(system) as root:
            paths = sorted(str(Path(d) / f) for d, _, files in os.walk(root / "dl") for f in files)
            if len(paths) != len(keys):
                raise RuntimeError(f"{system}: listed {len(paths)} files under dl/, expected {len(keys)}")
            b.drop()
            e1, e2 = b.measured(lambda: epochs(paths, 2))  # one noise figure for both epochs
            for e in (e1, e2):
                if e["bytes"] != len(keys) * DL_SIZE:
                    raise RuntimeError(f"{system}: the DataLoader read {e['bytes']} bytes, expected {len(keys) * DL_SIZE}")
            b.put("c.epoch1", system, e1["files_per_s"])
            b.put("c.epoch2", system, e2["files_per_s"])


def timed_find(root: Path, expected: int) -> float:
    start = time.perf_counter()
    out = subprocess.run(["find", str(root / "find"), "-type", "f"], capture_output=True, check=True,
                         timeout=1800).stdout
    seconds = time.perf_counter() - start
    found = out.count(b"\n")
    if found != expected:
        raise RuntimeError(f"find under {root} found {found} files, expected {expected}")
    return seconds


def boto3_list(client: Any, expected: int) -> float:
    """Seconds of a paginated ListObjectsV2 of find/ without delimiter."""
    start = time.perf_counter()
    count = sum(page.get("KeyCount", 0) for page in
                client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="find/"))
    seconds = time.perf_counter() - start
    if count != expected:
        raise RuntimeError(f"ListObjectsV2 found {count} keys, expected {expected}")
    return seconds


def boto3_walk(client: Any, expected: int) -> float:
    """Seconds to list find/ the way `find` walks a mount: delimiter listings, one prefix after another.

    Not a target's baseline, context for it: `rclone serve s3` answers a listing without delimiter
    much more slowly per key than one with a delimiter.
    """
    pages = client.get_paginator("list_objects_v2")
    start = time.perf_counter()
    count = 0
    todo = ["find/"]
    while todo:
        prefix = todo.pop()
        for page in pages.paginate(Bucket=BUCKET, Prefix=prefix, Delimiter="/"):
            todo += [cp["Prefix"] for cp in page.get("CommonPrefixes", [])]
            count += len(page.get("Contents", []))
    seconds = time.perf_counter() - start
    if count != expected:
        raise RuntimeError(f"the delimiter walk found {count} keys, expected {expected}")
    return seconds


def scenario_d(b: Bench) -> None:
    n = b.data.find_count
    for system in b.systems():
        log.info("d: %s", system)
        if system == "boto3":
            client = b.s3.boto3_client()
            b.drop()
            b.put("d.cold", "boto3", b.measured(lambda: boto3_list(client, n)))
            b.put("d.walk", "boto3", b.measured(lambda: boto3_walk(client, n)))
            continue
        with b.mount(system) as root:
            b.drop()
            b.put("d.cold", system, b.measured(lambda: timed_find(root, n)))
            b.put("d.warm", system, b.measured(lambda: timed_find(root, n)))


SCENARIOS = {"a": scenario_a, "b": scenario_b, "c": scenario_c, "d": scenario_d}


# --- report ------------------------------------------------------------------------------------------

# (row label, unit, scenario key, field or None, lower is better)
ROWS = [
    ("a seq read cold", "MB/s", "a.cold", None, False),
    ("a seq read warm", "MB/s", "a.warm", None, False),
    ("b random 1MiB cold", "MB/s", "b.cold", "MB/s", False),
    ("b random 1MiB cold p50", "ms", "b.cold", "p50_ms", True),
    ("b random 1MiB cold p99", "ms", "b.cold", "p99_ms", True),
    ("b random 1MiB warm", "MB/s", "b.warm", "MB/s", False),
    ("b random 1MiB warm p50", "ms", "b.warm", "p50_ms", True),
    ("b random 1MiB warm p99", "ms", "b.warm", "p99_ms", True),
    ("c DataLoader epoch 1", "files/s", "c.epoch1", None, False),
    ("c DataLoader epoch 2", "files/s", "c.epoch2", None, False),
    ("d find cold", "s", "d.cold", None, True),
    ("d find warm", "s", "d.warm", None, True),
]


def value(results: dict[str, Any], key: str, system: str, field: str | None) -> float | None:
    v = results.get(key, {}).get(system)
    if v is None:
        return None
    return v.get(field) if field else v


def fmt_num(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}" if abs(v) < 1 else f"{v:.1f}"


def fmt_ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def figure_summary(runs: dict[str, dict[str, list[Any]]], noise: dict[str, dict[str, list[Any]]]) -> dict[str, Any]:
    """Per scenario key and system: each field's run_summary (a plain number's under "value"), the noise
    of every run and how many runs were noisy."""
    out: dict[str, Any] = {}
    for key, by in runs.items():
        for system, vals in by.items():
            noises = noise.get(key, {}).get(system, [])
            entry: dict[str, Any] = {"noise": noises, "noisy_runs": sum(1 for n in noises if n and n["noisy"]),
                                     "n_runs": len(vals)}
            numbers = [v for v in vals if isinstance(v, (int, float))]
            if len(numbers) == len(vals) and vals:
                entry["value"] = run_summary(numbers)
            elif vals and all(isinstance(v, dict) for v in vals):
                for field in vals[0]:
                    fv = [v.get(field) for v in vals]
                    if all(isinstance(x, (int, float)) for x in fv):
                        entry[field] = run_summary(fv)
            out.setdefault(key, {})[system] = entry
    return out


def figure(summary: dict[str, Any], key: str, system: str, field: str | None) -> dict[str, Any] | None:
    """The run_summary of one figure plus its noisy_runs and n_runs, or None if it was not measured."""
    entry = summary.get(key, {}).get(system)
    if not entry or (field or "value") not in entry:
        return None
    return {**entry[field or "value"], "noisy_runs": entry["noisy_runs"], "n_runs": entry["n_runs"]}


def marks(f: dict[str, Any]) -> str:
    """`~` for a spread over SPREAD_LIMIT, `!k` for k noisy runs."""
    return ("~" if f["unsteady"] else "") + (f"!{f['noisy_runs']}" if f["noisy_runs"] else "")


def fmt_figure(f: dict[str, Any] | None, with_range: bool = True) -> str:
    if f is None:
        return "-"
    shown = fmt_num(f["median"])
    if with_range and f["n_runs"] > 1:
        shown += f" ({fmt_num(f['min'])}\u2013{fmt_num(f['max'])})"
    return shown + marks(f)


def table_rows(summary: dict[str, Any]) -> list[list[str]]:
    rows = []
    for label, unit, key, field, lower in ROWS:
        if key not in summary:
            continue
        figs = {s: figure(summary, key, s, field) for s in SYSTEMS}
        meds = {s: f["median"] if f else None for s, f in figs.items()}
        ratios = [fmt_ratio(ratio(meds["vfs"], meds[s])) for s in ("boto3", "local", "rclone")]
        rows.append([label, unit + (" (lower better)" if lower else ""), *(fmt_figure(figs[s]) for s in SYSTEMS), *ratios])
    return rows


def combined_rows(summaries: dict[float, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """One row per figure, one column per system and delay (medians with their marks), then vfs/boto3
    and vfs/rclone per delay."""
    delays = list(summaries)
    header = ["scenario", "unit"] + [f"{s} {d:g}ms" for s in SYSTEMS for d in delays] + \
             [f"vfs/{s} {d:g}ms" for s in ("boto3", "rclone") for d in delays]
    rows = []
    for label, unit, key, field, lower in ROWS:
        if not any(key in sm for sm in summaries.values()):
            continue
        figs = {(s, d): figure(summaries[d], key, s, field) for s in SYSTEMS for d in delays}
        med = {k: (f["median"] if f else None) for k, f in figs.items()}
        rows.append([label, unit + (" (lower better)" if lower else ""),
                     *(fmt_figure(figs[(s, d)], with_range=False) for s in SYSTEMS for d in delays),
                     *(fmt_ratio(ratio(med[("vfs", d)], med[(s, d)])) for s in ("boto3", "rclone") for d in delays)])
    return header, rows


def legend(n_runs: int) -> str:
    return (f"Each figure: the median of {n_runs} run(s) (min\u2013max); ratios are of medians. "
            f"~ = the runs spread more than {SPREAD_LIMIT:.0%} ((max - min) / median); "
            f"!k = k of the runs were taken while processes outside the benchmark used more than "
            f"{NOISY_CORES} core (CPU time from /proc over the measurement; bench/noise.py). Every run counts in the median.")


def noise_line(summary: dict[str, Any]) -> str:
    """How loaded the machine was by others over the measurements of one delay."""
    cores = [n["cores"] for by in summary.values() for e in by.values() for n in e["noise"] if n]
    if not cores:
        return "noise: not measured"
    noisy = sum(1 for c in cores if c > NOISY_CORES)
    top: dict[str, float] = {}
    for by in summary.values():
        for e in by.values():
            for n in e["noise"]:
                for comm, c in (n or {}).get("top", []):
                    top[comm] = max(top.get(comm, 0.0), c)
    busiest = ", ".join(f"{c} {v:.2f}" for c, v in sorted(top.items(), key=lambda x: -x[1])[:4])
    return (f"noise: outsiders used {sorted(cores)[len(cores) // 2]:.2f} cores (median) / {max(cores):.2f} (max) "
            f"over {len(cores)} measurements; {noisy} noisy (> {NOISY_CORES} core). Busiest outsiders (peak cores): {busiest}")


def targets(results: dict[str, Any], rss_peak: int, ram: int) -> list[dict[str, Any]]:
    def v(key: str, system: str) -> float | None:
        return value(results, key, system, None)

    def target(name: str, want: str, got: float | None, ok: bool | None, note: str = "") -> dict[str, Any]:
        return {"target": name, "wanted": want, "measured": got, "met": ok, "note": note}

    out = []
    r = ratio(v("a.cold", "vfs"), v("a.cold", "boto3"))
    out.append(target("cold sequential vs boto3 direct", f">= {TARGET_COLD_SEQ_VS_BOTO3}x", r,
                      None if r is None else r >= TARGET_COLD_SEQ_VS_BOTO3))
    w = v("a.warm", "vfs")
    out.append(target("warm sequential from vfs cache (page cache dropped)", f">= {TARGET_WARM_SEQ_MBPS:.0f} MB/s", w,
                      None if w is None else w >= TARGET_WARM_SEQ_MBPS))
    r = ratio(v("c.epoch2", "vfs"), v("c.epoch2", "local"))
    out.append(target("DataLoader epoch 2 vs local copy", f">= {TARGET_EPOCH2_VS_LOCAL}x", r,
                      None if r is None else r >= TARGET_EPOCH2_VS_LOCAL))
    r = ratio(v("c.epoch1", "vfs"), v("c.epoch1", "rclone"))
    out.append(target("DataLoader epoch 1 vs rclone", f">= {TARGET_EPOCH1_VS_RCLONE}x", r,
                      None if r is None else r >= TARGET_EPOCH1_VS_RCLONE))
    r = ratio(v("d.cold", "vfs"), v("d.cold", "boto3"))
    out.append(target("cold find vs boto3 paginated listing (time)", f"<= {TARGET_FIND_VS_LIST}x", r,
                      None if r is None else r <= TARGET_FIND_VS_LIST))
    out.append(target("vfs peak RSS vs RAM budget + 150 MiB", f"<= {(ram + TARGET_RSS_SLACK) / MiB:.0f} MiB",
                      rss_peak / MiB if rss_peak else None, (rss_peak <= ram + TARGET_RSS_SLACK) if rss_peak else None))
    return out


def target_rows(ts: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for t in ts:
        got = t["measured"]
        shown = "-" if got is None else (f"{got:.0f} MB/s" if "MB/s" in t["wanted"] else
                                         f"{got:.0f} MiB" if "MiB" in t["wanted"] else f"{got:.2f}x")
        rows.append([t["target"], t["wanted"], shown, {True: "yes", False: "NO", None: "-"}[t["met"]]])
    return rows


def chart(results: dict[str, Any], ts: list[dict[str, Any]], title: str, path: Path,
          summary: dict[str, Any] | None = None) -> None:
    """One figure, a grouped bar chart per scenario (log scale: values span three decades); with a
    summary, each bar (the median) carries a min-max error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("a  sequential read of big.bin (MB/s, higher better)", [("cold", "a.cold", None), ("warm", "a.warm", None)]),
        ("b  random 1 MiB reads (MB/s, higher better)", [("cold", "b.cold", "MB/s"), ("warm", "b.warm", "MB/s")]),
        ("b  random 1 MiB latency (ms, lower better)", [("cold p50", "b.cold", "p50_ms"), ("cold p99", "b.cold", "p99_ms"),
                                                        ("warm p50", "b.warm", "p50_ms"), ("warm p99", "b.warm", "p99_ms")]),
        ("c  DataLoader 4 workers (files/s, higher better)", [("epoch 1", "c.epoch1", None), ("epoch 2", "c.epoch2", None)]),
        ("d  find (seconds, lower better)", [("cold", "d.cold", None), ("warm", "d.warm", None)]),
    ]
    colors = {"vfs": "#1f77b4", "boto3": "#ff7f0e", "local": "#2ca02c", "rclone": "#d62728"}
    fig, axes = plt.subplots(2, 3, figsize=(17, 9.5))
    for ax, (name, groups) in zip(axes.flat, panels):
        groups = [g for g in groups if g[1] in results]
        ax.set_title(name, fontsize=11)
        if not groups:
            ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        width = 0.8 / len(SYSTEMS)
        for i, system in enumerate(SYSTEMS):
            xs, ys, lo, hi = [], [], [], []
            for g, (_, key, field) in enumerate(groups):
                y = value(results, key, system, field)
                if y is not None and y > 0:
                    xs.append(g + (i - (len(SYSTEMS) - 1) / 2) * width)
                    ys.append(y)
                    f = figure(summary, key, system, field) if summary else None
                    lo.append(max(0.0, y - f["min"]) if f else 0.0)
                    hi.append(max(0.0, f["max"] - y) if f else 0.0)
            bars = ax.bar(xs, ys, width, label=system, color=colors[system],
                          yerr=[lo, hi] if summary else None, capsize=2, error_kw={"elinewidth": 0.8})
            for bar, y in zip(bars, ys):
                ax.annotate(fmt_num(y), (bar.get_x() + bar.get_width() / 2, y), ha="center", va="bottom", fontsize=7,
                            xytext=(0, 1), textcoords="offset points")
        ax.set_yscale("log")
        ax.set_xticks(range(len(groups)), [g[0] for g in groups])
        ax.margins(y=0.15)
        ax.grid(axis="y", alpha=0.3, which="both")
    last = axes.flat[5]
    last.set_axis_off()
    last.legend(*axes.flat[0].get_legend_handles_labels(), loc="lower left", fontsize=10, ncols=4, title="system")
    runs = max((e["n_runs"] for by in (summary or {}).values() for e in by.values()), default=1)
    lines = ([f"Bars: medians of {runs} runs; whiskers: min-max", ""] if summary else []) + ["Targets (measured / wanted)"] + [
        f"{'met ' if t['met'] else ('--  ' if t['met'] is None else 'MISS')}  {t['target']}: {m} / {t['wanted']}"
        for t, (_, _, m, _) in zip(ts, target_rows(ts))]
    last.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=8, transform=last.transAxes,
              wrap=True)
    fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- main --------------------------------------------------------------------------------------------

def check_prerequisites(args: argparse.Namespace, only: list[str]) -> None:
    problems = []
    if why := fuse_available():
        problems.append(why)
    try:
        peers.rclone_binary()
    except RuntimeError as exc:
        problems.append(str(exc))
    if "c" in only:
        try:
            import torch  # noqa: F401
        except ModuleNotFoundError:
            problems.append("PyTorch is not installed: .venv/bin/pip install -e '.[bench]' (or run scripts/bench)")
    try:
        import matplotlib  # noqa: F401
    except ModuleNotFoundError:
        problems.append("matplotlib is not installed: .venv/bin/pip install -e '.[bench]' (or run scripts/bench)")
    if problems:
        sys.exit("compare: cannot run:\n  " + "\n  ".join(problems))


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def delays_arg(text: str) -> list[float]:
    """--delay-ms: one delay or a comma-separated list (0 = loopback), each run in turn."""
    try:
        delays = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or list of numbers: {text!r}") from None
    if not delays or any(d < 0 for d in delays) or len(set(delays)) != len(delays):
        raise argparse.ArgumentTypeError(f"want distinct delays >= 0, e.g. 0,10: {text!r}")
    return delays


def block(b: Bench) -> dict[str, Any]:
    """One delay's figures for compare.json: the keys a single run always had, plus summary (runs,
    spread and noise of every figure)."""
    results = b.results
    return {"delay_ms": b.delay_ms, "results": results, "summary": figure_summary(b.runs, b.noise),
            "targets": targets(results, b.rss_peak, b.ram), "vfs_peak_rss": b.rss_peak, "ram_budget": b.ram,
            "page_cache_dropped": b.dropped, "read_ahead_kb": b.read_ahead_kb, "errors": b.errors,
            "vfs_stats": b.vfs_stats, "seconds": b.seconds}


def title_of(args: argparse.Namespace, delay: float) -> str:
    where = "loopback" if delay == 0 else f"delay {delay:g} ms each way"
    return (f"vfs vs boto3 / local / rclone mount: scale {args.scale:g}, {where}, vfs RAM {args.ram}, "
            f"{args.runs} run(s)")


def print_delay(b: Bench, blk: dict[str, Any], args: argparse.Namespace) -> None:
    header = ["scenario", "unit", *SYSTEMS, "vfs/boto3", "vfs/local", "vfs/rclone"]
    print(render(header, table_rows(blk["summary"]), title=title_of(args, b.delay_ms)))
    rss = f"vfs peak RSS {b.rss_peak / MiB:.0f} MiB (VmHWM), RAM budget {b.ram / MiB:.0f} MiB"
    print(render(["target", "wanted", "measured", "met"], target_rows(blk["targets"]),
                 title=f"Targets at {b.delay_ms:g} ms, of the medians (" + rss + ")"))
    if not b.dropped:
        print("NOTE: the page cache could not be dropped (not root?): cold and warm numbers are not cold.")
    best = blk["results"].get("a.boto3_trials", {}).get("boto3")
    if best:
        print(f"boto3 sequential: ranged GETs read with readinto on a thread pool, medians "
              f"{', '.join(f'{k} {v:.0f} MB/s' for k, v in best['MB/s'].items())}; fastest most often: {best['best']}")
    for name, err in b.errors.items():
        print(f"SCENARIO {name} FAILED: {err}")
    walk = blk["results"].get("d.walk", {}).get("boto3")
    if walk is not None:
        print(f"boto3 listing of find/ with delimiter, prefix after prefix (as find walks): {walk:.2f} s "
              f"(vfs find cold / this: {fmt_ratio(ratio(value(blk['results'], 'd.cold', 'vfs', None), walk))})")
    print(noise_line(blk["summary"]))
    print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="data set size factor (default 1.0: 1 GiB, 20,000 files, 100,000 objects)")
    parser.add_argument("--delay-ms", type=delays_arg, default=[0.0],
                        help="latency added each way by a TCP proxy in front of the server; a list (e.g. 0,10) "
                             "runs the whole set at each (0 = loopback, the default)")
    parser.add_argument("--runs", type=int, default=3, help="runs of the whole set per delay (default 3); "
                        "figures are medians with min-max")
    parser.add_argument("--only", default="a,b,c,d", help="scenarios to run, e.g. a,c")
    parser.add_argument("--ram", default=DEFAULT_RAM, help="vfs RAM cache budget (default 2GiB)")
    parser.add_argument("--ssd", default=DEFAULT_SSD, help="vfs SSD tier budget, in a temporary directory (default 8GiB)")
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/vfs-bench-data"), help="generated data, kept between runs")
    parser.add_argument("--write-mode", default="through", choices=["through", "back", "cache", "off"],
                        help="vfs's write mode (default through, the mount's default; off: a read-only tree, "
                             "where closes cost no FLUSH request at all)")
    parser.add_argument("--skip-rclone", action="store_true", help="leave rclone mount out (rclone still serves S3)")
    parser.add_argument("--name", default="compare", help="output name: bench/out/NAME.json and NAME.png")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs: at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    if bad := [s for s in only if s not in SCENARIOS]:
        parser.error(f"--only: unknown scenario(s) {', '.join(bad)}; choose from a,b,c,d")
    check_prerequisites(args, only)
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so every mount and server is still stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    os.environ.update(peers.client_env())  # vfs and rclone inherit it

    started = time.perf_counter()
    data = Data(args.data_dir, args.scale)
    data.ensure()
    benches: dict[float, Bench] = {}
    with tempfile.TemporaryDirectory(prefix="vfs-bench-") as tmp_name:
        tmp = Path(tmp_name)
        with contextlib.ExitStack() as stack:
            direct = stack.enter_context(peers.serve_s3(data.root, tmp))
            for delay in args.delay_ms:
                s3 = direct if delay == 0 else stack.enter_context(peers.delay_proxy(direct, delay, tmp))
                benches[delay] = Bench(args, data, s3, tmp, delay)
            # Run after run, each delay in turn within a run: load from elsewhere that comes and goes
            # then spoils one run of a figure, not all of them.
            for i in range(args.runs):
                for delay, b in benches.items():
                    log.info("run %d of %d, delay %g ms", i + 1, args.runs, delay)
                    t = time.perf_counter()
                    run_scenarios(SCENARIOS, only, b, tag="" if args.runs == 1 else f" (run {i + 1})")
                    b.seconds += time.perf_counter() - t
    elapsed = time.perf_counter() - started

    blocks = {d: block(b) for d, b in benches.items()}
    for d, b in benches.items():
        print_delay(b, blocks[d], args)
    if len(blocks) > 1:
        header, rows = combined_rows({d: blk["summary"] for d, blk in blocks.items()})
        print(render(header, rows, title=f"Summary: medians of {args.runs} run(s) at each delay (ms each way)"))
    print(legend(args.runs))
    print(f"total {elapsed:.0f} s")
    first = args.delay_ms[0]
    out = {"args": {k: str(v) for k, v in vars(args).items()}, "data": data.params(), **blocks[first],
           "seconds": elapsed, "runs": args.runs, "delays_ms": args.delay_ms, "spread_limit": SPREAD_LIMIT,
           "noisy_cores": NOISY_CORES, "bench_pid": os.getpid(), "by_delay": {f"{d:g}": blk for d, blk in blocks.items()}}
    json_path = write_json(args.name, out)
    pngs = []
    for d, blk in blocks.items():
        png = OUT / (f"{args.name}.png" if d == first else f"{args.name}-delay{d:g}ms.png")
        chart(blk["results"], blk["targets"], title_of(args, d), png, blk["summary"])
        pngs.append(str(png))
    print(f"wrote {json_path} and {', '.join(pngs)}")
    return 1 if any(b.errors for b in benches.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
