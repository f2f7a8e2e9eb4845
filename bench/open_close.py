"""The warm open/read/close rate: what a DataLoader's second epoch costs once every byte is cached.

No request of such an epoch needs vfs's Python code: the kernel serves the pages, and a close on a
writable tree sends a FLUSH that the patched pyfuse3 answers in C. What is left is how fast the FUSE
request loop turns. This benchmark mounts a local silo holding `--files` small files, reads them once
(warm), then `--procs` processes open, read and close them for `--seconds`, `--runs` times, on a
read-only tree (write mode off) and a writable one (mode through), and the same on the local
directory itself (the baseline, same run).

    python bench/open_close.py [--files 2000] [--procs 4] [--seconds 4] [--runs 3]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (puts the repository on sys.path)
from tests.kernel import start_mount, stop_mount


def _worker(paths: list[str], seconds: float, out: mp.Queue) -> None:
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        for p in paths:
            with open(p, "rb") as f:
                f.read()
            n += 1
    out.put(n)


def files_per_second(root: Path, names: list[str], procs: int, seconds: float) -> float:
    paths = [str(root / n) for n in names]
    for p in paths:  # warm: the pages are in the kernel's cache
        with open(p, "rb") as f:
            f.read()
    out: mp.Queue = mp.Queue()
    workers = [mp.Process(target=_worker, args=(paths[i::procs], seconds, out)) for i in range(procs)]
    start = time.monotonic()
    for w in workers:
        w.start()
    total = sum(out.get() for _ in workers)
    for w in workers:
        w.join()
    return total / (time.monotonic() - start)


def summary(rates: list[float]) -> str:
    return f"{statistics.median(rates):8.0f} ({min(rates):.0f}-{max(rates):.0f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vfs-open-close-") as tmpdir:
        tmp = Path(tmpdir)
        src = tmp / "src"
        src.mkdir()
        names = [f"f{i:05d}" for i in range(args.files)]
        for n in names:
            (src / n).write_bytes(os.urandom(4096))
        results = {"local": [files_per_second(src, names, args.procs, args.seconds) for _ in range(args.runs)]}
        for mode in ("off", "through"):
            m = start_mount(tmp, {"write": {"mode": mode}, "cache": {"ssd_size": 0},
                                  "mount": [{"path": "/l", "backend": "local", "root": str(src)}]}, name=f"mnt-{mode}")
            try:
                results[mode] = [files_per_second(m.path / "l", names, args.procs, args.seconds)
                                 for _ in range(args.runs)]
            finally:
                stop_mount(m)
    local = statistics.median(results["local"])
    print(f"warm open/read/close of {args.files} files of 4 KiB, {args.procs} processes, median of {args.runs} (min-max)")
    print(f"{'tree':<22} {'files/s':>8}  {'vs local':>8}")
    print(f"{'local directory':<22} {summary(results['local'])}")
    for mode, label in (("off", "vfs read-only (off)"), ("through", "vfs writable (through)")):
        print(f"{label:<22} {summary(results[mode])}  {statistics.median(results[mode]) / local:7.2f}x")


if __name__ == "__main__":
    main()
