"""What every flat-keyed silo (S3, GCS, the memory store) does alike: turn keys into directories.

Object stores have no directories, only keys. A delimiter listing gives the "sub-prefixes" and the
objects of one level; a prefix and an object of the same name make a directory (the object is not
shown); a marker key ending in '/' makes an empty directory exist. `stat` asks "is it a prefix?" and
"is it an object?" at once and lets the prefix win.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import trio

from vfs.mounts.base import ObjectMeta, join, not_a_directory, not_found, valid_name


async def stat_prefix_or_object(path: str, what: str, is_prefix: Callable[[str], Awaitable[bool]],
                                head: Callable[[str], Awaitable[ObjectMeta | None]]) -> ObjectMeta:
    """A directory if `path/` is a prefix, else the object's metadata; ENOENT if neither."""
    if path == "":
        return ObjectMeta("", True)
    found: dict[str, Any] = {}

    async def ask(name: str, fn: Callable[[str], Awaitable[Any]]) -> None:
        try:
            found[name] = await fn(path)
        except OSError as exc:
            found[name + "_error"] = exc

    async with trio.open_nursery() as nursery:  # one round trip for both questions
        nursery.start_soon(ask, "dir", is_prefix)
        nursery.start_soon(ask, "file", head)
    if found.get("dir"):
        return ObjectMeta(path, True)
    if found.get("file") is not None:
        return found["file"]
    if "dir_error" in found or "file_error" in found:
        raise found.get("dir_error") or found["file_error"]
    raise not_found(what)


class Level:
    """One directory level being assembled from the pages of a delimiter listing."""

    def __init__(self, path: str, prefix: str) -> None:
        self.path = path
        self.prefix = prefix  # the key prefix of this level, '' or ending in '/'
        self.files: dict[str, ObjectMeta] = {}
        self.dirs: set[str] = set()
        self.marker = False

    def add_prefix(self, key_prefix: str) -> None:
        name = key_prefix[len(self.prefix):].rstrip("/")
        if valid_name(name):
            self.dirs.add(name)

    def add_object(self, key: str, meta: Callable[[str], ObjectMeta]) -> None:
        """An object of this level; `meta(path)` builds its metadata."""
        name = key[len(self.prefix):]
        if name == "":
            self.marker = True
        elif valid_name(name):
            self.files[name] = meta(join(self.path, name))

    async def finish(self, what: str, head: Callable[[str], Awaitable[ObjectMeta | None]]) -> list[ObjectMeta]:
        """The entries, directories winning over same-named objects; ENOTDIR/ENOENT for an empty level."""
        if self.path and not (self.files or self.dirs or self.marker):
            if await head(self.path) is not None:
                raise not_a_directory(what)
            raise not_found(what)
        out = [ObjectMeta(join(self.path, d), True) for d in sorted(self.dirs)]
        return out + [m for n, m in sorted(self.files.items()) if n not in self.dirs]
