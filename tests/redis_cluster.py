"""A real 3-node Redis Cluster on 127.0.0.1 for the cluster tier's tests and bench.

Owns the redis-server child processes: started on free ports, joined with `redis-cli --cluster create`,
waited for until every node says cluster_state:ok, one node killed with SIGKILL and started again on its
port with its nodes.conf (so it rejoins holding its slots), and every process stopped by pid at the end,
also when the block raises. Use `local_cluster(dir)` as a context manager or the `redis_cluster` fixture
(module scope: `from tests.redis_cluster import redis_cluster  # noqa: F401`).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.servers import HOST, stop, wait_port

PASSWORD = "vfs-test-pw"


def cluster_port(taken: set[int]) -> int:
    """A free port P <= 55535 whose cluster bus port P + 10000 is free too (redis-server's rule)."""
    for _ in range(200):
        port = random.randint(20000, 55535)
        if port in taken or port + 10000 in taken:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind((HOST, port))
                b.bind((HOST, port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def redis_available() -> bool:
    return shutil.which("redis-server") is not None and shutil.which("redis-cli") is not None


class LocalCluster:
    """Three masters (no replicas) with a password; `seeds`, `url`, `kill(i)`, `restart(i)`, `stop_all()`."""

    def __init__(self, root: Path, *, password: str = PASSWORD, maxmemory: str = "64mb", node_timeout_ms: int = 2000) -> None:
        self.root = root
        self.password = password
        self.maxmemory = maxmemory
        self.node_timeout_ms = node_timeout_ms
        self.ports: list[int] = []
        for _ in range(3):
            self.ports.append(cluster_port({q for p in self.ports for q in (p, p + 10000)}))
        self.procs: list[subprocess.Popen | None] = [None, None, None]

    @property
    def seeds(self) -> list[tuple[str, int]]:
        return [(HOST, p) for p in self.ports]

    @property
    def url(self) -> str:
        return "redis://" + ",".join(f"{HOST}:{p}" for p in self.ports)

    def _start(self, i: int) -> None:
        port = self.ports[i]
        log = self.root / f"redis-{port}.log"
        argv = ["redis-server", "--port", str(port), "--bind", HOST, "--cluster-enabled", "yes",
                "--cluster-config-file", str(self.root / f"nodes-{port}.conf"), "--appendonly", "no", "--save", "",
                "--requirepass", self.password, "--masterauth", self.password,
                "--cluster-require-full-coverage", "no", "--cluster-node-timeout", str(self.node_timeout_ms),
                "--maxmemory", self.maxmemory, "--maxmemory-policy", "allkeys-lru", "--dir", str(self.root)]
        with open(log, "ab") as out:
            self.procs[i] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_port(port, self.procs[i], 30.0, log)

    def cli(self, port: int, *args: str, timeout: float = 30.0) -> str:
        out = subprocess.run(["redis-cli", "--no-auth-warning", "-a", self.password, "-h", HOST, "-p", str(port), *args],
                             capture_output=True, text=True, timeout=timeout)
        return out.stdout + out.stderr

    def start(self) -> None:
        for i in range(3):
            self._start(i)
        out = subprocess.run(["redis-cli", "--no-auth-warning", "-a", self.password, "--cluster", "create",
                              *(f"{HOST}:{p}" for p in self.ports), "--cluster-yes"],
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{out.stdout}\n{out.stderr}")
        self.wait_ok()

    def wait_ok(self, timeout: float = 30.0, ports: list[int] | None = None) -> None:
        """Until every node (that is running) says cluster_state:ok and knows all 16384 slots as assigned."""
        ports = ports or [p for p, proc in zip(self.ports, self.procs) if proc is not None and proc.poll() is None]
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            infos = [self.cli(p, "cluster", "info", timeout=5) for p in ports]
            if all("cluster_state:ok" in i and "cluster_slots_assigned:16384" in i for i in infos):
                return
            last = "\n".join(infos)
            time.sleep(0.2)
        raise TimeoutError(f"cluster not ok after {timeout}s:\n{last}")

    def wait_all_up(self, timeout: float = 30.0) -> None:
        """Until every node sees every other node connected and not failing (after a restart)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            outs = [self.cli(p, "cluster", "nodes", timeout=5) for p in self.ports]
            lines = [ln for o in outs for ln in o.splitlines() if ln.strip()]
            if len(lines) == 9 and all(" connected" in ln and "fail" not in ln.split()[2] for ln in lines):
                self.wait_ok(timeout=max(1.0, deadline - time.monotonic()))
                return
            last = "\n".join(outs)
            time.sleep(0.2)
        raise TimeoutError(f"cluster nodes not all up after {timeout}s:\n{last}")

    def kill(self, i: int) -> None:
        """SIGKILL node i (no shutdown, no save)."""
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def restart(self, i: int, wait: bool = True) -> None:
        """Start node i again on its port with its nodes.conf: it rejoins the cluster with its slots (now empty)."""
        self.kill(i)
        self._start(i)
        if wait:
            self.wait_all_up()

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc is not None:
                stop(proc)


@contextlib.contextmanager
def local_cluster(root: Path, **kw) -> Iterator[LocalCluster]:  # type: ignore[no-untyped-def]
    root.mkdir(parents=True, exist_ok=True)
    cluster = LocalCluster(root, **kw)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop_all()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory) -> Iterator[LocalCluster]:  # type: ignore[no-untyped-def]
    if not redis_available():
        pytest.skip("redis-server / redis-cli not installed (scripts/setup installs them)")
    with local_cluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster
