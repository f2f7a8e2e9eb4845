"""The demo: S3, GCS, NFS and Google Drive in one vfs tree, every silo a real server on 127.0.0.1.

Starts moto (S3), gcp-storage-emulator (GCS), nfs-ganesha (NFS, root only) and the Drive v3 server
of the test suite, seeds each with a small sample dataset, mounts them all under one mount point,
shows `ls`, `find`, `cat` and `vfs stats` across them, then (on a terminal) waits while you explore.
Everything is stopped and unmounted on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.kernel import start_mount, stop_mount  # noqa: E402
from tests.silos import gcs, gdrive, nfs, s3  # noqa: E402


def sample(silo: str) -> dict[str, bytes]:
    rnd = random.Random(silo)
    rows = io.StringIO()
    w = csv.writer(rows)
    w.writerow(["id", "x", "y", "label"])
    for i in range(1000):
        w.writerow([i, round(rnd.gauss(0, 1), 4), round(rnd.gauss(0, 1), 4), rnd.choice("abc")])
    return {
        "README.txt": f"This file lives in {silo}, read through vfs.\n".encode(),
        "tables/points.csv": rows.getvalue().encode(),
        **{f"shards/shard-{i:03d}.bin": rnd.randbytes(64 * 1024) for i in range(20)},
        "models/weights.bin": rnd.randbytes(8 * 1024 * 1024),
    }


def show(*cmd: str, cwd: Path) -> None:
    print(f"\n$ {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, cwd=cwd, check=False)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keep", action="store_true", help="wait for Enter before unmounting (default on a terminal)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="vfs-demo-") as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        mounts = []
        silos = [("s3", s3), ("gcs", gcs), ("gdrive", gdrive)]
        if os.geteuid() == 0:
            silos.insert(2, ("nfs", nfs))
        else:
            print("demo: nfs-ganesha needs root; the NFS silo is left out", file=sys.stderr)
        for name, module in silos:
            print(f"demo: starting {name} on 127.0.0.1 ...", flush=True)
            silo = stack.enter_context(module.open_silo(tmp / name, sample(name), [], {}) if (tmp / name).mkdir() is None else None)
            mounts.append({"path": f"/{name}", **silo.mount_options})
        config = {"cache": {"ram_size": "256MiB", "ssd_dir": str(tmp / "ssd"), "ssd_size": "1GiB"}, "mount": mounts}
        m = start_mount(tmp, config, "mnt")
        stack.callback(stop_mount, m)
        print(f"\nvfs mounted {', '.join(x['path'] for x in mounts)} at {m.path}")
        show("ls", "-la", str(m.path), cwd=m.path)
        show("sh", "-c", "find . | sort | head -n 25", cwd=m.path)
        for name, _ in silos:
            show("cat", f"{name}/README.txt", cwd=m.path)
        show("sh", "-c", "head -n 3 gcs/tables/points.csv; md5sum */models/weights.bin", cwd=m.path)
        show(sys.executable, "-m", "vfs", "stats", str(m.path), cwd=Path(__file__).resolve().parent.parent)
        if args.keep or sys.stdin.isatty():
            input(f"\nExplore {m.path} from another terminal; press Enter to unmount and stop the servers. ")
    print("demo: unmounted, servers stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
