"""The SSD tier: blocks in a diskcache directory, under an exact byte budget it never exceeds.

What this module owns:
- `SsdStore`: the same store interface as `RamStore` (get/put/discard/pin/unpin/is_pinned, `used`,
  `capacity`, `stats`, `len`, `in`), with its own instance of one of the policy classes of
  `vfs.cache.policy`. diskcache is only a durable key -> bytes map here: its own eviction is off
  (`eviction_policy='none'`, a huge `size_limit`, `cull_limit=0`); the policy and the accounting are ours.
- the on-disk block format (below) and its verification on every read;
- `cache_info(dir)` and `cache_clear(dir)` for `vfs cache info` / `vfs cache clear` (offline).

No pickle, anywhere. diskcache pickles any key or value that is not a plain str/bytes/int/float and
unpickles whatever a row says is pickled (a pickle-deserialisation CVE for anyone who can write the
directory). `BlockDisk` stores only `bytes` values under `str` keys, refuses to store anything else,
and never decodes a pickled (or text) row: such a row is reported as foreign/unsafe, deleted, logged.

On-disk block (one diskcache value per block, little-endian; the diskcache key is `str(BlockKey)`):

    offset  size  field
    0       4     magic b"VFSB"
    4       2     format version (FORMAT_VERSION = 1)
    6       2     reserved, 0
    8       4     K = length of the key (UTF-8 of str(BlockKey): mount NUL path NUL version NUL index)
    12      8     N = payload length
    20      4     CRC32C (Castagnoli) of bytes [0, 20) + key + payload
    24      K     key
    24+K    N     payload (the block's bytes)

A read checks magic, format, that the stored key is the key asked for (so a block can never answer
for another object, version or index), the exact length (nothing missing, nothing trailing) and the
CRC. A block failing any check is a miss, is deleted, and is logged once (it is gone afterwards).
The budget counts 24 + K + N per block (what this module writes; sqlite's row overhead and file-system
rounding are not counted).

Restart: opening a directory rebuilds the index (key -> bytes) and the policy's resident set from the
headers on disk (header check only; the CRC is checked when a block is read); the bad rows found go in
one log line. Blocks are re-admitted in the order they were stored (a diskcache tag holds the store
time), so FIFO order survives; LRU recency and LFU counts do not (they would cost a write per hit). A directory is used by one process at a time
(an flock on `vfs.lock`).

Damage found at start-up, each in one log line: a `cache.db` that sqlite's `quick_check` rejects (garbled,
truncated) is moved aside to `cache.db.damaged` (replacing an older one) and the tier starts empty; value
files no row points to (a crash between writing a value file and its row, or a lost `cache.db`) are
deleted, so every byte on disk is inside the budget again. A directory that cannot be used at all (another
user's, a read-only file system, sqlite refusing it) raises from the constructor: `build_cache` then runs
without the tier.

Disk full (ENOSPC, EDQUOT, SQLITE_FULL) on a write: the budget (`capacity`) becomes the bytes the tier
holds plus the bytes free on the disk, less SQLITE_HEADROOM (one error line, later ones at debug level),
so the next blocks go in by evicting old ones; while it is below the configured `budget` it is refitted
(a statvfs) before every write, so it grows back when the disk has room again. A value file half-written
when the write failed is deleted, and an evicted block's value file is deleted before its row (sqlite
cannot log a delete on a full disk; the row's delete is retried later).

A cache.db that goes bad while running (sqlite reports a malformed database) turns the tier off: one
error line, every get a miss, every put refused, until the next start sets the database aside.

Errors: any other SSD error (I/O error, sqlite error or timeout) is logged and is a miss (get) or a
block not stored (put); nothing is raised to the caller. Only a programming error (a non-bytes value, a
non-BlockKey key) raises TypeError.

Threads: BlockCache calls this store from worker threads. One `threading.Lock` guards the index, the
policy, the pins, the counters and `used`; it is held for dictionary work only, never across disk I/O.
Space is reserved under the lock before a write starts and is only reserved once victims are really
deleted, so `used` (resident + being deleted + being written) bounds the bytes on disk at every moment.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import fcntl
import io
import itertools
import logging
import os
import sqlite3
import stat
import struct
import threading
import time
from typing import BinaryIO, Iterator

import diskcache
import diskcache.core
import google_crc32c

from vfs.cache.block import BlockKey, TierStats
from vfs.cache.policy import EvictionPolicy

log = logging.getLogger(__name__)

MAGIC = b"VFSB"
FORMAT_VERSION = 1
HEADER = struct.Struct("<4sHHIQI")  # magic, format, reserved, key length, payload length, crc32c
CRC_COVERS = 20  # the header bytes before the crc field are covered by the crc
MAX_KEY_BYTES = 64 * 1024  # PATH_MAX (4096) plus mount and version strings, with a wide margin
LOCK_NAME = "vfs.lock"
DB_NAME = "cache.db"
DAMAGED_SUFFIX = ".damaged"

DISKCACHE_SETTINGS = {
    "eviction_policy": "none",  # our policy chooses victims, diskcache never does
    "size_limit": 2**62,  # diskcache must never cull on its own: "no limit" in sqlite's int64
    "cull_limit": 0,
    "statistics": 0,  # hits/misses are counted here; diskcache's counters would cost a write per get
    "tag_index": 0,
    "disk_min_file_size": 2**15,  # diskcache's default: values under 32 KiB live inline in sqlite
}
SQLITE_TIMEOUT = 10.0  # seconds sqlite waits on a locked database before an error (= a miss);
# writes hold the lock for a row insert only (the value file is written before), so 10 s means trouble

SSD_ERRORS = (OSError, sqlite3.Error, diskcache.Timeout)
SQLITE_HEADROOM = 2**20  # bytes left free on a full disk for sqlite: its WAL grows with every insert and
# delete until a checkpoint, and a delete it cannot log cannot free anything


class UnsafeValue(ValueError):
    """A row whose value only pickle or text decoding could read: it is never decoded."""


class CorruptBlock(ValueError):
    """A block whose header, length or checksum is wrong."""


@dataclasses.dataclass(frozen=True, slots=True)
class ForeignKey:
    """A row key that is not a plain str (pickled, bytes, number): kept as its raw database value, so
    the row can be deleted without ever being unpickled."""

    db_key: object
    raw: bool


class BlockDisk(diskcache.Disk):
    """diskcache serialisation restricted to str keys and bytes values; pickle is never used.

    It also remembers (per thread) the value file its last `store` wrote, so that a `set` whose row
    never committed (a full disk) can delete that file instead of leaving it outside the budget."""

    def __init__(self, directory: str, **kwargs: object) -> None:
        super().__init__(directory, **kwargs)
        self._last = threading.local()

    def take_stored_file(self) -> str | None:
        """The value file (relative path) the last `store` of this thread wrote, once; None if none."""
        name = getattr(self._last, "file", None)
        self._last.file = None
        return name

    def _write(self, full_path: str, iterator: object, mode: str, encoding: str | None = None) -> int:
        existed = os.path.exists(full_path)
        try:
            return super()._write(full_path, iterator, mode, encoding)
        except BaseException:
            if not existed:  # a half-written value file (ENOSPC): not left outside the budget
                with contextlib.suppress(OSError):
                    os.unlink(full_path)
            raise

    def put(self, key: object) -> tuple[object, bool]:
        if type(key) is str:
            return key, True
        if type(key) is ForeignKey:
            return key.db_key, key.raw
        raise TypeError(f"SSD cache keys are str, not {type(key).__name__}")

    def get(self, key: object, raw: bool) -> object:
        if raw and type(key) is str:
            return key
        return ForeignKey(key, bool(raw))  # a pickled key stays an opaque blob

    def store(self, value: object, read: bool, key: object = diskcache.core.UNKNOWN) -> tuple:
        if read or type(value) is not bytes:
            raise TypeError(f"SSD cache values are bytes, not {type(value).__name__}")
        self._last.file = None
        stored = super().store(value, read, key)
        self._last.file = stored[2]
        return stored

    def fetch(self, mode: int, filename: str | None, value: object, read: bool) -> object:
        if mode == diskcache.core.MODE_RAW and type(value) is not bytes:
            raise UnsafeValue(f"inline value of type {type(value).__name__}")
        if mode not in (diskcache.core.MODE_RAW, diskcache.core.MODE_BINARY):
            raise UnsafeValue(f"value stored in diskcache mode {mode} (pickle/text): not read")
        return super().fetch(mode, filename, value, read)


# -- the block format -----------------------------------------------------------------------------


def key_bytes(key: BlockKey) -> bytes:
    """UTF-8 of str(key); UnicodeEncodeError for names that are not valid UTF-8 (surrogates)."""
    return str(key).encode("utf-8")


def parse_key(text: str) -> BlockKey | None:
    """The BlockKey whose str() is `text`, or None if `text` is not one."""
    parts = text.split("\0")
    if len(parts) != 4 or not parts[3].isascii() or not parts[3].isdigit():
        return None
    key = BlockKey(parts[0], parts[1], parts[2], int(parts[3]))
    return key if str(key) == text else None


def block_charge(key: BlockKey, data: bytes) -> int:
    """Bytes one block costs in the SSD budget: header + key + payload."""
    return HEADER.size + len(key_bytes(key)) + len(data)


def encode_block(kb: bytes, data: bytes) -> bytes:
    head = HEADER.pack(MAGIC, FORMAT_VERSION, 0, len(kb), len(data), 0)[:CRC_COVERS]
    crc = google_crc32c.extend(google_crc32c.extend(google_crc32c.value(head), kb), data)
    return b"".join((head, struct.pack("<I", crc), kb, data))


def _read_exact(reader: BinaryIO, n: int, what: str) -> bytes:
    got = reader.read(n)
    if len(got) != n:
        raise CorruptBlock(f"truncated {what}: {len(got)} of {n} bytes")
    return got


def _check_header(reader: BinaryIO, kb: bytes, total: int) -> tuple[bytes, int, int]:
    """Check the header of a block of `total` bytes on disk; return (header bytes, payload length, crc)."""
    head = _read_exact(reader, HEADER.size, "header")
    magic, fmt, _reserved, klen, plen, crc = HEADER.unpack(head)
    if magic != MAGIC:
        raise CorruptBlock(f"bad magic {magic!r}")
    if fmt != FORMAT_VERSION:
        raise CorruptBlock(f"format version {fmt}, this vfs reads {FORMAT_VERSION}")
    if klen != len(kb):
        raise CorruptBlock(f"key length {klen}, expected {len(kb)}")
    if HEADER.size + klen + plen != total:
        raise CorruptBlock(f"length {total} on disk, header says {HEADER.size + klen + plen}")
    if _read_exact(reader, klen, "key") != kb:
        raise CorruptBlock("stored key differs from the key asked for")
    return head, plen, crc


def decode_block(reader: BinaryIO, kb: bytes, total: int) -> bytes:
    """The payload of a block of `total` bytes, all checks passed; CorruptBlock otherwise."""
    head, plen, crc = _check_header(reader, kb, total)
    data = _read_exact(reader, plen, "payload")
    if reader.read(1):
        raise CorruptBlock("trailing bytes")
    actual = google_crc32c.extend(google_crc32c.extend(google_crc32c.value(head[:CRC_COVERS]), kb), data)
    if actual != crc:
        raise CorruptBlock(f"crc32c {actual:#010x}, header says {crc:#010x}")
    return data


def _as_reader(value: object) -> BinaryIO:
    if isinstance(value, bytes):  # inline values come back as bytes even with read=True
        return io.BytesIO(value)
    return value  # type: ignore[return-value]  # an open file


def _size_of(reader: BinaryIO) -> int:
    size = reader.seek(0, os.SEEK_END)
    reader.seek(0)
    return size


# -- the directory ----------------------------------------------------------------------------------


def prepare_directory(path: str) -> None:
    """Create `path` with mode 0700, or make an existing one 0700 (warning); refuse another user's."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, "SSD cache path is not a directory", path)
    if st.st_uid != os.geteuid():
        raise PermissionError(errno.EPERM, f"SSD cache directory belongs to uid {st.st_uid}, not us", path)
    mode = stat.S_IMODE(st.st_mode)
    if mode != 0o700:
        if mode & 0o077:
            log.warning("SSD cache directory %s had mode %04o (readable by others); setting 0700", path, mode)
        os.chmod(path, 0o700)


