"""Odd object keys on an S3 mount (moto), through the kernel: names holding a newline, a tab or a
backslash are ordinary names; keys that cannot be POSIX names (a segment over 255 bytes, `.`, `..`,
an empty segment as in `a//b`) are left out of listings (README "Names that are both a file and a
directory"); a trailing-slash object holding data is a directory marker; a 50-level path and a
prefix of 20,000 keys list (completely, and the same twice) and read. Throughout: no crash, and `ls`,
`find` and `stat` agree.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import random
import stat
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import requests

from tests.kernel import VfsMount, fuse_available, read_file, vfs_mount
from tests.servers import HOST, free_port, server
from tests.silos.s3 import REGION, MotoS3

pytestmark = pytest.mark.skipif(fuse_available() is not None, reason=str(fuse_available()))

BUCKET = "odd-keys"
LONG = "L" * 256 + ".txt"
DEEP = "/".join(f"d{i}" for i in range(1, 51)) + "/bottom.txt"
# The "prefix with 20,000 keys". Through moto's HTTP API they took 66 s to create here (boto3
# put_object on 16 threads; ~340 PUTs/s whether boto3 or raw keep-alive HTTP, 4 or 16 threads: moto's
# CPU is the limit); the server process stores them itself before it listens (`seeded_moto_server`): ~0.5 s.
MANY = 20_000
ODD = {
    "odd/new\nline.txt": b"newline\n",
    "odd/tab\there.txt": b"tab\n",
    "odd/back\\slash.txt": b"backslash\n",
    "odd/sp ace & ünïcode.txt": b"unicode\n",
    f"odd/{LONG}": b"too long\n",
    "odd/./dot.txt": b"dot\n",
    "odd/../dotdot.txt": b"dotdot\n",
    "odd/e//mpty.txt": b"empty segment\n",
    "odd/full/": b"a marker holding data\n",
    "odd/full/inside.txt": b"inside\n",
    "odd/data/": b"only a marker with data\n",
    "odd/plain.txt": b"plain\n",
    DEEP: b"fifty levels down\n",
}
SHOWN = {"new\nline.txt", "tab\there.txt", "back\\slash.txt", "sp ace & ünïcode.txt", "e", "full", "data", "plain.txt"}


# A moto server (as tests/silos/s3.py's moto_server runs it) whose process first creates the bucket
# and the MANY keys many/k00000... (body: the number) in moto's own S3 backend, then serves.
SEEDED_SERVER = """
import sys
from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends
from moto.server import main
bucket, region, many, host, port = sys.argv[1:]
s3 = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
s3.create_bucket(bucket, region)
for i in range(int(many)):
    s3.put_object(bucket, f"many/k{i:05d}", b"%d" % i)
main(["-H", host, "-p", port])
"""


@contextlib.contextmanager
def seeded_moto_server(tmp: Path) -> Iterator[MotoS3]:
    port = free_port()
    argv = [sys.executable, "-c", SEEDED_SERVER, BUCKET, REGION, str(MANY), HOST, str(port)]
    with server(argv, port, tmp / "moto-seeded.log"):
        yield MotoS3(f"http://{HOST}:{port}", "vfs-test-key", "vfs-test-secret")


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    with seeded_moto_server(tmp_path_factory.mktemp("moto")) as m:
        client = m.client()
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda kv: put(client, *kv), ODD.items()))
        # The seeding went behind the API: moto's own listing shows all of it.
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="many/")
        assert sum(page.get("KeyCount", 0) for page in pages) == MANY
        yield m


def put(client, key: str, data: bytes) -> None:  # type: ignore[no-untyped-def]
    if "\n" not in key:
        client.put_object(Bucket=BUCKET, Key=key, Body=data)
        return
    # moto's router answers 404 to a PUT whose path holds %0A; a POST upload carries the key in its form.
    post = client.generate_presigned_post(Bucket=BUCKET, Key=key)
    requests.post(post["url"], data=post["fields"], files={"file": data}, timeout=60).raise_for_status()


@pytest.fixture(scope="module")
def mnt(moto: MotoS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VfsMount]:
    tmp = tmp_path_factory.mktemp("odd")
    with vfs_mount(tmp, {"mount": [{"path": "/s3", **moto.options(bucket=BUCKET)}]}) as m:
        yield m
    assert "Traceback" not in m.log_text()


def find(root: Path) -> tuple[set[str], str]:
    """Paths below `root` as `find` prints them (NUL-separated, so newlines survive), and its stderr."""
    done = subprocess.run(["find", str(root), "-print0"], capture_output=True, timeout=300)
    paths = {os.fsdecode(p)[len(str(root)):] for p in done.stdout.split(b"\0") if p}
    return paths - {""}, done.stderr.decode(errors="replace") + ("" if done.returncode == 0 else f" (exit {done.returncode})")


def test_odd_names_are_listed_by_the_readme_rules(mnt: VfsMount) -> None:
    odd = mnt.path / "s3/odd"
    assert set(os.listdir(odd)) == SHOWN
    # moto's router answers 404 to a GET whose path holds %0A (real S3 serves it): listed and stat'ed only.
    assert stat.S_ISREG(os.stat(odd / "new\nline.txt").st_mode) and os.stat(odd / "new\nline.txt").st_size == 8
    assert read_file(odd / "tab\there.txt") == b"tab\n"
    assert read_file(odd / "back\\slash.txt") == b"backslash\n"
    assert read_file(odd / "sp ace & ünïcode.txt") == b"unicode\n"
    assert read_file(odd / "plain.txt") == b"plain\n"


def test_a_trailing_slash_object_holding_data_is_a_directory(mnt: VfsMount) -> None:
    odd = mnt.path / "s3/odd"
    assert stat.S_ISDIR(os.stat(odd / "full").st_mode) and os.listdir(odd / "full") == ["inside.txt"]
    assert stat.S_ISDIR(os.stat(odd / "data").st_mode) and os.listdir(odd / "data") == []
    assert read_file(odd / "full/inside.txt") == b"inside\n"


def test_a_name_over_255_bytes_is_neither_listed_nor_found(mnt: VfsMount) -> None:
    with pytest.raises(FileNotFoundError):  # FUSE passes names up to 1024 bytes to vfs, which has none this long
        os.stat(mnt.path / "s3/odd" / LONG)


def test_a_directory_holding_only_an_empty_segment_key_opens_as_listed(mnt: VfsMount) -> None:
    e = mnt.path / "s3/odd/e"
    assert stat.S_ISDIR(os.stat(e).st_mode)
    assert os.listdir(e) == []


def test_ls_find_and_stat_agree(mnt: VfsMount) -> None:
    root = mnt.path / "s3"
    walked: dict[str, bool] = {}
    errors: list[str] = []
    for top, dirs, files in os.walk(root, onerror=lambda e: errors.append(f"{e.filename}: {e.strerror}")):
        rel = top[len(str(root)):]
        for name in dirs + files:
            walked[f"{rel}/{name}"] = name in dirs
    found, stderr = find(root)
    assert set(walked) == found
    for path, is_dir in walked.items():
        if path.startswith("/many/"):
            continue  # stat'ed in bulk below
        assert stat.S_ISDIR(os.lstat(f"{root}{path}").st_mode) == is_dir, path
    assert not errors and not stderr, (errors, stderr)
    assert "/" + DEEP in found and read_file(root / DEEP) == b"fifty levels down\n"
    assert not any(p.endswith(("/.", "/..", "/dot.txt", "/dotdot.txt", ".txt/")) for p in found)


def test_a_prefix_of_many_keys(mnt: VfsMount) -> None:
    many = mnt.path / "s3/many"
    expected = [f"k{i:05d}" for i in range(MANY)]
    names = os.listdir(many)
    assert len(names) == MANY and sorted(names) == expected
    done = subprocess.run(["ls", "-l", str(many)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stderr == "" and len(done.stdout.splitlines()) == MANY + 1
    found, stderr = find(many)
    assert not stderr and found == {f"/{n}" for n in expected}
    for i in (0, 1, MANY // 2, MANY - 1, *random.Random(20_000).sample(range(MANY), 20)):
        st = os.stat(many / f"k{i:05d}")
        assert stat.S_ISREG(st.st_mode) and st.st_size == len(b"%d" % i)
        assert read_file(many / f"k{i:05d}") == b"%d" % i
    assert os.listdir(many) == names  # a second listing: the same names in the same order
