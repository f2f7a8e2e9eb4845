"""The metrics registry: every counter, gauge and histogram of a mount, typed, in one place.

Owners register their own families (`Registry.counter/gauge/histogram`, each with a fixed set of
label names) and bump the children that `Family.labels(...)` returns, or give a child a function
that reads a figure they keep anyway (`set_function`: cache tiers, uploads pending). Labels are
bounded: tier, silo (a mount path), operation; never a file path (a family refuses more than
MAX_CHILDREN children).

The registry renders two ways: `snapshot()`, the nested dict `.vfs/stats` shows (each family names
where its values go, e.g. `("tiers", "{tier}", "hits")`; labels left out of that path are summed),
and `collect()`, flat samples that vfs/prometheus.py exports as `vfs_<name>` (`_total` added to
counters).

Threads: children are bumped on the trio thread without locks (an integer add). `snapshot()` and
`collect()` run there too (the Prometheus thread asks the trio thread for a `collect()`), so a scrape
sees the figures of one moment.
"""

from __future__ import annotations

import bisect
import dataclasses
import os
import platform
from typing import Any, Callable, Generic, Literal, TypeVar, Union

import vfs

Number = Union[int, float]
Kind = Literal["counter", "gauge", "histogram"]

# Seconds: FUSE requests answered from RAM take ~50 us, a silo's round trip 1 ms to seconds.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0, 30.0)
# Children of one family at most: more means a label that is not bounded (a path, an id).
MAX_CHILDREN = 1000


class Counter:
    """A number that only goes up (or, `set_function`, is read from its owner when rendered)."""

    __slots__ = ("value", "_fn")

    def __init__(self) -> None:
        self.value: Number = 0
        self._fn: Callable[[], Number] | None = None

    def inc(self, n: Number = 1) -> None:
        self.value += n

    def set_function(self, fn: Callable[[], Number]) -> None:
        self._fn = fn

    def get(self) -> Number:
        return self._fn() if self._fn is not None else self.value


class Gauge(Counter):
    """A number that goes up and down."""

    __slots__ = ()

    def set(self, value: Number) -> None:
        self.value = value


@dataclasses.dataclass(frozen=True)
class HistogramValue:
    buckets: list[tuple[float, int]]
    """(upper bound, observations <= it), cumulative; the last bound is +inf."""
    count: int
    sum: float


class Histogram:
    """Observations counted in fixed buckets, with their count and sum."""

    __slots__ = ("bounds", "counts", "count", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def get(self) -> HistogramValue:
        total, buckets = 0, []
        for bound, n in zip((*self.bounds, float("inf")), self.counts):
            total += n
            buckets.append((bound, total))
        return HistogramValue(buckets, self.count, self.sum)


C = TypeVar("C", Counter, Gauge, Histogram)
StatsPath = tuple[str, ...]


@dataclasses.dataclass(eq=False)
class Family(Generic[C]):
    kind: Kind
    name: str
    """Without the `vfs_` prefix and the `_total` of counters; ends in its unit (`_bytes`, `_seconds`)."""
    help: str
    labelnames: tuple[str, ...]
    make: Callable[[], C]
    stats: StatsPath | None
    """Where `.vfs/stats` shows each child ("{label}" parts name the child's label values); None:
    Prometheus only. A histogram shows its count there."""
    stats_sum: StatsPath | None = None
    """Histograms: where `.vfs/stats` shows the sum of the observations."""
    children: dict[tuple[str, ...], C] = dataclasses.field(default_factory=dict)

    def labels(self, *values: str) -> C:
        """The child for these label values (made on first use)."""
        child = self.children.get(values)
        if child is None:
            child = self.attach(values, self.make())
        return child

    def attach(self, values: tuple[str, ...], child: C) -> C:
        """Make a child that its owner created (and may already have bumped) part of this family."""
        if len(values) != len(self.labelnames) or not all(isinstance(v, str) for v in values):
            raise ValueError(f"{self.name}: label values {values!r} for labels {self.labelnames!r}")
        if len(self.children) >= MAX_CHILDREN and values not in self.children:
            raise ValueError(f"{self.name}: more than {MAX_CHILDREN} label sets; a label is not bounded")
        self.children[values] = child
        return child


@dataclasses.dataclass(frozen=True)
class Metric:
    """One family as collected: what vfs/prometheus.py turns into a metric family."""

    kind: Kind
    name: str
    help: str
    labelnames: tuple[str, ...]
    samples: list[tuple[tuple[str, ...], Number | HistogramValue]]


class Registry:
    def __init__(self) -> None:
        self.families: dict[str, Family[Any]] = {}
        self._static: list[tuple[StatsPath, Any]] = []
        self.static(("pid",), os.getpid())
        self.gauge("build_info", "vfs build: version and Python as labels, value 1",
                   ("version", "python"), None).labels(vfs.__version__, platform.python_version()).set(1)

    # --- registering ------------------------------------------------------------------------------

    def counter(self, name: str, help: str, labels: tuple[str, ...] = (), stats: StatsPath | None = None) -> Family[Counter]:
        return self._family("counter", name, help, labels, Counter, stats)

    def gauge(self, name: str, help: str, labels: tuple[str, ...] = (), stats: StatsPath | None = None) -> Family[Gauge]:
        return self._family("gauge", name, help, labels, Gauge, stats)

    def histogram(self, name: str, help: str, labels: tuple[str, ...] = (), stats: StatsPath | None = None,
                  stats_sum: StatsPath | None = None, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> Family[Histogram]:
        return self._family("histogram", name, help, labels, lambda: Histogram(buckets), stats, stats_sum)

    def _family(self, kind: Kind, name: str, help: str, labels: tuple[str, ...], make: Callable[[], Any],
                stats: StatsPath | None, stats_sum: StatsPath | None = None) -> Family[Any]:
        """A new family, or the one registered before under that name (several silos, one family)."""
        old = self.families.get(name)
        if old is not None:
            if (old.kind, old.labelnames, old.stats) != (kind, labels, stats):
                raise ValueError(f"metric {name} registered twice, differently")
            return old
        for path in (stats, stats_sum):
            unknown = {p[1:-1] for p in path or () if p.startswith("{")} - set(labels)
            if unknown:
                raise ValueError(f"{name}: stats path names labels it does not have: {unknown}")
        family = Family(kind, name, help, labels, make, stats, stats_sum)
        self.families[name] = family
        return family

    def static(self, path: StatsPath, value: Any) -> None:
        """A value `.vfs/stats` shows that is no metric (a policy's name, a directory); a callable
        is called at each rendering."""
        self._static.append((path, value))

    # --- rendering --------------------------------------------------------------------------------

    def collect(self) -> list[Metric]:
        return [Metric(f.kind, f.name, f.help, f.labelnames, [(values, child.get()) for values, child in f.children.items()])
                for f in self.families.values()]

    def snapshot(self) -> dict[str, Any]:
        """The nested dict `.vfs/stats` shows."""
        out: dict[str, Any] = {}
        for path, value in self._static:
            _put(out, path, value() if callable(value) else value)
        for f in self.families.values():
            if f.stats is None:
                continue
            for values, child in f.children.items():
                labels = dict(zip(f.labelnames, values))
                if isinstance(child, Histogram):
                    _add(out, _resolve(f.stats, labels), child.count)
                    if f.stats_sum is not None:
                        _add(out, _resolve(f.stats_sum, labels), round(child.sum, 6))
                else:
                    _add(out, _resolve(f.stats, labels), child.get())
        return out


def _resolve(path: StatsPath, labels: dict[str, str]) -> StatsPath:
    return tuple(labels[p[1:-1]] if p.startswith("{") else p for p in path)


def _node(out: dict[str, Any], path: StatsPath) -> dict[str, Any]:
    for key in path[:-1]:
        out = out.setdefault(key, {})
    return out


def _put(out: dict[str, Any], path: StatsPath, value: Any) -> None:
    _node(out, path)[path[-1]] = value


def _add(out: dict[str, Any], path: StatsPath, value: Number) -> None:
    """Put a number, summed with what is there (children whose labels the path leaves out)."""
    node = _node(out, path)
    node[path[-1]] = node.get(path[-1], 0) + value
