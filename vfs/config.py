"""Configuration: a TOML file (or one-liner sources) checked into frozen dataclasses before anything mounts.

    [cache]                      # block cache (all optional)
    block_size = "4MiB"
    ram_size = "512MiB"
    ram_policy = "lru"
    ssd_dir = "~/.cache/vfs"     # SSD tier; off while ssd_size is 0
    ssd_size = "0"
    ssd_policy = "lru"
    trace_file = ""              # record block accesses for `vfs cache simulate`
    cluster = ""                 # cluster tier on Redis Cluster: "redis://host:port,host:port" (seed
                                 # nodes; rediss:// for TLS); "" = off (README "Cluster tier")
    cluster_password = ""        # or cluster_password_file = "~/.config/vfs/redis.pass"
    cluster_timeout = 0.5        # seconds a cluster call may cost before the read goes to the silo

    [metadata]
    ttl = 60                     # seconds listings/attributes are trusted (kernel timeouts too)
    negative_ttl = 5             # seconds a "no such file" is trusted
    offline = "auto"             # auto: serve what is cached while a silo is unreachable; never

    [metrics]
    addr = ""                    # Prometheus metrics at HOST:PORT ("127.0.0.1:9567", "[::1]:9567",
                                 # ":9567"); "" serves none (also `vfs mount --metrics-addr`)

    [fuse]
    allow_other = false
    auto_unmount = true          # unmount even if the process is killed
    read_ahead_kb = 1024         # kernel readahead for the mount when permitted (root); 0 = leave it
    pin_handle_version = false   # true: each open file keeps reading the version it opened (costs a
                                 # request per open and per close; see README "Opens and versions")

    [write]                      # writes (vfs/commit.py)
    mode = "through"             # through, back, cache, off; a mount may say `write_mode`
    write_back_delay = 5         # mode back: seconds after the last close before the commit
    staging_dir = "~/.local/state/vfs/staging"
    staging_size = "10GiB"       # files being written, pinned, never evicted
    drain_timeout = 30           # unmount waits this long for pending commits
    rename_limit = 1000          # keys an object store copies one by one to rename a directory

    [[mount]]                    # any number
    path = "/s3/a"               # where it appears in the tree
    backend = "s3"               # s3, gcs, nfs, gdrive, local
    bucket = "my-bucket"         # ...and that backend's own options
    ttl = 600                    # optional per-mount override of [metadata]

A bad file is reported as one line naming the file, the key and what is wrong (ConfigError); the
value is shown unless the key holds a secret. Numbers are checked against the ranges in `_LIMITS`
(NaN, infinities, negative and absurd values refused), strings for NUL characters, buckets, URLs and
addresses for their form; what needs the filesystem or the network is vfs/preflight.py's.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import posixpath
import re
import tomllib
import urllib.parse
import types
import typing
from pathlib import Path
from typing import Any

from vfs.mounts import BACKENDS, URL_SCHEMES, backend_class
from vfs.mounts.base import BaseOptions
from vfs.mounts.faults import FaultSpec
from vfs.units import format_size, parse_size


class ConfigError(ValueError):
    """A configuration that cannot be mounted; the message names file, key and problem."""


@dataclasses.dataclass(frozen=True)
class CacheConfig:
    # 4 MiB: large enough that a 1 MiB kernel request rarely spans two blocks and a GET's fixed cost
    # is amortised, small enough that a 100 KiB file wastes nothing (blocks are cut at EOF).
    block_size: int = 4 * 1024**2
    ram_size: int = 512 * 1024**2
    ram_policy: str = "lru"
    ssd_dir: str = "~/.cache/vfs"
    ssd_size: int = 0
    ssd_policy: str = "lru"
    # 32 MiB ahead = 8 parallel GETs of 4 MiB: enough to fill a loopback or LAN link (bench/silos.py);
    # 64 MiB of prefetches in flight at most, the part of RSS outside ram_size that prefetch may take.
    prefetch_window: int = 32 * 1024**2
    prefetch_memory: int = 64 * 1024**2
    trace_file: str = ""
    """Record every block access here as `KEY SIZE` lines, for `vfs cache simulate --trace`."""
    cluster: str = ""
    """Seed nodes of the Redis Cluster holding the cluster tier (vfs/cache/cluster.py); '' : no such tier."""
    cluster_password: str = ""
    cluster_password_file: str = ""
    """A file whose first line is the password (kept out of the config file)."""
    cluster_tls: bool = False
    """TLS to the cluster (also said by a rediss:// URL)."""
    cluster_timeout: float = 0.5
    """Seconds one cluster call may cost at most; past it the read goes to the silo."""
    cluster_lease: float = 2.0
    """Seconds a node waits for a block another node is fetching before it fetches the block itself."""

    def cluster_seeds(self) -> tuple[bool, list[tuple[str, int]]]:
        """(TLS, seed nodes) of `cluster`; ValueError if it is not such a URL."""
        return parse_cluster_url(self.cluster, self.cluster_tls)


@dataclasses.dataclass(frozen=True)
class MetadataConfig:
    ttl: float = 60.0
    negative_ttl: float = 5.0
    offline: str = "auto"
    """auto: while a silo cannot be reached, serve what is cached; never: every call goes to the silo."""


OFFLINE_MODES = ("auto", "never")


@dataclasses.dataclass(frozen=True)
class MetricsConfig:
    addr: str = ""
    """Where Prometheus metrics are served, HOST:PORT ('[::1]:9567', ':9567' is 127.0.0.1); '' : off."""


@dataclasses.dataclass(frozen=True)
class FuseConfig:
    allow_other: bool = False
    read_only: bool = False
    """true: every mount is read-only (write modes ignored), the kernel refuses writes itself (EROFS)."""
    auto_unmount: bool = True
    """fusermount3 unmounts if the process dies, even by kill -9 (no stale mount left behind)."""
    read_ahead_kb: int = 1024
    """The kernel's readahead for this mount (its bdi), when permitted (root); 0 leaves the kernel's
    128. 1024 lets sequential reads arrive in 1 MiB requests: ~1 GB/s -> 1.5-2.4 GB/s (DESIGN.md)."""
    pin_handle_version: bool = False
    """True: every open() asks vfs, which pins the handle to the version current at open (a handle
    never reads two versions), at one OPEN and one RELEASE request per open file. False: the kernel
    opens files without asking (FUSE no_open) and keeps their pages while the version holds; each
    read serves the version the kernel was last told of, and a new version drops the kernel's pages."""


WRITE_MODES = ("through", "back", "cache", "off")


@dataclasses.dataclass(frozen=True)
class WriteConfig:
    # through by default: when close() returns without an error, the silo holds the bytes, as users
    # of a network filesystem expect, and a failed upload is the writer's error, never a log line.
    mode: str = "through"
    write_back_delay: float = 5.0
    staging_dir: str = "~/.local/state/vfs/staging"
    staging_size: int = 10 * 1024**3
    drain_timeout: float = 30.0
    rename_limit: int = 1000


@dataclasses.dataclass(frozen=True)
class MountConfig:
    path: str
    backend: str
    options: BaseOptions
    ttl: float | None = None
    negative_ttl: float | None = None
    write_mode: str | None = None
    faults: FaultSpec | None = None
    """Faults injected into this silo's calls, to rehearse failures (vfs/mounts/faults.py)."""


@dataclasses.dataclass(frozen=True)
class _Timeouts:
    ttl: float | None = None
    negative_ttl: float | None = None
    write_mode: str | None = None


@dataclasses.dataclass(frozen=True)
class Config:
    source: str
    mounts: tuple[MountConfig, ...]
    cache: CacheConfig = CacheConfig()
    metadata: MetadataConfig = MetadataConfig()
    fuse: FuseConfig = FuseConfig()
    write: WriteConfig = WriteConfig()
    metrics: MetricsConfig = MetricsConfig()


_SIZE_KEYS = {"block_size", "ram_size", "ssd_size", "prefetch_window", "prefetch_memory", "staging_size", "part_size",
              "chunk_size", "export_cache_bytes"}
# Keys whose values never appear in a message (a typo must not print a credential to a terminal or a log).
SECRET_KEYS = frozenset({"secret_access_key", "access_key_id", "session_token", "password", "token", "credentials",
                         "cluster_password"})
_SECONDS = 1e9  # ~31 years: beyond it a time is a typo, and some consumers (kernel timeouts) overflow
_TIMEOUT = 86400.0  # one call waiting longer than a day is a typo; libnfs takes milliseconds in an int
_COUNT = 10**9
_MEMORY = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
# key -> (lowest, highest), both allowed; a number not listed must be finite, 0 or more and below 2**63.
_LIMITS: dict[str, tuple[float, float]] = {
    **dict.fromkeys(("ttl", "negative_ttl", "write_back_delay", "drain_timeout", "retry_base_delay",
                     "retry_max_delay", "dir_cache_ttl"), (0.0, _SECONDS)),
    **dict.fromkeys(("connect_timeout", "read_timeout", "retry_timeout", "timeout", "cluster_timeout"), (0.001, _TIMEOUT)),
    "cluster_lease": (0.0, 3600.0),
    "concurrency": (1, 1024), "upload_concurrency": (1, 1024), "page_size": (1, 1000), "max_attempts": (1, 100),
    "max_retries": (0, 100), "rename_limit": (0, _COUNT), "read_ahead_kb": (0, 1 << 20),
    "dir_cache_size": (0, _COUNT), "file_cache_size": (0, _COUNT),
    "block_size": (4096, 1 << 30), "ram_size": (0, _MEMORY), "prefetch_memory": (0, _MEMORY),
    "prefetch_window": (0, 1 << 40), "part_size": (0, 5 << 30), "chunk_size": (0, 5 << 30),
}
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}|arn:[\x21-\x7e]{1,1000}")
_URL_KEYS = {"endpoint_url", "endpoint", "root_url", "token_uri"}
_CHOICES: dict[str, tuple[str, ...]] = {"addressing_style": ("auto", "virtual", "path"), "offline": OFFLINE_MODES,
                                        "mode": WRITE_MODES, "write_mode": WRITE_MODES}


