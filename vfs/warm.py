"""Warm-ups: filling a running mount's cache with whole files or trees, asking what share of them is
cached, and dropping them, for `vfs warm`.

The mount's side is the Warmer: `vfs warm` writes a request to the mount's `/.vfs/warm`
(vfs/control.py), one JSON object per line:

    {"id": "ID", "op": "warm" | "check" | "evict", "paths": ["s3/data", ...], "recursive": true,
     "threads": 8, "oversize": "warn" | "refuse"}
    {"id": "ID", "op": "cancel"}

(paths relative to the mount's root). The Warmer lists the paths (through the metadata cache), then
runs the job in a task of the mount: `warm` loads every block of every file through the reader (the
only caller of the cache: a block cached already costs nothing, one being loaded is waited for), with
`threads` blocks in flight; `check` counts the cached bytes of each file's current version and asks
the silo for no bytes; `evict` drops those blocks from every tier. Each job shows in `.vfs/stats`
under `warm.jobs.ID` (state, files and bytes done and total, errors, per path) until a few later
jobs have ended. A warm-up larger than the cache (the SSD tier where there is one, else RAM) is
marked `oversize`; with `"oversize": "refuse"` it ends, refused, before fetching anything.

The command's side is `vfs warm`: it writes the request, polls `.vfs/stats`, draws a progress bar
(rich) on a terminal and plain lines otherwise, and on Ctrl-C writes a cancel request.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import logging
import math
import os
import posixpath
import sys
import time
import uuid
from typing import Any

import trio

from vfs.metadata import MetadataCache
from vfs.metrics import Registry
from vfs.mount_table import Mount, MountTable, child_of
from vfs.mounts.base import ObjectMeta, join
from vfs.reader import Reader

log = logging.getLogger(__name__)

OPS = ("warm", "check", "evict")
MAX_THREADS = 64
KEEP_ENDED = 16
"""Ended jobs kept in `.vfs/stats` (the command that started one reads its end there)."""
RUNNING = ("listing", "running")


@dataclasses.dataclass
class Job:
    id: str
    op: str
    paths: list[str]
    recursive: bool = False
    threads: int = 4
    oversize: str = "warn"
    state: str = "listing"
    """listing, running, then done, cancelled, refused (oversize) or failed (nothing to do)."""
    files_total: int = 0
    files_done: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    """warm: bytes loaded or found cached; check: bytes cached; evict: bytes dropped."""
    capacity: int = 0
    errors: int = 0
    last_error: str = ""
    started: float = dataclasses.field(default_factory=time.time)
    ended: float | None = None
    per_path: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    scope: trio.CancelScope = dataclasses.field(default_factory=trio.CancelScope)

    def failed(self, what: str, exc: OSError) -> None:
        self.errors += 1
        self.last_error = f"{what}: {exc.strerror or exc}"

    def view(self) -> dict[str, Any]:
        return {"op": self.op, "state": self.state, "paths": self.paths, "files_total": self.files_total,
                "files_done": self.files_done, "bytes_total": self.bytes_total, "bytes_done": self.bytes_done,
                "capacity": self.capacity, "oversize": self.bytes_total > self.capacity, "errors": self.errors,
                "last_error": self.last_error, "started": round(self.started, 3),
                "seconds": round((self.ended or time.time()) - self.started, 3), "per_path": self.per_path}


@dataclasses.dataclass(frozen=True)
class File:
    top: str
    """The requested path this file was found under."""
    mount: Mount
    meta: ObjectMeta
    inner: str


def parse_request(r: dict[str, Any]) -> Job:
    """A job from one request line (ValueError: refused)."""
    jid, op = r.get("id"), r.get("op")
    if not isinstance(jid, str) or not 0 < len(jid) <= 64:
        raise ValueError("id: a string of 1 to 64 characters")
    if op not in OPS:
        raise ValueError(f"op: one of {', '.join(OPS)}, cancel")
    paths = r.get("paths")
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
        raise ValueError("paths: a non-empty list of paths relative to the mount's root")
    if any(".." in p.split("/") for p in paths):
        raise ValueError("paths: no '..'")
    threads = r.get("threads", 4)
    if not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        raise ValueError(f"threads: 1 to {MAX_THREADS}")
    if r.get("oversize", "warn") not in ("warn", "refuse"):
        raise ValueError("oversize: warn or refuse")
    return Job(jid, op, [posixpath.normpath("/" + p.lstrip("/")) for p in paths], bool(r.get("recursive")), threads,
               r.get("oversize", "warn"))


class Warmer:
    def __init__(self, table: MountTable, meta: MetadataCache, reader: Reader) -> None:
        self.table = table
        self.meta = meta
        self.reader = reader
        self.jobs: dict[str, Job] = {}
        self._nursery: trio.Nursery | None = None

    def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    def request(self, r: dict[str, Any]) -> None:
        """One request written to `/.vfs/warm`: a job started, or one cancelled (ValueError: refused)."""
        if r.get("op") == "cancel":
            job = self.jobs.get(r.get("id"))  # type: ignore[arg-type]
            if job is None:
                raise ValueError(f"no job {r.get('id')!r}")
            job.scope.cancel()
            return
        job = parse_request(r)
        if job.id in self.jobs:
            raise ValueError(f"job {job.id!r} exists already")
        if self._nursery is None:
            raise ValueError("the mount is not started")
        self.jobs[job.id] = job
        log.info("%s %s (job %s)", job.op, " ".join(job.paths), job.id)
        self._nursery.start_soon(self._run, job)

    def capacity(self) -> int:
        """Bytes a warm-up may fill: the SSD tier where there is one, else RAM."""
        cache = self.reader.cache
        return cache.ssd.capacity if cache.ssd is not None else cache.ram.capacity

    async def _run(self, job: Job) -> None:
        try:
            with job.scope:
                files = await self._files(job)
                job.files_total, job.bytes_total = len(files), sum(f.meta.size for f in files)
                job.capacity = self.capacity()
                if job.op == "warm" and job.bytes_total > job.capacity and job.oversize == "refuse":
                    job.state = "refused"
                    return
                job.state = "running"
                await {"warm": self._warm, "check": self._check, "evict": self._evict}[job.op](job, files)
                job.state = "done" if files or not job.errors else "failed"
            if job.scope.cancelled_caught:
                job.state = "cancelled"
        except Exception as exc:  # noqa: BLE001  # a job's failure is the job's, never the mount's
            job.state, job.last_error = "failed", f"{type(exc).__name__}: {exc}"
            job.errors += 1
            if not isinstance(exc, OSError):
                log.exception("%s job %s failed", job.op, job.id)
        finally:
            job.ended = time.time()
            log.info("%s job %s %s: %d/%d files, %d/%d bytes, %d errors", job.op, job.id, job.state,
                     job.files_done, job.files_total, job.bytes_done, job.bytes_total, job.errors)
            self._prune()

    def _prune(self) -> None:
        ended = sorted((j for j in self.jobs.values() if j.ended is not None), key=lambda j: j.ended or 0.0)
        for job in ended[:-KEEP_ENDED]:
            del self.jobs[job.id]

    # --- what a job covers ------------------------------------------------------------------------

    async def _files(self, job: Job) -> list[File]:
        found: dict[tuple[str, str], File] = {}
        for path in job.paths:
            job.per_path[path] = {"files": 0, "bytes": 0, "done": 0}
            try:
                await self._walk(job, path, path, found)
            except OSError as exc:
                job.failed(path, exc)
        for f in found.values():
            job.per_path[f.top]["files"] += 1
            job.per_path[f.top]["bytes"] += f.meta.size
        return list(found.values())

    async def _walk(self, job: Job, top: str, path: str, found: dict[tuple[str, str], File]) -> None:
        if path == "/.vfs" or path.startswith("/.vfs/"):
            raise OSError(errno.EPERM, os.strerror(errno.EPERM), path)
        routed = self.table.route(path)
        if routed is None and not self.table.is_overlay(path):
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        if routed is not None:
            mount, inner = routed
            meta = ObjectMeta(inner, True) if inner == "" else await self.meta.stat(mount, inner)
            if not meta.is_dir:
                found.setdefault((mount.path, inner), File(top, mount, meta, inner))
                return
            if not job.recursive:
                raise OSError(errno.EISDIR, "a directory (give --recursive)", path)
            for name, child in sorted((await self.meta.list_dir(mount, inner)).items()):
                if child.is_dir:
                    await self._walk(job, top, child_of(path, name), found)
                else:
                    found.setdefault((mount.path, join(inner, name)), File(top, mount, child, join(inner, name)))
        elif not job.recursive:
            raise OSError(errno.EISDIR, "a directory (give --recursive)", path)
        for name in self.table.overlay(path):  # mount points under it
            await self._walk(job, top, child_of(path, name), found)

    # --- the three operations ---------------------------------------------------------------------

    async def _warm(self, job: Job, files: list[File]) -> None:
        """Every block of every file through the reader, `threads` at a time, in file order."""
        bs = self.reader.block_size
        left = [math.ceil(f.meta.size / bs) for f in files]
        failed: set[int] = set()
        job.files_done += left.count(0)
        send, recv = trio.open_memory_channel(math.inf)
        for i, n in enumerate(left):
            for index in range(n):
                send.send_nowait((i, index))
        send.close()

        async def worker(recv: trio.MemoryReceiveChannel) -> None:
            async with recv:
                async for i, index in recv:
                    f = files[i]
                    if i not in failed:
                        try:
                            n = await self.reader.warm_block(f.mount, f.inner, f.meta.version, f.meta.size, index)
                            job.bytes_done += n
                            job.per_path[f.top]["done"] += n
                        except OSError as exc:
                            failed.add(i)
                            job.failed(child_of(f.mount.path, f.inner), exc)
                    left[i] -= 1
                    if not left[i]:
                        job.files_done += 1

        async with trio.open_nursery() as nursery:
            for _ in range(job.threads):
                nursery.start_soon(worker, recv.clone())
        recv.close()

    async def _check(self, job: Job, files: list[File]) -> None:
        for f in files:
            n = self.reader.cached_bytes(f.mount, f.inner, f.meta.version, f.meta.size)
            job.bytes_done += n
            job.per_path[f.top]["done"] += n
            job.files_done += 1
            await trio.lowlevel.checkpoint()

    async def _evict(self, job: Job, files: list[File]) -> None:
        for f in files:
            n = await self.reader.evict(f.mount, f.inner, f.meta.version, f.meta.size)
            job.bytes_done += n
            job.per_path[f.top]["done"] += n
            job.files_done += 1

    def register(self, registry: Registry) -> None:
        registry.gauge("warmups_running", "Warm-up, check and evict jobs running", (), ("warm", "running")
                       ).labels().set_function(lambda: sum(1 for j in self.jobs.values() if j.state in RUNNING))
        registry.static(("warm", "jobs"), lambda: {jid: job.view() for jid, job in self.jobs.items()})


# --- the command: `vfs warm` ------------------------------------------------------------------------

POLL = 0.2
SEEN_TIMEOUT = 10.0
"""How long the command waits for its job to show in `.vfs/stats` (one rendering lasts a second)."""
CANCEL_TIMEOUT = 30.0
PLAIN_EVERY = 2.0
"""Seconds between progress lines when the output is not a terminal."""

WARM_HELP = """\
Fill the cache of the running vfs mount that holds PATH (the SSD tier where there is one) with
whole files, or whole trees with --recursive. The mount does the work, with its own cache and
limits: the command writes a request to MOUNTPOINT/.vfs/warm and shows the progress that the mount
reports in .vfs/stats (a progress bar on a terminal, a line every 2 s otherwise). Ctrl-C stops the
warm-up in the mount; what was loaded stays cached.

