"""Commits: staged files to their silos, as each mount's write mode says.

Write modes (Alluxio's, per mount):
- `through`: close() and fsync() commit before they return; a failed commit is their error (and the
  bytes stay staged and journaled, so a later close, fsync or the next mount tries again);
- `back`: close() makes the bytes durable locally (vfs/staging.py's journal) and returns; the commit
  starts `write_back_delay` seconds after the last close (rewrites coalesce), is retried with backoff
  for as long as it takes, and resumes after a crash or a reboot from the journal;
- `cache`: the bytes stay in the staging area, journaled, and are never committed;
- `off`: no writes (EROFS).

Every commit carries the silo's precondition (`WritableBackend.write_file(..., expected)`). A lost
race (ESTALE: someone else changed the file since vfs read it) keeps both versions: the silo keeps
theirs, ours is committed beside it as `<name>.conflict-<UTC time>` (create only), logged once; in
`through` mode the writer also gets ESTALE from close/fsync.

After a commit, the new version's blocks go into the block cache from the staging file (reading it
back costs no GET), the metadata learns the new version, and the staged file is dropped unless it
changed during the commit (then it stays pending, with the new version as its base).
"""

from __future__ import annotations

import errno
import logging
import random
import time
from typing import Callable

import trio

from vfs.metrics import Counter, Registry
from vfs.mount_table import Mount, MountTable
from vfs.mounts.base import ObjectMeta, WritableBackend
from vfs.reader import Reader
from vfs.staging import StagedFile, StagingArea

log = logging.getLogger(__name__)

MODES = ("through", "back", "cache", "off")
# Mode back: the longest wait between two tries of a failing commit (doubling from 1 s); a silo
# that is down for an hour is tried 60-odd times, not thousands.
MAX_BACKOFF = 60.0
# Commits of mode back running at once, whole mount: enough to overlap round trips of small files
# (cp -r), few enough that large files do not fight for the link.
BACKGROUND_COMMITS = 8
# Seconds between two warnings for one silo's failing commits.
WARN_EVERY = 30.0


def conflict_name(path: str, now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now if now is not None else time.time()))
    return f"{path}.conflict-{stamp}"


