"""Per-silo read latency and throughput through ONE vfs mount, against each silo's own client.

Every backend (s3 on moto, gcs on gcp-storage-emulator, nfs on nfs-ganesha read with libnfs, gdrive on
tests/drive_server.py, and a local directory as the reference) is started with tests/silos/<name> and
seeded with the same data: 200 small files of 4 KiB (small/fNNNN) and one 50 MiB file (big.bin).
One vfs mount holds them all (/<name>), with a RAM cache that holds the whole working set. Per backend:

  small cold        open+read of each small file once through the mount (the directory is listed
                    first, untimed, as a DataLoader indexes its dataset: data cold, metadata warm)
  small warm (pc)   the same again: the kernel's page cache answers (vfs returns keep_cache)
  small warm (vfs)  the same after dropping the page cache: vfs's RAM tier answers
  small direct      the same reads with the silo's own client, after dropping the page cache:
                    boto3 get_object; google-cloud-storage blob.download_as_bytes; for nfs the vfs
                    NFSBackend itself (ctypes libnfs: open, fstat, pread, close) inside one trio.run;
                    googleapiclient files.get_media; open/read for local
  big cold          50 MiB read sequentially (1 MiB reads) through the mount, page cache dropped
  big warm (vfs)    again, page cache dropped again: from vfs's RAM tier
  big direct 1      the silo's client reading the 50 MiB in one request (one GET / one sequential
                    read: NFSBackend.read_range of the whole file, preads of 1 MiB on one context)
  big direct par    the silo's client reading 8 MiB ranges with 4 threads (ranged GETs; for nfs
                    read_range calls on the backend's context pool); not run for local

Every cold measurement is preceded by `echo 3 > /proc/sys/vm/drop_caches` (where permitted: the
JSON says whether it was). Ratios are mount/direct: for latency >1 means the mount is slower, for
throughput <1 means the mount is slower; the throughput ratio is taken against the faster direct way.
With --repeat N every number is the median of N runs, each with a fresh mount (cold vfs cache).
The Drive server runs inside this process (tests/drive_server.py is a thread server); its per-request
md5 of the whole file is memoised here (see _MemoMd5) unless --drive-md5-per-request.

    python bench/silos.py [--only s3,gcs] [--repeat 3] [--block-size 4MiB] [--ram-size 512MiB]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import copy
import json
import logging
import os
import random
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from common import (MiB, drop_page_cache, fmt, latency_summary, mb_per_s, median_of, mount_stats, ratio,
                    read_whole, write_json)

from tests.kernel import fuse_available, vfs_mount
from tests.silos import Silo
from vfs.table import render
from vfs.units import parse_size

log = logging.getLogger(__name__)

BACKENDS = ["s3", "gcs", "nfs", "gdrive", "local"]
SMALL_COUNT = 200  # the task's dataset: 200 small files...
SMALL_SIZE = 4 * 1024  # ...of 4 KiB
BIG_SIZE = 50 * MiB  # ...and one 50 MiB file
BIG_NAME = "big.bin"
# Parallel direct reads: 8 MiB ranges (boto3's TransferConfig multipart_chunksize default) with
# 4 threads (twice the vCPUs of this machine kind; more only adds GIL contention in one process).
PAR_CHUNK = 8 * MiB
PAR_THREADS = 4


def small_name(i: int) -> str:
    return f"small/f{i:04d}"


def dataset(seed: int = 1) -> dict[str, bytes]:
    rnd = random.Random(seed)
    files = {small_name(i): rnd.randbytes(SMALL_SIZE) for i in range(SMALL_COUNT)}
    files[BIG_NAME] = rnd.randbytes(BIG_SIZE)
    return files


def ranges(size: int, chunk: int) -> list[tuple[int, int]]:
    """[start, end) pieces of `size` bytes."""
    return [(s, min(s + chunk, size)) for s in range(0, size, chunk)]


class _MemoMd5:
    """Stands in for `hashlib` in tests/drive_server.py: the md5 of a content object is computed once.

    Real Drive stores md5Checksum; the test server hashes the whole file on every metadata request,
    and the gdrive backend checks metadata after every block it reads, so without this each 4 MiB
    block of the 50 MiB file costs an md5 of 50 MiB (~60 ms here) on the server: a test-server
    artefact, not a cost of Drive. --drive-md5-per-request keeps the server as it is.
    """

    def __init__(self) -> None:
        self.memo: dict[int, tuple[bytes, str]] = {}

    def md5(self, data: bytes) -> Any:
        import hashlib

        hit = self.memo.get(id(data))
        if hit is None or hit[0] is not data:  # keeping `data` referenced pins its id
            hit = self.memo[id(data)] = (data, hashlib.md5(data).hexdigest())
        digest = hit[1]
        return type("Digest", (), {"hexdigest": lambda self: digest})()


def memoize_drive_md5() -> None:
    from tests import drive_server

    drive_server.hashlib = _MemoMd5()  # type: ignore[assignment]


# --- the silos' own clients ----------------------------------------------------------------------

class Direct:
    """A silo's own client: timed small reads and whole reads of the big file."""

    parallel = True

    def small(self, names: list[str]) -> list[float]:
        """Seconds per read, each file read once in order."""
        out = []
        for name in names:
            start = time.perf_counter()
            data = self.get(name)
            out.append(time.perf_counter() - start)
            assert len(data) == SMALL_SIZE, (name, len(data))
        return out

    def big_single(self) -> float:
        start = time.perf_counter()
        n = len(self.get(BIG_NAME))
        elapsed = time.perf_counter() - start
        assert n == BIG_SIZE, n
        return elapsed

    def big_parallel(self) -> float:
        with concurrent.futures.ThreadPoolExecutor(PAR_THREADS) as pool:
            start = time.perf_counter()
            n = sum(pool.map(lambda r: len(self.get_range(BIG_NAME, *r)), ranges(BIG_SIZE, PAR_CHUNK)))
            elapsed = time.perf_counter() - start
        assert n == BIG_SIZE, n
        return elapsed

    def get(self, name: str) -> bytes:
        raise NotImplementedError

    def get_range(self, name: str, start: int, end: int) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        pass


