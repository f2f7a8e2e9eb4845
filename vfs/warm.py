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

The command's side, `vfs warm`, is vfs/observe.py's: it writes the request, polls `.vfs/stats`,
draws a progress bar (rich) on a terminal and plain lines otherwise, and on Ctrl-C writes a cancel
request.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import math
import os
import posixpath
import time
from typing import Any

import trio

from vfs.metadata import MetadataCache
from vfs.metrics import Registry
from vfs.mount_table import Mount, MountTable, child_of
from vfs.mounts.base import ObjectMeta, join
from vfs.observe import MAX_THREADS, RUNNING
from vfs.reader import Reader

log = logging.getLogger(__name__)

OPS = ("warm", "check", "evict")
KEEP_ENDED = 16
"""Ended jobs kept in `.vfs/stats` (the command that started one reads its end there)."""


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
