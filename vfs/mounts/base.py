"""The Backend protocol: what every silo (S3, GCS, NFS, Drive, a local directory, memory) offers.

Small and mandatory: `stat`, `list_dir`, `read_range`. Paths are backend-relative, '/'-separated,
with no leading slash; '' is the backend's root. A silo vfs can change is a `WritableBackend`
(`write_file`, `delete`, `mkdir`, `rmdir`, `rename`, `set_mtime`); the core discovers that with
`isinstance`, never by trying. Every call of either protocol is counted and timed in `Backend.stats`
by a wrapper that `__init_subclass__` puts around each implementation once, at class creation.

Rules every implementation keeps (and the conformance suite in tests/ checks):
- errors are OSError subclasses carrying an errno (`vfs.errors.SiloError`); never match on text;
- `stat` of a missing path raises ENOENT; `list_dir` of a file raises ENOTDIR;
- a name that is both an object and a prefix (`x` and `x/y`) is a directory, every time; the object
  is not shown (object stores only; README "Names that are both a file and a directory");
- `version` changes whenever the bytes may have: `read_range(..., version)` of a path whose version
  is no longer `version` raises ESTALE rather than return bytes of another version;
- every commit of a WritableBackend carries a precondition: `write_file(path, source, expected)`
  succeeds only if the silo still holds version `expected` at `path` (None: nothing there), and
  raises ESTALE otherwise, so a concurrent writer elsewhere is never silently overwritten;
- the SDKs block, so their calls run in `trio.to_thread` under the backend's CapacityLimiter
  (`Backend.run_sync`); a blocking call on the trio thread would stall the whole mount.
"""

from __future__ import annotations

import abc
import contextvars
import dataclasses
import errno
import functools
import time
from typing import Any, Callable, ClassVar, TypeVar

import trio

from vfs.errors import SiloError
from vfs.mounts.faults import Faults
from vfs.mounts.health import Health
from vfs.metrics import Counter, Histogram, Registry

T = TypeVar("T")

# Threads per backend for blocking SDK calls. 16 keeps 2 vCPUs busy on loopback servers and is
# well under boto3's connection pool, which each backend sizes to match.
DEFAULT_CONCURRENCY = 16


@dataclasses.dataclass(frozen=True, slots=True)
class ObjectMeta:
    """What a silo says about one path. `version` is opaque ('' for directories)."""

    path: str
    is_dir: bool
    size: int = 0
    mtime_ns: int | None = None
    version: str = ""

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


def join(parent: str, name: str) -> str:
    """Join backend-relative paths ('' is the root)."""
    return f"{parent}/{name}" if parent else name


def valid_name(name: str) -> bool:
    """Whether an entry name can appear in a POSIX directory (object keys can hold anything)."""
    return name not in ("", ".", "..") and "/" not in name and "\0" not in name and len(name.encode()) <= 255


def not_found(what: str) -> SiloError:
    return SiloError(errno.ENOENT, what)


def not_a_directory(what: str) -> SiloError:
    return SiloError(errno.ENOTDIR, what)


def stale(what: str) -> SiloError:
    return SiloError(errno.ESTALE, f"{what} changed since it was opened")


@dataclasses.dataclass(frozen=True, kw_only=True)
class BaseOptions:
    """Options every backend accepts in a `[[mount]]` entry, besides its own.

    Keyword-only, so a backend's Options subclass may declare required fields (no default).
    """

    concurrency: int = DEFAULT_CONCURRENCY


# Failures that are ordinary answers, not errors of the silo.
_ANSWERS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EEXIST, errno.ENOTEMPTY, errno.EXDEV})
# The calls of both protocols, counted by the wrapper that Backend.__init_subclass__ installs.
_COUNTED = ("stat", "list_dir", "read_range", "write_file", "delete", "mkdir", "rmdir", "rename", "set_mtime")


class BackendStats:
    """What a backend was asked and how it went: metric children of its own, bumped on the trio
    thread, which `register` makes part of a mount's registry (label `silo`: the mount path)."""

    def __init__(self) -> None:
        self.calls = {op: Histogram() for op in _COUNTED}
        """Calls of the protocol by how long they took (one may cost several HTTP requests: pages,
        parts, retries)."""
        self.failed = {op: Counter() for op in _COUNTED}
        """Calls that failed, not counting the ordinary answers ENOENT, ENOTDIR, EEXIST..."""
        self.read = Counter()
        """Bytes returned by read_range."""
        self.committed = Counter()
        """Bytes committed by write_file."""
        self.retried = Counter()
        """Requests the backend (or its SDK) sent again after a throttle, timeout or server error."""

    @property
    def requests(self) -> int:
        return sum(h.count for h in self.calls.values())

    @property
    def errors(self) -> int:
        return sum(int(c.value) for c in self.failed.values())

    @property
    def bytes(self) -> int:
        return int(self.read.value)

    @property
    def written(self) -> int:
        return int(self.committed.value)

    @property
    def retries(self) -> int:
        return int(self.retried.value)

    @retries.setter
    def retries(self, value: int) -> None:  # backends count with `stats.retries += n`
        self.retried.value = value

    def totals(self) -> dict[str, int]:
        return {"requests": self.requests, "errors": self.errors, "bytes": self.bytes, "written": self.written,
                "retries": self.retries}

    def register(self, registry: Registry, silo: str, describe: str) -> None:
        """Show these counters in `registry`, labelled with the mount path `silo`."""
        registry.static(("backends", silo, "silo"), describe)  # .vfs/stats only: no label names a silo's URL
        calls = registry.histogram("backend_request_duration_seconds", "Calls of the silo's protocol by duration",
                                   ("silo", "operation"), stats=("backends", "{silo}", "requests"),
                                   stats_sum=("backends", "{silo}", "seconds"))
        failed = registry.counter("backend_errors", "Calls of the silo's protocol that failed (not ENOENT and "
                                  "other ordinary answers)", ("silo", "operation"), ("backends", "{silo}", "errors"))
        for op in _COUNTED:
            calls.attach((silo, op), self.calls[op])
            failed.attach((silo, op), self.failed[op])
        for name, help, stats, child in (
            ("backend_read_bytes", "Bytes read from the silo", "bytes", self.read),
            ("backend_written_bytes", "Bytes committed to the silo", "written", self.committed),
            ("backend_retries", "Requests sent again after a throttle, timeout or server error", "retries", self.retried),
        ):
            registry.counter(name, help, ("silo",), ("backends", "{silo}", stats)).attach((silo,), child)


# The backend whose protocol call the current task is inside (nested calls report to its breaker once).
_calling: contextvars.ContextVar[object] = contextvars.ContextVar("vfs_backend_call", default=None)


def _counted(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` (a protocol method) counted in its backend's `stats`, once however often subclassed."""
    if getattr(fn, "_counted", False):
        return fn
    op = fn.__name__

    @functools.wraps(fn)
    async def counted(backend: "Backend", *args: Any, **kwargs: Any) -> Any:
        # Offline mode (vfs/mounts/health.py): the outermost call of a silo fails at once while it is
        # offline, and tells its breaker whether the silo answered.
        outer = _calling.get() is not backend
        if outer:
            try:
                backend.health.check()
            except OSError as exc:
                exc.silo = backend.describe()  # type: ignore[attr-defined]
                raise
        token = _calling.set(backend)
        stats = backend.stats
        start = time.perf_counter()
        cut = False
        try:
            if outer and backend.faults is not None:  # rehearsed failures (vfs/mounts/faults.py)
                cut = await backend.faults.before(op, f"{backend.describe()}/{args[0] if args else ''}")
            out = await fn(backend, *args, **kwargs)
        except OSError as exc:
            if exc.errno not in _ANSWERS:
                stats.failed[op].inc()
            exc.silo = backend.describe()  # type: ignore[attr-defined]  # logs are rate-limited per silo
            if outer:
                backend.health.failed(exc)
            raise
        except Exception:
            stats.failed[op].inc()
            raise
        finally:
            _calling.reset(token)
            stats.calls[op].observe(time.perf_counter() - start)
        if outer:
            backend.health.answered()
        if cut and isinstance(out, bytes):
            out = out[: len(out) // 2]
        if isinstance(out, bytes):
            stats.read.inc(len(out))
        elif op == "write_file":
            stats.committed.inc(out.size)
        return out

    counted._counted = True  # type: ignore[attr-defined]
    return counted


class Backend(abc.ABC):
    """One silo, seen as a read-only tree of directories and files."""

    scheme: ClassVar[str]
    """Name in config (`backend = "s3"`) and URL scheme in one-liners (`s3://bucket/prefix`)."""
    Options: ClassVar[type[BaseOptions]]
    """Frozen dataclass of this backend's options; config validates entries against its fields."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in _COUNTED:  # every call counted, once, whatever the subclass overrides
            fn = cls.__dict__.get(name)
            if fn is not None and not getattr(fn, "__isabstractmethod__", False):
                setattr(cls, name, _counted(fn))

    def __init__(self, options: BaseOptions) -> None:
        self.options = options
        self.limiter = trio.CapacityLimiter(options.concurrency)
        self.stats = BackendStats()
        self.faults: Faults | None = None
        """Faults to inject into this backend's calls, if any (config `faults`, tests)."""
        self.health = Health(self.describe)
        """Whether the silo can be reached (offline mode); told by the counting wrapper."""

    @classmethod
    def options_from_url(cls, url: str) -> dict[str, Any]:
        """Options for a one-liner source such as `s3://bucket/prefix`."""
        raise ValueError(f"{cls.scheme} takes no URL form")

    @abc.abstractmethod
    def describe(self) -> str:
        """A short human name for logs and errors, e.g. `s3://bucket/prefix`."""

    @abc.abstractmethod
    async def stat(self, path: str) -> ObjectMeta:
        """Metadata of one path; ENOENT if it does not exist."""

    @abc.abstractmethod
    async def list_dir(self, path: str) -> list[ObjectMeta]:
        """Every child of a directory (all pages), each with full metadata; ENOTDIR/ENOENT."""

    @abc.abstractmethod
    async def read_range(self, path: str, start: int, end: int, version: str) -> bytes:
        """Bytes [start, end) of the file at `version`; short at EOF; ESTALE if the version is gone."""

    async def aclose(self) -> None:
        """Release connections and threads."""

    async def run_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking SDK call in a worker thread under this backend's limiter."""
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=self.limiter)


