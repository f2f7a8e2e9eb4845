"""Everyday tools writing into an S3 mount (moto), in modes through and back, their results checked
through the mount AND on the silo behind it: cp -r, rsync -a (run twice: the second copies nothing
new), tar x, git clone of a local repository then a clean git status.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Iterator

import pytest

from tests.kernel import VfsMount, fuse_available, vfs_mount, wait_until
from tests.silos.s3 import MotoS3, moto_server

pytestmark = [pytest.mark.kernel, pytest.mark.skipif(fuse_available() is not None, reason=str(fuse_available()))]

BUCKET = "tools"


def tree(root: Path) -> dict[str, bytes]:
    rnd = random.Random(3)
    files = {f"a/f{i}.txt": f"file {i}\n".encode() * (i + 1) for i in range(12)}
    files |= {"a/b/c/deep.bin": rnd.randbytes(300_000), "top.txt": b"top\n", "a/empty": b""}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def read_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    with moto_server(tmp_path_factory.mktemp("moto")) as m:
        m.client().create_bucket(Bucket=BUCKET)
        yield m


@pytest.fixture(scope="module", params=["through", "back"])
def mnt(request: pytest.FixtureRequest, moto: MotoS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[VfsMount, str]]:
    tmp = tmp_path_factory.mktemp(f"tools-{request.param}")
    cfg = {"write": {"mode": request.param, "write_back_delay": 0.2},
           "mount": [{"path": "/s3", **moto.options(bucket=BUCKET, prefix=request.param)}]}
    with vfs_mount(tmp, cfg) as m:
        yield m, request.param


def on_silo(moto: MotoS3, prefix: str) -> dict[str, bytes]:
    c = moto.client()
    out = {}
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
        for o in page.get("Contents", []):
            if not o["Key"].endswith("/"):
                out[o["Key"][len(prefix) + 1:]] = c.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
    return out


def settled(moto: MotoS3, prefix: str, expected: dict[str, bytes]) -> None:
    wait_until(lambda: {k: v for k, v in on_silo(moto, prefix).items() if k in expected} == expected, 60,
               f"{prefix} on the silo")


def test_cp_r(mnt: tuple[VfsMount, str], moto: MotoS3, tmp_path: Path) -> None:
    m, mode = mnt
    files = tree(tmp_path / "src")
    subprocess.run(["cp", "-r", str(tmp_path / "src"), str(m.path / "s3" / "cp")], check=True)
    assert read_tree(m.path / "s3" / "cp") == files
    settled(moto, f"{mode}/cp", files)


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")
def test_rsync_a_twice(mnt: tuple[VfsMount, str], moto: MotoS3, tmp_path: Path) -> None:
    m, mode = mnt
    files = tree(tmp_path / "src")
    dst = m.path / "s3" / "rsync"
    subprocess.run(["rsync", "-a", f"{tmp_path / 'src'}/", f"{dst}/"], check=True, capture_output=True)
    assert read_tree(dst) == files
    settled(moto, f"{mode}/rsync", files)
    again = subprocess.run(["rsync", "-a", "--itemize-changes", f"{tmp_path / 'src'}/", f"{dst}/"], check=True,
                           capture_output=True, text=True)
    assert read_tree(dst) == files, again.stdout


def test_tar_x(mnt: tuple[VfsMount, str], moto: MotoS3, tmp_path: Path) -> None:
    m, mode = mnt
    files = tree(tmp_path / "src")
    with tarfile.open(tmp_path / "t.tar", "w") as t:
        t.add(tmp_path / "src", arcname="tarred")
    subprocess.run(["tar", "xf", str(tmp_path / "t.tar"), "-C", str(m.path / "s3")], check=True)
    assert read_tree(m.path / "s3" / "tarred") == files
    settled(moto, f"{mode}/tarred", files)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_clone_then_clean_status(mnt: tuple[VfsMount, str], tmp_path: Path) -> None:
    m, _ = mnt
    repo = tmp_path / "repo"
    tree(repo)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(tmp_path)}
    for cmd in (["git", "init", "-q"], ["git", "add", "."], ["git", "commit", "-qm", "x"]):
        subprocess.run(cmd, cwd=repo, check=True, env=env)
    clone = m.path / "s3" / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True, env=env, capture_output=True)
    status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, check=True, env=env, capture_output=True, text=True)
    assert status.stdout == ""
    worktree = {k: v for k, v in read_tree(clone).items() if not k.startswith(".git/")}
    assert worktree == {k: v for k, v in read_tree(repo).items() if not k.startswith(".git/")}
