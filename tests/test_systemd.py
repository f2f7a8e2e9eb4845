"""The user unit template passes `systemd-analyze verify` (as the user manager would load it) with
no warning at all, so a typo in a key cannot slip through."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

UNIT = Path(__file__).parent.parent / "systemd" / "vfs@.service"


def test_user_unit_template_verifies(tmp_path: Path) -> None:
    assert shutil.which("systemd-analyze"), "systemd-analyze is missing (apt-get install systemd)"
    instance = tmp_path / "vfs@demo.service"
    instance.symlink_to(UNIT)
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    done = subprocess.run(["systemd-analyze", "verify", "--user", str(instance)], capture_output=True, text=True,
                          env={"XDG_RUNTIME_DIR": str(runtime), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert "vfs@" not in done.stderr, done.stderr  # no warning about our file


def test_unit_mounts_at_login_and_restarts_on_failure() -> None:
    text = UNIT.read_text()
    assert "WantedBy=default.target" in text and "Restart=on-failure" in text
    assert "vfs mount %h/vfs/%i --config %h/.config/vfs/%i.toml --foreground" in text


def test_unit_waits_for_readiness_and_has_a_watchdog() -> None:
    """vfs sends READY=1 once the mount answers and WATCHDOG=1 every half WatchdogSec (vfs/sd_notify.py)."""
    lines = UNIT.read_text().splitlines()
    assert {"Type=notify", "NotifyAccess=main", "WatchdogSec=60"} <= set(lines)