A warm-up larger than the cache (the SSD tier where there is one, else RAM) is announced with a
warning before its progress and goes on (the first files are then pushed out by the last);
--no-oversize refuses it instead, before anything is fetched.

--check prints what share of each PATH is cached now, fetching nothing. --evict drops the blocks of
each PATH from every tier. Both look at the version of each file the silo holds now.

The mount must accept writes (not mounted --read-only or with every write mode off): the kernel
refuses writes to .vfs/warm on a read-only mount.

Exit status: 0 done without errors, 1 errors or refused, 130 interrupted."""


def find_mount(paths: list[str]) -> tuple[str, list[str]]:
    """The vfs mountpoint holding every path, and each path relative to it (ValueError otherwise)."""
    mounts = []
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 2 and fields[2] == "fuse.vfs":
                mounts.append(fields[1].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\"))
    rel: list[str] = []
    roots: set[str] = set()
    for path in paths:
        full = os.path.abspath(path)
        under = [m for m in mounts if full == m or full.startswith(m.rstrip("/") + "/")]
        if not under:
            raise ValueError(f"{path}: not on a vfs mount")
        root = max(under, key=len)
        roots.add(root)
        rel.append(os.path.relpath(full, root))
    if len(roots) > 1:
        raise ValueError(f"the paths are on {len(roots)} vfs mounts: give paths of one mount at a time")
    return roots.pop(), ["" if r == "." else r for r in rel]


def _write_request(mountpoint: str, request: dict[str, Any]) -> None:
    fd = os.open(os.path.join(mountpoint, ".vfs", "warm"), os.O_WRONLY)
    try:
        os.write(fd, json.dumps(request).encode() + b"\n")
    finally:
        os.close(fd)


def _job(mountpoint: str, jid: str) -> dict[str, Any] | None:
    from vfs.observe import read_stats

    return read_stats(mountpoint).get("warm", {}).get("jobs", {}).get(jid)


def _wait_seen(mountpoint: str, jid: str) -> dict[str, Any]:
    deadline = time.monotonic() + SEEN_TIMEOUT
    while time.monotonic() < deadline:
        job = _job(mountpoint, jid)
        if job is not None:
            return job
        time.sleep(POLL)
    raise TimeoutError(f"the mount at {mountpoint} took the request but shows no job {jid}")


def _pct(done: int, total: int) -> str:
    return f"{100 * done / total:.1f}%" if total else "-"


class Progress:
    """Progress of a warm-up: rich's bar on a terminal, a plain line every PLAIN_EVERY s otherwise."""

    def __init__(self, tty: bool) -> None:
        self._bar: Any = None
        self._task: Any = None
        self._last = 0.0
        if tty:
            from rich.progress import (BarColumn, DownloadColumn, Progress as Bar, TextColumn,
                                       TimeRemainingColumn, TransferSpeedColumn)

            self._bar = Bar(TextColumn("warm"), BarColumn(), TextColumn("{task.fields[files]} files"),
                            DownloadColumn(binary_units=True),
                            TransferSpeedColumn(), TimeRemainingColumn())
            self._bar.start()

    def update(self, job: dict[str, Any]) -> None:
        files = f"{job['files_done']}/{job['files_total']}"
        if self._bar is not None:
            if self._task is None:
                self._task = self._bar.add_task("warm", total=job["bytes_total"] or None, completed=job["bytes_done"],
                                                files=files)
            else:
                self._bar.update(self._task, completed=job["bytes_done"], files=files)
        elif time.monotonic() - self._last >= PLAIN_EVERY:
            self._last = time.monotonic()
            rate = job["bytes_done"] / job["seconds"] if job["seconds"] > 0 else 0.0
            eta = f", ETA {(job['bytes_total'] - job['bytes_done']) / rate:.0f} s" if rate else ""
            print(f"warm: {files} files, {_size(job['bytes_done'])} / {_size(job['bytes_total'])} "
                  f"({_pct(job['bytes_done'], job['bytes_total'])}), {_size(int(rate))}/s{eta}, {job['errors']} errors",
                  flush=True)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _size(n: int) -> str:
    from vfs.units import format_size

    return format_size(n)


