"""Shared helpers of the benchmark scripts in bench/: dropping the page cache, timing reads,
summarising samples and repeated runs (median, min-max, spread), reading a mount's /.vfs/stats, and
writing bench/out/<name>.json.

Benchmarks report ratios against a baseline measured in the same run and never assert times.
Run them from the repository root (`python bench/<name>.py`) so `tests` and `vfs` import.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/x.py` puts bench/ on sys.path, not the repository
    sys.path.insert(0, str(ROOT))

from vfs.observe import read_stats  # noqa: E402

log = logging.getLogger(__name__)

OUT = ROOT / "bench" / "out"
MiB = 1024 * 1024
# Reads through a mount and from local files go in 1 MiB pieces: the largest request FUSE sends
# (DESIGN.md, "Requests never exceed 1 MiB"), and what `dd bs=1M` or a DataLoader's read() does.
READ_CHUNK = MiB


def drop_page_cache() -> bool:
    """Flush dirty pages and drop the kernel's page cache, dentries and inodes; False where not permitted."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError as exc:
        log.warning("cannot drop the page cache (%s): later reads may be served from it", exc)
        return False


def read_whole(path: str | Path, chunk: int = READ_CHUNK) -> int:
    """open + read a file to its end in `chunk`-sized reads; the number of bytes read."""
    buf = bytearray(chunk)
    view = memoryview(buf)
    total = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            total += n
    return total


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of samples, linear between neighbours."""
    s = sorted(samples)
    if not s:
        return float("nan")
    pos = (len(s) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """Median and p90 in milliseconds."""
    return {"median_ms": percentile(seconds, 0.5) * 1000, "p90_ms": percentile(seconds, 0.9) * 1000}


def mb_per_s(nbytes: int, seconds: float) -> float:
    """Throughput in MB/s (10^6 bytes per second)."""
    return nbytes / seconds / 1e6 if seconds > 0 else float("inf")


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def median_of(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def fmt(value: float | int | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def mount_stats(mountpoint: str | Path) -> dict[str, Any]:
    """The mount's /.vfs/stats JSON."""
    return read_stats(str(mountpoint))


def run_scenarios(scenarios: dict[str, Callable[[Any], None]], names: Sequence[str], bench: Any,
                  tag: str = "") -> None:
    """`scenarios[name](bench)` for each name, timed; a scenario that fails is logged and recorded in
    `bench.errors` under name + tag (the report shows it) and the others still run."""
    for name in names:
        t = time.perf_counter()
        try:
            scenarios[name](bench)
        except Exception as exc:
            log.exception("scenario %s%s failed", name, tag)
            bench.errors[name + tag] = f"{type(exc).__name__}: {exc}"
        log.info("scenario %s%s took %.0f s", name, tag, time.perf_counter() - t)


# A figure whose runs spread more than this ((max - min) / median) is flagged as unsteady.
SPREAD_LIMIT = 0.15


def run_summary(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and spread ((max - min) / median) of one figure's runs, and the runs themselves."""
    vals = [float(v) for v in values]
    med = statistics.median(vals)
    lo, hi = min(vals), max(vals)
    spread = (hi - lo) / med if med else (0.0 if hi == lo else float("inf"))
    return {"median": med, "min": lo, "max": hi, "spread": spread, "unsteady": spread > SPREAD_LIMIT,
            "runs": vals}


def median_value(values: Sequence[Any]) -> Any:
    """The median of repeated results of one shape: numbers give their median, dicts the median of each
    key (recursively), anything else the most common value (e.g. the name of the best configuration)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
        return statistics.median(vals)
    if all(isinstance(v, dict) for v in vals):
        keys = [k for k in vals[0] if all(k in v for v in vals)]
        return {k: median_value([v[k] for v in vals]) for k in keys}
    return max(vals, key=lambda v: sum(1 for w in vals if w == v))


def write_json(name: str, data: Any) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return path