def is_damage(exc: BaseException) -> bool:
    """Whether an sqlite error says the database file itself is bad (not locked, not read-only, not I/O)."""
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError)


def is_full(exc: BaseException) -> bool:
    """Whether an SSD error means there is no room on the disk (or in the user's quota)."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(exc, sqlite3.OperationalError) and getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


def database_problem(path: str) -> str | None:
    """Why the `cache.db` of directory `path` cannot be trusted (sqlite's quick_check), or None if it can
    (or does not exist). sqlite errors that are not about the file's contents (locked, read-only) raise."""
    db = os.path.join(path, DB_NAME)
    if not os.path.exists(db):
        return None
    con = sqlite3.connect(db, timeout=SQLITE_TIMEOUT)
    try:
        rows = con.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as exc:
        if not is_damage(exc):
            raise
        return str(exc)
    finally:
        con.close()
    if rows == [("ok",)]:
        return None
    first = str(rows[0][0]).replace("*** in database main ***", "").strip().splitlines()
    return f"quick_check: {first[0][:200] if first else 'failed'}"


def set_aside_database(path: str) -> str:
    """Move a damaged `cache.db` to `cache.db.damaged` (one kept, for a bug report) and drop its journal
    files; return the new name."""
    db = os.path.join(path, DB_NAME)
    aside = db + DAMAGED_SUFFIX
    os.replace(db, aside)
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(db + suffix)
    return aside


def value_files(path: str) -> Iterator[str]:
    """Every diskcache value file under `path` (full paths)."""
    for root, _dirs, files in os.walk(path):
        for name in files:
            if name.endswith(".val"):
                yield os.path.join(root, name)


def delete_orphans(path: str, indexed: set[str]) -> tuple[int, int]:
    """Delete the value files under `path` not in `indexed` (paths relative to `path`); return (files,
    bytes) deleted."""
    files = size = 0
    for file in value_files(path):
        if os.path.relpath(file, path) in indexed:
            continue
        with contextlib.suppress(OSError):
            length = os.path.getsize(file)
            os.unlink(file)
            files += 1
            size += length
    return files, size


def _open_diskcache(path: str, disk: type[BlockDisk]) -> diskcache.Cache:
    return diskcache.Cache(path, timeout=SQLITE_TIMEOUT, disk=disk, **DISKCACHE_SETTINGS)


@contextlib.contextmanager
def _exclusive(path: str) -> Iterator[int]:
    fd = _lock_directory(path)
    try:
        yield fd
    finally:
        os.close(fd)


def _lock_directory(path: str) -> int:
    fd = os.open(os.path.join(path, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BlockingIOError(errno.EBUSY, "SSD cache directory is in use by another vfs process", path) from None
    return fd


@dataclasses.dataclass(frozen=True, slots=True)
class ScannedRow:
    """One row of the directory as the restart scan sees it."""

    db_key: object  # str, or ForeignKey for a row this module never writes
    key: BlockKey | None  # None: not a block of ours (foreign or unparsable key)
    charge: int  # bytes on disk, header included; 0 when unknown
    stored_ns: int
    problem: str | None  # why the row must go; None for a good block (by its header)
    file: str | None = None  # its value file, relative to the directory; None when the value is inline


def _scan(cache: diskcache.Cache) -> Iterator[ScannedRow]:
    """Every row, checked by header (not CRC: that would read the whole cache at start-up).
    sqlite errors propagate (a damaged database shows here as sqlite3.DatabaseError)."""
    for db_key in cache.iterkeys():
        if type(db_key) is not str:
            yield ScannedRow(db_key, None, 0, 0, "key is not a str (a pickled or foreign row)")
            continue
        key = parse_key(db_key)
        if key is None:
            yield ScannedRow(db_key, None, 0, 0, "key is not a BlockKey")
            continue
        try:
            value, tag = cache.get(db_key, read=True, tag=True)
            if value is None:
                raise CorruptBlock("value file missing")
            file = None if isinstance(value, bytes) else os.path.relpath(value.name, cache.directory)
            with _as_reader(value) as reader:
                total = _size_of(reader)
                _check_header(reader, db_key.encode("utf-8"), total)
        except (CorruptBlock, UnsafeValue, OSError) as exc:
            yield ScannedRow(db_key, key, 0, 0, str(exc))
            continue
        yield ScannedRow(db_key, key, total, tag if type(tag) is int else 0, None, file)


def cache_info(path: str) -> dict:
    """What an SSD cache directory holds, for `vfs cache info`; read-only, safe while mounted."""
    info: dict = {"directory": os.path.abspath(path), "exists": os.path.isdir(path), "format_version": FORMAT_VERSION}
    if not info["exists"] or not os.path.exists(os.path.join(path, DB_NAME)):
        return {**info, "blocks": 0, "bytes": 0, "bad_rows": 0, "disk_bytes": 0, "in_use": False}
    problem = database_problem(path)
    if problem is not None:  # the next mount sets it aside; its blocks count as none
        return {**info, "blocks": 0, "bytes": 0, "bad_rows": 0, "disk_bytes": 0, "in_use": False, "damaged": problem}
    try:
        fd = _lock_directory(path)
    except BlockingIOError:
        in_use = True
    else:
        in_use = False
        os.close(fd)
    cache = _open_diskcache(path, BlockDisk)
    try:
        blocks = size = bad = 0
        mounts: collections.Counter[str] = collections.Counter()
        for row in _scan(cache):
            if row.problem is not None:
                bad += 1
                continue
            blocks += 1
            size += row.charge
            mounts[row.key.mount] += row.charge  # type: ignore[union-attr]
        return {**info, "blocks": blocks, "bytes": size, "bad_rows": bad, "disk_bytes": cache.volume(),
                "in_use": in_use, "bytes_by_mount": dict(mounts)}
    finally:
        cache.close()


def cache_clear(path: str) -> int:
    """Delete every block of an SSD cache directory (`vfs cache clear`); return how many rows went.

    Refused (BlockingIOError, EBUSY) while a vfs process has the directory open: clear that one's
    cache through its own control file instead.
    """
    if not os.path.isdir(path):
        return 0
    with _exclusive(path):
        if database_problem(path) is not None:
            set_aside_database(path)
        cache = _open_diskcache(path, BlockDisk)
        try:
            removed = cache.clear()
        finally:
            cache.close()
        delete_orphans(path, set())  # value files whose row was never committed (a crash)
    return removed


# -- the store ----------------------------------------------------------------------------------------


class SsdStore:
    """Blocks on local disk under an exact byte budget; see the module docstring."""

    def __init__(self, directory: str, capacity: int, policy: EvictionPolicy, *,
                 disk: type[BlockDisk] = BlockDisk) -> None:
        self.directory = os.path.abspath(directory)
        self.capacity = capacity
        self.policy = policy
        self.stats = TierStats()
        self.errors = 0
        """SSD errors seen (each logged and turned into a miss or an unstored block)."""
        self.corrupt = 0
        """Blocks found corrupt, truncated or foreign, and deleted."""
        self.budget = capacity
        """The configured budget; `capacity` is lower while the disk is full (see the module docstring)."""
        self.disk_full = 0
        """Writes that failed for want of room on the disk (each lowered `capacity`)."""
        self.damaged_db: str | None = None
        """Why the cache.db found at start was set aside, or None."""
        self.orphans = 0
        """Value files no row pointed to, deleted at start."""
        self.off: str | None = None
        """Why the tier stopped while running (its cache.db went bad): every get a miss, every put refused."""
        self.used = 0
        """Bytes of resident blocks + blocks being deleted + blocks being written: never > budget (nor >
        capacity, except just after a full disk lowered capacity: the next write evicts down to it)."""
        self._lock = threading.Lock()
        self._resident: dict[BlockKey, tuple[int, int]] = {}  # key -> (charge, generation)
        self._writing: dict[BlockKey, int] = {}  # key -> charge: reserved, being written
        self._deleting: dict[BlockKey, int] = {}  # key -> charge: out of the index, being deleted
        self._files: dict[BlockKey, str] = {}  # key -> its value file (full path); inline blocks have none
        self._undeleted: dict[str, int] = {}  # disk key -> charge: deletes that failed, still counted
        self._pins: collections.Counter[BlockKey] = collections.Counter()
        self._generation = itertools.count()
        prepare_directory(self.directory)
        self._lock_fd: int | None = _lock_directory(self.directory)
        try:
            self._open(disk)
        except BaseException:
            self.close()
            raise

    # -- the store interface

    def __len__(self) -> int:
        return len(self._resident)

    def __contains__(self, key: object) -> bool:
        return key in self._resident

    def charge(self, key: BlockKey, data: bytes) -> int:
        return block_charge(key, data)

    def get(self, key: BlockKey) -> bytes | None:
        with self._lock:
            entry = self._resident.get(key)
            if entry is None or self.off is not None:
                self.stats.misses += 1
                return None
            charge, generation = entry
        data, gone = self._read(key, charge)
        with self._lock:
            if data is None:
                self.stats.misses += 1
                drop = gone and self._resident.get(key, (0, None))[1] == generation
                if drop:
                    self._begin_delete_locked(key)
            else:
                if key in self._resident:
                    self.policy.touch(key)
                self.stats.hits += 1
                self.stats.hit_bytes += len(data)
                drop = False
        if drop:
            self._finish_delete([key])
        return data

    def put(self, key: BlockKey, data: bytes) -> list[BlockKey]:
        """Store a block; return the keys evicted to make room. Never raises for an SSD error."""
        if type(data) is not bytes:
            raise TypeError(f"SSD cache values are bytes, not {type(data).__name__}")
        if type(key) is not BlockKey:
            raise TypeError(f"SSD cache keys are BlockKey, not {type(key).__name__}")
        try:
            kb = key_bytes(key)
        except UnicodeEncodeError:
            with self._lock:
                self.stats.refused += 1
            log.debug("SSD tier refuses a block whose name is not UTF-8: %r", key)
            return []
        charge = HEADER.size + len(kb) + len(data)
        evicted: list[BlockKey] = []
        if self.off is not None:
            with self._lock:
                self.stats.refused += 1
            return evicted
        if not self._make_room(key, charge, evicted):
            return evicted
        failure: BaseException | None = None
        file = None
        try:
            self._cache.set(str(key), encode_block(kb, data), tag=time.time_ns())
            file = self._stored_file()
        except SSD_ERRORS as exc:
            failure = exc
            self._forget_value_file()
        with self._lock:
            del self._writing[key]
            if failure is None:
                if file is not None:
                    self._files[key] = file
                self._resident[key] = (charge, next(self._generation))
                self.policy.admit(key, charge)
                self.stats.inserts += 1
                self.stats.insert_bytes += charge
            else:
                self.used -= charge
        if failure is not None:
            self._write_failed(key, failure)
        return evicted

    def touch(self, key: BlockKey) -> None:
        """Tell the policy that a resident block was used elsewhere (a RAM hit on a block the SSD holds
        too): without it an LRU SSD tier evicts exactly the blocks hot enough to live in RAM."""
        with self._lock:
            if key in self._resident:
                self.policy.touch(key)

    def discard(self, key: BlockKey) -> None:
        with self._lock:
            if key not in self._resident:
                return
            self._begin_delete_locked(key)
        self._finish_delete([key])

    def clear(self) -> int:
        """Delete every resident block (pinned ones too: a pin only keeps the policy off a block)."""
        with self._lock:
            keys = list(self._resident)
            for key in keys:
                self._begin_delete_locked(key)
        self._finish_delete(keys)
        return len(keys)

    def pin(self, key: BlockKey) -> None:
        with self._lock:
            self._pins[key] += 1

    def unpin(self, key: BlockKey) -> None:
        with self._lock:
            self._pins[key] -= 1
            if self._pins[key] <= 0:
                del self._pins[key]

    def is_pinned(self, key: object) -> bool:
        return key in self._pins

    def close(self) -> None:
        cache = getattr(self, "_cache", None)
        if cache is not None:
            cache.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> SsdStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inside

    def _read(self, key: BlockKey, charge: int) -> tuple[bytes | None, bool]:
        """(payload, False) on a hit; (None, gone) on a miss, gone when the block must be forgotten."""
        text = str(key)
        try:
            value = self._cache.get(text, read=True)
            if value is None:  # diskcache turns an OSError opening the value file into "missing"
                with self._lock:
                    self.corrupt += 1
                log.warning("SSD block %r vanished from %s (value file missing or unreadable): a miss",
                            key, self.directory)
                return None, True
            with _as_reader(value) as reader:
                total = _size_of(reader)
                return decode_block(reader, text.encode("utf-8"), total), False
        except (CorruptBlock, UnsafeValue) as exc:
            with self._lock:
                self.corrupt += 1
            log.warning("SSD block %r in %s is bad (%s): deleted, treated as a miss", key, self.directory, exc)
            return None, True
        except SSD_ERRORS as exc:
            if not self._went_bad(exc):
                self._error("read", key, exc)
            return None, isinstance(exc, OSError) and exc.errno == errno.EIO

    def _went_bad(self, exc: BaseException) -> bool:
        """Whether `exc` says cache.db went bad while running; if so the tier is off (one error line):
        the next start sets the database aside."""
        if not is_damage(exc):
            return False
        with self._lock:
            self.errors += 1
            first = self.off is None
            if first:
                self.off = str(exc)
        if first:
            log.error("SSD cache %s: %s went bad while running (%s): the tier is off until the next start, which "
                      "sets it aside", self.directory, DB_NAME, exc)
        return True

    def _stored_file(self) -> str | None:
        """The value file (full path) the last set of this thread wrote, if any."""
        disk = self._cache.disk
        name = disk.take_stored_file() if isinstance(disk, BlockDisk) else None
        return None if name is None else os.path.join(self.directory, name)

    def _forget_value_file(self) -> None:
        """After a failed set: delete the value file it wrote, if any (its row never committed)."""
        file = self._stored_file()
        if file is not None:
            with contextlib.suppress(OSError):
                os.unlink(file)

    def _write_failed(self, key: BlockKey, exc: BaseException) -> None:
        """A write failed: a full disk fits the budget to the disk (one error line, later ones at debug
        level); any other error is logged as an error."""
        if self._went_bad(exc):
            return
        if not is_full(exc):
            self._error("write", key, exc)
            return
        with self._lock:
            self.errors += 1
            self.disk_full += 1
            first = self.disk_full == 1
        held, free = self._fit_budget_to_disk()
        log.log(logging.ERROR if first else logging.DEBUG,
                "SSD cache %s: disk full (%s): budget %d bytes for now (%d held + %d free on the disk, "
                "configured %d); new blocks evict old ones", self.directory, exc, self.capacity, held, free, self.budget)

    def _fit_budget_to_disk(self) -> tuple[int, int]:
        """capacity = what the tier holds + what the disk has free - SQLITE_HEADROOM, at most the configured
        budget; return (held, free). Called after a full disk and before every write while capacity < budget."""
        try:
            st = os.statvfs(self.directory)
            free = st.f_bavail * st.f_frsize
        except OSError:
            free = 0
        with self._lock:
            self.capacity = min(self.budget, max(0, self.used + free - SQLITE_HEADROOM))
            return self.used, free

    def _error(self, what: str, key: object, exc: BaseException) -> None:
        with self._lock:
            self.errors += 1
        log.error("SSD cache %s error in %s for %r: %s (treated as a miss)", what, self.directory, key, exc)

    def _begin_delete_locked(self, key: BlockKey) -> None:
        """Take a resident key out of the index and policy; its bytes stay counted until deleted."""
        self._deleting[key] = self._resident.pop(key)[0]
        self.policy.remove(key)

    def _finish_delete(self, keys: list[BlockKey]) -> None:
        """Delete blocks from disk (outside the lock), then release their bytes. A value file goes before
        its row: on a full disk sqlite cannot record a delete (its WAL cannot grow), so the bytes are freed
        first; a row left without its file costs no budget and its delete is retried before later writes."""
        for key in keys:
            text = str(key)
            with self._lock:
                file = self._files.pop(key, None)
            if file is not None:
                with contextlib.suppress(OSError):
                    os.unlink(file)
            try:
                self._cache.delete(text)
                failed = False
            except SSD_ERRORS as exc:
                if is_full(exc):
                    log.debug("SSD cache %s: delete of %r waits for room on the disk: %s", self.directory, key, exc)
                    with self._lock:
                        self.errors += 1
                elif not self._went_bad(exc):
                    self._error("delete", key, exc)
                failed = True
            with self._lock:
                charge = self._deleting.pop(key)
                left = 0 if file is not None else charge
                if failed:
                    self._undeleted[text] = self._undeleted.get(text, 0) + left
                    self.used -= charge - left
                else:
                    self.used -= charge

    def _retry_undeleted(self) -> None:
        with self._lock:
            stuck = list(self._undeleted.items())
        for text, _charge in stuck:
            try:
                self._cache.delete(text)
            except SSD_ERRORS:
                continue
            with self._lock:
                self.used -= self._undeleted.pop(text, 0)

    def _make_room(self, key: BlockKey, charge: int, evicted: list[BlockKey]) -> bool:
        """Reserve `charge` bytes for `key`, evicting as needed; False if the block cannot go in."""
        if self._undeleted:
            self._retry_undeleted()
        if self.capacity < self.budget:
            self._fit_budget_to_disk()
        replaced = False
        while True:
            victims: list[BlockKey] = []
            with self._lock:
                if key in self._writing or key in self._deleting or str(key) in self._undeleted:
                    return False  # another thread is writing or deleting this very block
                if key in self._resident and not replaced:
                    self._begin_delete_locked(key)
                    victims.append(key)
                    replaced = True
                elif charge > self.capacity:
                    self.stats.refused += 1
                    return False
                elif self.used + charge <= self.capacity:
                    self.used += charge
                    self._writing[key] = charge
                    return True
                else:
                    victim = self.policy.evict(self.is_pinned)
                    if victim is None:
                        self.stats.refused += 1
                        return False
                    entry = self._resident.pop(victim, None)  # type: ignore[call-overload]
                    if entry is None:
                        log.error("policy %s chose %r, which is not resident", self.policy.name, victim)
                        continue
                    victim_charge = entry[0]
                    self._deleting[victim] = victim_charge  # type: ignore[index]
                    self.stats.evictions += 1
                    self.stats.eviction_bytes += victim_charge
                    victims.append(victim)  # type: ignore[arg-type]
                    evicted.append(victim)  # type: ignore[arg-type]
            self._finish_delete(victims)

    def _open(self, disk: type[BlockDisk]) -> None:
        """Open the directory and index it; a damaged cache.db is set aside and the tier starts empty."""
        problem = database_problem(self.directory)
        if problem is None:
            self._cache = _open_diskcache(self.directory, disk)
            try:
                good = self._scan_rows(self._cache)
            except sqlite3.DatabaseError as exc:
                self._cache.close()
                if not is_damage(exc):
                    raise
                problem = str(exc)
            else:
                self._index(good)
                self._sweep({row.file for row in good if row.file is not None}, None)
                return
        set_aside_database(self.directory)
        self.damaged_db = problem
        self._sweep(set(), problem)
        self._cache = _open_diskcache(self.directory, disk)

    def _scan_rows(self, cache: diskcache.Cache) -> list[ScannedRow]:
        """The good rows, in store order; bad ones are deleted and summed up in one log line."""
        good: list[ScannedRow] = []
        bad: list[ScannedRow] = []
        for row in _scan(cache):
            (bad if row.problem is not None else good).append(row)
        for row in bad:
            log.debug("SSD cache %s: deleting row %r: %s", self.directory, row.db_key, row.problem)
            try:
                cache.delete(row.db_key)
            except SSD_ERRORS as exc:
                self._error("delete", row.db_key, exc)
        if bad:
            self.corrupt += len(bad)
            log.warning("SSD cache %s: %d bad or foreign block(s) deleted at start (first: %r: %s)",
                        self.directory, len(bad), bad[0].db_key, bad[0].problem)
        good.sort(key=lambda row: row.stored_ns)
        return good

    def _sweep(self, indexed: set[str], problem: str | None) -> None:
        """Delete the value files no row points to; one log line for a set-aside database or for orphans."""
        files, size = delete_orphans(self.directory, indexed)
        self.orphans = files
        if problem is not None:
            log.warning("SSD cache %s: %s is damaged (%s): moved to %s%s, its %d block file(s) (%d bytes) "
                        "deleted; the tier starts empty", self.directory, DB_NAME, problem, DB_NAME, DAMAGED_SUFFIX,
                        files, size)
        elif files:
            log.warning("SSD cache %s: %d block file(s) (%d bytes) that no row of %s points to (a crash or a "
                        "lost %s) deleted", self.directory, files, size, DB_NAME, DB_NAME)

    def _index(self, good: list[ScannedRow]) -> None:
        """Index the good rows (see the module docstring: store order survives, recency does not)."""
        for row in good:
            assert row.key is not None
            self._resident[row.key] = (row.charge, next(self._generation))
            if row.file is not None:
                self._files[row.key] = os.path.join(self.directory, row.file)
            self.policy.admit(row.key, row.charge)
            self.used += row.charge
        over: list[BlockKey] = []
        with self._lock:
            freed = 0
            while self.used - freed > self.capacity:  # a smaller budget than last time
                victim = self.policy.evict(self.is_pinned)
                if victim is None:
                    break
                charge = self._resident.pop(victim)[0]  # type: ignore[call-overload]
                self._deleting[victim] = charge  # type: ignore[index]
                freed += charge
                over.append(victim)  # type: ignore[arg-type]
        self._finish_delete(over)
        if good:
            log.info("SSD cache %s: %d blocks, %d bytes found on disk", self.directory, len(self._resident), self.used)