def _follow(mountpoint: str, jid: str, op: str, tty: bool) -> dict[str, Any]:
    """Poll the job until it ends; the job as it ended."""
    job = _wait_seen(mountpoint, jid)
    while job["state"] == "listing":
        time.sleep(POLL)
        job = _job(mountpoint, jid) or job
    if job["state"] == "refused":
        return job
    if op == "warm" and job["oversize"]:
        print(f"vfs: warning: {_size(job['bytes_total'])} to warm, the cache holds {_size(job['capacity'])}: "
              "the first files will be pushed out by the last", file=sys.stderr, flush=True)
    progress = Progress(tty) if op == "warm" else None
    try:
        while job["state"] in RUNNING:
            if progress is not None:
                progress.update(job)
            time.sleep(POLL)
            job = _job(mountpoint, jid) or job
        if progress is not None:
            progress.update(job)
    finally:
        if progress is not None:
            progress.stop()
    return job


def _cancel(mountpoint: str, jid: str) -> dict[str, Any] | None:
    """Ctrl-C: ask the mount to stop the job and wait (bounded) until it has."""
    try:
        _write_request(mountpoint, {"id": jid, "op": "cancel"})
    except OSError:
        return None  # ended already, or never started
    deadline = time.monotonic() + CANCEL_TIMEOUT
    while time.monotonic() < deadline:
        job = _job(mountpoint, jid)
        if job is None or job["state"] not in RUNNING:
            return job
        time.sleep(POLL)
    return None


def _report(job: dict[str, Any], op: str, shown: dict[str, str]) -> int:
    """The end of a job; `shown` names each requested path as the command line gave it."""
    from vfs.table import render

    if job["state"] == "refused":
        print(f"vfs: refused (--no-oversize): {_size(job['bytes_total'])} to warm, the cache holds "
              f"{_size(job['capacity'])}", file=sys.stderr)
        return 1
    if op == "warm":
        rate = job["bytes_done"] / job["seconds"] if job["seconds"] else 0.0
        print(f"{job['state']}: {job['files_done']}/{job['files_total']} files, {_size(job['bytes_done'])} / "
              f"{_size(job['bytes_total'])} in {job['seconds']:.1f} s ({_size(int(rate))}/s), {job['errors']} errors")
    else:
        rows = [(shown.get(path, path), p["files"], _size(p["bytes"]), _size(p["done"]), _pct(p["done"], p["bytes"]))
                for path, p in job["per_path"].items()]
        print(render(("path", "files", "size", "cached" if op == "check" else "evicted",
                      "share" if op == "check" else "of size"), rows), end="")
    if job["errors"]:
        print(f"vfs: {job['errors']} errors, the last: {job['last_error']}", file=sys.stderr)
    return 0 if job["state"] == "done" and not job["errors"] else 1


