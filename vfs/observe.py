"""Commands that look at a running mount or an SSD cache directory: `vfs status`, `vfs stats`,
`vfs warm`, `vfs cache info`, `vfs cache clear`.

`vfs warm` writes its requests to the mount's `.vfs/warm` (the mount's side is vfs/warm.py) and
follows them in `.vfs/stats`. A running mount is reached through its `.vfs/stats` file (which also names its pid) and, to clear a
tier, by a signal the mount process handles (vfs.app.CLEAR_SIGNALS). An SSD cache directory that no
mount is using is read or cleared directly.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import posixpath
import sys
import time
import uuid
from typing import Any

from vfs.table import render
from vfs.units import format_size


def read_stats(mountpoint: str) -> dict[str, Any]:
    with open(os.path.join(mountpoint, ".vfs", "stats"), "rb") as f:
        return json.loads(f.read())


def _ratio(hits: int, misses: int) -> str:
    return f"{hits / (hits + misses):.3f}" if hits + misses else "-"


def _mean_ms(seconds: float, n: int) -> str:
    return f"{1000 * seconds / n:.2f}" if n else "-"


def format_stats(stats: dict[str, Any]) -> str:
    tiers = [
        (name, t.get("policy", "redis" if name == "cluster" else ""),
         f"{format_size(t.get('used', 0))} / {format_size(t.get('capacity', 0))}" if "capacity" in t else "-",
         t.get("blocks", "-"), t.get("hits", 0), t.get("misses", 0), _ratio(t.get("hits", 0), t.get("misses", 0)),
         t.get("evictions", "-"))
        for name, t in stats["tiers"].items() if isinstance(t, dict) and "hits" in t
    ]
    backends = [
        (path, b["silo"], b["requests"], _mean_ms(b.get("seconds", 0.0), b["requests"]), b["errors"], b["retries"],
         format_size(b["bytes"]), format_size(b.get("written", 0)))
        for path, b in stats["backends"].items()
    ]
    seconds = stats.get("request_seconds", {})
    requests = [(op, n, _mean_ms(seconds.get(op, 0.0), n)) for op, n in sorted(stats.get("requests", {}).items()) if n]
    r = stats["reader"]
    head = (f"vfs pid {stats['pid']}, up {stats['uptime_s']:.0f} s, {stats['inodes']} inodes, "
            f"{r['open_handles']} open files, block size {format_size(r['block_size'])}, {r['prefetches']} prefetches\n\n")
    w = stats.get("writes")
    if w:
        head += (f"writes: {w['staged_files']} staged files ({format_size(w['staged_bytes'])} of "
                 f"{format_size(w['staging_capacity'])}), {w['pending_commits']} commits pending "
                 f"({w.get('failing_commits', 0)} failing), {w['commits']} done, {w['conflicts']} conflicts, "
                 f"{w['commit_failures']} failed tries\n\n")
    c = stats["tiers"].get("cluster")
    if isinstance(c, dict):
        head += (f"cluster tier: {'online' if c.get('online', 1) else 'OFF (switched off after failures)'}, "
                 f"{c.get('lease_won', 0)} blocks fetched for the cluster, {c.get('lease_waits', 0)} waited for "
                 f"({c.get('lease_expired', 0)} in vain), {c.get('fallbacks', 0)} fallbacks to the silo, "
                 f"{c.get('errors', 0)} errors, {c.get('corrupt', 0)} corrupt\n\n")
    return (head
            + render(("tier", "policy", "fill", "blocks", "hits", "misses", "hit ratio", "evictions"), tiers, "cache (hits and misses count block lookups)")
            + "\n"
            + render(("mount", "silo", "requests", "mean ms", "errors", "retries", "bytes read", "bytes written"), backends, "backends")
            + ("\n" + render(("operation", "requests", "mean ms"), requests, "FUSE requests") if requests else ""))


def status(stats: dict[str, Any]) -> dict[str, Any]:
    """What `vfs status` shows, taken from a `.vfs/stats` snapshot."""
    w = stats.get("writes") or {}
    return {
        "pid": stats["pid"],
        "uptime_s": stats["uptime_s"],
        "silos": {path: {"silo": b["silo"], "online": bool(b.get("online", 1)), "offline_since": b.get("offline_since"),
                         "last_error": b.get("last_error")} for path, b in sorted(stats["backends"].items())},
        "tiers": {name: {"used": t.get("used", 0), "capacity": t.get("capacity", 0), "fill": t.get("fill", 0.0),
                         "blocks": t.get("blocks", 0)}
                  for name, t in stats["tiers"].items() if isinstance(t, dict) and "capacity" in t},
        "cluster": ({"online": bool(c.get("online", 1)), "hits": c.get("hits", 0), "fallbacks": c.get("fallbacks", 0),
                     "errors": c.get("errors", 0)} if isinstance(c := stats["tiers"].get("cluster"), dict) else None),
        "uploads": {"pending": w.get("pending_commits", 0), "failing": w.get("failing_commits", 0)},
        "warm": {jid: j for jid, j in stats.get("warm", {}).get("jobs", {}).items() if j["state"] in ("listing", "running")},
    }


def format_status(st: dict[str, Any]) -> str:
    silos = [(path, s["silo"], "online" if s["online"] else "OFFLINE", s["offline_since"] or "-",
              (s["last_error"] or "-") if not s["online"] else "-") for path, s in st["silos"].items()]
    tiers = [(name, f"{format_size(t['used'])} / {format_size(t['capacity'])}", f"{100 * t['fill']:.1f}%", t["blocks"])
             for name, t in st["tiers"].items()]
    warm = [(jid, j["op"], j["state"], f"{j['files_done']}/{j['files_total']}",
             f"{format_size(j['bytes_done'])} / {format_size(j['bytes_total'])}", j["errors"]) for jid, j in st["warm"].items()]
    up = st["uploads"]
    return (f"vfs pid {st['pid']}, up {st['uptime_s']:.0f} s; uploads: {up['pending']} pending, {up['failing']} failing\n\n"
            + render(("mount", "silo", "state", "offline since", "last error"), silos, "silos")
            + "\n" + render(("tier", "used / capacity", "fill", "blocks"), tiers, "cache")
            + (f"cluster tier: {'online' if cl['online'] else 'OFF'}, {cl['hits']} hits, {cl['fallbacks']} fallbacks, "
               f"{cl['errors']} errors\n" if (cl := st.get("cluster")) else "")
            + "\n" + (render(("job", "op", "state", "files", "bytes", "errors"), warm, "warm-ups running")
                      if warm else "warm-ups running: none\n"))


def _stats_or_say(mountpoint: str) -> dict[str, Any] | None:
    """The mount's stats, or None once one line on stderr has said why there are none."""
    try:
        return read_stats(mountpoint)
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            why = f"a stale mount (its vfs process is gone); unmount it: vfs unmount {mountpoint}"
        else:
            why = f"not a vfs mount ({exc.strerror})"
    except ValueError:
        why = "not a vfs mount (its .vfs/stats is not vfs's)"
    print(f"vfs: {mountpoint}: {why}", file=sys.stderr)
    return None


def cmd_status(args: argparse.Namespace) -> int:
    stats = _stats_or_say(args.mountpoint)
    if stats is None:
        return 1
    try:
        st = status(stats)
    except (KeyError, TypeError):
        print(f"vfs: {args.mountpoint}: not a vfs mount (its .vfs/stats is not vfs's)", file=sys.stderr)
        return 1
    print(json.dumps(st, indent=1, sort_keys=True) if args.json else format_status(st), end="\n" if args.json else "")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    try:
        stats = read_stats(args.mountpoint)
    except OSError as exc:
        print(f"vfs: {args.mountpoint}: no vfs mount here ({exc.strerror})", file=sys.stderr)
        return 1
    print(json.dumps(stats, indent=1, sort_keys=True) if args.json else format_stats(stats), end="\n" if args.json else "")
    return 0


def _ssd_dir(args: argparse.Namespace) -> str:
    if args.dir:
        return os.path.expanduser(args.dir)
    from vfs.config import CacheConfig, load

    cache = load(args.config).cache if args.config else CacheConfig()
    return os.path.expanduser(cache.ssd_dir)


def cmd_cache_info(args: argparse.Namespace) -> int:
    from vfs.cache.ssd import cache_info

    info = cache_info(_ssd_dir(args))
    if args.json:
        print(json.dumps(info, indent=1, sort_keys=True))
        return 0
    print(f"SSD cache {info['directory']}: {info['blocks']} blocks, {format_size(info['bytes'])} "
          f"({format_size(info['disk_bytes'])} on disk), {info['bad_rows']} bad, "
          f"{'in use by a mount' if info['in_use'] else 'not in use'}")
    for mount, size in sorted(info.get("bytes_by_mount", {}).items()):
        print(f"  {mount}: {format_size(size)}")
    return 0


def cmd_cache_clear(args: argparse.Namespace) -> int:
    from vfs.app import CLEAR_SIGNALS

    tiers = [args.tier] if args.tier else ["ram", "ssd"]
    if args.mount:
        try:
            pid = read_stats(args.mount)["pid"]
        except OSError as exc:
            print(f"vfs: {args.mount}: no vfs mount here ({exc.strerror})", file=sys.stderr)
            return 1
        by_tier = {tier: sig for sig, tier in CLEAR_SIGNALS.items()}
        for tier in tiers:
            os.kill(pid, by_tier[tier])
        print(f"asked the mount at {args.mount} (pid {pid}) to clear: {', '.join(tiers)}")
        return 0
    if tiers == ["ram"]:
        print("vfs: the RAM tier lives in a running mount: give --mount MOUNTPOINT", file=sys.stderr)
        return 2
    from vfs.cache.ssd import cache_clear

    directory = _ssd_dir(args)
    try:
        n = cache_clear(directory)
    except OSError as exc:
        print(f"vfs: {directory}: {exc.strerror or exc}; a mount is using it: use --mount MOUNTPOINT", file=sys.stderr)
        return 1
    print(f"cleared {n} blocks from {directory}")
    return 0


