"""The upload ledger: multipart uploads a silo was asked to start and never saw finished.

An object store keeps the parts of an upload that was neither completed nor aborted, invisibly and
billed, until someone aborts it. vfs aborts its own on every failure, but a `kill -9` (or a power cut)
in the middle of a large commit leaves one behind. So a backend notes each upload it starts in the
ledger before sending a part, and removes the note once the upload is completed or aborted; at the
next start the committer aborts every upload still noted (`Committer.abort_orphans`), and keeps the
note of one it could not abort (silo down) for the start after.

On disk: `<staging dir>/uploads/<id>.json`, one small file per upload ({"mount", "key", "upload"}),
fsynced, in the staging area's 0700 directory. The one window left open: a crash between the silo's
answer to "start an upload" and the note reaching the disk.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from pathlib import Path

log = logging.getLogger(__name__)


class UploadLedger:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(mode=0o700, exist_ok=True)

    def started(self, mount: str, key: str, upload: str) -> str:
        """Note an upload (blocking: a worker thread calls it); returns the note's id."""
        note = secrets.token_hex(8)
        tmp = self.dir / f"{note}.tmp"
        with open(tmp, "w") as f:
            json.dump({"mount": mount, "key": key, "upload": upload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / f"{note}.json")
        return note

    def finished(self, note: str) -> None:
        (self.dir / f"{note}.json").unlink(missing_ok=True)

    def notes(self) -> list[tuple[str, dict[str, str]]]:
        """Every upload still noted: (note id, {"mount", "key", "upload"}); unreadable notes are dropped."""
        found = []
        for path in sorted(self.dir.glob("*.tmp")):
            path.unlink(missing_ok=True)
        for path in sorted(self.dir.glob("*.json")):
            try:
                entry = json.loads(path.read_text())
                found.append((path.stem, {k: str(entry[k]) for k in ("mount", "key", "upload")}))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("uploads: unreadable note %s (%s); removed", path, exc)
                path.unlink(missing_ok=True)
        return found

    def view(self, mount: str) -> "MountUploads":
        return MountUploads(self, mount)


class MountUploads:
    """The ledger as one mount's backend sees it (`WritableBackend.uploads`)."""

    def __init__(self, ledger: UploadLedger, mount: str) -> None:
        self.ledger = ledger
        self.mount = mount

    def started(self, key: str, upload: str) -> str:
        return self.ledger.started(self.mount, key, upload)

    def finished(self, note: str) -> None:
        self.ledger.finished(note)
