"""Commands that look at a running mount or an SSD cache directory: `vfs status`, `vfs stats`,
`vfs cache info`, `vfs cache clear`.

A running mount is reached through its `.vfs/stats` file (which also names its pid) and, to clear a
tier, by a signal the mount process handles (vfs.app.CLEAR_SIGNALS). An SSD cache directory that no
mount is using is read or cleared directly.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
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
        (name, t.get("policy", ""), f"{format_size(t.get('used', 0))} / {format_size(t.get('capacity', 0))}",
         t.get("blocks", ""), t.get("hits", 0), t.get("misses", 0), _ratio(t.get("hits", 0), t.get("misses", 0)),
         t.get("evictions", 0))
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


def add_commands(sub: argparse._SubParsersAction, cache_sub: argparse._SubParsersAction) -> None:
    st = sub.add_parser("status", help="a running mount's silos (online or offline), cache fill, uploads, warm-ups")
    st.add_argument("mountpoint")
    st.add_argument("--json", action="store_true", help="the same as JSON, for scripts")
    st.set_defaults(func=cmd_status)

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
