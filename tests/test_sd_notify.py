"""systemd readiness (vfs/sd_notify.py): a datagram socket of the test's own as NOTIFY_SOCKET (a
path, and an abstract `@` socket); through a real mount, READY=1 arrives only once the mount
answers, with a STATUS line naming the silo, WATCHDOG=1 at half of WATCHDOG_USEC, and STOPPING=1 on
SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest

from tests.kernel import EXIT_TIMEOUT, start_mount, stop_mount
from tests.silos.local import write_tree
from vfs.app import mounted_at
from vfs.sd_notify import Notifier


def listener(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(EXIT_TIMEOUT)
    return sock


def messages_until(sock: socket.socket, line: str) -> list[str]:
    """Every datagram received up to and including the first holding `line`."""
    got: list[str] = []
    while not got or line not in got[-1].splitlines():
        got.append(sock.recv(4096).decode())
    return got


def test_notifier_sends_to_a_path_and_to_an_abstract_socket(tmp_path: Path) -> None:
    for name, address in (("path", str(tmp_path / "notify")), ("abstract", f"\0vfs-test-{os.getpid()}")):
        with listener(address) as sock:
            shown = "@" + address[1:] if address.startswith("\0") else address
            n = Notifier({"NOTIFY_SOCKET": shown, "WATCHDOG_USEC": "3000000"})
            n.ready("serving")
            n.stopping("bye")
            n.stopping("twice")  # sent once only
            n.extend_timeout(60, "draining")
            n.close()
            assert sock.recv(4096) == b"READY=1\nSTATUS=serving", name
            assert sock.recv(4096) == b"STOPPING=1\nSTATUS=bye", name
            assert sock.recv(4096) == b"EXTEND_TIMEOUT_USEC=60000000\nSTATUS=draining", name
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(4096)
            assert n.watchdog_interval == 1.5


def test_without_a_socket_nothing_is_sent_and_a_foreign_watchdog_is_ignored() -> None:
    assert not Notifier({}).enabled and Notifier({}).send("READY=1") is False
    other = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier(other).watchdog_interval is None


@pytest.mark.kernel
def test_ready_after_the_mount_answers_then_watchdog_and_stopping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_tree(tmp_path / "silo", {"f.txt": b"hello\n"}, [])
    address = str(tmp_path / "notify")
    with listener(address) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        monkeypatch.setenv("WATCHDOG_USEC", "400000")
        m = start_mount(tmp_path, {"mount": [{"path": "/data", "backend": "local", "root": str(tmp_path / "silo")}]})
        try:
            got = messages_until(sock, "READY=1")
            # When READY=1 was sent the mount answered: the kernel shows it, and it serves the tree.
            assert mounted_at(str(m.path)) == "fuse.vfs"
            assert os.listdir(m.path) == ["data"] and (m.path / "data/f.txt").read_bytes() == b"hello\n"
            assert len(got) == 1, got  # nothing before it
            ready = got[0].splitlines()
            assert ready[0] == "READY=1" and ready[1] == f"STATUS=serving 1 silo(s): /data <- {tmp_path / 'silo'}", ready
            assert messages_until(sock, "WATCHDOG=1")[-1] == "WATCHDOG=1"
            m.proc.send_signal(signal.SIGTERM)
            stopping = messages_until(sock, "STOPPING=1")[-1].splitlines()
            assert stopping == ["STOPPING=1", "STATUS=SIGTERM: unmounting"], stopping
            m.proc.wait(EXIT_TIMEOUT)
            assert m.proc.returncode == 0
        finally:
            stop_mount(m)
