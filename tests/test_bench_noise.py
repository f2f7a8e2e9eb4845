"""bench/noise.py's accounting of the CPU used by processes outside the benchmark.

Fake /proc trees check the arithmetic (descendants, reaped children, pid reuse, kernel threads);
real processes check that a busy process outside the benchmark is seen and a busy child is not.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import noise  # noqa: E402
from noise import TICK, Outsiders, parse_stat  # noqa: E402


def stat_line(pid: int, comm: str, ppid: int, utime: int, stime: int = 0, cutime: int = 0, cstime: int = 0,
              start: int = 1, flags: int = 0) -> str:
    return (f"{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 {flags} 0 0 0 0 {utime} {stime} {cutime} {cstime} "
            f"20 0 1 0 {start} 0 0\n")


def write_proc(d: Path, lines: list[str]) -> None:
    for entry in d.iterdir():
        (entry / "stat").unlink()
        entry.rmdir()
    for line in lines:
        pid = line.split(" ", 1)[0]
        (d / pid).mkdir()
        (d / pid / "stat").write_text(line)


def test_parse_stat_comm_with_spaces_and_parentheses() -> None:
    p = parse_stat(stat_line(42, "a) (b c", 7, utime=5, stime=6, cutime=1, cstime=2))
    assert (p.pid, p.ppid, p.comm, p.ticks, p.child_ticks, p.kernel) == (42, 7, "a) (b c", 11, 3, False)


def test_accounting_over_a_fake_proc(tmp_path: Path) -> None:
    bench = 100
    write_proc(tmp_path, [
        stat_line(1, "init", 0, 0),
        stat_line(2, "kthreadd", 0, 0),
        stat_line(3, "kworker", 2, 10, flags=noise.PF_KTHREAD),
        stat_line(bench, "python", 1, 500),
        stat_line(101, "vfs", bench, 100),           # the benchmark's mount
        stat_line(102, "worker", 101, 10),           # its grandchild
        stat_line(104, "find", bench, 5),            # a benchmark child about to end
        stat_line(200, "pytest", 1, 100, cutime=3),  # an outsider ...
        stat_line(300, "sleep", 200, 8, stime=2),    # ... with a child it will reap (10 ticks so far)
        stat_line(500, "old", 1, 1000, start=1),     # an outsider that ends unreaped by anyone we see
        stat_line(600, "sh", 200, 2),                # an outsider shell and its long-lived child, both
        stat_line(601, "pytest", 600, 1000),         # ending: 601's total reaches 200 through 600
    ])
    o = Outsiders(root=bench, proc=tmp_path)
    o.start()
    write_proc(tmp_path, [
        stat_line(1, "init", 0, 0),
        stat_line(2, "kthreadd", 0, 0),
        stat_line(3, "kworker", 2, 30, flags=noise.PF_KTHREAD),  # +20, kernel
        stat_line(bench, "python", 1, 900, cutime=7),            # the benchmark: never counted
        stat_line(101, "vfs", bench, 150),
        stat_line(102, "worker", 101, 40),
        stat_line(103, "loader", 101, 100, start=50),            # a new benchmark grandchild
        # +40 own; reaped 300 (15 ticks in all) and 600 (3 of its own + 601's 1010)
        stat_line(200, "pytest", 1, 140, cutime=3 + 15 + 3 + 1010),
        stat_line(400, "cc", 200, 7, start=60),                  # a new outsider: +7
        stat_line(500, "new", 200, 3, start=70),                 # pid 500 reused: a new outsider, +3
    ])
    n = o.stop(min_window=0)
    # outsiders: 200's 40, + 15 reaped - 10 that 300 had used before, + 1013 reaped - 2 - 1000 that 600
    # and 601 had used before, 400's 7, the new 500's 3
    assert round(n.cpu_seconds * TICK) == 40 + 5 + 11 + 7 + 3
    assert round(n.kernel_cores * n.seconds * TICK) == 20
    assert not any(k.startswith(("vfs", "worker", "loader", "python", "find")) for k in n.procs)
    assert set(n.procs) == {"pytest[200]", "cc[400]", "new[500]"}


def test_a_noisy_interval_is_flagged(tmp_path: Path) -> None:
    write_proc(tmp_path, [stat_line(10, "python", 1, 0), stat_line(20, "busy", 1, 0)])
    o = Outsiders(root=10, proc=tmp_path)
    o.start()
    write_proc(tmp_path, [stat_line(10, "python", 1, 0), stat_line(20, "busy", 1, TICK * 60)])
    n = o.stop(min_window=0)
    assert n.noisy and n.as_json()["noisy"] is True and n.top[0][0] == "busy[20]"


BUSY = "import time\nt = time.monotonic()\nwhile time.monotonic() - t < 60: pass\n"


def test_a_busy_process_outside_the_benchmark_is_seen() -> None:
    # `sh -c '... &'` exits at once: the busy loop is orphaned, so no longer our descendant.
    out = subprocess.run(["sh", "-c", f"{sys.executable} -c '{BUSY}' >/dev/null 2>&1 & echo $!"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    pid = int(out.strip())
    try:
        o = Outsiders()
        o.start()
        n = o.stop(min_window=1.0)
        mine = [v for k, v in n.procs.items() if k.endswith(f"[{pid}]")]
        assert mine and mine[0] > 0
    finally:
        os.kill(pid, signal.SIGKILL)


def test_a_busy_child_of_the_benchmark_is_not_counted() -> None:
    child = subprocess.Popen([sys.executable, "-c", BUSY])
    try:
        o = Outsiders()
        o.start()
        n = o.stop(min_window=1.0)
        assert not [k for k in n.procs if k.endswith(f"[{child.pid}]")]
        # and the bench's own CPU is not in the total either: the child alone used most of a core
        assert all(not k.endswith(f"[{os.getpid()}]") for k in n.procs)
    finally:
        child.kill()
        child.wait(10)
