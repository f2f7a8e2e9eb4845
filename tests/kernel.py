"""Mounting the real filesystem through /dev/fuse for a test, and always unmounting it.

`vfs_mount(tmp, config)` writes the config as TOML, runs `python -m vfs mount --foreground` in a
child process, waits (bounded) until the kernel shows the mount, and in teardown sends SIGTERM and
falls back to `fusermount3 -u -z`, also when the test failed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import tomli_w

from vfs.app import mounted_at

# Bounded waits. A mount of a local moto server comes up in ~1 s; the margin is for a loaded CI box.
MOUNT_TIMEOUT = 60.0
EXIT_TIMEOUT = 30.0


@dataclasses.dataclass
class VfsMount:
    path: Path
    proc: subprocess.Popen
    log: Path
    config: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.proc.poll() is None


def unmount(path: Path | str) -> None:
    if mounted_at(str(path)) is not None:
        subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"gave up after {timeout}s waiting for {what}")


def start_mount(tmp: Path, config: dict[str, Any], name: str = "mnt", extra_args: list[str] = ()) -> VfsMount:
    mountpoint = tmp / name
    mountpoint.mkdir(exist_ok=True)
    cfg = tmp / f"{name}.toml"
    # Read-only unless the test asks for writes; a test's staged files stay in its own directory.
    write = {"mode": "off", **config.get("write", {})}
    write.setdefault("staging_dir", str(tmp / f"{name}-staging"))
    cfg.write_text(tomli_w.dumps({**config, "write": write}))
    log = tmp / f"{name}.log"
    argv = [sys.executable, "-m", "vfs", "mount", str(mountpoint), "--config", str(cfg), "--foreground",
            "--log-level", "debug", "--log-file", str(log), *extra_args]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            cwd=Path(__file__).parent.parent)
    m = VfsMount(mountpoint, proc, log, cfg)
    try:
        wait_until(lambda: mounted_at(str(mountpoint)) == "fuse.vfs" or proc.poll() is not None, MOUNT_TIMEOUT, "the mount")
    except TimeoutError:
        stop_mount(m)
        raise
    if proc.poll() is not None:
        out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        raise RuntimeError(f"vfs exited with {proc.returncode}:\n{out}\n{m.log_text()[-3000:]}")
    return m


def stop_mount(m: VfsMount) -> None:
    if m.proc.poll() is None:
        m.proc.send_signal(signal.SIGTERM)
        try:
            m.proc.wait(EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            m.proc.kill()
            m.proc.wait(EXIT_TIMEOUT)
    unmount(m.path)
    if m.proc.stdout:
        m.proc.stdout.close()


@contextlib.contextmanager
def vfs_mount(tmp: Path, config: dict[str, Any], name: str = "mnt", extra_args: list[str] = ()) -> Iterator[VfsMount]:
    m = start_mount(tmp, config, name, list(extra_args))
    try:
        yield m
    finally:
        stop_mount(m)


def errno_of(fn: Any, *args: Any) -> int | None:
    """The errno `fn(*args)` fails with, or None if it succeeds."""
    try:
        fn(*args)
    except OSError as exc:
        return exc.errno
    return None


def read_file(path: Path | str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def fuse_available() -> str | None:
    """Why a kernel mount cannot work here, or None."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist"
    if not any(Path(p, "fusermount3").exists() for p in os.environ.get("PATH", "").split(":")):
        return "fusermount3 is not installed (apt-get install fuse3)"
    return None
