"""fstab: vfs as a mount helper (vfs/fstab.py), called the way mount.fuse3 and mount(8) call it.

mount.fuse3 runs `vfs SOURCE MOUNTPOINT -o OPTS` from PATH; mount(8) drops PATH, so /bin/sh finds
`vfs` only in its default PATH. The mount(8) test binds a directory holding `vfs` over /usr/local/bin
in a private mount namespace of its own (root only) and mounts an fstab line with `mount -T FSTAB`.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import tomli_w

from tests.kernel import EXIT_TIMEOUT, errno_of, fuse_available, unmount, wait_until
from vfs import fstab
from vfs.app import mounted_at

VFS = Path(sys.executable).parent / "vfs"
MOUNT_FUSE3 = shutil.which("mount.fuse3") or "/sbin/mount.fuse3"
# What an fstab line's options become on the way: mount(8) passes them with rw first, mount.fuse3
# drops _netdev, nofail, noauto, user(s) and appends dev,suid as root.
SYSTEMD_OPTS = "_netdev,nofail,x-systemd.automount,x-systemd.idle-timeout=60,noauto,user,users,defaults,exec"


def test_translate_mount_fuse3_call(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("")
    argv = [str(cfg), "/mnt/data", "-o", "x-systemd.automount,rw,dev,suid,ro,write_mode=back,log_file=/tmp/l,dev,suid"]
    assert fstab.is_helper_call(argv)
    assert fstab.translate(argv) == ["mount", "/mnt/data", "--config", str(cfg), "--write-mode", "back",
                                     "--log-file", "/tmp/l", "--read-only"]


def test_translate_mount8_call_with_one_liner_source() -> None:
    argv = ["s3://bucket/prefix=/s3", "/mnt/data", "-o", "ro,_netdev,nofail,allow_other,user=me,rw", "-t", "fuse.vfs", "-n"]
    assert fstab.translate(argv) == ["mount", "/mnt/data", "s3://bucket/prefix=/s3", "--allow-other"]
    assert fstab.translate([*argv, "-f"]) is None


def test_a_missing_config_is_named_as_one() -> None:
    assert fstab.translate(["/nowhere/data.toml", "/mnt/data"]) == ["mount", "/mnt/data", "--config", "/nowhere/data.toml"]


def test_subcommands_are_not_helper_calls() -> None:
    assert not fstab.is_helper_call(["mount", "/mnt/x", "s3://b=/s3"])
    assert not fstab.is_helper_call(["--help"])
    assert not fstab.is_helper_call(["/only-a-source"])


@pytest.mark.parametrize("opts, named", [("bogus", "bogus"), ("_netdev,cache=yes", "cache=yes"),
                                         ("write_mode", "write_mode")])
def test_translate_refuses_unknown_options(opts: str, named: str) -> None:
    with pytest.raises(fstab.BadOptions, match=re.escape(named)):
        fstab.translate(["/etc/vfs.toml", "/mnt/data", "-o", opts])


# ---- through the real helpers --------------------------------------------------------------------

@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A local silo with one file and a config serving it at /d, with a small RAM tier and no SSD."""
    reason = fuse_available()
    if reason:
        pytest.skip(reason)
    if not os.path.exists(MOUNT_FUSE3):
        pytest.skip("mount.fuse3 is not installed (apt-get install fuse3)")
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_bytes(b"hello fstab\n")
    (tmp_path / "c.toml").write_text(tomli_w.dumps({
        "cache": {"ram_size": "16MiB", "ssd_size": 0},
        "write": {"staging_dir": str(tmp_path / "staging")},
        "mount": [{"path": "/d", "backend": "local", "root": str(data)}],
    }))
    (tmp_path / "mnt").mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "vfs").symlink_to(VFS)
    return tmp_path


def _daemon_pid(stdout: str) -> int:
    found = re.search(r"\(pid (\d+),", stdout)
    assert found, stdout
    return int(found.group(1))


def _stop(mountpoint: Path, pid: int | None) -> None:
    """Unmount and wait (bounded) for the background daemon to end; kill it if it does not."""
    unmount(mountpoint)
    if pid is None:
        return
    try:
        wait_until(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), EXIT_TIMEOUT, "the vfs daemon to exit")
    except TimeoutError:
        os.kill(pid, signal.SIGKILL)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


@pytest.fixture
def helper_mount(tree: Path) -> Iterator[tuple[Path, subprocess.CompletedProcess, int]]:
    """`mount.fuse3 CONFIG MOUNTPOINT -t vfs -o ...`, as mount(8) calls it for type fuse.vfs."""
    env = {**os.environ, "PATH": f"{tree / 'bin'}:{os.environ['PATH']}"}
    opts = f"{SYSTEMD_OPTS},rw,ro,log_file={tree / 'vfs.log'}"
    done = subprocess.run([MOUNT_FUSE3, str(tree / "c.toml"), str(tree / "mnt"), "-t", "vfs", "-o", opts],
                          env=env, capture_output=True, text=True, timeout=120, cwd="/")
    pid = _daemon_pid(done.stdout) if done.returncode == 0 else None
    try:
        yield tree, done, pid
    finally:
        _stop(tree / "mnt", pid)


