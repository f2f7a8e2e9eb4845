"""`vfs status` and `vfs warm` through the real kernel, on an S3 silo (moto behind tests/fault_proxy.py)
with an SSD tier in the test's directory.

status: a healthy mount (text and --json), a silo made unreachable (the proxy refuses connections),
a directory that is no mount. warm: a tree warmed through `/.vfs/warm` is then read with no silo
request; --check before and after; --evict; a warm-up larger than the cache (warned, or refused
with --no-oversize before anything is fetched); Ctrl-C (SIGINT to the command) stops the warm-up in
the mount, which stays healthy.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.fault_proxy import FaultProxy
from tests.kernel import VfsMount, errno_of, fuse_available, read_file, start_mount, unmount, vfs_mount, wait_until
from tests.silos.s3 import MotoS3, moto_server
from vfs.units import format_size

pytestmark = [pytest.mark.kernel, pytest.mark.skipif(fuse_available() is not None, reason=str(fuse_available()))]

BUCKET = "warm"
BLOCK = 64 * 1024
SETTLE = 60.0  # bound on waits (a loaded 2-core CI box)
rnd = random.Random(10)
FILES = {
    "data/a.bin": rnd.randbytes(5 * BLOCK + 17),
    "data/sub/b.bin": rnd.randbytes(3 * BLOCK),
    "data/sub/small.txt": b"small\n",
    "data/empty": b"",
    "other/c.bin": rnd.randbytes(2 * BLOCK),
    "slow/s1.bin": rnd.randbytes(2 * BLOCK),
    "slow/s2.bin": rnd.randbytes(2 * BLOCK),
    "slow/s3.bin": rnd.randbytes(2 * BLOCK),
}
DATA_BYTES = sum(len(v) for k, v in FILES.items() if k.startswith("data/"))
ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    with moto_server(tmp_path_factory.mktemp("moto")) as m:
        client = m.client()
        client.create_bucket(Bucket=BUCKET)
        for key, data in FILES.items():
            client.put_object(Bucket=BUCKET, Key=f"p/{key}", Body=data)
        yield m


@pytest.fixture
def proxy(moto: MotoS3) -> Iterator[FaultProxy]:
    with FaultProxy(moto.endpoint) as p:
        yield p


def config(moto: MotoS3, proxy: FaultProxy, tmp: Path, ssd_blocks: int | None = 256, pin: bool = False) -> dict[str, Any]:
    cache: dict[str, Any] = {"block_size": BLOCK, "ram_size": 4 * BLOCK, "prefetch_window": 0}
    if ssd_blocks:
        cache |= {"ssd_dir": str(tmp / "ssd"), "ssd_size": ssd_blocks * BLOCK}
    return {
        "cache": cache,
        "fuse": {"pin_handle_version": pin},
        "metadata": {"ttl": 60.0, "negative_ttl": 60.0},
        "write": {"mode": "through"},  # a read-only mount (every write mode off) takes no requests
        "mount": [{"path": "/s3", **moto.options(bucket=BUCKET, prefix="p", endpoint_url=proxy.url, max_attempts=1,
                                                 connect_timeout=30.0, read_timeout=60.0)}],
    }


def vfs(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vfs", *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def stats(m: VfsMount) -> dict[str, Any]:
    return json.loads(read_file(m.path / ".vfs" / "stats"))


def silo_requests(m: VfsMount) -> int:
    return stats(m)["backends"]["/s3"]["requests"]


def write_once(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def share(out: str, path: Path) -> str:
    """The share column of `vfs warm --check` for `path` (as the command line gave it)."""
    rows = [line.split() for line in out.splitlines() if line.split()[:1] == [str(path)]]
    assert len(rows) == 1, out
    return rows[0][-1]


def test_status_of_a_healthy_mount_and_of_no_mount(moto: MotoS3, proxy: FaultProxy, tmp_path: Path) -> None:
    with vfs_mount(tmp_path, config(moto, proxy, tmp_path)) as m:
        assert read_file(m.path / "s3/data/a.bin") == FILES["data/a.bin"]
        done = vfs("status", m.path)
        assert done.returncode == 0, done.stderr
        silo_line = next(line for line in done.stdout.splitlines() if line.startswith("/s3"))
        assert "online" in silo_line and f"s3://{BUCKET}" in silo_line, done.stdout
        assert "ssd" in done.stdout and "uploads: 0 pending, 0 failing" in done.stdout, done.stdout
        assert "warm-ups running: none" in done.stdout, done.stdout

        st = json.loads(vfs("status", m.path, "--json").stdout)
        assert st["silos"]["/s3"]["online"] is True and st["silos"]["/s3"]["offline_since"] is None
        assert set(st["tiers"]) == {"ram", "ssd"}
        assert 0 < st["tiers"]["ram"]["used"] <= st["tiers"]["ram"]["capacity"] == 4 * BLOCK
        assert st["tiers"]["ssd"]["capacity"] == 256 * BLOCK
        assert st["uploads"] == {"pending": 0, "failing": 0} and st["warm"] == {}
        assert st["pid"] == m.proc.pid

    for where in (tmp_path, tmp_path / "missing"):
        done = vfs("status", where)
        assert done.returncode == 1 and done.stdout == "", done
        assert done.stderr.count("\n") == 1 and "not a vfs mount" in done.stderr, done.stderr
    done = vfs("warm", tmp_path)
    assert done.returncode == 1 and done.stderr == f"vfs: {tmp_path}: not on a vfs mount\n", done


def test_status_of_a_stale_mount(moto: MotoS3, proxy: FaultProxy, tmp_path: Path) -> None:
    cfg = config(moto, proxy, tmp_path)
    m = start_mount(tmp_path, {**cfg, "fuse": {"auto_unmount": False}}, "stale")
    try:
        m.proc.kill()
        m.proc.wait(30)
        done = vfs("status", m.path)
        assert done.returncode == 1 and done.stdout == "", done
        assert done.stderr.count("\n") == 1 and "stale mount" in done.stderr and "vfs unmount" in done.stderr, done.stderr
    finally:
        unmount(m.path)
        if m.proc.stdout:
            m.proc.stdout.close()


def test_status_of_an_unreachable_silo(moto: MotoS3, proxy: FaultProxy, tmp_path: Path) -> None:
    with vfs_mount(tmp_path, config(moto, proxy, tmp_path)) as m:
        assert sorted(os.listdir(m.path / "s3")) == ["data", "other", "slow"]
        proxy.mode = "refuse"
        with pytest.raises(OSError):
            read_file(m.path / "s3/other/c.bin")  # never cached: the silo is asked, refused
        wait_until(lambda: json.loads(vfs("status", m.path, "--json").stdout)["silos"]["/s3"]["online"] is False,
                   SETTLE, "the silo to be seen offline", interval=0.5)
        silo = json.loads(vfs("status", m.path, "--json").stdout)["silos"]["/s3"]
        assert silo["offline_since"] and silo["last_error"], silo
        text = vfs("status", m.path).stdout
        line = next(line for line in text.splitlines() if line.startswith("/s3"))
        assert "OFFLINE" in line and silo["offline_since"] in line, text
        warm = vfs("warm", m.path / "s3/other/c.bin")  # fails at once, and says so
        assert warm.returncode == 1 and "1 errors, the last: /s3/other/c.bin" in warm.stderr, warm
        proxy.mode = "pass"


def test_warm_then_read_costs_no_silo_request_check_and_evict(moto: MotoS3, proxy: FaultProxy, tmp_path: Path) -> None:
    with vfs_mount(tmp_path, config(moto, proxy, tmp_path)) as m:
        data = m.path / "s3" / "data"
        other = m.path / "s3/other/c.bin"
        before = vfs("warm", "--check", "-r", data, other)
        assert before.returncode == 0, before.stderr
        assert share(before.stdout, data) == "0.0%" and share(before.stdout, other) == "0.0%"

        for bad in (b"not json\n", b'{"id": "x", "op": "warm", "paths": []}\n', b'{"id": "x", "op": "fly", "paths": ["s3"]}\n'):
            assert errno_of(write_once, m.path / ".vfs" / "warm", bad) == errno.EINVAL, bad
        refused = vfs("warm", data)  # a directory without --recursive
        assert refused.returncode == 1 and "--recursive" in refused.stderr, refused

        done = vfs("warm", "-r", "--threads", 3, data)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[-1].startswith(f"done: 4/4 files, "), done.stdout
        assert "0 errors" in done.stdout and "warning" not in done.stderr, done

        after = vfs("warm", "--check", "-r", data, other)
        assert share(after.stdout, data) == "100.0%" and share(after.stdout, other) == "0.0%", after.stdout

        n = silo_requests(m)
        for key, body in FILES.items():
            if key.startswith("data/"):
                assert read_file(m.path / "s3" / key) == body
        assert silo_requests(m) == n  # every byte came from the cache

        evicted = vfs("warm", "--evict", "-r", data)
        assert evicted.returncode == 0, evicted.stderr
        assert share(evicted.stdout, data) == "100.0%"  # the share of its bytes that was dropped
        gone = vfs("warm", "--check", "-r", data)
        assert share(gone.stdout, data) == "0.0%", gone.stdout
        jobs = dict(sorted(stats(m)["warm"]["jobs"].items(), key=lambda kv: kv[1]["started"]))
        assert [(j["op"], j["state"]) for j in jobs.values()] == [
            ("check", "done"), ("warm", "failed"), ("warm", "done"), ("check", "done"), ("evict", "done"), ("check", "done")]
        assert [j["bytes_done"] for j in jobs.values()] == [0, 0, DATA_BYTES, DATA_BYTES, DATA_BYTES, 0]


def test_a_warm_up_larger_than_the_cache(moto: MotoS3, proxy: FaultProxy, tmp_path: Path) -> None:
    with vfs_mount(tmp_path, config(moto, proxy, tmp_path, ssd_blocks=None)) as m:  # RAM only: 4 blocks
        data = m.path / "s3" / "data"
        n = silo_requests(m)
        refused = vfs("warm", "-r", "--no-oversize", data)
        assert refused.returncode == 1 and refused.stdout == "" and refused.stderr.startswith("vfs: refused"), refused
        assert stats(m)["backends"]["/s3"]["bytes"] == 0  # listed, nothing fetched
        assert silo_requests(m) > n

        warned = vfs("warm", "-r", data)
        assert warned.returncode == 0, warned.stderr
        assert "warning" in warned.stderr and f"the cache holds {format_size(4 * BLOCK)}" in warned.stderr, warned.stderr
        assert stats(m)["backends"]["/s3"]["bytes"] == DATA_BYTES


def test_ctrl_c_stops_the_warm_up_in_the_mount(moto: MotoS3, proxy: FaultProxy, tmp_path: Path) -> None:
    with vfs_mount(tmp_path, config(moto, proxy, tmp_path)) as m:
        proxy.stall = 3.0
        proxy.set_faults(1.0, ("stall",), match=f"^GET /{BUCKET}/p/slow/")  # each block GET waits 3 s: 18 s in all
        cmd = subprocess.Popen([sys.executable, "-m", "vfs", "warm", "-r", "--threads", "1", str(m.path / "s3/slow")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            def running() -> bool:
                return any(j["state"] == "running" for j in stats(m).get("warm", {}).get("jobs", {}).values())

            wait_until(running, SETTLE, "the warm-up to run", interval=0.1)
            shown = json.loads(vfs("status", m.path, "--json").stdout)["warm"]
            assert [(j["op"], j["files_total"]) for j in shown.values()] == [("warm", 3)], shown
            cmd.send_signal(signal.SIGINT)
            out, err = cmd.communicate(timeout=SETTLE)
        finally:
            if cmd.poll() is None:
                cmd.kill()
                cmd.wait()
        assert cmd.returncode == 130, (out, err)
        assert "interrupted" in err and "(cancelled)" in err, err
        job = next(iter(stats(m)["warm"]["jobs"].values()))
        assert job["state"] == "cancelled" and job["files_done"] < job["files_total"] == 3, job
        assert stats(m)["warm"]["running"] == 0

        proxy.set_faults(0.0)
        assert read_file(m.path / "s3/slow/s3.bin") == FILES["slow/s3.bin"]  # the mount is healthy
        done = vfs("status", m.path)
        assert done.returncode == 0 and "warm-ups running: none" in done.stdout, done


def test_warm_and_check_with_opens(moto: MotoS3, proxy: FaultProxy, tmp_path: Path) -> None:
    """With pinned versions every open reaches vfs: `.vfs/warm` is opened, written and closed through it."""
    with vfs_mount(tmp_path, config(moto, proxy, tmp_path, pin=True)) as m:
        other = m.path / "s3" / "other"
        done = vfs("warm", "-r", other)
        assert done.returncode == 0 and done.stdout.splitlines()[-1].startswith("done: 1/1 files"), done
        checked = vfs("warm", "--check", other / "c.bin")
        assert share(checked.stdout, other / "c.bin") == "100.0%", checked
        n = silo_requests(m)
        assert read_file(other / "c.bin") == FILES["other/c.bin"]
        assert silo_requests(m) == n


def test_warm_check_and_evict_on_a_read_only_mount(moto: MotoS3, proxy: FaultProxy, tmp_path: Path) -> None:
    """The kernel refuses writes to `.vfs/warm` on an `ro` mount: requests go through requests_dir and a getxattr."""
    cfg = config(moto, proxy, tmp_path)
    cfg["fuse"]["read_only"] = True
    with vfs_mount(tmp_path, cfg) as m:
        warm = m.path / ".vfs" / "warm"
        assert errno_of(write_once, warm, b'{"id": "x", "op": "check", "paths": ["s3"]}\n') == errno.EROFS
        spool = Path(stats(m)["requests_dir"])
        assert spool.is_dir() and spool.stat().st_mode & 0o777 == 0o700
        data = m.path / "s3" / "data"
        done = vfs("warm", "-r", data)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[-1].startswith("done: 4/4 files, "), done.stdout
        assert share(vfs("warm", "--check", "-r", data).stdout, data) == "100.0%"
        n = silo_requests(m)
        assert read_file(m.path / "s3/data/a.bin") == FILES["data/a.bin"]
        assert silo_requests(m) == n
        assert vfs("warm", "--evict", "-r", data).returncode == 0
        assert share(vfs("warm", "--check", "-r", data).stdout, data) == "0.0%"

        assert errno_of(os.getxattr, warm, "user.vfs.request.nosuchid") == errno.ENOENT
        assert errno_of(os.getxattr, warm, "user.vfs.request.../../etc") == errno.ENOENT
        assert errno_of(os.getxattr, m.path / "s3/data/a.bin", "user.vfs.request.x") == errno.ENODATA
        (spool / "bad.json").write_bytes(b"not json\n")
        assert errno_of(os.getxattr, warm, "user.vfs.request.bad") == errno.EINVAL
        assert list(spool.iterdir()) == [], "a request is taken whether or not the mount accepts it"
        assert m.alive()
    assert not spool.exists(), "requests_dir goes with the mount"
