"""Listings and attributes kept on disk beside the SSD tier, so that a mount started while a silo
cannot be reached (vfs restarted on a plane) still shows what it had seen, and reads what the SSD
tier holds.

One small sqlite file per mountpoint (`<ssd_dir>/metadata/<mountpoint>.db`, 0600 in a 0700
directory): what the metadata cache knew of each mount (positive answers only; misses are short-lived)
and the silo that said it (`Backend.describe()`: a mount path pointed at another silo since is not
loaded). It is written whole, in a worker thread, every `SAVE_EVERY` seconds when the cache changed
and at unmount, and loaded at start as expired entries: they answer only while the silo is offline
(vfs/metadata.py); an online silo is asked as usual. A damaged file is logged, removed and started
afresh; it never stops a mount.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from typing import Iterable

import trio

from vfs.metadata import MetadataCache
from vfs.mount_table import MountTable
from vfs.mounts.base import ObjectMeta

log = logging.getLogger(__name__)

# Seconds between two saves (a save writes the whole file: ~1 s per 100k entries on a laptop SSD).
SAVE_EVERY = 300.0
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (mount TEXT, silo TEXT, path TEXT, is_dir INT, size INT, mtime_ns INT,
                                    version TEXT, PRIMARY KEY (mount, path));
CREATE TABLE IF NOT EXISTS listings (mount TEXT, silo TEXT, path TEXT, children TEXT, PRIMARY KEY (mount, path));
"""

Row = tuple[str, str, str, int, int, int | None, str]
ListingRow = tuple[str, str, str, str]


def store_path(ssd_dir: str, mountpoint: str) -> str:
    """Where the metadata of `mountpoint` is kept under `ssd_dir`."""
    name = os.path.realpath(mountpoint).strip("/").replace("/", "_") or "root"
    return os.path.join(ssd_dir, "metadata", f"{name}.db")


def open_store(ssd_dir: str, ssd_size: int, mountpoint: str) -> MetadataStore | None:
    """The store of `mountpoint`, where there is an SSD tier to keep it beside; else None."""
    return MetadataStore(store_path(ssd_dir, mountpoint)) if ssd_dir and ssd_size > 0 else None


def _meta_row(mount: str, silo: str, meta: ObjectMeta) -> Row:
    return (mount, silo, meta.path, int(meta.is_dir), meta.size, meta.mtime_ns, meta.version)


def _meta(row: tuple) -> ObjectMeta:  # type: ignore[type-arg]
    path, is_dir, size, mtime_ns, version = row
    return ObjectMeta(path, bool(is_dir), int(size), None if mtime_ns is None else int(mtime_ns), str(version))


class MetadataStore:
    def __init__(self, path: str) -> None:
        self.path = path
        self._saved: tuple[int, int] | None = None
        """(entries, listings) counts at the last save or load: a cheap "changed?" test."""

    # --- at start ---------------------------------------------------------------------------------

    def load(self, cache: MetadataCache, table: MountTable) -> int:
        """Put what the file holds for `table`'s mounts (same silo) into `cache`, expired; how many
        entries and listings. A damaged file is removed."""
        if not os.path.exists(self.path):
            return 0
        silos = {m.path: m.backend.describe() for m in table.mounts}
        try:
            loaded = self._read(cache, table, silos)
        except (sqlite3.DatabaseError, ValueError, TypeError) as exc:
            log.warning("metadata store %s is damaged (%s); removed, starting without it", self.path, exc)
            self._remove()
            return 0
        log.info("metadata store %s: %d entries and listings loaded (served while a silo is offline)",
                 self.path, loaded)
        return loaded

    def _read(self, cache: MetadataCache, table: MountTable, silos: dict[str, str]) -> int:
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            count = 0
            for mount, silo, *rest in db.execute("SELECT mount, silo, path, is_dir, size, mtime_ns, version FROM entries"):
                if silos.get(mount) == silo:
                    cache.restore(table.by_path[mount], _meta(tuple(rest)))
                    count += 1
            for mount, silo, path, children in db.execute("SELECT mount, silo, path, children FROM listings"):
                if silos.get(mount) == silo:
                    cache.restore_listing(table.by_path[mount], path, [_meta(tuple(c)) for c in json.loads(children)])
                    count += 1
            return count
        finally:
            db.close()

    # --- while mounted and at unmount -------------------------------------------------------------

    async def run(self, cache: MetadataCache, table: MountTable, every: float = SAVE_EVERY) -> None:
        """Save every `every` seconds, when the cache changed (the trio thread only takes a copy of the
        entry lists; the rows are built and written in a worker thread)."""
        while True:
            await trio.sleep(every)
            await self.save(cache, table, only_if_changed=True)

    async def save(self, cache: MetadataCache, table: MountTable, only_if_changed: bool = False) -> None:
        """Write what `cache` knows of `table`'s mounts, whole; a failure is logged, never raised."""
        entries, listings = cache.known()
        counts = (len(entries), len(listings))
        if only_if_changed and counts == self._saved:
            return
        silos = {m.path: m.backend.describe() for m in table.mounts}

        def write() -> None:  # rows and JSON built in the worker thread: a dataset's worth is seconds of CPU
            rows = [_meta_row(mount, silos[mount], meta) for mount, meta in entries if mount in silos]
            listing_rows = [(mount, silos[mount], path, json.dumps([_meta_row("", "", m)[2:] for m in children]))
                            for mount, path, children in listings if mount in silos]
            self._write(rows, listing_rows)

        try:
            with trio.CancelScope(shield=True):  # at unmount, a cancel must not leave half a file
                await trio.to_thread.run_sync(write)
        except (OSError, sqlite3.Error) as exc:
            log.warning("metadata store %s not saved: %s", self.path, exc)
            return
        self._saved = counts

    def _write(self, rows: Iterable[Row], listing_rows: Iterable[ListingRow]) -> None:
        """Write a new file beside the old one, then rename it over (a crash keeps the old one)."""
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        tmp = f"{self.path}.new"
        if os.path.exists(tmp):
            os.unlink(tmp)
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
        os.close(fd)
        db = sqlite3.connect(tmp)
        try:
            db.executescript(_SCHEMA)
            with db:
                db.executemany("INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
                db.executemany("INSERT OR REPLACE INTO listings VALUES (?, ?, ?, ?)", listing_rows)
        finally:
            db.close()
        os.replace(tmp, self.path)

    def _remove(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass
