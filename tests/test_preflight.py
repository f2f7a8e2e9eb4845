"""vfs/preflight.py against real servers: each silo's root probed with one bounded request before
serving (a missing bucket, export or folder, refused credentials, a stopped or silent server each
give one line naming the mount), and the local paths a config names checked before anything starts."""

from __future__ import annotations

import errno
import socket
import threading
from pathlib import Path
from typing import Iterator

import google.oauth2.credentials
import pytest
import trio

from tests.drive_server import DriveServer
from tests.servers import HOST, free_port
from tests.silos.gcs import client as gcs_client
from tests.silos.gcs import emulator
from tests.silos.gdrive import folder, write_token
from tests.silos.s3 import REGION, MotoS3, moto_server
from vfs.config import parse
from vfs.mount_table import Mount, MountTable
from vfs.mounts.base import Backend
from vfs.mounts.gcs import GCSBackend, GCSOptions
from vfs.mounts.gdrive import DriveBackend, DriveOptions
from vfs.mounts.local import LocalBackend, LocalOptions
from vfs.mounts.s3 import S3Backend, S3Options
from vfs.preflight import RootProblem, check_paths, check_roots

BUCKET = "present"


def problems(**backends: Backend) -> list[RootProblem]:
    table = MountTable([Mount("/" + name, b, ttl=1, negative_ttl=1) for name, b in backends.items()])

    async def run() -> list[RootProblem]:
        try:
            return await check_roots(table, timeout=10)
        finally:
            for b in backends.values():
                await b.aclose()

    return trio.run(run)


def one(problem_list: list[RootProblem], mount: str, err: int, lasting: bool) -> RootProblem:
    [p] = [p for p in problem_list if p.mount == mount]
    assert (p.errno, p.lasting) == (err, lasting), p.line
    assert p.line.startswith(f"mount {mount} (") and "\n" not in p.line
    return p


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    with moto_server(tmp_path_factory.mktemp("moto"), check_credentials=True) as m:
        m.client().create_bucket(Bucket=BUCKET)
        yield m


def s3(moto: MotoS3, bucket: str = BUCKET, **extra: object) -> S3Backend:
    opts = {"endpoint_url": moto.endpoint, "region": REGION, "access_key_id": moto.access_key_id,
            "secret_access_key": moto.secret_access_key, "max_attempts": 1, **extra}
    return S3Backend(S3Options(bucket=bucket, **opts))  # type: ignore[arg-type]


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port that accepts connections and never answers (a dead load balancer)."""
    listener = socket.create_server((HOST, 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        for s in accepted:
            s.close()
        listener.close()


def test_s3(moto: MotoS3, tmp_path: Path) -> None:
    stopped = f"http://{HOST}:{free_port()}"
    found = problems(
        good=s3(moto), prefixed=s3(moto, prefix="a/b"),
        missing=s3(moto, "no-such-bucket"),
        refused=s3(moto, access_key_id="AKIAREFUSED", secret_access_key="refused-secret"),
        stopped=s3(moto, endpoint_url=stopped, connect_timeout=2),
    )
    assert [p.mount for p in found] == ["/missing", "/refused", "/stopped"]
    assert "no-such-bucket" in one(found, "/missing", errno.ENOENT, True).line
    assert "refused-secret" not in one(found, "/refused", errno.EACCES, True).line
    one(found, "/stopped", errno.EHOSTDOWN, False)


def test_a_silent_server_is_reported_within_the_bound(moto: MotoS3, black_hole: int) -> None:
    backend = s3(moto, endpoint_url=f"http://{HOST}:{black_hole}", connect_timeout=1, read_timeout=1)
    table = MountTable([Mount("/silent", backend, ttl=1, negative_ttl=1)])
    [p] = trio.run(check_roots, table, 0.5)
    assert p.errno == errno.ETIMEDOUT and not p.lasting, p.line


def test_gcs(tmp_path: Path) -> None:
    with emulator(tmp_path) as endpoint:
        gcs_client(endpoint).create_bucket(BUCKET)
        opts = {"endpoint": endpoint, "anonymous": True, "retry_timeout": 2.0}
        found = problems(
            good=GCSBackend(GCSOptions(bucket=BUCKET, **opts)),  # type: ignore[arg-type]
            missing=GCSBackend(GCSOptions(bucket="no-such-bucket", **opts)),  # type: ignore[arg-type]
            stopped=GCSBackend(GCSOptions(bucket=BUCKET, **{**opts, "endpoint": f"http://{HOST}:{free_port()}"})),  # type: ignore[arg-type]
        )
    assert [p.mount for p in found] == ["/missing", "/stopped"]
    one(found, "/missing", errno.ENOENT, True)
    assert not one(found, "/stopped", found[1].errno, False).lasting


def test_gdrive(tmp_path: Path) -> None:
    with DriveServer() as server:
        token = write_token(server, tmp_path / "token.json")
        data = folder(server, "data")

        def drive(**extra: object) -> DriveBackend:
            opts = {"root_url": server.url, "token_file": str(token), "token_uri": server.url + "token",
                    "max_retries": 0, **extra}
            return DriveBackend(DriveOptions(**opts))  # type: ignore[arg-type]

        wrong = google.oauth2.credentials.Credentials(token="wrong-token")
        found = problems(
            good=drive(), folder=drive(root=data), missing=drive(root="no-such-folder-id"),
            refused=DriveBackend(DriveOptions(root_url=server.url, credentials=wrong, max_retries=0)),
        )
        stopped = problems(stopped=drive(root_url=f"http://{HOST}:{free_port()}/"))
    assert [p.mount for p in found] == ["/missing", "/refused"]
    one(found, "/missing", errno.ENOENT, True)
    one(found, "/refused", errno.EACCES, True)
    assert [p.mount for p in stopped] == ["/stopped"] and not stopped[0].lasting


def test_nfs_server_stopped() -> None:
    try:
        from vfs.mounts.nfs import NFSBackend, NFSOptions
    except ImportError as exc:
        pytest.skip(f"libnfs: {exc}")
    port = free_port()
    backend = NFSBackend(NFSOptions(url=f"nfs://{HOST}/export?version=4&nfsport={port}", timeout=2))
    [p] = problems(nfs=backend)
    assert p.mount == "/nfs" and not p.lasting and "nfs://" in p.line, p.line


def test_local(tmp_path: Path) -> None:  # a root that is a file is check_paths' to refuse (test_check_paths)
    found = problems(good=LocalBackend(LocalOptions(root=str(tmp_path))),
                     missing=LocalBackend(LocalOptions(root=str(tmp_path / "gone"))))
    assert [p.mount for p in found] == ["/missing"]
    one(found, "/missing", errno.ENOENT, True)


def test_check_paths(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    good = {"mount": [{"path": "/l", "backend": "local", "root": str(tmp_path)}],
            "cache": {"ssd_dir": str(tmp_path / "new" / "ssd"), "ssd_size": "1GiB", "trace_file": str(tmp_path / "t")},
            "write": {"staging_dir": str(tmp_path / "staging")}}
    assert check_paths(parse(good, "c.toml"), str(tmp_path / "log")) == []
    bad = {"mount": [{"path": "/l", "backend": "local", "root": str(tmp_path / "f")}],
           "cache": {"ssd_dir": str(tmp_path / "f" / "ssd"), "ssd_size": "1GiB", "trace_file": str(tmp_path)},
           "write": {"staging_dir": str(tmp_path / "f")}}
    assert check_paths(parse(bad, "c.toml"), str(tmp_path / "no" / "log")) == [
        f"c.toml: cache.ssd_dir: {tmp_path}/f/ssd: cannot be created, {tmp_path}/f is not a directory",
        f"c.toml: cache.trace_file: {tmp_path}: is a directory",
        f"c.toml: write.staging_dir: {tmp_path}/f: not a directory",
        f"c.toml: mount #1 (/l).root: {tmp_path}/f: not a directory",
        f"--log-file: {tmp_path}/no/log: no such directory {tmp_path}/no",
    ]
    read_only = {**bad, "write": {"mode": "off", "staging_dir": str(tmp_path / "f")}, "cache": {}}
    assert [p.split(":")[1] for p in check_paths(parse(read_only, "c.toml"))] == [" mount #1 (/l).root"]


@pytest.mark.kernel
def test_vfs_mount_refuses_a_missing_bucket_and_mounts_past_an_unreachable_silo(moto: MotoS3, tmp_path: Path) -> None:
    """Through `vfs mount`: a bucket that does not exist stops the mount in one line (nothing
    mounted); a silo that cannot be reached only warns, and the mount comes up to serve what is cached."""
    from tests.kernel import fuse_available, start_mount, stop_mount
    from vfs.app import mounted_at

    if fuse_available() is not None:
        pytest.skip(str(fuse_available()))
    with pytest.raises(RuntimeError) as refused:
        start_mount(tmp_path, {"mount": [{"path": "/s3", **moto.options(bucket="absent")}]}, name="missing")
    lines = [ln for ln in str(refused.value).splitlines() if ln.startswith("vfs:")]
    assert len(lines) == 1 and "absent" in lines[0] and "/s3" in lines[0], str(refused.value)
    assert "Traceback" not in str(refused.value)
    assert mounted_at(str(tmp_path / "missing")) is None

    closed = free_port()
    down = {**moto.options(bucket=BUCKET), "endpoint_url": f"http://{HOST}:{closed}", "max_attempts": 1}
    m = start_mount(tmp_path, {"mount": [{"path": "/s3", **down}]}, name="down")
    try:
        assert "mounting anyway" in m.log_text()
    finally:
        stop_mount(m)
