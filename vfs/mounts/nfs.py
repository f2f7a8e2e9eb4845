"""NFS in userspace, through the libnfs C library (no kernel NFS client needed).

One option, `url`: a libnfs URL, `nfs://host/export/sub/dir?version=4&nfsport=2049&uid=0&gid=0`.
The URL's path is what gets mounted (NFSv4 mounts any directory of the server's pseudo tree; for
NFSv3, libnfs's default, it must be an export the server's MOUNT daemon accepts, found through the
portmapper unless `mountport=`/`nfsport=` are given). Every libnfs URL argument works, see
`nfs_parse_url_dir` in <nfsc/libnfs.h>.

Why ctypes and not PyPI `libnfs`: that SWIG binding holds the GIL for the whole of every call (its
extension never calls PyEval_SaveThread), so a read waiting on the server would freeze the trio
thread and serialise every worker. ctypes releases the GIL around each foreign call. The binding
below follows the libnfs 4.x/5.x API (sonames 13 and 14; only 13, Debian 12's libnfs13 4.0.0, is
tested); libnfs 6 changed `nfs_pread`'s argument order (LIBNFS_API_V2), so other sonames are refused
rather than called wrongly.

Threads: a libnfs context is not thread safe. Each blocking call borrows a whole context (one TCP
connection, one mounted session) from a small pool, so contexts never outnumber the backend's
CapacityLimiter. A context whose connection failed is destroyed, and the call is retried once on a
fresh one; a server that cannot be reached then surfaces as EHOSTDOWN, one that stops answering as
ETIMEDOUT after `timeout` seconds (not retried). libnfs 4.0 never renews an NFSv4 lease, so a context
whose last OPEN is older than the server's lease (60-90 s) gets NFS4ERR_EXPIRED on its next OPEN; the
same retry replaces it (measured against ganesha with Lease_Lifetime = 5).

Errors: libnfs returns -errno from every call (NFS4ERR_NOENT -> -ENOENT, ...); `_Context.check` turns that
into a SiloError once, here at the edge. libnfs' message text is kept for humans only.

Version = f"{mtime_ns}:{size}" as for a local directory; `read_range` compares it with an fstat of the
opened file and raises ESTALE when it moved. Reads are split into pieces of at most READ_CHUNK.
Symlinks are followed (within the export); sockets, FIFOs and devices are left out of listings.

Writes (WritableBackend; a directory rename is one RENAME, so atomic_dir_rename). `write_file` creates
".vfs-tmp-<random>" exclusively next to the target (listings hide such names; a crash or a broken
connection can leave one behind), writes it in pieces of WRITE_CHUNK (3.5 KiB over NFSv4 with libnfs
4.0, see WRITE_CHUNK_V4_LIBNFS13) with up to WRITE_DEPTH in flight through libnfs' async pwrite
(`_Sender` runs libnfs' poll/nfs_service loop itself), fsyncs it (COMMIT), sets its times, then puts
it in place. Measured against ganesha on loopback: 64 MiB over NFSv4 at 30 MiB/s one WRITE at a
time, 77 MiB/s pipelined; over NFSv3 (1 MiB WRITEs; checked by hand, the suite runs NFSv4) 20 MiB
took 37 ms. Putting it in place:
- expected None: LINK to the target name, which the server refuses (EEXIST -> ESTALE) if the name is
  taken, in the same call: exact. Then the temporary name is removed. A server without hard links
  gets the stat-then-RENAME of the next case instead.
- expected a version: stat the target, compare, RENAME over it. A writer elsewhere that replaces the
  target between that stat and the RENAME (one round trip) is overwritten: NFS has no conditional
  rename. The target is also checked before any byte is sent, so a stale write fails early.
A replaced file keeps its permission bits; the owner is the credential of the URL (uid=, gid=). A
symlink at the target is replaced by the new file, not written through.
mtimes are stored to the microsecond (libnfs' utimes takes a struct timeval); the ObjectMeta returned
is the server's stat of what was written, so it says what was kept. libnfs 4.0's NFSv4 utimes OPENs
the file for writing, so `set_mtime` of a file without owner write permission fails with EACCES
(write_file sets times and mode on its temporary file in an order that avoids it).

Other windows of the same kind, each a stat then the call: NFSv4 REMOVE deletes files and directories
alike, so `delete` (EISDIR) and `rmdir` (ENOTDIR) look at the type first; `rename(replace=False)`
checks the target is absent (EEXIST) first. Everything else is the server's own answer: EEXIST from
mkdir, ENOTEMPTY from RMDIR and from RENAME of a directory onto a non-empty one.

A failure that breaks the connection is retried once on a new context (see Threads). For a change
whose reply was lost on the way back this can misreport (mkdir EEXIST, delete ENOENT, write_file
ESTALE although it landed); libnfs gives no way to tell that case apart.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import itertools
import logging
import os
import select
import secrets
import socket
import stat as st
import threading
import time
from typing import Any, Callable, TypeVar
from urllib.parse import parse_qs, urlsplit

from vfs.errors import RETRYABLE_ERRNOS, SiloError
from vfs.mounts.base import (
    DEFAULT_RENAME_LIMIT, BaseOptions, ObjectMeta, WritableBackend, join, not_a_directory, stale, valid_name,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# Largest single READ sent. Ganesha's default MaxRead and most servers' rsize is 1 MiB; libnfs 4.0
# over NFSv4 does not split larger preads itself and fails them ("nfs_service failed", measured
# here with an 8 MiB pread against ganesha 4.3), so bigger ranges are read as several preads.
READ_CHUNK = 1024 * 1024

# Largest single WRITE sent. libnfs 4.0 encodes an NFSv4 COMPOUND into a fixed 4096-byte buffer
# (ZDR_ENCODEBUF_MINSIZE; 5.0 sizes it to the payload), so a bigger pwrite fails to encode ("ZDR error",
# -1 = EPERM). 4096 less the RPC/COMPOUND header (152 bytes here, with a 24-byte ganesha handle) less
# NFS4_FHSIZE (128), rounded down: 3.5 KiB fits any server's file handle. NFSv3, and libnfs 5, take
# WRITE_CHUNK; libnfs splits NFSv3 writes at the server's wtmax itself.
WRITE_CHUNK = 1024 * 1024
WRITE_CHUNK_V4_LIBNFS13 = 3584
# WRITEs kept in flight on one connection (pipelined through libnfs' async API): bytes, and requests.
# One 3.5 KiB WRITE per round trip would cap NFSv4 at ~30 MiB/s even on loopback.
WRITE_WINDOW = 4 * 1024 * 1024
WRITE_DEPTH = 64

# READDIRs tried before a listing fails with ENOENT/ESTALE while the directory exists. Ganesha without
# attribute caching (Attr_Expiration_Time = 0, as the test silo runs it) fails a whole READDIR with
# NFS4ERR_NOENT or NFS4ERR_STALE when an entry is removed during it: measured, 7 of 300 listings of a
# directory in which another client kept writing (each write_file adds and removes a temporary name).
LIST_ATTEMPTS = 3

# Temporary files write_file creates next to their target, hidden from listings.
TMP_PREFIX = ".vfs-tmp-"
FILE_MODE = 0o644  # a new file's permissions (a replaced file keeps its own)
DIR_MODE = 0o755

# libnfs sonames with the pre-6.0 API this binding declares (13 = libnfs 4.0 on Debian 12, tested here;
# 14 = libnfs 5.x, same header API, untested).
SONAMES = ("libnfs.so.13", "libnfs.so.14")

# errnos that mean "the server answered": the context is still good and the errno is the answer.
# Anything else (libnfs reports a broken connection as EIO "nfs_service failed") retires the context.
# (libnfs 4.0 reports NFS4ERR_DQUOT, and any status it does not know, as ERANGE.)
ANSWERS = frozenset({
    errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.ESTALE,
    errno.ENAMETOOLONG, errno.ELOOP, errno.EINVAL, errno.EROFS, errno.EFBIG,
    errno.EEXIST, errno.ENOTEMPTY, errno.EXDEV, errno.EMLINK, errno.ENOSPC, errno.EDQUOT, errno.ERANGE,
    errno.EOPNOTSUPP,
})
# What a server without hard links answers LINK with (NFS4ERR_NOTSUPP is EINVAL in libnfs 4.0).
NO_LINKS = frozenset({errno.EPERM, errno.EINVAL, errno.EMLINK, errno.EOPNOTSUPP, errno.EXDEV})

# NFS file types (ftype3/nfs_ftype4 share these numbers) for a dirent whose mode lacks S_IFMT bits.
_FTYPE_MODE = {1: st.S_IFREG, 2: st.S_IFDIR, 5: st.S_IFLNK}


# --- the C API (struct layouts from <nfsc/libnfs.h>, libnfs 4.0) -------------------------------

class _Url(ctypes.Structure):
    _fields_ = [("server", ctypes.c_char_p), ("path", ctypes.c_char_p), ("file", ctypes.c_char_p)]


class _Stat64(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "dev", "ino", "mode", "nlink", "uid", "gid", "rdev", "size", "blksize", "blocks",
        "atime", "mtime", "ctime", "atime_nsec", "mtime_nsec", "ctime_nsec", "used")]


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Dirent(ctypes.Structure):
    pass


_Dirent._fields_ = [
    ("next", ctypes.POINTER(_Dirent)), ("name", ctypes.c_char_p), ("inode", ctypes.c_uint64),
    ("type", ctypes.c_uint32), ("mode", ctypes.c_uint32), ("size", ctypes.c_uint64),
    ("atime", _Timeval), ("mtime", _Timeval), ("ctime", _Timeval),
    ("uid", ctypes.c_uint32), ("gid", ctypes.c_uint32), ("nlink", ctypes.c_uint32),
    ("dev", ctypes.c_uint64), ("rdev", ctypes.c_uint64), ("blksize", ctypes.c_uint64),
    ("blocks", ctypes.c_uint64), ("used", ctypes.c_uint64),
    ("atime_nsec", ctypes.c_uint32), ("mtime_nsec", ctypes.c_uint32), ("ctime_nsec", ctypes.c_uint32),
]


# void (*nfs_cb)(int err, struct nfs_context *nfs, void *data, void *private_data)
_Callback = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)


def _load() -> tuple[ctypes.CDLL, str]:
    errors = []
    for soname in SONAMES:
        try:
            lib = ctypes.CDLL(soname)  # CDLL (not PyDLL): the GIL is released during each call
            break
        except OSError as exc:
            errors.append(str(exc))
    else:
        raise ImportError(f"libnfs 4.x/5.x not found ({'; '.join(errors)}); install libnfs13 (Debian) or libnfs14",
                          name="libnfs13")
    vp, cp, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    signatures: dict[str, tuple[Any, list[Any]]] = {
        "nfs_init_context": (vp, []),
        "nfs_destroy_context": (None, [vp]),
        "nfs_get_error": (cp, [vp]),
        "nfs_parse_url_dir": (ctypes.POINTER(_Url), [vp, cp]),
        "nfs_destroy_url": (None, [ctypes.POINTER(_Url)]),
        "nfs_set_timeout": (None, [vp, i]),
        "nfs_set_dircache": (None, [vp, i]),
        "nfs_set_autoreconnect": (None, [vp, i]),
        "nfs4_set_client_name": (None, [vp, cp]),
        "nfs4_set_verifier": (None, [vp, cp]),
        "nfs_mount": (i, [vp, cp, cp]),
        "nfs_stat64": (i, [vp, cp, ctypes.POINTER(_Stat64)]),
        "nfs_open": (i, [vp, cp, i, ctypes.POINTER(vp)]),
        "nfs_close": (i, [vp, vp]),
        "nfs_fstat64": (i, [vp, vp, ctypes.POINTER(_Stat64)]),
        "nfs_pread": (i, [vp, vp, ctypes.c_uint64, ctypes.c_uint64, vp]),
        "nfs_opendir": (i, [vp, cp, ctypes.POINTER(vp)]),
        "nfs_readdir": (ctypes.POINTER(_Dirent), [vp, vp]),
        "nfs_closedir": (None, [vp, vp]),
        # writes (WritableBackend)
        "nfs_lstat64": (i, [vp, cp, ctypes.POINTER(_Stat64)]),
        "nfs_create": (i, [vp, cp, i, i, ctypes.POINTER(vp)]),
        "nfs_fsync": (i, [vp, vp]),
        "nfs_utimes": (i, [vp, cp, ctypes.POINTER(_Timeval)]),
        "nfs_chmod": (i, [vp, cp, i]),
        "nfs_link": (i, [vp, cp, cp]),
        "nfs_rename": (i, [vp, cp, cp]),
        "nfs_unlink": (i, [vp, cp]),
        "nfs_mkdir2": (i, [vp, cp, i]),
        "nfs_rmdir": (i, [vp, cp]),
        # pipelined writes: pwrite's async form (4.x order: nfs, fh, offset, count, buf) and the
        # event loop libnfs' sync calls otherwise run for us
        "nfs_pwrite_async": (i, [vp, vp, ctypes.c_uint64, ctypes.c_uint64, vp, _Callback, vp]),
        "nfs_get_fd": (i, [vp]),
        "nfs_which_events": (i, [vp]),
        "nfs_service": (i, [vp, i]),
    }
    for fname, (restype, argtypes) in signatures.items():
        fn = getattr(lib, fname)
        fn.restype, fn.argtypes = restype, argtypes
    return lib, soname


# Loaded at import, so a missing libnfs shows when the config is checked (vfs.config catches ImportError).
_lib, _soname = _load()


# --- contexts ---------------------------------------------------------------------------------

class _NFSError(SiloError):
    """A failed libnfs call; `answered` says whether the server answered (the context is fine)."""

    def __init__(self, err: int, what: str) -> None:
        if err == errno.EINTR:
            # libnfs' synchronous calls report an RPC that outlived nfs_set_timeout as -EINTR
            # ("Command timed out"); no signal ever interrupts them.
            err = errno.ETIMEDOUT
        super().__init__(err, what, retryable=err in RETRYABLE_ERRNOS)
        self.answered = err in ANSWERS


class _Context:
    """One libnfs context, mounted; used by one thread at a time."""

    def __init__(self, url: str, timeout_ms: int) -> None:
        self.lib = _lib
        self.ctx = self.lib.nfs_init_context()
        if not self.ctx:
            raise SiloError(errno.ENOMEM, "nfs_init_context failed")
        try:
            self.lib.nfs_set_timeout(self.ctx, timeout_ms)
            # The namespace owns metadata caching (with its TTL); libnfs' own directory cache would
            # serve stale listings of a mutable export.
            self.lib.nfs_set_dircache(self.ctx, 0)
            # Each context must be its own NFSv4 client. libnfs names clients "Libnfs pid:<pid> <n>",
            # which two contexts made in the same process can share; the server then merges their open
            # state and one context's reads fail with NFS4ERR_OLD_STATEID.
            self.lib.nfs4_set_client_name(self.ctx, f"vfs {socket.gethostname()} {os.getpid()} {secrets.token_hex(8)}".encode())
            self.lib.nfs4_set_verifier(self.ctx, secrets.token_hex(4).encode())  # 8 bytes, no NUL
            parsed = self.lib.nfs_parse_url_dir(self.ctx, url.encode())
            if not parsed:
                raise SiloError(errno.EINVAL, f"{url}: {self.error()}")
            try:
                server, path = parsed.contents.server, parsed.contents.path or b"/"
                # Failures are ours to retry (a fresh context per attempt); libnfs must not loop.
                self.lib.nfs_set_autoreconnect(self.ctx, 0)
                ret = self.lib.nfs_mount(self.ctx, server, path)
            finally:
                self.lib.nfs_destroy_url(parsed)
            if ret < 0:
                err = -ret
                if err not in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):
                    # libnfs reports refused/unreachable/unresolvable servers as EIO or EPERM with
                    # a message only; at mount time any such failure means "no server there".
                    err = errno.EHOSTDOWN
                raise SiloError(err, f"cannot mount {url}: {self.error()}")
        except BaseException:
            self.close()
            raise

    def error(self) -> str:
        msg = self.lib.nfs_get_error(self.ctx)
        return msg.decode(errors="replace") if msg else "unknown libnfs error"

    def check(self, ret: int, what: str) -> int:
        """`ret` if it is not a -errno; else raise it as an OSError (the one translation)."""
        if ret < 0:
            raise _NFSError(-ret, f"{what}: {self.error()}")
        return ret

    def close(self) -> None:
        if self.ctx:
            self.lib.nfs_destroy_context(self.ctx)
            self.ctx = None


class _Pool:
    """Idle mounted contexts; at most one per worker thread of the backend is ever created."""

    def __init__(self, url: str, timeout_ms: int) -> None:
        self.url, self.timeout_ms = url, timeout_ms
        self.idle: list[_Context] = []
        self.lock = threading.Lock()
        self.closed = False

    def call(self, fn: Callable[[_Context], T]) -> T:
        """Run `fn` on a context; a connection failure on a reused context retries once on a new one."""
        with self.lock:
            ctx = self.idle.pop() if self.idle else None
        reused = ctx is not None
        while True:
            if ctx is None:
                ctx = _Context(self.url, self.timeout_ms)
            try:
                result = fn(ctx)
            except _NFSError as exc:
                if exc.answered:
                    self._give_back(ctx)
                    raise
                ctx.close()
                ctx = None
                if not reused or exc.errno == errno.ETIMEDOUT:
                    raise  # a fresh connection failed too, or the server is slow (waiting twice helps no one)
                log.debug("nfs: %s: dropped a broken context (%s), retrying on a new one", self.url, exc)
                reused = False
                continue
            except SiloError:
                self._give_back(ctx)  # our own verdict (ESTALE, not a regular file): the context is fine
                raise
            except BaseException:
                ctx.close()
                raise
            self._give_back(ctx)
            return result

    def _give_back(self, ctx: _Context) -> None:
        with self.lock:
            if not self.closed:
                self.idle.append(ctx)
                return
        ctx.close()  # the backend was closed while this call ran

    def close(self) -> None:
        with self.lock:
            self.closed = True
            idle, self.idle = self.idle, []
        for ctx in idle:
            ctx.close()


# --- pipelined writes -------------------------------------------------------------------------

@dataclasses.dataclass
class _Write:
    offset: int
    data: bytes  # referenced until answered (libnfs 4/5 copy it when queueing, but a pointer is a pointer)
    sender: "_Sender"


# WRITEs in flight, by the key given to libnfs as private_data. The one callback is module-level and
# finds its write here, so a context destroyed with WRITEs queued (libnfs then cancels them through
# the callback) never calls a freed ctypes thunk; a key its sender gave up on is simply gone.
_in_flight: dict[int, _Write] = {}
_keys = itertools.count(1)


@_Callback
def _written(status: int, nfs: int | None, data: int | None, key: int | None) -> None:
    write = _in_flight.pop(key or 0, None)
    if write is not None:
        message = ctypes.string_at(data).decode(errors="replace") if status < 0 and data else ""
        write.sender.answered(key or 0, write, status, message)


class _Sender:
    """Writes to one open file with up to `depth` WRITEs in flight, running libnfs' event loop itself
    (poll, then nfs_service at least every 100 ms, as libnfs' sync calls do, so RPC timeouts fire)."""

    def __init__(self, ctx: _Context, fh: ctypes.c_void_p, what: str, depth: int) -> None:
        self.ctx, self.fh, self.what, self.depth = ctx, fh, what, depth
        self.keys: set[int] = set()
        self.short: list[tuple[int, bytes]] = []  # rests of WRITEs the server took only part of
        self.error: _NFSError | None = None

    def send(self, offset: int, data: bytes) -> None:
        """Queue one WRITE (waiting for room); raises the first failure of any earlier one."""
        while len(self.keys) >= self.depth and self.error is None:
            self._service()
        self._raise_failure()
        key = next(_keys)
        _in_flight[key] = _Write(offset, data, self)
        if self.ctx.lib.nfs_pwrite_async(self.ctx.ctx, self.fh, offset, len(data), data, _written, key) != 0:
            del _in_flight[key]
            self.error = _NFSError(errno.EIO, f"{self.what}: {self.ctx.error()}")
            self._raise_failure()
        self.keys.add(key)

    def drain(self) -> None:
        """Wait until every byte sent is written; raises the first failure."""
        while self.keys or self.short:
            while self.short and self.error is None:
                self.send(*self.short.pop())
            if self.keys:
                self._service()
        self._raise_failure()

    def close(self) -> None:
        """Forget WRITEs still out (a broken connection): their context is about to be destroyed."""
        for key in self.keys:
            _in_flight.pop(key, None)
        self.keys.clear()

    def answered(self, key: int, write: _Write, status: int, message: str) -> None:
        """libnfs' answer to one WRITE (called from inside nfs_service: keep it plain)."""
        self.keys.discard(key)
        if status < 0 or (status == 0 and write.data):
            self.error = self.error or _NFSError(-status if status else errno.EIO, f"{self.what}: {message or 'wrote nothing'}")
        elif status < len(write.data):
            self.short.append((write.offset + status, write.data[status:]))

    def _raise_failure(self) -> None:
        if self.error is not None:
            while self.keys:  # let the WRITEs still out come back first: the context stays usable
                self._service()
            raise self.error

    def _service(self) -> None:
        poller = select.poll()
        poller.register(self.ctx.lib.nfs_get_fd(self.ctx.ctx), self.ctx.lib.nfs_which_events(self.ctx.ctx))
        try:
            ready = poller.poll(100)
            revents = ready[0][1] if ready else 0
        except OSError:
            revents = -1
        if self.ctx.lib.nfs_service(self.ctx.ctx, revents) < 0:
            raise _NFSError(errno.EIO, f"{self.what}: nfs_service failed: {self.ctx.error()}")


# --- the backend ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class NFSOptions(BaseOptions):
    url: str
    """libnfs URL: nfs://host/export/sub/dir[?version=4&nfsport=N&uid=N&gid=N...]"""
    timeout: float = 30.0
    """Seconds before one NFS call gives up (libnfs nfs_set_timeout)."""

    def __post_init__(self) -> None:
        """ValueError `url: problem` for a URL libnfs could not mount."""
        parts = urlsplit(self.url)
        if parts.scheme != "nfs" or not parts.hostname or any(c.isspace() or ord(c) < 32 for c in self.url):
            raise ValueError(f"url: expected nfs://host/export/path, got {self.url!r}")
        try:
            _nfs_version(self.url)
        except ValueError:
            raise ValueError(f"url: version must be 3 or 4, got {self.url!r}") from None


def _mode_of(mode: int, ftype: int) -> int:
    return mode if st.S_IFMT(mode) else mode | _FTYPE_MODE.get(ftype, 0)


def _meta(path: str, mode: int, size: int, mtime_ns: int) -> ObjectMeta | None:
    if st.S_ISDIR(mode):
        return ObjectMeta(path, True, 0, mtime_ns)
    if st.S_ISREG(mode):
        return ObjectMeta(path, False, size, mtime_ns, f"{mtime_ns}:{size}")
    return None


def _stat_meta(path: str, s: _Stat64) -> ObjectMeta | None:
    return _meta(path, s.mode, s.size, s.mtime * 1_000_000_000 + s.mtime_nsec)


def _timeval(ns: int) -> _Timeval:
    """A timestamp as NFS SETATTR takes it from libnfs: microseconds (below that is dropped)."""
    sec, rest = divmod(ns, 1_000_000_000)
    return _Timeval(sec, rest // 1000)


def _nfs_version(url: str) -> int:
    """The NFS version a libnfs URL asks for (libnfs' default is 3)."""
    version = int(parse_qs(urlsplit(url).query).get("version", ["3"])[-1])
    if version not in (3, 4):
        raise ValueError(f"NFS version {version}")
    return version


class NFSBackend(WritableBackend):
    scheme = "nfs"
    Options = NFSOptions
    atomic_dir_rename = True

    def __init__(self, options: NFSOptions) -> None:
        super().__init__(options)
        self.url = options.url
        self.pool = _Pool(options.url, max(1, int(options.timeout * 1000)))
        v4_small = _nfs_version(options.url) == 4 and _soname == "libnfs.so.13"
        self.write_chunk = WRITE_CHUNK_V4_LIBNFS13 if v4_small else WRITE_CHUNK
        self.write_depth = max(1, min(WRITE_DEPTH, WRITE_WINDOW // self.write_chunk))

    @classmethod
    def options_from_url(cls, url: str) -> dict[str, Any]:
        return {"url": url}

    def describe(self) -> str:
        return self.url

    @staticmethod
    def _nfs_path(path: str) -> bytes:
        return os.fsencode("/" + path)

    # Each of these runs in a worker thread, on a borrowed context.

    def _stat64(self, ctx: _Context, path: str, *, follow: bool = True) -> _Stat64:
        s = _Stat64()
        call = ctx.lib.nfs_stat64 if follow else ctx.lib.nfs_lstat64
        ctx.check(call(ctx.ctx, self._nfs_path(path), ctypes.byref(s)), f"stat {path!r}")
        return s

    def _stat(self, ctx: _Context, path: str) -> ObjectMeta:
        meta = _stat_meta(path, self._stat64(ctx, path))
        if meta is None:
            raise SiloError(errno.ENOENT, f"{self.url} {path!r} is not a regular file or directory")
        return meta

    def _opendir(self, ctx: _Context, path: str) -> ctypes.c_void_p:
        handle = ctypes.c_void_p()
        for attempt in range(1, LIST_ATTEMPTS + 1):
            ret = ctx.lib.nfs_opendir(ctx.ctx, self._nfs_path(path), ctypes.byref(handle))
            if ret >= 0 or -ret not in (errno.ENOENT, errno.ESTALE) or attempt == LIST_ATTEMPTS:
                break
            # Perhaps a READDIR during which an entry vanished: again if the directory is still there.
            if not st.S_ISDIR(self._stat64(ctx, path).mode):
                raise not_a_directory(path)
        ctx.check(ret, f"list {path!r}")
        return handle

    def _list(self, ctx: _Context, path: str) -> list[ObjectMeta]:
        handle = self._opendir(ctx, path)
        entries = []
        try:
            while ent := ctx.lib.nfs_readdir(ctx.ctx, handle):
                e = ent.contents
                name = os.fsdecode(e.name)
                if valid_name(name) and not name.startswith(TMP_PREFIX):
                    mtime_ns = e.mtime.tv_sec * 1_000_000_000 + e.mtime_nsec
                    entries.append((name, _mode_of(e.mode, e.type), e.size, mtime_ns))
        finally:
            ctx.lib.nfs_closedir(ctx.ctx, handle)
        out = []
        for name, mode, size, mtime_ns in entries:
            child = join(path, name)
            if st.S_ISLNK(mode):
                try:
                    out.append(self._stat(ctx, child))
                except _NFSError as exc:
                    if not exc.answered:
                        raise
                except SiloError:
                    pass  # a dangling symlink, or one to a socket/FIFO/device
                continue
            meta = _meta(child, mode, size, mtime_ns)
            if meta is not None:
                out.append(meta)
        return sorted(out, key=lambda m: m.name)

    def _read(self, ctx: _Context, path: str, start: int, end: int, version: str) -> bytes:
        fh = ctypes.c_void_p()
        ctx.check(ctx.lib.nfs_open(ctx.ctx, self._nfs_path(path), os.O_RDONLY, ctypes.byref(fh)), f"open {path!r}")
        try:
            s = _Stat64()
            ctx.check(ctx.lib.nfs_fstat64(ctx.ctx, fh, ctypes.byref(s)), f"fstat {path!r}")
            if f"{s.mtime * 1_000_000_000 + s.mtime_nsec}:{s.size}" != version:
                raise stale(path)
            end = min(end, s.size)
            buf = bytearray(max(0, end - start))
            got = 0
            while got < len(buf):
                want = min(READ_CHUNK, len(buf) - got)
                piece = (ctypes.c_char * want).from_buffer(buf, got)
                n = ctx.check(ctx.lib.nfs_pread(ctx.ctx, fh, start + got, want, piece), f"read {path!r}")
                del piece  # release the export of buf before it may be resized
                if n == 0:
                    break  # EOF: the file shrank under us; the caller gets a short read
                got += n
            del buf[got:]
            return bytes(buf)
        finally:
            ctx.lib.nfs_close(ctx.ctx, fh)

    # Writes.

    def _lookup(self, ctx: _Context, path: str) -> _Stat64 | None:
        """The stat of `path`, None if nothing is there."""
        try:
            return self._stat64(ctx, path)
        except _NFSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise

    def _holds(self, ctx: _Context, path: str, expected: str | None) -> _Stat64 | None:
        """The stat of `path` if it holds version `expected` (None: nothing there); else ESTALE."""
        s = self._lookup(ctx, path)
        if s is None:
            held = None
        else:
            meta = _stat_meta(path, s)
            held = meta.version if meta is not None and not meta.is_dir else "not a regular file"
        if held != expected:
            raise stale(path)
        return s

    def _upload(self, ctx: _Context, tmp: str, source: str, mode: int) -> None:
        """Create `tmp` (exclusively) holding the bytes of the local file `source`, on stable storage."""
        fh = ctypes.c_void_p()
        path = self._nfs_path(tmp)
        ctx.check(ctx.lib.nfs_create(ctx.ctx, path, os.O_WRONLY | os.O_EXCL, mode, ctypes.byref(fh)), f"create {tmp!r}")
        sender = _Sender(ctx, fh, f"write {tmp!r}", self.write_depth)
        try:
            offset = 0
            with open(source, "rb", buffering=0) as f:
                while data := f.read(self.write_chunk):
                    sender.send(offset, data)
                    offset += len(data)
            sender.drain()
            ctx.check(ctx.lib.nfs_fsync(ctx.ctx, fh), f"fsync {tmp!r}")
        finally:
            sender.close()
            ctx.lib.nfs_close(ctx.ctx, fh)

    def _utimes(self, ctx: _Context, path: str, atime_ns: int, mtime_ns: int) -> None:
        times = (_Timeval * 2)(_timeval(atime_ns), _timeval(mtime_ns))
        ctx.check(ctx.lib.nfs_utimes(ctx.ctx, self._nfs_path(path), times), f"utimes {path!r}")

    def _write(self, ctx: _Context, path: str, source: str, expected: str | None, mtime_ns: int | None) -> ObjectMeta:
        before = self._holds(ctx, path, expected)  # fail before sending any byte
        mode = st.S_IMODE(before.mode) if before is not None else FILE_MODE
        parent = path.rpartition("/")[0]
        tmp = join(parent, f"{TMP_PREFIX}{secrets.token_hex(8)}")
        try:
            # Writable by its owner until done: libnfs' utimes and chmod OPEN the file for writing.
            self._upload(ctx, tmp, source, mode | st.S_IWUSR)
            # Always set: an exclusive create (EXCLUSIVE4) leaves the verifier in atime/mtime, and an
            # empty file gets no WRITE that would replace it.
            now = time.time_ns()
            self._utimes(ctx, tmp, now, now if mtime_ns is None else mtime_ns)
            if not mode & st.S_IWUSR:
                ctx.check(ctx.lib.nfs_chmod(ctx.ctx, self._nfs_path(tmp), mode), f"chmod {tmp!r}")
            s = self._stat64(ctx, tmp)
            written_ns = s.mtime * 1_000_000_000 + s.mtime_nsec
            meta = ObjectMeta(path, False, s.size, written_ns, f"{written_ns}:{s.size}")
            if expected is None and self._link(ctx, tmp, path):
                self._remove_quietly(ctx, tmp)
                return meta
            self._holds(ctx, path, expected)
            ctx.check(ctx.lib.nfs_rename(ctx.ctx, self._nfs_path(tmp), self._nfs_path(path)), f"rename to {path!r}")
            return meta
        except BaseException as exc:
            if not isinstance(exc, _NFSError) or exc.answered:  # else the connection is gone (or slow)
                self._remove_quietly(ctx, tmp)
            raise

    def _link(self, ctx: _Context, tmp: str, path: str) -> bool:
        """Give `tmp` the name `path` only if that name is free (ESTALE if taken), in one call of the
        server; False if the server has no hard links, and nothing was done."""
        try:
            ctx.check(ctx.lib.nfs_link(ctx.ctx, self._nfs_path(tmp), self._nfs_path(path)), f"link to {path!r}")
        except _NFSError as exc:
            if exc.errno == errno.EEXIST:
                raise stale(path) from None
            if exc.errno in NO_LINKS:
                return False
            raise
        return True

    def _remove_quietly(self, ctx: _Context, tmp: str) -> None:
        ret = ctx.lib.nfs_unlink(ctx.ctx, self._nfs_path(tmp))
        if ret < 0 and -ret != errno.ENOENT:
            log.warning("nfs: %s: could not remove %r (%s); it stays, hidden from listings", self.url, tmp, ctx.error())

    def _delete(self, ctx: _Context, path: str) -> None:
        # NFSv4 REMOVE takes files and directories alike: look first.
        if st.S_ISDIR(self._stat64(ctx, path, follow=False).mode):
            raise SiloError(errno.EISDIR, f"delete {path!r}: a directory")
        ctx.check(ctx.lib.nfs_unlink(ctx.ctx, self._nfs_path(path)), f"delete {path!r}")

    def _rmdir(self, ctx: _Context, path: str) -> None:
        if not st.S_ISDIR(self._stat64(ctx, path, follow=False).mode):
            raise not_a_directory(path)
        ctx.check(ctx.lib.nfs_rmdir(ctx.ctx, self._nfs_path(path)), f"rmdir {path!r}")

    def _rename(self, ctx: _Context, src: str, dst: str, replace: bool) -> None:
        if not replace:
            try:
                self._stat64(ctx, dst, follow=False)
            except _NFSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
            else:
                raise SiloError(errno.EEXIST, f"rename to {dst!r}: taken")
        ctx.check(ctx.lib.nfs_rename(ctx.ctx, self._nfs_path(src), self._nfs_path(dst)), f"rename {src!r} to {dst!r}")

    def _set_mtime(self, ctx: _Context, path: str, mtime_ns: int) -> ObjectMeta:
        s = self._stat64(ctx, path)
        self._utimes(ctx, path, s.atime * 1_000_000_000 + s.atime_nsec, mtime_ns)
        return self._stat(ctx, path)

    # The protocol.

    async def stat(self, path: str) -> ObjectMeta:
        return await self.run_sync(self.pool.call, lambda ctx: self._stat(ctx, path))

    async def list_dir(self, path: str) -> list[ObjectMeta]:
        try:
            return await self.run_sync(self.pool.call, lambda ctx: self._list(ctx, path))
        except NotADirectoryError:
            raise not_a_directory(path) from None

    async def read_range(self, path: str, start: int, end: int, version: str) -> bytes:
        return await self.run_sync(self.pool.call, lambda ctx: self._read(ctx, path, start, end, version))

    async def write_file(self, path: str, source: str, expected: str | None, mtime_ns: int | None = None) -> ObjectMeta:
        return await self.run_sync(self.pool.call, lambda ctx: self._write(ctx, path, source, expected, mtime_ns))

    async def delete(self, path: str) -> None:
        await self.run_sync(self.pool.call, lambda ctx: self._delete(ctx, path))

    async def mkdir(self, path: str) -> None:
        await self.run_sync(self.pool.call, lambda ctx: ctx.check(
            ctx.lib.nfs_mkdir2(ctx.ctx, self._nfs_path(path), DIR_MODE), f"mkdir {path!r}"))

    async def rmdir(self, path: str) -> None:
        await self.run_sync(self.pool.call, lambda ctx: self._rmdir(ctx, path))

    async def rename(self, src: str, dst: str, *, replace: bool = True, limit: int = DEFAULT_RENAME_LIMIT) -> None:
        await self.run_sync(self.pool.call, lambda ctx: self._rename(ctx, src, dst, replace))

    async def set_mtime(self, path: str, mtime_ns: int) -> ObjectMeta:
        return await self.run_sync(self.pool.call, lambda ctx: self._set_mtime(ctx, path, mtime_ns))

    async def aclose(self) -> None:
        await self.run_sync(self.pool.close)

    async def probe(self) -> None:
        """One real request (a stat of the export's root, on a fresh connection if none is open):
        whether the server answers, for the offline breaker (vfs/mounts/health.py)."""
        await self.run_sync(self.pool.call, lambda ctx: self._stat(ctx, ""))
