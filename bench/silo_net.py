"""The silo's own network for bench/cluster.py: a network namespace joined to the host by a veth pair,
with the silo -> nodes direction capped by `tc tbf`, so the silo (as the cloud is) and not loopback is
the scarce link.

`silo_netns(mbit)` creates namespace `vfsb-<pid>` holding veth end `vfsb<pid>s` at 10.213.<n>.2/24;
the host keeps `vfsb<pid>h` at 10.213.<n>.1/24 (n: the first 10.213.n.0/24 the host does not use).
The cap is a tbf qdisc on the namespace's end (its egress = what the silo sends): `rate <mbit>mbit`,
a burst of at least 256 KiB (and at least 10 ms of the rate, so the tick does not cut the rate), a
queue of 50 ms. A server started with `ns.argv(...)` (`ip netns exec`, which execs: its pid is the
server's) listens on `ns.addr`. Nothing else is shaped: the nodes and Redis stay on host loopback.

Everything is removed in the context manager's exit, also on an exception or Ctrl-C: the namespace
(`ip netns del`, which takes the veth pair with it) and the host's veth end if it is still there.
Needs root (ip netns, tc); `available()` says why not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import subprocess
import time
from typing import Iterator, Sequence

log = logging.getLogger(__name__)

PREFIX = "10.213"
MIN_BURST = 256 * 1024
TBF_LATENCY = "50ms"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def available() -> str | None:
    """Why a namespace with a shaped veth cannot be made here, or None."""
    if os.geteuid() != 0:
        return "not root: ip netns and tc need root"
    for tool in ("ip", "tc"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            return f"{tool} is not installed (iproute2)"
    return None


def used_subnets() -> set[int]:
    """The n of every 10.213.n.x address the host has."""
    out = ip("-4", "-o", "addr", "show").stdout
    found = set()
    for line in out.splitlines():
        for word in line.split():
            if word.startswith(PREFIX + "."):
                found.add(int(word.split(".")[2]))
    return found


@dataclasses.dataclass(frozen=True)
class SiloNet:
    name: str  # the namespace
    addr: str  # the silo's address, inside the namespace
    host_addr: str  # the host's end
    host_dev: str
    ns_dev: str
    mbit: float

    def argv(self, command: Sequence[str]) -> list[str]:
        """`command` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *command]

    def qdisc(self) -> str:
        """`tc -s qdisc` of the shaped end: rate, bytes sent, drops."""
        return subprocess.run(self.argv(["tc", "-s", "qdisc", "show", "dev", self.ns_dev]), capture_output=True,
                              text=True, timeout=30).stdout.strip()


def tbf_burst(mbit: float) -> int:
    return max(MIN_BURST, int(mbit * 1e6 / 8 / 100))


@contextlib.contextmanager
def silo_netns(mbit: float) -> Iterator[SiloNet]:
    pid = os.getpid()
    free = [n for n in range(20, 250) if n not in used_subnets()]
    if not free:
        raise RuntimeError(f"no free {PREFIX}.n.0/24 subnet on this host")
    n = free[0]
    net = SiloNet(name=f"vfsb-{pid}", addr=f"{PREFIX}.{n}.2", host_addr=f"{PREFIX}.{n}.1", host_dev=f"vfsb{pid}h",
                  ns_dev=f"vfsb{pid}s", mbit=mbit)
    try:
        ip("netns", "add", net.name)
        ip("link", "add", net.host_dev, "type", "veth", "peer", "name", net.ns_dev)
        ip("link", "set", net.ns_dev, "netns", net.name)
        ip("addr", "add", f"{net.host_addr}/24", "dev", net.host_dev)
        ip("link", "set", net.host_dev, "up")
        for args in (("addr", "add", f"{net.addr}/24", "dev", net.ns_dev), ("link", "set", net.ns_dev, "up"),
                     ("link", "set", "lo", "up")):
            ip("netns", "exec", net.name, "ip", *args)
        tc = ["tc", "qdisc", "add", "dev", net.ns_dev, "root", "tbf", "rate", f"{mbit:g}mbit",
              "burst", str(tbf_burst(mbit)), "latency", TBF_LATENCY]
        done = subprocess.run(net.argv(tc), capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(tc)}: {done.stderr.strip()}")
        log.info("silo network: namespace %s, silo %s, host %s, silo -> nodes capped at %g Mbit/s", net.name,
                 net.addr, net.host_addr, mbit)
        yield net
    finally:
        ip("netns", "del", net.name, check=False)
        if ip("link", "show", net.host_dev, check=False).returncode == 0:
            ip("link", "del", net.host_dev, check=False)


def wait_listening(addr: str, port: int, proc: subprocess.Popen, timeout: float, log_path: os.PathLike) -> None:
    """Until something accepts on addr:port (bounded); an error with the log's tail if `proc` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            with open(log_path, errors="replace") as f:
                tail = f.read()[-3000:]
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {addr}:{port}:\n{tail}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((addr, port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {addr}:{port} after {timeout}s")
