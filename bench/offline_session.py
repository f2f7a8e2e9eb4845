"""A laptop session, scripted: mount an S3 silo (moto, behind the tests' fault proxy), read, lose the
network (the proxy refuses connections), `ls` and `cat` what is cached, read what is not (EHOSTDOWN at
once), `vfs status`, network back, a changed object seen. Prints a transcript with exit codes and
times.

    .venv/bin/python bench/offline_session.py
"""
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.silos.s3 import moto_server
from tests.fault_proxy import FaultProxy
from tests.kernel import start_mount, stop_mount

tmp = Path(tempfile.mkdtemp(prefix="vfs-offline-"))
VFS = str(ROOT / ".venv" / "bin" / "vfs")

def sh(cmd, cwd=None):
    print(f"$ {cmd}")
    t = time.perf_counter()
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True, cwd=cwd)
    out = (r.stdout + r.stderr).rstrip()
    if out:
        print(out)
    print(f"  [exit {r.returncode}, {1000*(time.perf_counter()-t):.0f} ms]")

(tmp / "moto").mkdir()
with moto_server(tmp / "moto") as moto:
    c = moto.client(); c.create_bucket(Bucket="data")
    for i in range(3):
        c.put_object(Bucket="data", Key=f"papers/p{i}.txt", Body=f"paper {i}\n".encode() * 100)
    c.put_object(Bucket="data", Key="other/never-read.txt", Body=b"x" * 10000)
    with FaultProxy(moto.endpoint, seed=1) as proxy:
        cfg = {"metadata": {"ttl": 2}, "cache": {"ssd_dir": str(tmp / "ssd"), "ssd_size": 64 << 20},
               "mount": [{"path": "/s3", **moto.options(bucket="data", endpoint_url=proxy.url, max_attempts=2)}]}
        m = start_mount(tmp, cfg, name="vfs")
        os.chdir(m.path)
        try:
            sh("ls -l s3/papers s3/other")
            sh("cat s3/papers/p0.txt | head -2; cat s3/papers/p1.txt s3/papers/p2.txt > /dev/null")
            print("# --- network gone (the silo refuses connections) ---")
            proxy.mode = "refuse"
            time.sleep(3)
            sh("ls -l s3/papers")
            sh("cat s3/papers/p1.txt | head -1")
            sh("ls -l s3/other; head -c 20 s3/other/never-read.txt")
            sh(f"{VFS} status {m.path}")
            print("# --- network back ---")
            proxy.mode = "pass"
            c.put_object(Bucket="data", Key="papers/p0.txt", Body=b"paper 0, revised\n")
            time.sleep(12)
            sh("cat s3/papers/p0.txt")
            sh(f"{VFS} status {m.path}")
        finally:
            os.chdir("/")
            stop_mount(m)
        log = m.log_text()
        print("# the mount's log lines about the silo:")
        for line in log.splitlines():
            if ": offline (" in line or "back online" in line:
                print("  " + line.split(" ", 2)[2])

subprocess.run(["rm", "-rf", str(tmp)])  # the silo, cache and logs of this session