def shown(key: str, value: Any) -> str:
    """`value` as a message may show it: hidden for a secret, cut short when long."""
    if key in SECRET_KEYS:
        return "(value hidden)"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def cut(message: str, limit: int = 300) -> str:
    """A message of at most `limit` characters (a huge value stays out of the terminal)."""
    return message if len(message) <= limit else message[:limit - 3] + "..."


def _coerce(value: Any, hint: Any, key: str) -> Any:
    if key in _SIZE_KEYS:
        return parse_size(value)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    origin = typing.get_origin(hint) or hint
    got = f"got {shown(key, value)}"
    if origin is bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, {got}")
    elif origin is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, {got}")
    elif origin is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, {got}")
        value = float(value)
    elif origin is str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, {got}")
    elif origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"expected a table, {got}")
    elif origin is tuple or origin is list:
        if not isinstance(value, list):
            raise ValueError(f"expected a list, {got}")
        value = tuple(value)
    return value


def _check_number(key: str, value: float) -> None:
    lo, hi = _LIMITS.get(key, (0, 2**63 - 1))
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value}")
    if lo <= value <= hi:
        return
    if key in _SIZE_KEYS:
        if key in ("ram_size", "prefetch_memory") and value > hi:
            raise ValueError(f"{format_size(int(value))} is more than this machine's memory ({format_size(int(hi))})")
        raise ValueError(f"must be between {format_size(int(lo))} and {format_size(int(hi))}, got {format_size(int(value))}")
    bounds = f"{lo:g} or more" if hi >= 2**63 - 1 else f"between {lo:g} and {hi:g}"
    raise ValueError(f"must be {bounds}, got {value:g}" if isinstance(value, float) else f"must be {bounds}, got {value}")