# Keys a directory rename on an object store may copy (and then delete) one by one; beyond it the
# rename fails with EXDEV before changing anything, and `mv` falls back to copying file by file.
DEFAULT_RENAME_LIMIT = 1000


class WritableBackend(Backend):
    """A silo vfs can change. Paths as in Backend; the parent of a path written is a directory that
    exists (the core checks it first), except that object stores need none.

    Errors: ENOENT (no such path), EEXIST, ENOTEMPTY, ENOTDIR, EISDIR as POSIX means them; ESTALE
    when a precondition no longer holds; EXDEV for a directory rename an object store will not do.
    """

    atomic_dir_rename: ClassVar[bool] = False
    """True where renaming a directory is one atomic call of the silo (local, NFS, Drive); object
    stores copy and delete each key below it instead (see `rename`)."""

    uploads: "MountUploads | None" = None
    """Where a backend notes the multipart uploads it starts (vfs/uploads.py), set by the core when the
    mount is writable; None: nothing is noted (tests, `vfs` commands that do not write)."""

    async def abort_upload(self, key: str, upload: str) -> None:
        """Abort an upload an earlier run started and a crash left unfinished (`uploads` noted it);
        done if the silo no longer knows it. Silos without such uploads have nothing to do."""

    @abc.abstractmethod
    async def write_file(self, path: str, source: str, expected: str | None, mtime_ns: int | None = None) -> ObjectMeta:
        """Make `path` hold the bytes of the local file `source`, in one step readers cannot see half
        of, and only if the silo still holds version `expected` there (None: nothing may be there).
        ESTALE otherwise, and the silo keeps what it had. `mtime_ns` is stored where the silo keeps a
        modification time (returned by `stat`; listings of S3 show the upload time). Large files go up
        in parts or resumably, never whole in memory. Returns the new file's metadata."""

    @abc.abstractmethod
    async def delete(self, path: str) -> None:
        """Remove the file at `path`; ENOENT if there is none, EISDIR for a directory."""

    @abc.abstractmethod
    async def mkdir(self, path: str) -> None:
        """Create an empty directory (a marker object on object stores); EEXIST if the name is taken."""

    @abc.abstractmethod
    async def rmdir(self, path: str) -> None:
        """Remove an empty directory; ENOTEMPTY if it holds anything, ENOTDIR for a file, ENOENT."""

    @abc.abstractmethod
    async def rename(self, src: str, dst: str, *, replace: bool = True, limit: int = DEFAULT_RENAME_LIMIT) -> None:
        """Move a file or a directory. A file replaces a file at `dst` unless `replace` is False
        (EEXIST); a directory may replace only an empty directory (else ENOTEMPTY). Object stores move
        a directory key by key (copy, then delete the source); more than `limit` keys: EXDEV, with
        nothing changed. ENOENT if `src` is missing."""

    @abc.abstractmethod
    async def set_mtime(self, path: str, mtime_ns: int) -> ObjectMeta:
        """Store a file's modification time (utime); returns its metadata afterwards (the version
        may change: S3 and GCS rewrite the object's metadata)."""
