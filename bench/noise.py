"""CPU used by processes outside the benchmark while it measures: is a figure noisy?

A benchmark on a shared machine measures the machine as well as the system under test. `Outsiders`
reads /proc/*/stat (utime+stime, and cutime+cstime: what a process's reaped children used) of every
process at the start and the end of an interval and sums what was used in between by every process
that is neither the benchmark nor one of its descendants (its vfs mounts, rclone, the S3 server,
DataLoader workers, the delay proxy, `find`). The result is in cores: CPU seconds / wall seconds; a
figure is noisy when outsiders used more than NOISY_CORES.

Accounting, with two snapshots (S0, S1), each process keyed by (pid, start time) so a reused pid is
a new process:
- alive in both, or born in between and alive at S1: its own CPU delta plus its children's (cutime
  grows when it reaps a child; this is how short-lived outsider processes, e.g. a test run's
  subprocesses, are seen without sampling in between);
- alive at S0 and gone at S1: whoever reaped it got its whole total in cutime (counted above), so
  its total at S0 is subtracted, leaving what it used during the interval;
- the benchmark's descendants are found by walking ppid links in each snapshot; what they reap goes
  to the benchmark, which is never counted.
Kernel threads (the children of kthreadd) are counted apart, in `kernel_cores`, and not in the noise:
much of their work (writeback, ksoftirqd moving the benchmark's loopback traffic, dropping the page
cache) is the benchmark's own. `system_cores` (from /proc/stat) is the whole machine, for context.
Processes in other pid namespaces are invisible here, except through `system_cores`.

/proc counts CPU in clock ticks (10 ms): over a measurement of a few milliseconds one tick would read
as a busy core, so the window is at least MIN_WINDOW: stop() waits out the rest of it (after the
timed work, which it does not change).
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Iterator

NOISY_CORES = 0.5
MIN_WINDOW = 0.5  # seconds
TICK = os.sysconf("SC_CLK_TCK")
PF_KTHREAD = 0x00200000
KTHREADD = 2


@dataclasses.dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    comm: str
    ticks: int  # utime + stime
    child_ticks: int  # cutime + cstime (reaped children)
    kernel: bool


def parse_stat(text: str) -> Proc:
    """One /proc/<pid>/stat line (comm may hold spaces and parentheses: split at the last ')')."""
    pid_s, rest = text.split(" (", 1)
    comm, fields_s = rest.rsplit(") ", 1)
    f = fields_s.split()
    # f[0] is field 3 (state): ppid 4, flags 9, utime 14, stime 15, cutime 16, cstime 17, starttime 22
    flags = int(f[6])
    pid, ppid = int(pid_s), int(f[1])
    return Proc(pid, ppid, comm, int(f[11]) + int(f[12]), int(f[13]) + int(f[14]),
                bool(flags & PF_KTHREAD) or pid == KTHREADD or ppid == KTHREADD)


Key = tuple[int, int]  # (pid, start time in ticks since boot)


def snapshot(proc: Path = Path("/proc")) -> dict[Key, Proc]:
    """Every visible process now; ones that exit while being read are left out."""
    out: dict[Key, Proc] = {}
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        p = parse_stat(text)
        start = int(text.rsplit(") ", 1)[1].split()[19])
        out[(p.pid, start)] = p
    return out


def descendants(procs: dict[Key, Proc], root: int) -> set[Key]:
    """The keys of `root` and every process whose ppid chain reaches it."""
    by_pid = {p.pid: k for k, p in procs.items()}
    ours: dict[int, bool] = {root: True, 0: False, 1: False}

    def is_ours(pid: int) -> bool:
        chain = []
        while pid not in ours:
            chain.append(pid)
            k = by_pid.get(pid)
            if k is None or len(chain) > 4096:
                ours[pid] = False
                break
            pid = procs[k].ppid
        verdict = ours[pid]
        for c in chain:
            ours[c] = verdict
        return verdict

    return {k for k, p in procs.items() if is_ours(p.pid)}


def system_busy_ticks() -> int:
    """Busy CPU ticks of the whole machine since boot (/proc/stat: all but idle and iowait)."""
    try:
        f = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return 0
    vals = [int(x) for x in f[1:9]]  # user nice system idle iowait irq softirq steal
    return sum(vals) - vals[3] - vals[4]


@dataclasses.dataclass
class Noise:
    """What outsiders used over one interval; `cores` = CPU seconds / wall seconds."""

    seconds: float
    cpu_seconds: float
    cores: float
    kernel_cores: float
    system_cores: float
    top: list[tuple[str, float]]  # the busiest outsiders ("comm[pid]", cores), at most TOP
    procs: dict[str, float] = dataclasses.field(default_factory=dict)  # every outsider that used CPU (not in JSON)

    @property
    def noisy(self) -> bool:
        return self.cores > NOISY_CORES

    def as_json(self) -> dict[str, object]:
        return {"seconds": round(self.seconds, 3), "cpu_seconds": round(self.cpu_seconds, 3),
                "cores": round(self.cores, 3), "kernel_cores": round(self.kernel_cores, 3),
                "system_cores": round(self.system_cores, 3), "noisy": self.noisy,
                "top": [[c, round(v, 3)] for c, v in self.top]}


TOP = 3


class Outsiders:
    """start() then stop() -> Noise of processes outside `root` (default: this process) in between."""

    def __init__(self, root: int | None = None, proc: Path = Path("/proc")) -> None:
        self.root = os.getpid() if root is None else root
        self.proc = proc
        self._s0: dict[Key, Proc] = {}
        self._ours0: set[Key] = set()
        self._t0 = 0.0
        self._busy0 = 0

    def start(self) -> None:
        self._s0 = snapshot(self.proc)
        self._ours0 = descendants(self._s0, self.root)
        self._busy0 = system_busy_ticks()
        self._t0 = time.monotonic()

    def stop(self, min_window: float = MIN_WINDOW) -> Noise:
        if (rest := min_window - (time.monotonic() - self._t0)) > 0:
            time.sleep(rest)
        wall = max(time.monotonic() - self._t0, 1e-9)
        busy = system_busy_ticks() - self._busy0
        s1 = snapshot(self.proc)
        ours = self._ours0 | descendants(s1, self.root)
        user: dict[str, int] = {}  # "comm[pid]" -> ticks
        kernel = 0
        for key, ticks, p in self._deltas(s1, ours):
            if p.kernel:
                kernel += ticks
            else:
                name = f"{p.comm}[{p.pid}]"
                user[name] = user.get(name, 0) + ticks
        total = max(0, sum(user.values()))
        procs = {c: t / TICK / wall for c, t in user.items() if t > 0}
        top = sorted(procs.items(), key=lambda x: -x[1])[:TOP]
        return Noise(wall, total / TICK, total / TICK / wall, max(0, kernel) / TICK / wall, busy / TICK / wall, top,
                     procs)

    def _deltas(self, s1: dict[Key, Proc], ours: set[Key]) -> Iterator[tuple[Key, int, Proc]]:
        grown: dict[int, int] = {}  # pid -> growth of its cutime+cstime, for processes alive in both
        alive: dict[int, Proc] = {}
        for key, p in s1.items():
            before = self._s0.get(key)
            if before is not None and key not in ours:  # what the benchmark reaps is never counted
                grown[p.pid] = p.child_ticks - before.child_ticks
                alive[p.pid] = p
            if key in ours:
                continue
            b = (before.ticks + before.child_ticks) if before else 0
            yield key, p.ticks + p.child_ticks - b, p
        gone = {p.pid: p for key, p in self._s0.items() if key not in s1}
        for key, p in self._s0.items():
            if key in s1 or key in ours or p.kernel:
                continue
            # Gone: whoever reaped it got its whole total in cutime (counted above), so take back what
            # it had used before the interval, from the nearest ancestor alive throughout (its parent,
            # or further up when the parent is gone too: the parent's total, with this one's in it,
            # went there), else init (an orphan's reaper). Only as much as that cutime grew: a process
            # nobody we see waited for left no total to take back. Taken back from the holder's figure.
            total = p.ticks + p.child_ticks
            for holder in (self._holder(p, gone), 1):
                back = min(total, max(0, grown.get(holder, 0)))
                if back:
                    grown[holder] -= back
                    total -= back
                    yield key, -back, alive[holder]

    @staticmethod
    def _holder(p: Proc, gone: dict[int, Proc]) -> int:
        pid, seen = p.ppid, 0
        while pid in gone and seen < 4096:
            pid, seen = gone[pid].ppid, seen + 1
        return pid

