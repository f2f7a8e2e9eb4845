"""Prometheus metrics: the mount's metrics registry (vfs/metrics.py) served over HTTP by
prometheus_client, at `[metrics] addr` (off by default).

Names are `vfs_` + the family's name (base units: `_bytes`, `_seconds`); counters get `_total`,
histograms `_bucket`, `_sum` and `_count`; labels are the family's (tier, silo, operation). The
server runs in a thread of its own; each scrape asks the trio thread for the figures
(`trio.from_thread`), so one scrape shows one moment and no counter is read while it changes.
"""

from __future__ import annotations

from typing import Callable, Iterator
from wsgiref.simple_server import WSGIServer

import trio
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from vfs.metrics import HistogramValue, Registry
from vfs.metrics import Metric as Family

PREFIX = "vfs_"


def parse_addr(addr: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` (127.0.0.1) -> (host, port)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"metrics address {addr!r}: expected HOST:PORT, e.g. 127.0.0.1:9567")
    return host.strip("[]") or "127.0.0.1", int(port)


def _family(m: Family) -> Metric:
    name, labels = PREFIX + m.name, list(m.labelnames)
    if m.kind == "histogram":
        h = HistogramMetricFamily(name, m.help, labels=labels)
        for values, v in m.samples:
            assert isinstance(v, HistogramValue)
            h.add_metric(list(values), [(floatToGoString(le), n) for le, n in v.buckets], v.sum)
        return h
    family = (CounterMetricFamily if m.kind == "counter" else GaugeMetricFamily)(name, m.help, labels=labels)
    for values, value in m.samples:
        family.add_metric(list(values), value)  # type: ignore[arg-type]
    return family


class RegistryCollector(Collector):
    """prometheus_client's view of a metrics registry; `collect` gives the registry's families."""

    def __init__(self, collect: Callable[[], list[Family]]) -> None:
        self._collect = collect

    def collect(self) -> Iterator[Metric]:
        for m in self._collect():
            yield _family(m)


class MetricsServer:
    """The HTTP endpoint, in a thread; `close` stops it."""

    def __init__(self, addr: str, registry: Registry, token: trio.lowlevel.TrioToken) -> None:
        def collect() -> list[Family]:
            try:
                return trio.from_thread.run_sync(registry.collect, trio_token=token)
            except trio.RunFinishedError:  # the mount is shutting down: nothing changes any more
                return registry.collect()

        host, port = parse_addr(addr)
        scrape = CollectorRegistry(auto_describe=False)
        scrape.register(RegistryCollector(collect))
        self.server: WSGIServer
        self.server, self._thread = start_http_server(port, host, scrape)
        self.url = f"http://{addr.rpartition(':')[0] or '127.0.0.1'}:{self.server.server_port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()