def cmd_warm(args: argparse.Namespace) -> int:
    try:
        mountpoint, rel = find_mount(args.paths)
    except (OSError, ValueError) as exc:
        print(f"vfs: {exc}", file=sys.stderr)
        return 1
    op = "check" if args.check else "evict" if args.evict else "warm"
    jid = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    request = {"id": jid, "op": op, "paths": rel, "recursive": args.recursive, "threads": args.threads,
               "oversize": "refuse" if args.no_oversize else "warn"}
    try:
        _write_request(mountpoint, request)
    except OSError as exc:
        why = {errno.EROFS: "the mount is read-only: warm-ups need one that accepts writes to .vfs/warm",
               errno.EINVAL: "the mount refused the request (see its log)",
               errno.ENOENT: "this vfs mount has no .vfs/warm (an older vfs?)"}.get(exc.errno, exc.strerror)
        print(f"vfs: {mountpoint}: {why}", file=sys.stderr)
        return 1
    try:
        job = _follow(mountpoint, jid, op, sys.stdout.isatty())
    except KeyboardInterrupt:
        job = _cancel(mountpoint, jid)
        if job is None:
            print("vfs: interrupted; the mount did not confirm the stop", file=sys.stderr)
        else:
            print(f"interrupted: {job['files_done']}/{job['files_total']} files, {_size(job['bytes_done'])} "
                  f"warmed, the rest left ({job['state']})", file=sys.stderr)
        return 130
    except (OSError, TimeoutError) as exc:
        print(f"vfs: {mountpoint}: {exc}", file=sys.stderr)
        return 1
    return _report(job, op, {posixpath.normpath("/" + r.lstrip("/")): path for r, path in zip(rel, args.paths)})


def add_command(sub: argparse._SubParsersAction) -> None:
    w = sub.add_parser("warm", help="fill a running mount's cache with files or trees (or --check, --evict)",
                       description=WARM_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    w.add_argument("paths", nargs="+", metavar="PATH", help="files or directories on one vfs mount")
    w.add_argument("-r", "--recursive", action="store_true", help="whole trees under directories")
    w.add_argument("--threads", type=int, default=4, choices=range(1, MAX_THREADS + 1), metavar="N",
                   help=f"blocks loaded at once (1-{MAX_THREADS}, default 4)")
    what = w.add_mutually_exclusive_group()
    what.add_argument("--check", action="store_true", help="print what share of each PATH is cached; fetch nothing")
    what.add_argument("--evict", action="store_true", help="drop the cached blocks of each PATH")
    w.add_argument("--no-oversize", action="store_true", help="refuse a warm-up larger than the cache")
    w.set_defaults(func=cmd_warm)
