"""How many GETs per second `rclone serve s3` answers for the DataLoader's 100 KiB files, whatever
the client: the ceiling of every mount in scenario c of bench/compare.py.

Uses the data compare.py generated (--data-dir, scale 1 by default) and vfs's own libcurl GET path,
with 4, 16 and 32 threads, 4,000 distinct files each, the page cache dropped before each run (as
compare.py does before epoch 1) where permitted.

    .venv/bin/python bench/server_ceiling.py [--data-dir /tmp/vfs-bench-data/scale-1]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import boto3  # noqa: E402

import peers  # noqa: E402
from common import drop_page_cache  # noqa: E402
from vfs.mounts.s3_curl import CurlGetter  # noqa: E402

PER_RUN = 4000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/vfs-bench-data/scale-1"))
    root = parser.parse_args().data_dir
    keys = sorted(str(p.relative_to(root / "bench")) for p in (root / "bench/dl").glob("*/*"))
    if len(keys) < 3 * PER_RUN:
        raise SystemExit(f"{root}: run scripts/bench --only c first (it generates the files)")
    random.Random(1).shuffle(keys)
    with peers.serve_s3(root, root.parent) as s3:
        creds = boto3.session.Session(aws_access_key_id=s3.access_key,
                                      aws_secret_access_key=s3.secret_key).get_credentials()
        getter = CurlGetter(f"{s3.endpoint}/bench/", s3.region, creds, ca_file=None, connect_timeout=5,
                            read_timeout=30, max_attempts=3)
        for i, threads in enumerate((4, 16, 32)):
            batch = keys[i * PER_RUN:(i + 1) * PER_RUN]
            drop_page_cache()
            start = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(threads) as pool:
                got = sum(len(data) for data, _ in pool.map(lambda k: getter.get(k, 0, 1 << 20, "", k), batch))
            seconds = time.perf_counter() - start
            if got != sum((root / "bench" / k).stat().st_size for k in batch):
                raise SystemExit(f"{threads} threads: wrong byte count {got}")
            print(f"{threads:2d} threads: {len(batch) / seconds:5.0f} GETs/s")


if __name__ == "__main__":
    main()