def check_addr(addr: str) -> None:
    """ValueError unless `addr` is '' or HOST:PORT (`127.0.0.1:9567`, `[::1]:9567`, `:9567`)."""
    if not addr:
        return
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT such as 127.0.0.1:9567, got {shown('addr', addr)}")
    if host.startswith("["):
        if not host.endswith("]") or ":" not in host:
            raise ValueError(f"expected [IPv6]:PORT such as [::1]:9567, got {shown('addr', addr)}")
    elif not re.fullmatch(r"[A-Za-z0-9.-]*", host):
        raise ValueError(f"expected HOST:PORT such as 127.0.0.1:9567 (an IPv6 host in brackets), got {shown('addr', addr)}")


def _check_string(key: str, value: str) -> None:
    if "\0" in value:
        raise ValueError("contains a NUL character")
    if key == "bucket":
        if not value:
            raise ValueError("required, got an empty name")
        if not _BUCKET.fullmatch(value):
            raise ValueError(f"not a bucket name (letters, digits, '.', '-', '_'; at most 255): {shown(key, value)}")
    elif key in _URL_KEYS and value:
        parts = urllib.parse.urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or re.search(r"[\s\x00-\x1f]", value):
            raise ValueError(f"expected an http:// or https:// URL with a host, got {shown(key, value)}")
    elif key in _CHOICES and value not in _CHOICES[key]:
        raise ValueError(f"{shown(key, value)} is not one of {', '.join(_CHOICES[key])}")
    elif key == "addr":
        check_addr(value)
    elif key == "cluster":
        parse_cluster_url(value)


