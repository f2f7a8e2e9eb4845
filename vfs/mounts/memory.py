"""An in-memory object store, for fast tests of the core and as a model of a flat-keyed silo.

Keys are flat like S3's: directories exist only as prefixes of keys or as marker keys ending in '/'.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from typing import Any

from vfs.mounts.base import Backend, BaseOptions, ObjectMeta, join, not_a_directory, not_found, stale, valid_name


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

    async def stat(self, path: str) -> ObjectMeta:
        self.requests += 1
        if path == "" or self._has_prefix(path):
            return ObjectMeta(path, True)
        if path in self.objects:
            data, version, mtime = self.objects[path]
            return ObjectMeta(path, False, len(data), mtime, version)
        raise not_found(path)

    async def list_dir(self, path: str) -> list[ObjectMeta]:
        self.requests += 1
        prefix = path + "/" if path else ""
        files: dict[str, ObjectMeta] = {}
        dirs: set[str] = set()
        for key, (data, version, mtime) in self.objects.items():
            if not key.startswith(prefix) or key == prefix:
                continue
            name, sep, _ = key[len(prefix):].partition("/")
            if not valid_name(name):
                continue
            if sep:
                dirs.add(name)
            else:
                files[name] = ObjectMeta(join(path, name), False, len(data), mtime, version)
        if not files and not dirs and path and prefix not in self.objects:
            if path in self.objects:
                raise not_a_directory(path)
            raise not_found(path)
        out = [ObjectMeta(join(path, d), True) for d in sorted(dirs)]
        out += [m for n, m in sorted(files.items()) if n not in dirs]
        return out

    async def read_range(self, path: str, start: int, end: int, version: str) -> bytes:
        self.requests += 1
        if path not in self.objects:
            raise not_found(path)
        data, current, _ = self.objects[path]
        if current != version:
            raise stale(path)
        return data[start:end]
