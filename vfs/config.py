"""Configuration: a TOML file (or one-liner sources) checked into frozen dataclasses before anything mounts.

    [cache]                      # block cache (all optional)
    block_size = "4MiB"
    ram_size = "512MiB"
    ram_policy = "lru"
    ssd_dir = "~/.cache/vfs"     # SSD tier; off while ssd_size is 0
    ssd_size = "0"
    ssd_policy = "lru"
    trace_file = ""              # record block accesses for `vfs cache simulate`

    [metadata]
    ttl = 60                     # seconds listings/attributes are trusted (kernel timeouts too)
    negative_ttl = 5             # seconds a "no such file" is trusted

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

A bad file is reported as one line naming the file, the key and what is wrong (ConfigError).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import posixpath
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from vfs.mounts import BACKENDS, URL_SCHEMES, backend_class
from vfs.mounts.base import BaseOptions
from vfs.units import parse_size


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


@dataclasses.dataclass(frozen=True)
class MetadataConfig:
    ttl: float = 60.0
    negative_ttl: float = 5.0


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


_SIZE_KEYS = {"block_size", "ram_size", "ssd_size", "prefetch_window", "prefetch_memory", "staging_size", "part_size",
              "chunk_size"}


def _coerce(value: Any, hint: Any, key: str) -> Any:
    if key in _SIZE_KEYS:
        return parse_size(value)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    origin = typing.get_origin(hint) or hint
    if origin is bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
    elif origin is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {value!r}")
    elif origin is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {value!r}")
        value = float(value)
    elif origin is str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
    elif origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"expected a table, got {value!r}")
    elif origin is tuple or origin is list:
        if not isinstance(value, list):
            raise ValueError(f"expected a list, got {value!r}")
        value = tuple(value)
    return value


def _build(cls: type, table: dict[str, Any], where: str, ignore: set[str] = frozenset()) -> Any:  # type: ignore[assignment]
    """An instance of dataclass `cls` from a TOML table; ConfigError naming the key otherwise."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    for key in table:
        if key not in fields and key not in ignore:
            close = difflib.get_close_matches(key, list(fields) + list(ignore), 1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(set(fields) | ignore))})"
            raise ConfigError(f"{where}.{key}: unknown key{hint}")
    kwargs = {}
    for name, f in fields.items():
        if name not in table:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{where}.{name}: required")
            continue
        try:
            kwargs[name] = _coerce(table[name], hints[name], name)
        except ValueError as exc:
            raise ConfigError(f"{where}.{name}: {exc}") from None
    return cls(**kwargs)


def _mount_path(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ConfigError(f"{where}.path: must be an absolute path in the tree such as '/s3', got {value!r}")
    path = "/" + posixpath.normpath(value).lstrip("/")
    if any(part in (".", "..") for part in value.split("/")):
        raise ConfigError(f"{where}.path: '.' and '..' are not allowed, got {value!r}")
    if path == "/.vfs" or path.startswith("/.vfs/"):
        raise ConfigError(f"{where}.path: /.vfs is reserved for vfs's own files")
    return path


def _mount(entry: Any, where: str) -> MountConfig:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a table with path and backend")
    path = _mount_path(entry.get("path"), where)
    where = f"{where} ({path})"
    backend = entry.get("backend")
    if backend not in BACKENDS:
        raise ConfigError(f"{where}.backend: {backend!r} is not one of {', '.join(sorted(BACKENDS))}")
    try:
        cls = backend_class(backend)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"{where}.backend: {backend} needs a package that is not installed ({exc.name}): "
                          f"pip install 'vfs[{backend}]'") from None
    except ImportError as exc:  # a system library (libnfs) is missing; its message says which
        raise ConfigError(f"{where}.backend: {backend}: {exc}") from None
    common = {k: entry[k] for k in ("ttl", "negative_ttl", "write_mode") if k in entry}
    options = _build(cls.Options, {k: v for k, v in entry.items() if k not in ("path", "backend", *common)},
                     where, ignore={"path", "backend", "ttl", "negative_ttl", "write_mode"})
    timeouts = _build(_Timeouts, common, where)
    if timeouts.write_mode is not None and timeouts.write_mode not in WRITE_MODES:
        raise ConfigError(f"{where}.write_mode: {timeouts.write_mode!r} is not one of {', '.join(WRITE_MODES)}")
    return MountConfig(path, backend, options, timeouts.ttl, timeouts.negative_ttl, timeouts.write_mode)