def parse_cluster_url(url: str, tls: bool = False) -> tuple[bool, list[tuple[str, int]]]:
    """`redis://host:port,host:port` (`rediss://`: TLS) -> (TLS, seed nodes); '' -> (tls, []).
    ValueError naming what is wrong; the message never shows a password given in the URL."""
    if not url:
        return tls, []
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("redis", "rediss"):
        raise ValueError("expected redis://HOST:PORT[,HOST:PORT...] (rediss:// for TLS)")
    if "@" in rest:
        raise ValueError("give the password as cluster_password or cluster_password_file, not in the URL")
    seeds = []
    for node in rest.rstrip("/").split(","):
        host, sep, port = node.strip().rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535 \
                or not re.fullmatch(r"[A-Za-z0-9.:-]+", host):
            raise ValueError(f"expected HOST:PORT for each seed node, got {node.strip()[:80]!r}")
        seeds.append((host, int(port)))
    return tls or scheme == "rediss", seeds


def _check(key: str, value: Any) -> None:
    """ValueError naming the problem if `value` (already of the field's type) is out of range or form."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        _check_number(key, value)
    elif isinstance(value, str):
        _check_string(key, value)


def _build(cls: type, table: Any, where: str, ignore: set[str] = frozenset()) -> Any:  # type: ignore[assignment]
    """An instance of dataclass `cls` from a TOML table; ConfigError naming the key otherwise."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table, got {shown(where, table)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    for key in table:
        if key not in fields and key not in ignore:
            close = difflib.get_close_matches(key, list(fields) + list(ignore), 1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(set(fields) | ignore))})"
            raise ConfigError(f"{where}.{shown('', key)[1:-1]}: unknown key{hint}")
    kwargs = {}
    for name, f in fields.items():
        if name not in table:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{where}.{name}: required")
            continue
        try:
            kwargs[name] = _coerce(table[name], hints[name], name)
            _check(name, kwargs[name])
        except ValueError as exc:
            raise ConfigError(f"{where}.{name}: {cut(str(exc))}") from None
    try:
        return cls(**kwargs)
    except ValueError as exc:  # an Options class's own check: "key: problem"
        raise ConfigError(f"{where}.{cut(str(exc))}") from None


def _mount_path(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ConfigError(f"{where}.path: must be an absolute path in the tree such as '/s3', got {shown('path', value)}")
    if re.search(r"[\x00-\x1f\x7f]", value):
        raise ConfigError(f"{where}.path: control characters are not allowed in a mount path, got {shown('path', value)}")
    path = "/" + posixpath.normpath(value).lstrip("/")
    if any(part in (".", "..") for part in value.split("/")):
        raise ConfigError(f"{where}.path: '.' and '..' are not allowed, got {shown('path', value)}")
    if any(len(part.encode()) > 255 for part in path.split("/")):
        raise ConfigError(f"{where}.path: a name in the path is longer than 255 bytes")
    if path == "/.vfs" or path.startswith("/.vfs/"):
        raise ConfigError(f"{where}.path: /.vfs is reserved for vfs's own files")
    return path


def _mount(entry: Any, where: str) -> MountConfig:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a table with path and backend")
    path = _mount_path(entry.get("path"), where)
    where = f"{where} ({path})"
    backend = entry.get("backend")
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ConfigError(f"{where}.backend: {shown('backend', backend)} is not one of {', '.join(sorted(BACKENDS))}")
    try:
        cls = backend_class(backend)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"{where}.backend: {backend} needs a package that is not installed ({exc.name}): "
                          f"pip install 'vfs[{backend}]'") from None
    except ImportError as exc:  # a system library (libnfs) is missing; its message says which
        raise ConfigError(f"{where}.backend: {backend}: {exc}") from None
    common = {k: entry[k] for k in ("ttl", "negative_ttl", "write_mode") if k in entry}
    options = _build(cls.Options, {k: v for k, v in entry.items() if k not in ("path", "backend", "faults", *common)},
                     where, ignore={"path", "backend", "ttl", "negative_ttl", "write_mode", "faults"})
    timeouts = _build(_Timeouts, common, where)
    faults = _build(FaultSpec, entry["faults"], f"{where}.faults") if "faults" in entry else None
    return MountConfig(path, backend, options, timeouts.ttl, timeouts.negative_ttl, timeouts.write_mode, faults)