class Committer:
    def __init__(self, staging: StagingArea, table: MountTable, reader: Reader, delay: float,
                 committed: Callable[[Mount, StagedFile, ObjectMeta], None]) -> None:
        self.staging = staging
        self.table = table
        self.reader = reader
        self.delay = delay
        self._committed = committed
        """Called after each commit (the namespace updates metadata and inodes)."""
        self._wake = trio.Event()
        self._settled = trio.Condition()
        self._slots = trio.Semaphore(BACKGROUND_COMMITS)
        self._warned: dict[str, float] = {}
        self.commits = Counter()
        self.conflicts = Counter()
        """Commits that lost a race (saved under a conflict name)."""
        self.failures = Counter()
        """Tries of background commits that failed (each is tried again)."""
        self.orphans_aborted = Counter()
        """Uploads a crashed run left unfinished, aborted at this start (vfs/uploads.py)."""
        for mount in table.mounts:
            if mount.writable and isinstance(mount.backend, WritableBackend):
                mount.backend.uploads = staging.uploads.view(mount.path)

    # --- what close() and fsync() call ----------------------------------------------------------

    async def closed(self, sf: StagedFile, sync: bool = False) -> None:
        """A close (or, `sync`, an fsync) of a changed file: accept its bytes, and commit them now
        (mode through, or any fsync) or later (mode back)."""
        await self.staging.accept(sf)
        if sf.mode == "cache":
            return
        # Mode back commits then; a through commit that fails below is retried then too.
        sf.due = trio.current_time() + self.delay
        if sf.mode == "through" or sync:
            try:
                await self.commit_now(sf)
            finally:  # a failed commit is due again: the background loop retries it
                self._wake.set()
            return
        self._wake.set()

    async def commit_now(self, sf: StagedFile) -> None:
        """Commit `sf` and wait for it; its error (ESTALE for a lost race) is the caller's."""
        while sf.uploading:  # a background commit of an older generation is on its way
            await self.wait_settled()
        if sf.pending:
            await self._commit(sf)

    async def wait_settled(self) -> None:
        async with self._settled:
            await self._settled.wait()

    # --- the commit itself ----------------------------------------------------------------------

    async def _commit(self, sf: StagedFile) -> None:
        mount = self.table.by_path[sf.mount]
        backend = mount.backend
        assert isinstance(backend, WritableBackend)
        generation, source, size, path = sf.generation, self.staging.data_path(sf), sf.size, sf.path
        data_id = self.staging.reading(sf)
        sf.uploading = True
        try:
            try:
                meta = await backend.write_file(path, source, sf.base, sf.mtime_ns)
            except OSError as exc:
                if exc.errno != errno.ESTALE:
                    raise
                await self._conflict(mount, backend, sf, source)
                raise
            self.commits.inc()
            sf.failures = 0
            await self.reader.adopt(mount, meta.path, meta.version, source, size)
            if sf.path == path:
                # Before `uploading` drops: a file that looks pending and idle would be committed again.
                sf.committed, sf.base = generation, meta.version
                self._committed(mount, sf, meta)
        finally:
            sf.uploading = False
            await self.staging.done_reading(data_id)  # written meanwhile: the file has a copy of its own
            async with self._settled:
                self._settled.notify_all()
        if sf.path != path:  # renamed during the commit: the new name is committed next
            sf.base = None
            await self.staging.rewrite_record(sf)
            return
        log.debug("commit: %s%s generation %d is %s (now %d, %d writing)", sf.mount, path, generation,
                  meta.version, sf.generation, sf.writers)
        if sf.idle:
            await self.staging.drop(sf)
        else:
            await self.staging.rewrite_record(sf)

    async def _conflict(self, mount: Mount, backend: WritableBackend, sf: StagedFile, source: str) -> None:
        """Our bytes lost a race: commit them beside the silo's under a conflict name; drop them here."""
        self.conflicts.inc()
        for attempt in range(100):
            name = conflict_name(sf.path) + (f"-{attempt}" if attempt else "")
            try:
                meta = await backend.write_file(name, source, None, sf.mtime_ns)
            except OSError as exc:
                if exc.errno == errno.ESTALE:
                    continue  # that name is taken too
                raise
            log.warning("%s: %s changed on the silo since vfs read it; the silo keeps that version, and "
                        "the one written here was saved as %s", backend.describe(), sf.path, name)
            self._committed(mount, sf, meta)
            await self.staging.drop(sf)
            return
        raise OSError(errno.EEXIST, f"{sf.path}: no free conflict name")

    # --- mode back: the background loop ----------------------------------------------------------

    async def run(self) -> None:
        """Commit due files (mode back, and failed or recovered commits of any mode), retrying
        failures with backoff, forever."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.abort_orphans)
            while True:
                now = trio.current_time()
                due = [sf for sf in list(self.staging.files.values())
                       if sf.pending and not sf.uploading and sf.due <= now]
                for sf in due:
                    await self._slots.acquire()
                    sf.uploading = True  # taken: the next round must not start it again
                    nursery.start_soon(self._background, sf)
                waits = [sf.due - now for sf in self.staging.files.values()
                         if sf.pending and not sf.uploading]
                with trio.move_on_after(max(0.05, min(waits, default=3600.0))):
                    await self._wake.wait()
                self._wake = trio.Event()

    async def abort_orphans(self) -> None:
        """Abort the uploads an earlier run noted and never finished (a kill -9 mid-commit); one the
        silo refuses now stays noted for the next start."""
        for note, entry in await trio.to_thread.run_sync(self.staging.uploads.notes):
            mount = self.table.by_path.get(entry["mount"])
            if mount is None or not isinstance(mount.backend, WritableBackend):
                log.warning("uploads: upload %s of %s was left unfinished on %s, which is no longer mounted; "
                            "abort it there", entry["upload"], entry["key"], entry["mount"])
                continue
            try:
                await mount.backend.abort_upload(entry["key"], entry["upload"])
            except OSError as exc:
                log.warning("uploads: the unfinished upload of %s (%s) could not be aborted: %s; tried again at "
                            "the next start", entry["key"], mount.backend.describe(), exc)
                continue
            await trio.to_thread.run_sync(self.staging.uploads.finished, note)
            self.orphans_aborted.inc()
            log.info("uploads: aborted the upload of %s that an earlier run left unfinished on %s", entry["key"],
                     mount.backend.describe())

    async def _background(self, sf: StagedFile) -> None:
        try:
            sf.uploading = False
            await self._commit(sf)
        except OSError as exc:
            if exc.errno == errno.ESTALE:
                return  # saved under a conflict name
            self.failures.inc()
            sf.failures += 1
            sf.due = trio.current_time() + min(MAX_BACKOFF, 2.0 ** (sf.failures - 1)) * random.uniform(0.8, 1.2)
            self._warn(sf, exc)
        finally:
            self._slots.release()
            self._wake.set()

    def _warn(self, sf: StagedFile, exc: OSError) -> None:
        now = time.monotonic()
        if now - self._warned.get(sf.mount, -WARN_EVERY) >= WARN_EVERY:
            self._warned[sf.mount] = now
            log.warning("commit of %s%s failed (%s); trying again, %d file(s) waiting",
                        sf.mount.rstrip("/"), "/" + sf.path, exc, self.pending())

    def retry_now(self) -> None:
        """Make every commit whose last try failed due now (its silo is back); the backoff of each
        stays as it was, so a silo that fails again is not hammered."""
        now = trio.current_time()
        for sf in self.staging.files.values():
            if sf.pending and sf.failures and sf.due > now:
                sf.due = now
        self._wake.set()

    def pending(self) -> int:
        return sum(1 for sf in self.staging.files.values() if sf.pending)

    def failing(self) -> int:
        """Files waiting for a commit whose last try failed."""
        return sum(1 for sf in self.staging.files.values() if sf.pending and sf.failures)

    def register(self, registry: Registry) -> None:
        """Commits, and the staging area they drain."""
        s = self.staging
        for name, help, stats, child in (
            ("commits", "Staged files committed to their silo", "commits", self.commits),
            ("commit_conflicts", "Commits that lost a race and were saved under a conflict name", "conflicts", self.conflicts),
            ("commit_failures", "Tries of commits that failed (each is tried again)", "commit_failures", self.failures),
            ("orphan_uploads_aborted", "Unfinished uploads of a crashed run aborted at start", "orphan_uploads_aborted",
             self.orphans_aborted),
        ):
            registry.counter(name, help, (), ("writes", stats)).attach((), child)
        for name, help, stats, fn in (
            ("uploads_pending", "Closed files not committed yet", "pending_commits", self.pending),
            ("uploads_failing", "Files waiting for a commit whose last try failed", "failing_commits", self.failing),
            ("staged_files", "Files in the staging area", "staged_files", lambda: len(s.files)),
            ("staged_bytes", "Bytes in the staging area", "staged_bytes", lambda: s.used),
            ("staging_capacity_bytes", "Bytes the staging area may hold", "staging_capacity", lambda: s.budget),
        ):
            registry.gauge(name, help, (), ("writes", stats)).labels().set_function(fn)

    async def drain(self, timeout: float) -> int:
        """At unmount: commit what is pending now, for at most `timeout` seconds; how many are left."""
        for sf in self.staging.files.values():
            if sf.pending:
                sf.due = 0.0
        self._wake.set()
        with trio.move_on_after(timeout):
            while self.pending() and not self._all_offline():
                await self.wait_settled()
        return self.pending()

    def _all_offline(self) -> bool:
        """Whether every pending file waits for a silo that is offline (its commits fail at once):
        an unmount then waits for nothing; the journal keeps them for the next mount."""
        mounts = {sf.mount for sf in self.staging.files.values() if sf.pending}
        return all(m in self.table.by_path and self.table.by_path[m].backend.health.serves_stale for m in mounts)
