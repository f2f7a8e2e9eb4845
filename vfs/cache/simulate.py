"""Trace-driven simulation of eviction policies under a byte budget.

`simulate` replays a trace through one policy with the owner loop of a tier (vfs.cache.ram.RamStore):
a hit touches the key; a miss makes room by evicting until the block fits, then admits it; a block
larger than the whole budget is refused (counted as a miss). Nothing is pinned. It reports the hit
ratio (hits / requests) and the byte hit ratio (bytes served from cache / bytes requested).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Iterable, Sequence

from vfs.cache.policy import EvictionPolicy, make_policy
from vfs.cache.traces import Request
from vfs.table import render
from vfs.units import format_size

log = logging.getLogger(__name__)


def _never_pinned(key: object) -> bool:
    return False


@dataclasses.dataclass(frozen=True)
class SimResult:
    policy: str
    capacity: int
    requests: int
    hits: int
    bytes_requested: int
    hit_bytes: int
    evictions: int
    refused: int
    peak_used: int
    """The most bytes resident at once (never above capacity)."""

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    @property
    def byte_hit_ratio(self) -> float:
        return self.hit_bytes / self.bytes_requested if self.bytes_requested else 0.0


def simulate(requests: Iterable[Request], policy: EvictionPolicy, capacity: int, name: str | None = None) -> SimResult:
    """Replay `requests` through `policy` in a tier of `capacity` bytes."""
    resident: dict[object, int] = {}
    used = peak = 0
    count = hits = total_bytes = hit_bytes = evictions = refused = 0
    for key, size in requests:
        count += 1
        total_bytes += size
        held = resident.get(key)
        if held == size:
            hits += 1
            hit_bytes += size
            policy.touch(key)
            continue
        if held is not None:  # same key, other size: a new version of the block replaces the old one
            del resident[key]
            used -= held
            policy.remove(key)
        if size > capacity:
            refused += 1
            continue
        while used + size > capacity:
            victim = policy.evict(_never_pinned)
            if victim not in resident:
                raise RuntimeError(f"policy {name or type(policy).__name__} returned {victim!r}, which is not resident")
            used -= resident.pop(victim)
            evictions += 1
        resident[key] = size
        used += size
        peak = max(peak, used)
        policy.admit(key, size)
    return SimResult(policy=name or getattr(policy, "name", type(policy).__name__), capacity=capacity,
                     requests=count, hits=hits, bytes_requested=total_bytes, hit_bytes=hit_bytes,
                     evictions=evictions, refused=refused, peak_used=peak)


def simulate_all(requests: Sequence[Request], policies: Iterable[str], capacity: int) -> list[SimResult]:
    """One result per policy name (a registered name or `module:Class`), each built with `capacity`."""
    results = []
    for name in policies:
        results.append(simulate(requests, make_policy(name, capacity=capacity), capacity, name=name))
        log.debug("simulated %s: %s", name, results[-1])
    return results


def render_table(results: Sequence[SimResult], title: str = "") -> str:
    """A plain-text table, one row per policy."""
    header = ("policy", "capacity", "requests", "hits", "hit ratio", "byte hit ratio", "evictions", "refused")
    rows = [(r.policy, format_size(r.capacity), r.requests, r.hits, f"{r.hit_ratio:.4f}", f"{r.byte_hit_ratio:.4f}",
             r.evictions, r.refused) for r in results]
    return render(header, rows, title)
