"""An in-memory object store, for fast tests of the core and as a model of a flat-keyed silo.

Keys are flat like S3's: directories exist only as prefixes of keys or as marker keys ending in '/'.
Writable like S3 too: `mkdir` writes the marker `dir/`, `rmdir` deletes it, a directory rename moves
every key below it one by one (vfs/mounts/flat.py `move_dir`, EXDEV over `limit` keys), a file rename
is a copy then a delete; `set_mtime` of a directory changes nothing (a prefix has no time).
Versions are `v1`, `v2`... from one counter, so a version is never reused.
`put` and `remove` change the store behind the protocol's back (as another writer would).
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import pathlib
import time
from typing import Any

from vfs.errors import SiloError
from vfs.mounts.base import (DEFAULT_RENAME_LIMIT, BaseOptions, ObjectMeta, WritableBackend, not_a_directory,
                             not_found, stale)
from vfs.mounts.flat import Level, is_empty_dir, move_dir, stat_prefix_or_object


@dataclasses.dataclass(frozen=True)
class MemoryOptions(BaseOptions):
    name: str = "mem"


class MemoryBackend(WritableBackend):
    scheme = "memory"
    Options = MemoryOptions

    def __init__(self, options: MemoryOptions | None = None) -> None:
        super().__init__(options or MemoryOptions())
        self.objects: dict[str, tuple[bytes, str, int]] = {}  # key -> (data, version, mtime_ns)
        self._versions = itertools.count(1)
        self.requests = 0  # every call that would be a request to a real silo

    @classmethod
    def options_from_url(cls, url: str) -> dict[str, Any]:
        return {"name": url.removeprefix("memory://")}

    def describe(self) -> str:
        return f"memory://{self.options.name}"  # type: ignore[attr-defined]

    def _what(self, path: str) -> str:
        return f"{self.describe()}/{path}"

    # --- behind the protocol (tests) ---------------------------------------------------------------

    def put(self, key: str, data: bytes, mtime_ns: int | None = None) -> ObjectMeta:
        """Store `data` at `key` as a new version, whatever was there."""
        version = f"v{next(self._versions)}"
        mtime = time.time_ns() if mtime_ns is None else mtime_ns
        self.objects[key] = (bytes(data), version, mtime)
        return ObjectMeta(key, False, len(data), mtime, version)

    def remove(self, key: str) -> None:
        """Drop `key` if it is there (no checks; the protocol's `delete` checks)."""
        self.objects.pop(key, None)

    # --- reading -------------------------------------------------------------------------------------

    def _has_prefix(self, path: str) -> bool:
        prefix = path + "/" if path else ""
        return any(k.startswith(prefix) for k in self.objects)

    async def _is_prefix(self, path: str) -> bool:
        return self._has_prefix(path)

    async def _head(self, path: str) -> ObjectMeta | None:
        if path not in self.objects:
            return None
        data, version, mtime = self.objects[path]
        return ObjectMeta(path, False, len(data), mtime, version)

    async def _stat_or_none(self, path: str) -> ObjectMeta | None:
        if path == "" or self._has_prefix(path):
            return ObjectMeta(path, True)
        return await self._head(path)

    async def stat(self, path: str) -> ObjectMeta:
        self.requests += 1
        return await stat_prefix_or_object(path, self._what(path), self._is_prefix, self._head)

    async def list_dir(self, path: str) -> list[ObjectMeta]:
        self.requests += 1
        level = Level(path, path + "/" if path else "")
        for key, (data, version, mtime) in self.objects.items():
            if key.startswith(level.prefix):
                name, sep, _ = key[len(level.prefix):].partition("/")
                if sep:
                    level.add_prefix(level.prefix + name + "/")
                else:
                    level.add_object(key, lambda p, d=data, v=version, m=mtime: ObjectMeta(p, False, len(d), m, v))
        return await level.finish(self._what(path), self._head)

    async def read_range(self, path: str, start: int, end: int, version: str) -> bytes:
        self.requests += 1
        if path not in self.objects:
            raise not_found(path)
        data, current, _ = self.objects[path]
        if current != version:
            raise stale(path)
        return data[start:end]

    # --- writing -------------------------------------------------------------------------------------

    async def _list_keys(self, prefix: str, n: int) -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix))[:n]

    async def _copy(self, src: str, dst: str) -> None:
        self.objects[dst] = self.objects[src]

    async def _delete_key(self, key: str) -> None:
        del self.objects[key]

    async def write_file(self, path: str, source: str, expected: str | None, mtime_ns: int | None = None) -> ObjectMeta:
        self.requests += 1
        data = await self.run_sync(pathlib.Path(source).read_bytes)
        # From here to the store nothing yields: the check and the write are one step, as on S3.
        if self._has_prefix(path):
            raise SiloError(errno.EISDIR, self._what(path))
        current = self.objects.get(path)
        if (current[1] if current else None) != expected:
            raise stale(self._what(path))
        return self.put(path, data, mtime_ns)

    async def delete(self, path: str) -> None:
        self.requests += 1
        if path == "" or self._has_prefix(path):
            raise SiloError(errno.EISDIR, self._what(path))
        if path not in self.objects:
            raise not_found(self._what(path))
        del self.objects[path]

    async def mkdir(self, path: str) -> None:
        self.requests += 1
        if await self._stat_or_none(path) is not None:
            raise SiloError(errno.EEXIST, self._what(path))
        self.put(path + "/", b"")

    async def rmdir(self, path: str) -> None:
        self.requests += 1
        if path == "":
            raise SiloError(errno.EBUSY, f"{self.describe()}: the root cannot be removed")
        if not self._has_prefix(path):
            if path in self.objects:
                raise not_a_directory(self._what(path))
            raise not_found(self._what(path))
        if not await is_empty_dir(path, self._list_keys):
            raise SiloError(errno.ENOTEMPTY, self._what(path))
        self.objects.pop(path + "/", None)

    async def rename(self, src: str, dst: str, *, replace: bool = True, limit: int = DEFAULT_RENAME_LIMIT) -> None:
        self.requests += 1
        meta = await self._stat_or_none(src)
        if meta is None:
            raise not_found(self._what(src))
        if src == dst:
            return
        target = await self._stat_or_none(dst)
        if meta.is_dir:
            await move_dir(src, dst, target, replace=replace, limit=limit, what=self.describe(),
                           list_keys=self._list_keys, copy=self._copy, delete=self._delete_key)
            return
        if target is not None:
            if target.is_dir:
                raise SiloError(errno.EISDIR, self._what(dst))
            if not replace:
                raise SiloError(errno.EEXIST, self._what(dst))
        self.objects[dst] = self.objects.pop(src)

    async def set_mtime(self, path: str, mtime_ns: int) -> ObjectMeta:
        self.requests += 1
        meta = await self._stat_or_none(path)
        if meta is None:
            raise not_found(self._what(path))
        if meta.is_dir:
            return meta  # a prefix has no time of its own to set
        data, version, _ = self.objects[path]
        self.objects[path] = (data, version, mtime_ns)
        return ObjectMeta(path, False, len(data), mtime_ns, version)