class S3Direct(Direct):
    def __init__(self, silo: Silo) -> None:
        import boto3
        import botocore.config

        o = silo.mount_options
        self.bucket = o["bucket"]
        self.client = boto3.client(
            "s3", endpoint_url=o["endpoint_url"], region_name=o["region"], aws_access_key_id=o["access_key_id"],
            aws_secret_access_key=o["secret_access_key"],
            config=botocore.config.Config(max_pool_connections=PAR_THREADS * 2))
        self.client.head_bucket(Bucket=self.bucket)  # warm the connection pool, untimed

    def get(self, name: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=name)["Body"].read()

    def get_range(self, name: str, start: int, end: int) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=name, Range=f"bytes={start}-{end - 1}")["Body"].read()


class GCSDirect(Direct):
    def __init__(self, silo: Silo) -> None:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        o = silo.mount_options
        self.client = storage.Client(project="vfs-bench", credentials=AnonymousCredentials(),
                                     client_options={"api_endpoint": o["endpoint"]})
        self.bucket = self.client.bucket(o["bucket"])
        self.bucket.reload()  # warm the session, untimed

    def get(self, name: str) -> bytes:
        return self.bucket.blob(name).download_as_bytes()

    def get_range(self, name: str, start: int, end: int) -> bytes:
        return self.bucket.blob(name).download_as_bytes(start=start, end=end - 1)  # end is inclusive

    def close(self) -> None:
        self.client.close()


class NFSDirect(Direct):
    """The vfs NFSBackend as the client (ctypes libnfs), driven from one trio.run per measurement."""

    def __init__(self, silo: Silo) -> None:
        import trio

        from vfs.mounts.nfs import NFSBackend, NFSOptions

        self.trio = trio
        self.backend = NFSBackend(NFSOptions(url=silo.mount_options["url"]))

        async def versions() -> dict[str, tuple[str, int]]:
            metas = [*await self.backend.list_dir("small"), await self.backend.stat(BIG_NAME)]
            return {m.path: (m.version, m.size) for m in metas}

        self.meta = trio.run(versions)  # untimed: the mount has these from its listing too

    def small(self, names: list[str]) -> list[float]:
        async def run() -> list[float]:
            out = []
            for name in names:
                version, size = self.meta[name]
                start = time.perf_counter()
                data = await self.backend.read_range(name, 0, size, version)
                out.append(time.perf_counter() - start)
                assert len(data) == SMALL_SIZE
            return out

        return self.trio.run(run)

    def big_single(self) -> float:
        version, size = self.meta[BIG_NAME]

        async def run() -> float:
            start = time.perf_counter()
            n = len(await self.backend.read_range(BIG_NAME, 0, size, version))
            assert n == BIG_SIZE
            return time.perf_counter() - start

        return self.trio.run(run)

    def big_parallel(self) -> float:
        version, size = self.meta[BIG_NAME]
        trio = self.trio

        async def run() -> float:
            got = []
            limiter = trio.CapacityLimiter(PAR_THREADS)

            async def piece(s: int, e: int) -> None:
                async with limiter:
                    got.append(len(await self.backend.read_range(BIG_NAME, s, e, version)))

            start = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for s, e in ranges(size, PAR_CHUNK):
                    nursery.start_soon(piece, s, e)
            assert sum(got) == BIG_SIZE
            return time.perf_counter() - start

        return self.trio.run(run)

    def close(self) -> None:
        self.trio.run(self.backend.aclose)


class DriveDirect(Direct):
    """googleapiclient against the loopback Drive server; one service (and httplib2.Http) per thread."""

    def __init__(self, silo: Silo) -> None:
        import google.oauth2.credentials
        import google_auth_httplib2
        import googleapiclient.discovery
        import httplib2

        from vfs.mounts.gdrive import _discovery

        o = silo.mount_options
        self.creds = google.oauth2.credentials.Credentials.from_authorized_user_file(o["token_file"])
        doc = copy.copy(_discovery())
        root = o["root_url"].rstrip("/") + "/"
        doc["rootUrl"], doc["baseUrl"] = root, root + doc["servicePath"]
        doc.pop("mtlsRootUrl", None)
        self._build = lambda: googleapiclient.discovery.build_from_document(
            doc, http=google_auth_httplib2.AuthorizedHttp(self.creds, http=httplib2.Http()))
        self._local = threading.local()
        self.ids = self._index()  # untimed: a Drive client finds file ids by listing, like the mount

    def service(self) -> Any:
        if getattr(self._local, "service", None) is None:
            self._local.service = self._build()
        return self._local.service

    def _children(self, folder: str) -> dict[str, str]:
        out, token = {}, None
        while True:
            page = self.service().files().list(q=f"'{folder}' in parents and trashed = false", pageSize=1000,
                                               pageToken=token, fields="nextPageToken, files(id, name)").execute()
            out.update({f["name"]: f["id"] for f in page["files"]})
            token = page.get("nextPageToken")
            if not token:
                return out

    def _index(self) -> dict[str, str]:
        top = self._children("root")
        ids = {BIG_NAME: top[BIG_NAME]}
        ids.update({f"small/{name}": fid for name, fid in self._children(top["small"]).items()})
        return ids

    def get(self, name: str) -> bytes:
        return self.service().files().get_media(fileId=self.ids[name]).execute()

    def get_range(self, name: str, start: int, end: int) -> bytes:
        request = self.service().files().get_media(fileId=self.ids[name])
        request.headers["Range"] = f"bytes={start}-{end - 1}"
        return request.execute()


class LocalDirect(Direct):
    parallel = False

    def __init__(self, silo: Silo) -> None:
        self.root = Path(silo.mount_options["root"])

    def get(self, name: str) -> bytes:
        with open(self.root / name, "rb") as f:
            return f.read()

    def big_single(self) -> float:
        start = time.perf_counter()
        n = read_whole(self.root / BIG_NAME)  # the same 1 MiB reads as through the mount
        assert n == BIG_SIZE
        return time.perf_counter() - start


DIRECT: dict[str, Callable[[Silo], Direct]] = {
    "s3": S3Direct, "gcs": GCSDirect, "nfs": NFSDirect, "gdrive": DriveDirect, "local": LocalDirect}
CLIENT_NOTE = {
    "s3": "boto3 get_object", "gcs": "google-cloud-storage download_as_bytes", "nfs": "vfs NFSBackend (ctypes libnfs)",
    "gdrive": "googleapiclient files.get_media", "local": "open/read"}


# --- one run -------------------------------------------------------------------------------------

def mount_small(root: Path, names: list[str]) -> list[float]:
    out = []
    for name in names:
        start = time.perf_counter()
        n = read_whole(root / name)
        out.append(time.perf_counter() - start)
        assert n == SMALL_SIZE, (name, n)
    return out


def mount_big(root: Path) -> float:
    start = time.perf_counter()
    n = read_whole(root / BIG_NAME)
    elapsed = time.perf_counter() - start
    assert n == BIG_SIZE, n
    return elapsed


def measure(name: str, root: Path, direct: Direct, files: dict[str, bytes]) -> dict[str, Any]:
    """Every number of one backend in one run (a fresh mount: nothing of `name` is cached yet)."""
    names = [small_name(i) for i in range(SMALL_COUNT)]
    r: dict[str, Any] = {}
    r["dropped"] = drop_page_cache()
    assert len(os.listdir(root / "small")) == SMALL_COUNT  # the dataset's index, untimed
    r["small_cold"] = latency_summary(mount_small(root, names))
    r["small_warm_pc"] = latency_summary(mount_small(root, names))
    drop_page_cache()
    r["small_warm_vfs"] = latency_summary(mount_small(root, names))
    drop_page_cache()
    r["small_direct"] = latency_summary(direct.small(names))

    drop_page_cache()
    r["big_cold_mbs"] = mb_per_s(BIG_SIZE, mount_big(root))
    drop_page_cache()
    r["big_warm_vfs_mbs"] = mb_per_s(BIG_SIZE, mount_big(root))
    drop_page_cache()
    r["big_direct_single_mbs"] = mb_per_s(BIG_SIZE, direct.big_single())
    drop_page_cache()
    r["big_direct_parallel_mbs"] = mb_per_s(BIG_SIZE, direct.big_parallel()) if direct.parallel else None

    # Untimed check that the mount served the right bytes.
    for i in (0, SMALL_COUNT - 1):
        assert (root / small_name(i)).read_bytes() == files[small_name(i)], f"{name}: wrong bytes"
    return r


def one_run(tmp: Path, silos: dict[str, Silo], directs: dict[str, Direct], files: dict[str, bytes],
            cache: dict[str, Any], run: int) -> dict[str, Any]:
    config = {"cache": cache, "mount": [{"path": f"/{n}", **s.mount_options} for n, s in silos.items()]}
    out: dict[str, Any] = {}
    with vfs_mount(tmp, config, name=f"mnt{run}") as m:
        for name in silos:
            log.info("run %d: %s", run + 1, name)
            out[name] = measure(name, m.path / name, directs[name], files)
            b = mount_stats(m.path)["backends"][f"/{name}"]
            out[name]["silo_bytes"], out[name]["silo_requests"] = b["bytes"], b["requests"]
        assert m.alive(), m.log_text()[-3000:]
    return out


# --- report --------------------------------------------------------------------------------------

def summarise(runs: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, Any]]:
    """Per backend, the median over runs of every number, and the ratios of those medians."""
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        rs = [r[name] for r in runs]
        s: dict[str, Any] = {}
        for key in ("small_cold", "small_warm_pc", "small_warm_vfs", "small_direct"):
            s[key] = {q: median_of([r[key][q] for r in rs]) for q in ("median_ms", "p90_ms")}
        for key in ("big_cold_mbs", "big_warm_vfs_mbs", "big_direct_single_mbs", "big_direct_parallel_mbs"):
            s[key] = median_of([r[key] for r in rs])
        direct_med = s["small_direct"]["median_ms"]
        for key in ("small_cold", "small_warm_pc", "small_warm_vfs"):
            s[key]["ratio_median"] = ratio(s[key]["median_ms"], direct_med)
            s[key]["ratio_p90"] = ratio(s[key]["p90_ms"], s["small_direct"]["p90_ms"])
        best = max(v for v in (s["big_direct_single_mbs"], s["big_direct_parallel_mbs"]) if v is not None)
        s["big_direct_best_mbs"] = best
        s["big_cold_ratio"] = ratio(s["big_cold_mbs"], best)
        s["big_warm_vfs_ratio"] = ratio(s["big_warm_vfs_mbs"], best)
        s["client"] = CLIENT_NOTE[name]
        out[name] = s
    return out