_TABLES = ["cache", "metadata", "fuse", "write", "metrics", "mount"]


def parse(data: dict[str, Any], source: str) -> Config:
    """A Config from parsed TOML; `source` names the file in errors."""
    try:
        for key in data:
            if key not in _TABLES:
                close = difflib.get_close_matches(key, _TABLES, 1)
                raise ConfigError(f"{shown('', key)[1:-1]}: unknown table" + (f" (did you mean {close[0]!r}?)" if close else ""))
        cache = _build(CacheConfig, data.get("cache", {}), "cache")
        from vfs.cache.policy import policy_class  # the policy registry, checked before mounting
        for key in ("ram_policy", "ssd_policy"):
            try:
                policy_class(getattr(cache, key))
            except ValueError as exc:
                raise ConfigError(f"cache.{key}: {exc}") from None
        metadata = _build(MetadataConfig, data.get("metadata", {}), "metadata")
        fuse = _build(FuseConfig, data.get("fuse", {}), "fuse")
        write = _build(WriteConfig, data.get("write", {}), "write")
        metrics = _build(MetricsConfig, data.get("metrics", {}), "metrics")
        entries = data.get("mount", [])
        if not isinstance(entries, list):
            raise ConfigError("mount: expected [[mount]] entries (an array of tables), not a single [mount] table")
        if not entries:
            raise ConfigError("mount: at least one [[mount]] entry is required")
        mounts = [_mount(e, f"mount #{i + 1}") for i, e in enumerate(entries)]
        seen: dict[str, int] = {}
        for i, m in enumerate(mounts):
            if m.path in seen:
                raise ConfigError(f"mount #{i + 1}.path: {m.path} is already used by mount #{seen[m.path] + 1}")
            seen[m.path] = i
        return Config(source, tuple(mounts), cache, metadata, fuse, write, metrics)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def read_toml(path: str | Path) -> dict[str, Any]:
    """The parsed TOML of a config file; ConfigError if it cannot be read or parsed."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: byte 0x{exc.object[exc.start]:02x} at offset {exc.start}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML: nested too deeply") from None


def load(path: str | Path) -> Config:
    """Read and check a TOML config file."""
    return parse(read_toml(path), str(path))


_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://(.*)", re.DOTALL)


def source_entry(arg: str) -> dict[str, Any]:
    """A `[[mount]]` entry from a one-liner `SOURCE[=/path]` such as `s3://bucket/prefix=/s3`;
    ValueError naming the source if it cannot be one."""
    source, sep, path = arg.rpartition("=")
    if not sep or not path.startswith("/"):
        source, path = arg, ""
    if not source:
        raise ValueError(f"{arg!r}: no source before '=' (write e.g. s3://bucket=/s3 or ~/data=/data)")
    url = _URL.fullmatch(source)
    if url is None:
        options: dict[str, Any] = {"root": source}
        default = "/" + (os.path.basename(os.path.abspath(os.path.expanduser(source))) or "root")
        return {"path": path or default, "backend": "local", **options}
    scheme, rest = url.groups()
    if scheme not in URL_SCHEMES:
        raise ValueError(f"{scheme}://...: unknown scheme {scheme!r} (known: {', '.join(sorted(URL_SCHEMES))}; "
                         "a local directory needs no scheme)")
    if "@" in rest.partition("/")[0]:
        raise ValueError(f"{scheme}://(hidden)@...: credentials do not belong in a URL (use the silo's own "
                         "credentials chain or a config file)")
    backend = URL_SCHEMES[scheme]
    options = backend_class(backend).options_from_url(source)
    if backend == "local":
        default = "/" + (os.path.basename(os.path.abspath(os.path.expanduser(options["root"]))) or "root")
    else:
        name = options.get("bucket") or rest.strip("/").split("/")[0]
        default = "/" + (name if _BUCKET.fullmatch(name or "") else backend)
    return {"path": path or default, "backend": backend, **options}


def from_sources(sources: list[str], base: dict[str, Any] | None = None, source: str = "command line") -> Config:
    """A Config from one-liner sources (plus any tables of a base config); `source` names it in errors."""
    data = dict(base or {})
    try:
        added = [source_entry(s) for s in sources]
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    entries = data.get("mount", [])
    data["mount"] = entries + added if isinstance(entries, list) else entries  # else parse names the problem
    return parse(data, source)
