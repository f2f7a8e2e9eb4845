"""Staging: the local copies of files being written, and the journal of those waiting for their silo.

A file written through vfs lives, until its commit, in a staging file: a whole-file copy on local disk
(sparse where the writer left holes) in a directory of mode 0700, one per mountpoint. Every
descriptor of the file reads and writes that copy, so `stat` and reads see a write as soon as
`write()` returns. Staged files are pinned: nothing evicts them; the only ways out are a commit to
the silo, an unlink, or (write mode `cache`) a user's `rm`.

On disk, per staged file `<id>`:
- `<id>.data`: the bytes;
- `<id>.json`: the journal record, written once `close()` or `fsync()` accepted the bytes (data file
  fsynced first, then the record written under a temporary name, fsynced, renamed, and the directory
  fsynced): which mount, path, silo version the commit replaces (`base`), mtime, write mode. A record
  on disk means "these bytes must reach the silo" (or, mode `cache`, "keep them"); a data file with no
  record holds bytes no close accepted, and is dropped at the next start.

Budget: the data files' sizes (their apparent sizes, holes included) stay under `staging_size`.
A writer that would pass it waits for commits to free room, or gets ENOSPC when nothing will
(mode `cache`, or nothing pending): never a silent drop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any, Iterator

import trio

from vfs.uploads import UploadLedger

log = logging.getLogger(__name__)

RECORD_VERSION = 1


@dataclasses.dataclass(eq=False)
class StagedFile:
    """One file being written: its local copy and what its commit needs."""

    id: str
    mount: str
    """The mount's path in the tree (the mount table finds its backend)."""
    path: str
    """The path inside the mount's backend."""
    base: str | None
    """The silo version the commit replaces; None: the file is new (create only)."""
    mode: str
    """The mount's write mode when the file was staged: through, back or cache."""
    size: int = 0
    mtime_ns: int = dataclasses.field(default_factory=time.time_ns)
    fd: int = -1
    generation: int = 0
    """Changes made so far; a commit that read generation g leaves the file pending if it moved on."""
    accepted: int = -1
    """The generation a close() or fsync() accepted (journal record written); -1: none yet."""
    committed: int = -1
    """The generation the silo holds (mode cache: never)."""
    uploading: bool = False
    io_lock: trio.Lock = dataclasses.field(default_factory=trio.Lock, repr=False)
    """Held by reads, writes and truncates of the data file, and while a copy replaces it."""
    writers: int = 0
    """Writes and truncates under way: a commit that ends meanwhile must not drop the file."""
    record_lock: trio.Lock = dataclasses.field(default_factory=trio.Lock, repr=False)
    """One journal record write of this file at a time (close, fsync and commits race otherwise)."""
    unlinked: bool = False
    """Removed from the tree while the kernel may still read it through an open descriptor."""
    due: float = 0.0
    """Mode back: when the commit may start (trio clock)."""
    failures: int = 0

    @property
    def pending(self) -> bool:
        """Bytes accepted by a close or fsync that the silo does not hold yet."""
        return self.accepted > self.committed and self.mode != "cache" and not self.unlinked

    @property
    def clean(self) -> bool:
        """Nothing changed since the silo (or, mode cache, the journal) got it."""
        return self.generation == (self.accepted if self.mode == "cache" else self.committed)

    @property
    def idle(self) -> bool:
        """Clean and nobody changing it: a commit may drop it."""
        return self.clean and not self.writers

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        self.writers += 1
        try:
            yield
        finally:
            self.writers -= 1

    @property
    def version(self) -> str:
        """A version for the core's metadata: changes whenever the bytes may have."""
        return f"staged:{self.id}:{self.generation}"