def table(summary: dict[str, dict[str, Any]], title: str) -> str:
    rows: list[tuple[object, ...]] = []
    for name, s in summary.items():
        d = s["small_direct"]
        for key, label in (("small_cold", "4KiB cold ms"), ("small_warm_pc", "4KiB warm page-cache ms"),
                           ("small_warm_vfs", "4KiB warm vfs-RAM ms")):
            v = s[key]
            rows.append((name, label, f"{fmt(v['median_ms'])} / {fmt(v['p90_ms'])}",
                         f"{fmt(d['median_ms'])} / {fmt(d['p90_ms'])}", "",
                         f"{fmt(v['ratio_median'])} / {fmt(v['ratio_p90'])}"))
        single, par = s["big_direct_single_mbs"], s["big_direct_parallel_mbs"]
        for key, label in (("big_cold", "50MiB cold MB/s"), ("big_warm_vfs", "50MiB warm vfs-RAM MB/s")):
            rows.append((name, label, fmt(s[f"{key}_mbs"], 0), fmt(single, 0), fmt(par, 0), fmt(s[f"{key}_ratio"])))
    header = ("backend", "measure", "mount", "direct 1-stream", "direct 4x8MiB", "mount/direct")
    return render(header, rows, title)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--only", default=",".join(BACKENDS), help="comma-separated backends (default: all)")
    parser.add_argument("--repeat", type=int, default=1, help="runs; every number is the median over them")
    parser.add_argument("--block-size", default="4MiB", help="cache block size (default 4MiB, vfs's default)")
    parser.add_argument("--ram-size", default="512MiB", help="RAM tier (must hold 5 x 51 MiB for warm numbers)")
    parser.add_argument("--drive-md5-per-request", action="store_true",
                        help="let tests/drive_server.py hash a file's whole content on every metadata request")
    parser.add_argument("--name", default="silos", help="bench/out/<name>.json")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(names) - set(BACKENDS)
    if unknown:
        parser.error(f"--only: unknown backend(s) {', '.join(sorted(unknown))} (known: {', '.join(BACKENDS)})")
    reason = fuse_available()
    if reason:
        parser.error(reason)
    cache = {"block_size": parse_size(args.block_size), "ram_size": parse_size(args.ram_size)}

    import importlib

    files = dataset()
    if "gdrive" in names and not args.drive_md5_per_request:
        memoize_drive_md5()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="vfs-bench-silos-") as tmp_s, contextlib.ExitStack() as stack:
        tmp = Path(tmp_s)
        silos: dict[str, Silo] = {}
        directs: dict[str, Direct] = {}
        for name in names:
            log.info("starting and seeding %s", name)
            (tmp / name).mkdir()
            module = importlib.import_module(f"tests.silos.{name}")
            silos[name] = stack.enter_context(module.open_silo(tmp / name, files, [], {}))
            directs[name] = DIRECT[name](silos[name])
            stack.callback(directs[name].close)
        for run in range(args.repeat):
            runs.append(one_run(tmp, silos, directs, files, cache, run))
    summary = summarise(runs, names)
    title = (f"vfs mount vs each silo's own client: median of {args.repeat} run(s); block {args.block_size}, "
             f"RAM {args.ram_size}; latency cells 'median / p90'; ratios mount/direct "
             f"(latency: >1 = mount slower; MB/s: <1 = mount slower, against the faster direct way)")
    text = table(summary, title)
    print(text, end="")
    print("direct clients: " + "; ".join(f"{n}: {CLIENT_NOTE[n]}" for n in names))
    if "gdrive" in names:
        print("gdrive: the test server's md5Checksum is " + ("computed per request" if args.drive_md5_per_request
                                                            else "memoised (as Drive stores it)"))
    dropped = all(r[n]["dropped"] for r in runs for n in names)
    if not dropped:
        print("NOTE: the page cache could not be dropped: cold numbers may be warm")
    path = write_json(args.name, {"args": vars(args), "cache": cache, "page_cache_dropped": dropped,
                                  "files": {"small": SMALL_COUNT, "small_size": SMALL_SIZE, "big_size": BIG_SIZE},
                                  "summary": summary, "runs": runs})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