def parse(data: dict[str, Any], source: str) -> Config:
    """A Config from parsed TOML; `source` names the file in errors."""
    try:
        for key in data:
            if key not in ("cache", "metadata", "fuse", "write", "mount"):
                close = difflib.get_close_matches(key, ["cache", "metadata", "fuse", "write", "mount"], 1)
                raise ConfigError(f"{key}: unknown table" + (f" (did you mean {close[0]!r}?)" if close else ""))
        cache = _build(CacheConfig, data.get("cache", {}), "cache")
        if cache.block_size < 4096:
            raise ConfigError("cache.block_size: must be at least 4KiB")
        from vfs.cache.policy import policy_class  # the policy registry, checked before mounting
        for key in ("ram_policy", "ssd_policy"):
            try:
                policy_class(getattr(cache, key))
            except ValueError as exc:
                raise ConfigError(f"cache.{key}: {exc}") from None
        metadata = _build(MetadataConfig, data.get("metadata", {}), "metadata")
        fuse = _build(FuseConfig, data.get("fuse", {}), "fuse")
        write = _build(WriteConfig, data.get("write", {}), "write")
        if write.mode not in WRITE_MODES:
            raise ConfigError(f"write.mode: {write.mode!r} is not one of {', '.join(WRITE_MODES)}")
        for key in ("write_back_delay", "drain_timeout"):
            if not 0 <= getattr(write, key) < 1e9:
                raise ConfigError(f"write.{key}: must be a number of seconds, 0 or more")
        if write.rename_limit < 0:
            raise ConfigError("write.rename_limit: must be 0 or more")
        entries = data.get("mount", [])
        if not isinstance(entries, list) or not entries:
            raise ConfigError("mount: at least one [[mount]] entry is required")
        mounts = [_mount(e, f"mount #{i + 1}") for i, e in enumerate(entries)]
        seen: dict[str, int] = {}
        for i, m in enumerate(mounts):
            if m.path in seen:
                raise ConfigError(f"mount #{i + 1}.path: {m.path} is already used by mount #{seen[m.path] + 1}")
            seen[m.path] = i
        return Config(source, tuple(mounts), cache, metadata, fuse, write)
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


def load(path: str | Path) -> Config:
    """Read and check a TOML config file."""
    return parse(read_toml(path), str(path))


def source_entry(arg: str) -> dict[str, Any]:
    """A `[[mount]]` entry from a one-liner `SOURCE[=/path]` such as `s3://bucket/prefix=/s3`."""
    source, sep, path = arg.rpartition("=")
    if not sep or not path.startswith("/"):
        source, path = arg, ""
    scheme, colon, _ = source.partition("://")
    if colon and scheme in URL_SCHEMES:
        backend = URL_SCHEMES[scheme]
        options = backend_class(backend).options_from_url(source)
        default = "/" + (options.get("bucket") or source.split("://", 1)[1].strip("/").split("/")[0] or backend)
    else:
        backend, options = "local", {"root": source}
    if backend == "local":
        default = "/" + (os.path.basename(os.path.abspath(os.path.expanduser(options["root"]))) or "root")
    return {"path": path or default, "backend": backend, **options}


def from_sources(sources: list[str], base: dict[str, Any] | None = None) -> Config:
    """A Config from one-liner sources (plus any tables of a base config)."""
    data = dict(base or {})
    try:
        data["mount"] = list(data.get("mount", [])) + [source_entry(s) for s in sources]
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"command line: {exc}") from None
    return parse(data, "command line")
