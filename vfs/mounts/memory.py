"""An in-memory object store, for fast tests of the core and as a model of a flat-keyed silo.

Keys are flat like S3's: directories exist only as prefixes of keys or as marker keys ending in '/'.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from typing import Any

from vfs.mounts.base import Backend, BaseOptions, ObjectMeta, not_found, stale
from vfs.mounts.flat import Level, stat_prefix_or_object


@dataclasses.dataclass(frozen=True)
class MemoryOptions(BaseOptions):
    name: str = "mem"


class MemoryBackend(Backend):
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

    def put(self, key: str, data: bytes) -> None:
        self.objects[key] = (bytes(data), f"v{next(self._versions)}", time.time_ns())

    def delete(self, key: str) -> None:
        self.objects.pop(key, None)

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

    async def stat(self, path: str) -> ObjectMeta:
        self.requests += 1
        return await stat_prefix_or_object(path, f"{self.describe()}/{path}", self._is_prefix, self._head)

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
        return await level.finish(f"{self.describe()}/{path}", self._head)

    async def read_range(self, path: str, start: int, end: int, version: str) -> bytes:
        self.requests += 1
        if path not in self.objects:
            raise not_found(path)
        data, current, _ = self.objects[path]
        if current != version:
            raise stale(path)
        return data[start:end]
