"""The Backend protocol: what every silo (S3, GCS, NFS, Drive, a local directory, memory) offers.

Small and mandatory: `stat`, `list_dir`, `read_range`. Paths are backend-relative, '/'-separated,
with no leading slash; '' is the backend's root. Extras (writes, ...) are discovered with
`hasattr`, never faked.

Rules every implementation keeps (and the conformance suite in tests/ checks):
- errors are OSError subclasses carrying an errno (`vfs.errors.SiloError`); never match on text;
- `stat` of a missing path raises ENOENT; `list_dir` of a file raises ENOTDIR;
- a name that is both an object and a prefix (`x` and `x/y`) is a directory, every time; the object
  is not shown (object stores only; README "Names that are both a file and a directory");
- `version` changes whenever the bytes may have: `read_range(..., version)` of a path whose version
  is no longer `version` raises ESTALE rather than return bytes of another version;
- the SDKs block, so their calls run in `trio.to_thread` under the backend's CapacityLimiter
  (`Backend.run_sync`); a blocking call on the trio thread would stall the whole mount.
"""

from __future__ import annotations

import abc
import dataclasses
import errno
import functools
from typing import Any, Callable, ClassVar, TypeVar

import trio

from vfs.errors import SiloError

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


@dataclasses.dataclass
class BackendStats:
    """What a backend was asked and how it went, for `.vfs/stats`. Counted on the trio thread."""

    requests: int = 0
    """Calls of stat, list_dir and read_range (one may cost several HTTP requests: pages, retries)."""
    errors: int = 0
    """Calls that failed, not counting the ordinary answers ENOENT and ENOTDIR."""
    bytes: int = 0
    """Bytes returned by read_range."""
    retries: int = 0
    """Requests the backend (or its SDK) sent again after a throttle, timeout or server error."""


# Failures that are ordinary answers, not errors of the silo.
_ANSWERS = frozenset({errno.ENOENT, errno.ENOTDIR})


def _counted(backend: "Backend", fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` (a bound method of `backend`) counted in `backend.stats`."""
    stats = backend.stats

    @functools.wraps(fn)
    async def counted(*args: Any, **kwargs: Any) -> Any:
        stats.requests += 1
        try:
            out = await fn(*args, **kwargs)
        except OSError as exc:
            if exc.errno not in _ANSWERS:
                stats.errors += 1
            exc.silo = backend.describe()  # type: ignore[attr-defined]  # logs are rate-limited per silo
            raise
        except Exception:
            stats.errors += 1
            raise
        if isinstance(out, bytes):
            stats.bytes += len(out)
        return out

    return counted


class Backend(abc.ABC):
    """One silo, seen as a read-only tree of directories and files."""

    scheme: ClassVar[str]
    """Name in config (`backend = "s3"`) and URL scheme in one-liners (`s3://bucket/prefix`)."""
    Options: ClassVar[type[BaseOptions]]
    """Frozen dataclass of this backend's options; config validates entries against its fields."""

    def __init__(self, options: BaseOptions) -> None:
        self.options = options
        self.limiter = trio.CapacityLimiter(options.concurrency)
        self.stats = BackendStats()
        for name in ("stat", "list_dir", "read_range"):  # every call counted, once, whatever the subclass
            setattr(self, name, _counted(self, getattr(self, name)))

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
