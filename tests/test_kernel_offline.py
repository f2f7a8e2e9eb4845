"""Offline mode through the real kernel: a mounted S3 silo (moto behind tests/fault_proxy.py) goes
down (the proxy refuses connections) and comes back on the same address.

While it is down: listings and attributes seen before and cached bytes are served after their TTL; a
file whose bytes were never cached fails with EHOSTDOWN at once (the configured timeouts and retries
would take far longer); a write in mode `back` is accepted at close; `.vfs/stats` shows the silo
offline. When it returns: the write reaches the silo without waiting out its backoff, an object
changed on the silo during the outage is seen, and the log holds one line for each change of state.
The reader's wait is printed: `pytest -s tests/test_kernel_offline.py`.
"""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.fault_proxy import FaultProxy
from tests.kernel import VfsMount, fuse_available, read_file, vfs_mount, wait_until
from tests.silos.s3 import MotoS3, moto_server

pytestmark = [pytest.mark.kernel, pytest.mark.skipif(fuse_available() is not None, reason=str(fuse_available()))]

BUCKET = "offline"
TTL = 1.0
SETTLE = 60.0  # bound on waits for the breaker and the upload (a loaded 2-core CI box)
FILES = {"hot/a.txt": b"alpha" * 1000, "hot/b.txt": b"bravo", "cold/c.bin": bytes(range(256)) * 4096}


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    with moto_server(tmp_path_factory.mktemp("moto")) as m:
        client = m.client()
        client.create_bucket(Bucket=BUCKET)
        for prefix in ("p", "q"):  # one prefix per test: the first changes its own
            for key, data in FILES.items():
                client.put_object(Bucket=BUCKET, Key=f"{prefix}/{key}", Body=data)
        yield m


def config(moto: MotoS3, proxy: FaultProxy, prefix: str = "p") -> dict[str, Any]:
    # Timeouts and retries far longer than a fail-fast answer: 3 tries, 30 s to connect, 60 s to read.
    return {
        "metadata": {"ttl": TTL, "negative_ttl": TTL},
        "write": {"mode": "back", "write_back_delay": 0.2, "drain_timeout": 30},
        "mount": [{"path": "/s3", **moto.options(bucket=BUCKET, prefix=prefix, endpoint_url=proxy.url, max_attempts=3,
                                                 connect_timeout=30.0, read_timeout=60.0)}],
    }


def silo_stats(m: VfsMount) -> dict[str, Any]:
    return json.loads(read_file(m.path / ".vfs" / "stats"))["backends"]["/s3"]


def silo_bytes(moto: MotoS3, key: str) -> bytes | None:
    return moto.object_bytes(BUCKET, key)


def test_a_silo_down_and_back(moto: MotoS3, tmp_path: Path) -> None:
    with FaultProxy(moto.endpoint, seed=3) as proxy, vfs_mount(tmp_path, config(moto, proxy)) as m:
        top = m.path / "s3"
        assert sorted(os.listdir(top)) == ["cold", "hot"]
        assert sorted(os.listdir(top / "hot")) == ["a.txt", "b.txt"]
        assert read_file(top / "hot" / "a.txt") == FILES["hot/a.txt"]
        assert os.stat(top / "cold" / "c.bin").st_size == len(FILES["cold/c.bin"])  # attributes only

        proxy.mode = "refuse"
        time.sleep(TTL + 0.5)  # all that was seen has expired
        assert sorted(os.listdir(top / "hot")) == ["a.txt", "b.txt"]  # the silo is asked, refused
        wait_until(lambda: silo_stats(m)["online"] == 0, SETTLE, "the silo to be seen offline")
        stats = silo_stats(m)
        assert "EHOSTDOWN" in stats["last_error"] and stats["offline_since"]

        assert sorted(os.listdir(top)) == ["cold", "hot"]
        assert read_file(top / "hot" / "a.txt") == FILES["hot/a.txt"]
        assert os.stat(top / "cold" / "c.bin").st_size == len(FILES["cold/c.bin"])
        start = time.monotonic()
        with pytest.raises(OSError) as uncached:
            read_file(top / "cold" / "c.bin")
        waited = time.monotonic() - start
        assert uncached.value.errno == errno.EHOSTDOWN
        assert waited < 10.0  # configured: 3 tries of up to 30 s each
        (top / "hot" / "new.txt").write_bytes(b"written offline")  # mode back: accepted at close
        moto.client().put_object(Bucket=BUCKET, Key="p/hot/a.txt", Body=b"changed while offline")
        assert read_file(top / "hot" / "a.txt") == FILES["hot/a.txt"]  # what was cached, still
        print(f"\nsilo down: an uncached read failed with EHOSTDOWN after {waited * 1000:.0f} ms")

        proxy.mode = "pass"
        back = time.monotonic()
        wait_until(lambda: silo_stats(m)["online"] == 1, SETTLE, "the silo to be seen back")
        wait_until(lambda: silo_bytes(moto, "p/hot/new.txt") == b"written offline", SETTLE, "the upload")
        uploaded = time.monotonic() - back
        wait_until(lambda: read_file(top / "hot" / "a.txt") == b"changed while offline", SETTLE, "the change")
        assert read_file(top / "cold" / "c.bin") == FILES["cold/c.bin"]
        print(f"silo back: upload landed {uploaded:.1f} s after the silo returned")
    log = m.log_text()
    assert log.count(": offline (") == 1 and log.count(": back online after") == 1, log[-3000:]
    assert "Traceback" not in log, log[-3000:]


def test_a_mount_started_while_the_silo_is_down_serves_what_an_earlier_run_cached(moto: MotoS3,
                                                                                  tmp_path: Path) -> None:
    with FaultProxy(moto.endpoint, seed=4) as proxy:
        cfg = {**config(moto, proxy, "q"), "cache": {"ssd_dir": str(tmp_path / "ssd"), "ssd_size": 64 << 20}}
        with vfs_mount(tmp_path, cfg) as m:
            assert sorted(os.listdir(m.path / "s3" / "hot")) == ["a.txt", "b.txt"]
            assert read_file(m.path / "s3" / "hot" / "b.txt") == FILES["hot/b.txt"]
        proxy.mode = "refuse"  # the laptop restarts on a plane
        with vfs_mount(tmp_path, cfg) as m:
            top = m.path / "s3"
            assert sorted(os.listdir(top / "hot")) == ["a.txt", "b.txt"]
            assert read_file(top / "hot" / "b.txt") == FILES["hot/b.txt"]  # from the SSD tier
            with pytest.raises(OSError) as uncached:
                read_file(top / "cold" / "c.bin")
            assert uncached.value.errno == errno.EHOSTDOWN
        assert "Traceback" not in m.log_text(), m.log_text()[-3000:]
