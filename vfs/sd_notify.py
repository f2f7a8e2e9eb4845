"""systemd's notify protocol (sd_notify(3)), with no dependency: datagrams to `$NOTIFY_SOCKET`.

A unit with `Type=notify` is started once vfs sends `READY=1` (vfs/app.py sends it once the mount
answers), shows the last `STATUS=` line in `systemctl status`, is told `STOPPING=1` when vfs begins to
unmount (and EXTEND_TIMEOUT_USEC while uploads drain), and with `WatchdogSec=` restarts vfs when no `WATCHDOG=1` came for that long (vfs sends one
every half of it, from the trio thread: a stuck event loop stops them). `$NOTIFY_SOCKET` is a path,
or an abstract socket written with a leading `@`. Without it every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Mapping

log = logging.getLogger(__name__)


def _address(value: str) -> str | None:
    if not value:
        return None
    return "\0" + value[1:] if value.startswith("@") else value


def _watchdog(environ: Mapping[str, str]) -> float | None:
    """Seconds between two WATCHDOG=1 (half of WATCHDOG_USEC), if the watchdog is on for this process."""
    usec, pid = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid.isdigit() and int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6


class Notifier:
    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        self.address = _address(environ.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval = _watchdog(environ) if self.address else None
        """Seconds between two WATCHDOG=1, or None: no watchdog."""
        self._socket: socket.socket | None = None
        self._stopping = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """One datagram of `lines`; False (logged at debug) if there is no socket, or it failed or
        would have waited (the receiver's queue is full)."""
        if self.address is None:
            return False
        try:
            if self._socket is None:  # non-blocking: a full queue must never stall the trio thread
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
            self._socket.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            log.debug("sd_notify %s: %s", lines, exc)
            return False
        return True

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self, status: str) -> None:
        """STOPPING=1, once, however many ways the mount is told to stop."""
        if not self._stopping:
            self._stopping = True
            self.send("STOPPING=1", f"STATUS={status}")

    def extend_timeout(self, seconds: float, status: str) -> None:
        """Ask systemd to wait `seconds` more for the stop (uploads to finish) than TimeoutStopSec."""
        self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}", f"STATUS={status}")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