class StagingArea:
    def __init__(self, directory: str, budget: int) -> None:
        self.dir = Path(directory)
        self.budget = budget
        self.used = 0
        self.files: dict[tuple[str, str], StagedFile] = {}
        """Staged files in the tree, by (mount, path). Unlinked ones are kept by their inode only."""
        self._room = trio.Condition()
        self._readers: dict[str, int] = {}
        """Data files (by id) that commits are reading, and how many."""
        self._retired: dict[str, int] = {}
        """Data files a copy replaced (`_own_copy`) while commits still read them: id -> size."""
        self._create_dir()
        self.uploads = UploadLedger(self.dir / "uploads")
        """Multipart uploads started and not finished (vfs/uploads.py), aborted after a crash."""

    def _create_dir(self) -> None:
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.dir, 0o700)
        except OSError as exc:
            raise OSError(exc.errno, f"staging directory {self.dir}: {exc.strerror}") from None

    # --- paths ------------------------------------------------------------------------------------

    def data_path(self, sf: StagedFile) -> str:
        return str(self.dir / f"{sf.id}.data")

    def _record_path(self, sf: StagedFile) -> Path:
        return self.dir / f"{sf.id}.json"

    # --- life of a staged file --------------------------------------------------------------------

    def get(self, mount: str, path: str) -> StagedFile | None:
        return self.files.get((mount, path))

    def under(self, mount: str, directory: str) -> Iterator[StagedFile]:
        """Staged files directly in `directory` of a mount."""
        for (m, path), sf in self.files.items():
            if m == mount and path.rpartition("/")[0] == directory:
                yield sf

    def any_below(self, mount: str, directory: str) -> bool:
        prefix = directory + "/" if directory else ""
        return any(m == mount and p.startswith(prefix) for m, p in self.files)

    def create(self, mount: str, path: str, base: str | None, mode: str, size: int = 0) -> StagedFile:
        """A new, empty staging file (filled by the caller), registered at (mount, path)."""
        sf = StagedFile(secrets.token_hex(8), mount, path, base, mode)
        sf.fd = os.open(self.data_path(sf), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        log.debug("staging: %s for %s%s (base %s)", sf.id, mount, path, base)
        self.files[(mount, path)] = sf
        return sf

    def move(self, sf: StagedFile, mount: str, path: str, base: str | None) -> None:
        """A rename in the tree: the staged file now commits to `path`, replacing version `base`."""
        if self.files.get((sf.mount, sf.path)) is sf:
            del self.files[(sf.mount, sf.path)]
        sf.mount, sf.path, sf.base = mount, path, base
        self.files[(mount, path)] = sf

    def detach(self, sf: StagedFile) -> None:
        """Out of the tree (unlinked or replaced); its bytes stay readable until `drop`."""
        if self.files.get((sf.mount, sf.path)) is sf:
            del self.files[(sf.mount, sf.path)]
        sf.unlinked = True

    async def drop(self, sf: StagedFile) -> None:
        """Delete the staging file and its record, and give its room back."""
        self.detach(sf)
        fd, sf.fd = sf.fd, -1
        # Shielded: an unmount cancels the commit that drops it once nothing is pending any more.
        with trio.CancelScope(shield=True):
            # After the reads and writes under way (they use the descriptor) and a record write
            # under way (it would bring <id>.json back).
            async with sf.io_lock, sf.record_lock:
                await trio.to_thread.run_sync(self._remove, sf, fd)
        self.used -= sf.size
        async with self._room:
            self._room.notify_all()

    def _remove(self, sf: StagedFile, fd: int) -> None:
        log.debug("staging: %s dropped", sf.id)
        if fd >= 0:
            os.close(fd)
        for p in (Path(self.data_path(sf)), self._record_path(sf)):
            p.unlink(missing_ok=True)

    # --- bytes --------------------------------------------------------------------------------------

    async def reserve(self, sf: StagedFile, new_size: int, can_wait: bool) -> None:
        """Account for `sf` growing to `new_size`; wait for room if others' commits will free some."""
        await self._take(new_size - sf.size, can_wait)

    async def _take(self, grow: int, can_wait: bool) -> None:
        if grow <= 0:
            return
        while self.used + grow > self.budget:
            if not can_wait or not any(f.pending for f in self.files.values()):
                raise OSError(errno.ENOSPC, f"staging area full ({self.used} of {self.budget} bytes used)")
            async with self._room:
                await self._room.wait()
        self.used += grow

    async def write(self, sf: StagedFile, offset: int, data: bytes, can_wait: bool) -> None:
        await self.reserve(sf, offset + len(data), can_wait)
        async with sf.io_lock:
            await self._own_copy(sf)
            await trio.to_thread.run_sync(os.pwrite, sf.fd, data, offset)
        sf.size = max(sf.size, offset + len(data))
        self.changed(sf)

    async def truncate(self, sf: StagedFile, size: int, can_wait: bool) -> None:
        await self.reserve(sf, size, can_wait)
        async with sf.io_lock:
            await self._own_copy(sf)
            await trio.to_thread.run_sync(os.ftruncate, sf.fd, size)
        self.used -= max(0, sf.size - size)
        sf.size = size
        self.changed(sf)

    async def read(self, sf: StagedFile, offset: int, size: int) -> bytes | None:
        """Bytes of the staged copy; None if it was dropped meanwhile (committed: the silo has them)."""
        async with sf.io_lock:  # not while a copy replaces the data file, nor a drop closes it
            if sf.fd < 0:
                return None
            return await trio.to_thread.run_sync(os.pread, sf.fd, min(size, max(0, sf.size - offset)), offset)

    def changed(self, sf: StagedFile) -> None:
        sf.generation += 1
        sf.mtime_ns = time.time_ns()

    def reading(self, sf: StagedFile) -> str:
        """A commit starts reading `sf`'s data file; its id, for `done_reading`."""
        self._readers[sf.id] = self._readers.get(sf.id, 0) + 1
        return sf.id

    def shared(self, sf: StagedFile) -> bool:
        """Whether a commit reads `sf`'s data file (a change must go to a copy: `_own_copy`)."""
        return self._readers.get(sf.id, 0) > 0

    async def done_reading(self, data_id: str) -> None:
        """A commit stopped reading data file `data_id`; the last reader of a replaced file deletes it."""
        left = self._readers[data_id] - 1
        if left:
            self._readers[data_id] = left
            return
        del self._readers[data_id]
        size = self._retired.pop(data_id, None)
        if size is not None:
            await self.forget_data(str(self.dir / f"{data_id}.data"), size)

    async def _own_copy(self, sf: StagedFile) -> None:
        """Before a change (under `sf.io_lock`): if a commit reads the data file, give `sf` a copy of
        its own (copy on write), once per commit; the commits still reading the old file delete it
        when the last one ends. No write is under way meanwhile: they all hold the lock."""
        if not self.shared(sf):
            return
        old, size = self.data_path(sf), sf.size
        sf_id = secrets.token_hex(8)
        new = str(self.dir / f"{sf_id}.data")

        def copy() -> int:
            fd = os.open(new, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            with open(old, "rb") as src:
                while chunk := src.read(1 << 20):
                    os.write(fd, chunk)
            os.fsync(fd)  # the journal record moves to this copy: accepted bytes stay durable
            return fd

        await self._take(size, can_wait=True)  # both copies count until the commits end
        fd = await trio.to_thread.run_sync(copy)
        async with sf.record_lock:  # an accept (fsync of the descriptor) or a record write is not under way
            record = self._record_path(sf)
            log.debug("staging: %s copied to %s (a commit reads it)", sf.id, sf_id)
            old_id, old_fd, sf.fd, sf.id = sf.id, sf.fd, fd, sf_id
            readers = self._readers.get(old_id, 0)  # decided at the swap: no await since
            if readers:
                self._retired[old_id] = size
            if record.exists():  # the accepted bytes are in the new file too
                await trio.to_thread.run_sync(self._write_record, sf)
                record.unlink(missing_ok=True)
            await trio.to_thread.run_sync(os.close, old_fd)
        if not readers:
            await self.forget_data(old, size)

    async def forget_data(self, path: str, size: int) -> None:
        """Delete a data file `_own_copy` replaced, once no commit reads it."""
        log.debug("staging: %s forgotten", path)
        await trio.to_thread.run_sync(lambda: Path(path).unlink(missing_ok=True))
        self.used -= size
        async with self._room:
            self._room.notify_all()

    # --- the journal --------------------------------------------------------------------------------

    async def accept(self, sf: StagedFile) -> None:
        """What close() or fsync() accepts: the bytes on disk and a journal record saying where they go."""
        if sf.accepted == sf.generation:
            return
        generation = sf.generation
        async with sf.record_lock:  # its descriptor stays open meanwhile (drop and copies wait)
            if sf.fd < 0:
                return  # dropped: a commit took the file whole, nothing is left to accept
            await trio.to_thread.run_sync(os.fsync, sf.fd)
            await trio.to_thread.run_sync(self._write_record, sf)
        sf.accepted = max(sf.accepted, generation)

    def _record(self, sf: StagedFile) -> dict[str, Any]:
        return {"v": RECORD_VERSION, "mount": sf.mount, "path": sf.path, "base": sf.base, "mode": sf.mode,
                "size": sf.size, "mtime_ns": sf.mtime_ns}

    async def _save_record(self, sf: StagedFile) -> None:
        async with sf.record_lock:
            if sf.fd >= 0:  # not dropped meanwhile
                await trio.to_thread.run_sync(self._write_record, sf)

    def _write_record(self, sf: StagedFile) -> None:
        final = self._record_path(sf)
        tmp = final.with_suffix(".json.tmp")
        with open(tmp, "w") as f:
            json.dump(self._record(sf), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        dfd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    async def rewrite_record(self, sf: StagedFile) -> None:
        """After a rename or a change of base: the record on disk follows, if there is one."""
        if sf.accepted >= 0 and not sf.unlinked:
            await self._save_record(sf)

    def recover(self) -> tuple[list[StagedFile], list[str]]:
        """Staged files whose records survived a stop or a crash, and the data files no close accepted
        (removed here). Blocking: called once, before the mount serves."""
        found, dropped = [], []
        for p in sorted(self.dir.glob("*.json.tmp")):
            p.unlink(missing_ok=True)
        records = {p.stem: p for p in self.dir.glob("*.json")}
        for data in sorted(self.dir.glob("*.data")):
            record = records.pop(data.stem, None)
            if record is None:
                dropped.append(str(data))
                data.unlink(missing_ok=True)
                continue
            try:
                r = json.loads(record.read_text())
                sf = StagedFile(data.stem, r["mount"], r["path"], r["base"], r["mode"], size=data.stat().st_size,
                                mtime_ns=r["mtime_ns"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("staging: unreadable journal record %s (%s): its bytes stay in %s", record, exc, data)
                continue
            sf.fd = os.open(data, os.O_RDWR)
            sf.generation = sf.accepted = 1
            self.files[(sf.mount, sf.path)] = sf
            self.used += sf.size
            found.append(sf)
        for stray in records.values():
            log.warning("staging: journal record %s has no data file; removed", stray)
            stray.unlink(missing_ok=True)
        return found, dropped

    def close(self) -> None:
        for sf in self.files.values():
            if sf.fd >= 0:
                os.close(sf.fd)
                sf.fd = -1
