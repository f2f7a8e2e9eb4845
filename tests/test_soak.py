"""The soak (bench/soak.py), short: 8 reader processes for ~20 s over a moto bucket four times the
RAM tier, every byte checked; no error, no wrong byte, and the vfs process's peak RSS within the RAM
tier plus the overhead bench/soak.py allows (soak.rss_allowance; what it covers and the measured
figures are beside RSS_BASE_ALLOWANCE there)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kernel import fuse_available

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import soak  # noqa: E402

pytestmark = pytest.mark.kernel
MiB = 1024 * 1024


def test_soak_8_readers(tmp_path: Path) -> None:
    reason = fuse_available()
    if reason:
        pytest.skip(reason)
    out = tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--seconds", "20", "--readers", "8", "--files", "24",
         "--file-size", "4MiB", "--ram", "32MiB", "--interval", "5", "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    print(done.stdout)  # the progress lines and the summary, for the test's own output
    assert done.returncode == 0, done.stdout + done.stderr
    r = json.loads(out.read_text())
    assert r["errors"] == 0 and r["wrong"] == 0 and r["readers_died"] == 0 and r["mount_alive"], r["problems"]
    assert r["reads"] > 0 and len(r["samples"]) >= 2
    assert r["ram_budget"] == 32 * MiB
    assert r["vfs_stats"]["tiers"]["ram"]["evictions"] > 0  # the working set did not fit the RAM tier
    assert r["rss_allowance"] == soak.rss_allowance(8, 4 * MiB) == 288 * MiB
    assert r["rss_before"] < r["peak_rss"] <= r["ram_budget"] + r["rss_allowance"], r["peak_rss"]


def test_contents_are_known_at_every_offset() -> None:
    """What the soak seeds and checks: word i of file f is (f << 40) | i, any slice of it recomputed."""
    whole = soak.expected(3, 0, 64)
    assert whole[8:16] == struct.pack("<Q", 3 << 40 | 1)
    assert all(soak.expected(3, off, n) == whole[off: off + n] for off, n in [(0, 64), (5, 17), (13, 3), (63, 1)])
    assert soak.expected(4, 8, 8) != soak.expected(3, 8, 8)
    assert soak.wrong_bytes(whole[:60] + b"xxxx", whole) == 4
    assert soak.wrong_bytes(whole[:60], whole) == 4  # a short read's missing bytes are wrong bytes
