"""The "real run": a dataset read in full, twice, through a mount with a RAM + SSD cache, then once
more after a remount that keeps the SSD directory.

The dataset (default 2 GiB as 512 files of 4 MiB, random bytes) is generated once into a local
directory (--data-dir; reused while its size and file count match) and served by a silo: S3 on a
moto server on 127.0.0.1 (the default; uploaded from the directory at start, timed and reported) or
the local directory itself (--silo local). One mount at /data with RAM --ram (256 MiB) + SSD --ssd
(4 GiB, ssd_dir in a temporary directory on the local disk), --policy for both tiers (lru).

  pass 1   every file read once in full (--threads readers, 1 MiB reads), page cache dropped first
  pass 2   the same again, page cache dropped first
  pass 3   after unmount and a remount on the same ssd_dir, page cache dropped first
  local    the same files read straight from the local directory, page cache dropped first (baseline)

Per pass: MB/s and its ratio to the local baseline, and from the mount's /.vfs/stats (read before and
after the pass) the differences of tiers.ram/ssd hits and misses (they count block lookups, one per
FUSE read request, not bytes) and of backends./data.bytes (what came from the silo).

    python bench/cache_passes.py [--size 2GiB] [--files 512] [--ram 256MiB] [--ssd 4GiB] [--policy lru]
                                 [--silo s3|local] [--threads 4]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import os
import random
import shutil

import tempfile
import time
from pathlib import Path
from typing import Any

from common import MiB, drop_page_cache, fmt, mb_per_s, mount_stats, ratio, read_whole, write_json

from tests.kernel import fuse_available, start_mount, stop_mount
from vfs.table import render
from vfs.units import format_size, parse_size

log = logging.getLogger(__name__)

MOUNT = "/data"
BUCKET = "vfs-bench"
# Uploads to moto go 4 at a time: moto is one Python process; more threads only queue on its GIL.
UPLOAD_THREADS = 4


# --- the dataset ---------------------------------------------------------------------------------

def file_name(i: int) -> str:
    return f"f{i:05d}.bin"


def ensure_dataset(directory: Path, files: int, file_size: int) -> tuple[bool, float]:
    """The dataset in `directory`, generated unless it is already there; (generated, seconds)."""
    stamp = directory / ".dataset.json"
    want = {"files": files, "file_size": file_size}
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        return False, 0.0
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    start = time.perf_counter()
    for i in range(files):
        (directory / file_name(i)).write_bytes(random.Random(i).randbytes(file_size))
    os.sync()
    stamp.write_text(json.dumps(want))
    return True, time.perf_counter() - start


def dataset_paths(directory: Path, files: int) -> list[Path]:
    return [directory / file_name(i) for i in range(files)]


# --- the silo ------------------------------------------------------------------------------------

class S3Silo:
    """A moto server holding the dataset (uploaded from the local directory)."""

    def __init__(self, tmp: Path, data: Path, files: int) -> None:
        from tests.silos.s3 import moto_server

        self._cm = moto_server(tmp)
        self.moto = self._cm.__enter__()
        try:
            client = self.moto.client()
            client.create_bucket(Bucket=BUCKET)
            start = time.perf_counter()

            def put(path: Path) -> None:
                with open(path, "rb") as f:
                    client.put_object(Bucket=BUCKET, Key=path.name, Body=f)

            with concurrent.futures.ThreadPoolExecutor(UPLOAD_THREADS) as pool:
                list(pool.map(put, dataset_paths(data, files)))
            self.upload_s = time.perf_counter() - start
        except BaseException:
            self.close()
            raise

    def options(self) -> dict[str, Any]:
        return self.moto.options(bucket=BUCKET)

    def describe(self) -> str:
        return f"s3 (moto at {self.moto.endpoint})"

    def close(self) -> None:
        self._cm.__exit__(None, None, None)


class LocalSilo:
    upload_s = 0.0

    def __init__(self, data: Path) -> None:
        self.data = data

    def options(self) -> dict[str, Any]:
        return {"backend": "local", "root": str(self.data)}

    def describe(self) -> str:
        return f"local directory {self.data}"

    def close(self) -> None:
        pass


# --- passes --------------------------------------------------------------------------------------

def read_all(paths: list[Path], threads: int) -> tuple[int, float]:
    """(bytes, seconds) of reading every path in full with `threads` readers."""
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(read_whole, paths))
    return total, time.perf_counter() - start


def _delta(after: dict[str, Any], before: dict[str, Any], *keys: str) -> int:
    a, b = after, before
    for k in keys:
        a, b = a.get(k, {}), b.get(k, {})
    return int(a or 0) - int(b or 0)


def hit_ratio(hits: int, misses: int) -> float | None:
    return hits / (hits + misses) if hits + misses else None


def run_pass(mountpoint: Path, files: int, expected: int, threads: int) -> dict[str, Any]:
    dropped = drop_page_cache()
    paths = sorted(mountpoint.joinpath(MOUNT.lstrip("/")).iterdir())  # the dataset's index, untimed
    paths = [p for p in paths if p.name.endswith(".bin")]
    assert len(paths) == files, f"{len(paths)} files in the mount, expected {files}"
    before = mount_stats(mountpoint)
    nbytes, seconds = read_all(paths, threads)
    after = mount_stats(mountpoint)
    assert nbytes == expected, (nbytes, expected)
    r: dict[str, Any] = {"page_cache_dropped": dropped, "bytes": nbytes, "seconds": seconds, "mbs": mb_per_s(nbytes, seconds)}
    for tier in ("ram", "ssd"):
        hits, misses = _delta(after, before, "tiers", tier, "hits"), _delta(after, before, "tiers", tier, "misses")
        r[tier] = {"hits": hits, "misses": misses, "hit_ratio": hit_ratio(hits, misses),
                   "evictions": _delta(after, before, "tiers", tier, "evictions")}
    r["silo_bytes"] = _delta(after, before, "backends", MOUNT, "bytes")
    r["silo_requests"] = _delta(after, before, "backends", MOUNT, "requests")
    r["ssd_writer"] = {k: _delta(after, before, "tiers", "ssd_writer", k) for k in ("written", "dropped", "failed")}
    r["ssd_used_after"] = after["tiers"].get("ssd", {}).get("used")
    r["ram_used_after"] = after["tiers"]["ram"]["used"]
    return r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--size", default="2GiB", help="dataset size (default 2GiB)")
    parser.add_argument("--files", type=int, default=512, help="number of files (default 512: 4 MiB each at 2 GiB)")
    parser.add_argument("--ram", default="256MiB", help="RAM tier (default 256MiB)")
    parser.add_argument("--ssd", default="4GiB", help="SSD tier (default 4GiB)")
    parser.add_argument("--policy", default="lru", help="eviction policy of both tiers (default lru)")
    parser.add_argument("--block-size", default="4MiB", help="cache block size (default 4MiB, vfs's default)")
    parser.add_argument("--silo", choices=["s3", "local"], default="s3", help="who serves the dataset (default s3 on moto)")
    parser.add_argument("--threads", type=int, default=4, help="parallel readers, like DataLoader workers (default 4)")
    parser.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "vfs-bench-dataset"),
                        help="where the dataset is generated once and kept (default: $TMPDIR/vfs-bench-dataset)")
    parser.add_argument("--name", default="cache_passes", help="bench/out/<name>.json")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    reason = fuse_available()
    if reason:
        parser.error(reason)
    size = parse_size(args.size)
    file_size = size // args.files
    if file_size <= 0:
        parser.error("--size / --files leaves nothing in each file")
    total = file_size * args.files
    data = Path(args.data_dir)
    generated, gen_s = ensure_dataset(data, args.files, file_size)
    log.info("dataset %s: %d x %s (%s)", data, args.files, format_size(file_size), "generated" if generated else "reused")

    out: dict[str, Any] = {"args": vars(args), "bytes": total, "file_size": file_size,
                           "dataset": {"dir": str(data), "generated": generated, "seconds": gen_s}}
    passes: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="vfs-bench-passes-") as tmp_s:
        tmp = Path(tmp_s)
        silo = S3Silo(tmp, data, args.files) if args.silo == "s3" else LocalSilo(data)
        try:
            out["silo"] = {"name": args.silo, "describe": silo.describe(), "upload_s": silo.upload_s}
            log.info("silo: %s (upload %.1f s)", silo.describe(), silo.upload_s)
            cache = {"block_size": parse_size(args.block_size), "ram_size": parse_size(args.ram),
                     "ram_policy": args.policy, "ssd_dir": str(tmp / "ssd"), "ssd_size": parse_size(args.ssd),
                     "ssd_policy": args.policy}
            config = {"cache": cache, "mount": [{"path": MOUNT, **silo.options()}]}
            out["cache"] = cache
            m = start_mount(tmp, config)
            try:
                for name in ("pass 1", "pass 2"):
                    log.info("%s", name)
                    passes[name] = run_pass(m.path, args.files, total, args.threads)
            finally:
                stop_mount(m)
            log.info("remount")
            m = start_mount(tmp, config)
            try:
                passes["pass 3 (remount)"] = run_pass(m.path, args.files, total, args.threads)
            finally:
                stop_mount(m)
            log.info("baseline")
            dropped = drop_page_cache()
            nbytes, seconds = read_all(dataset_paths(data, args.files), args.threads)
            assert nbytes == total
            baseline = {"page_cache_dropped": dropped, "bytes": nbytes, "seconds": seconds, "mbs": mb_per_s(nbytes, seconds)}
        finally:
            silo.close()
    for p in passes.values():
        p["ratio_to_local"] = ratio(p["mbs"], baseline["mbs"])
    out["passes"], out["baseline_local"] = passes, baseline

    rows: list[tuple[object, ...]] = [("local dir (baseline)", fmt(baseline["mbs"], 0), "1.00", fmt(baseline["seconds"], 1),
                                       "-", "-", "-", "-")]
    for name, p in passes.items():
        rows.append((name, fmt(p["mbs"], 0), fmt(p["ratio_to_local"]), fmt(p["seconds"], 1),
                     f"{fmt(p['ram']['hit_ratio'], 3)} ({p['ram']['hits']}/{p['ram']['hits'] + p['ram']['misses']})",
                     f"{fmt(p['ssd']['hit_ratio'], 3)} ({p['ssd']['hits']}/{p['ssd']['hits'] + p['ssd']['misses']})",
                     f"{p['silo_bytes']} ({format_size(p['silo_bytes'])})",
                     f"{p['ssd_writer']['written']}/{p['ssd_writer']['dropped']}"))
    title = (f"{args.files} files x {format_size(file_size)} = {format_size(total)} from {args.silo}"
             f"{' (moto)' if args.silo == 's3' else ''}; RAM {args.ram} + SSD {args.ssd}, policy {args.policy}, "
             f"block {args.block_size}, {args.threads} reader threads; page cache dropped before each pass: "
             f"{all(p['page_cache_dropped'] for p in passes.values()) and baseline['page_cache_dropped']}")
    header = ("pass", "MB/s", "vs local", "seconds", "RAM hit ratio (hits/lookups)", "SSD hit ratio (hits/lookups)",
              "bytes from silo", "SSD written/dropped")
    print(render(header, rows, title), end="")
    if args.silo == "s3":
        print(f"upload of the dataset to moto: {silo.upload_s:.1f} s ({mb_per_s(total, silo.upload_s):.0f} MB/s)")
    path = write_json(args.name, out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