# --- `vfs warm` -------------------------------------------------------------------------------------

MAX_THREADS = 64
RUNNING = ("listing", "running")
"""States of a warm-up job that has not ended (vfs/warm.py)."""

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

On a read-only mount (the kernel refuses writes to .vfs/warm) the request goes through the mount's
requests directory instead, which only the mount's user (and root) may write.

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
    """Hand a request to the mount: written to .vfs/warm, or, on a read-only mount (EROFS), put in the
    mount's requests_dir and handed over with a getxattr (vfs/control.py)."""
    line = json.dumps(request).encode() + b"\n"
    warm = os.path.join(mountpoint, ".vfs", "warm")
    try:
        fd = os.open(warm, os.O_WRONLY)
    except OSError as exc:
        if exc.errno != errno.EROFS:
            raise
    else:
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        return
    spool = read_stats(mountpoint).get("requests_dir")
    if not spool:
        raise OSError(errno.EROFS, "the mount is read-only and names no requests_dir (an older vfs?)")
    rid = uuid.uuid4().hex
    path = os.path.join(spool, rid + ".json")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    try:
        os.getxattr(warm, "user.vfs.request." + rid)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # taken by the mount already, unless it refused


def _job(mountpoint: str, jid: str) -> dict[str, Any] | None:
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
            print(f"warm: {files} files, {format_size(job['bytes_done'])} / {format_size(job['bytes_total'])} "
                  f"({_pct(job['bytes_done'], job['bytes_total'])}), {format_size(int(rate))}/s{eta}, {job['errors']} errors",
                  flush=True)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _follow(mountpoint: str, jid: str, op: str, tty: bool) -> dict[str, Any]:
    """Poll the job until it ends; the job as it ended."""
    job = _wait_seen(mountpoint, jid)
    while job["state"] == "listing":
        time.sleep(POLL)
        job = _job(mountpoint, jid) or job
    if job["state"] == "refused":
        return job
    if op == "warm" and job["oversize"]:
        print(f"vfs: warning: {format_size(job['bytes_total'])} to warm, the cache holds {format_size(job['capacity'])}: "
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
    if job["state"] == "refused":
        print(f"vfs: refused (--no-oversize): {format_size(job['bytes_total'])} to warm, the cache holds "
              f"{format_size(job['capacity'])}", file=sys.stderr)
        return 1
    if op == "warm":
        rate = job["bytes_done"] / job["seconds"] if job["seconds"] else 0.0
        print(f"{job['state']}: {job['files_done']}/{job['files_total']} files, {format_size(job['bytes_done'])} / "
              f"{format_size(job['bytes_total'])} in {job['seconds']:.1f} s ({format_size(int(rate))}/s), {job['errors']} errors")
    else:
        rows = [(shown.get(path, path), p["files"], format_size(p["bytes"]), format_size(p["done"]), _pct(p["done"], p["bytes"]))
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
        why = {errno.EROFS: exc.strerror,
               errno.EACCES: f"cannot hand the request to the mount ({exc}): run vfs warm as the mount's user",
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
            print(f"interrupted: {job['files_done']}/{job['files_total']} files, {format_size(job['bytes_done'])} "
                  f"warmed, the rest left ({job['state']})", file=sys.stderr)
        return 130
    except (OSError, TimeoutError) as exc:
        print(f"vfs: {mountpoint}: {exc}", file=sys.stderr)
        return 1
    return _report(job, op, {posixpath.normpath("/" + r.lstrip("/")): path for r, path in zip(rel, args.paths)})


def add_warm_command(sub: argparse._SubParsersAction) -> None:
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


def add_commands(sub: argparse._SubParsersAction, cache_sub: argparse._SubParsersAction) -> None:
    st = sub.add_parser("status", help="a running mount's silos (online or offline), cache fill, uploads, warm-ups")
    st.add_argument("mountpoint")
    st.add_argument("--json", action="store_true", help="the same as JSON, for scripts")
    st.set_defaults(func=cmd_status)

    add_warm_command(sub)

    s = sub.add_parser("stats", help="counters of a running mount (tiers, backends, FUSE requests)")
    s.add_argument("mountpoint")
    s.add_argument("--json", action="store_true", help="the raw .vfs/stats JSON")
    s.set_defaults(func=cmd_stats)

    i = cache_sub.add_parser("info", help="what an SSD cache directory holds")
    i.add_argument("--dir", help="the SSD cache directory (default: ssd_dir of --config, else ~/.cache/vfs)")
    i.add_argument("-c", "--config")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_cache_info)

    c = cache_sub.add_parser("clear", help="drop cached blocks")
    c.add_argument("--tier", choices=["ram", "ssd"], help="one tier only (default: both)")
    c.add_argument("--mount", help="clear in the running mount at this mountpoint")
    c.add_argument("--dir", help="an SSD cache directory no mount is using")
    c.add_argument("-c", "--config")
    c.set_defaults(func=cmd_cache_clear)