@pytest.mark.kernel
def test_mount_fuse3_mounts_with_fstab_options(helper_mount: tuple[Path, subprocess.CompletedProcess, int]) -> None:
    tree, done, pid = helper_mount
    assert done.returncode == 0, done.stderr
    assert mounted_at(str(tree / "mnt")) == "fuse.vfs"  # up when the helper returned: mount(8) waits for it
    assert (tree / "mnt" / "d" / "a.txt").read_bytes() == b"hello fstab\n"
    assert errno_of(os.open, str(tree / "mnt" / "d" / "new.txt"), os.O_CREAT | os.O_WRONLY) == errno.EROFS  # ro
    assert not (tree / "data" / "new.txt").exists()
    assert "--read-only" in Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    assert (tree / "vfs.log").stat().st_size > 0  # log_file= passed through
    assert os.getsid(pid) == pid  # daemonized: a session of its own, not the helper's


@pytest.mark.kernel
def test_mount_fuse3_one_liner_source_and_bad_option(tree: Path) -> None:
    env = {**os.environ, "PATH": f"{tree / 'bin'}:{os.environ['PATH']}"}
    mnt = tree / "mnt"
    bad = subprocess.run([MOUNT_FUSE3, str(tree / "data"), str(mnt), "-t", "vfs", "-o", "_netdev,cache=yes"],
                         env=env, capture_output=True, text=True, timeout=120, cwd="/")
    assert bad.returncode != 0
    assert len(bad.stderr.strip().splitlines()) == 1 and "cache=yes" in bad.stderr, bad.stderr
    assert mounted_at(str(mnt)) is None
    done = subprocess.run([MOUNT_FUSE3, f"{tree / 'data'}=/local", str(mnt), "-t", "vfs", "-o",
                           f"nofail,log_file={tree / 'one.log'}"],
                          env=env, capture_output=True, text=True, timeout=120, cwd="/")
    pid = _daemon_pid(done.stdout) if done.returncode == 0 else None
    try:
        assert done.returncode == 0, done.stderr
        assert (mnt / "local" / "a.txt").read_bytes() == b"hello fstab\n"
    finally:
        _stop(mnt, pid)


@pytest.mark.kernel
def test_mount_reads_an_fstab_line(tree: Path) -> None:
    """`mount -T FSTAB MOUNTPOINT` (what `mount /mnt/data` does with /etc/fstab), in a private mount
    namespace whose /usr/local/bin holds `vfs`: the mount, its checks and its unmount all happen there."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1): mount(8) finds `vfs` only in /bin/sh's default PATH")
    mnt = tree / "mnt"
    (tree / "fstab").write_text(
        f"{tree / 'c.toml'} {mnt} fuse.vfs {SYSTEMD_OPTS},write_mode=off,log_file={tree / 'fs.log'} 0 0\n")
    script = f"""
set -u
mount --bind {tree / 'bin'} /usr/local/bin || exit 90
trap 'fusermount3 -u -z {mnt} 2>/dev/null' EXIT
mount -T {tree / 'fstab'} {mnt} || exit 91
grep -c ' {mnt} fuse.vfs ' /proc/self/mounts
cat {mnt}/d/a.txt
if touch {mnt}/d/new.txt 2>&1; then echo WROTE; fi
"""
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=180, cwd="/")
    pid = int(m.group(1)) if (m := re.search(r"\(pid (\d+),", done.stdout)) else None
    try:
        assert done.returncode == 0, done.stdout + done.stderr
        lines = done.stdout.splitlines()
        assert lines[0].startswith(f"mounted {mnt} (pid "), lines
        assert lines[1:3] == ["1", "hello fstab"], lines
        assert "Read-only file system" in lines[3] and "WROTE" not in done.stdout, lines  # write_mode=off
        assert not (tree / "data" / "new.txt").exists()
        assert mounted_at(str(mnt)) is None  # the mount lived in the namespace only
    finally:
        if pid is not None:  # the trap unmounted; the daemon then ends on its own
            _stop(mnt, pid)


def test_an_automount_trigger_at_the_mountpoint_is_mounted_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """x-systemd.automount leaves an autofs trigger at the mountpoint, and the helper's mount goes on top
    of it. This kernel has no autofs (the container cannot load it), so mountinfo is faked here: the
    check accepts the trigger and never statfs()es it (a statfs would trigger the automount, which waits
    for the very mount the helper is doing); any other filesystem there is still refused."""
    from vfs import app

    def no_statfs(path: str) -> None:
        raise AssertionError(f"statfs of {path} would trigger the automount")

    monkeypatch.setattr(app.os, "statvfs", no_statfs)
    monkeypatch.setattr(app, "mounted_at", lambda path: "autofs")
    app.check_mountpoint(str(tmp_path))
    monkeypatch.setattr(app, "mounted_at", lambda path: "fuse.vfs")
    with pytest.raises(AssertionError):  # another filesystem is checked with a statfs, then refused
        app.check_mountpoint(str(tmp_path))
    monkeypatch.setattr(app.os, "statvfs", lambda path: None)
    with pytest.raises(app.MountError, match="already mounted"):
        app.check_mountpoint(str(tmp_path))
