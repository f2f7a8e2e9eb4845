"""What every flat-keyed silo (S3, GCS, the memory store) does alike: turn keys into directories.

Object stores have no directories, only keys. A delimiter listing gives the "sub-prefixes" and the
objects of one level; a prefix and an object of the same name make a directory (the object is not
shown); a marker key ending in '/' makes an empty directory exist. `stat` asks "is it a prefix?" and
"is it an object?" at once and lets the prefix win.

Changing one is alike too: a directory rename is a copy and a delete of every key below it
(`move_dir`, bounded by a key limit), and `for_each` runs such per-key calls (or upload parts) a few at
a time, raising the first error alone.
"""

from __future__ import annotations

import contextlib
import errno
from typing import Any, Awaitable, Callable, Iterable, TypeVar

import trio

from vfs.errors import SiloError
from vfs.mounts.base import ObjectMeta, join, not_a_directory, not_found, valid_name

T = TypeVar("T")


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
        self.seen = False
        """Some key is below this level, if only ones whose names vfs cannot show (`a//b`)."""

    def add_prefix(self, key_prefix: str) -> None:
        self.seen = True
        name = key_prefix[len(self.prefix):].rstrip("/")
        if valid_name(name):
            self.dirs.add(name)

    def add_object(self, key: str, meta: Callable[[str], ObjectMeta]) -> None:
        """An object of this level; `meta(path)` builds its metadata."""
        self.seen = True
        name = key[len(self.prefix):]
        if name == "":
            self.marker = True
        elif valid_name(name):
            self.files[name] = meta(join(self.path, name))

    async def finish(self, what: str, head: Callable[[str], Awaitable[ObjectMeta | None]]) -> list[ObjectMeta]:
        """The entries, directories winning over same-named objects; ENOTDIR/ENOENT for an empty level."""
        if self.path and not (self.files or self.dirs or self.marker or self.seen):
            if await head(self.path) is not None:
                raise not_a_directory(what)
            raise not_found(what)
        out = [ObjectMeta(join(self.path, d), True) for d in sorted(self.dirs)]
        return out + [m for n, m in sorted(self.files.items()) if n not in self.dirs]


# --- changing a flat-keyed silo ------------------------------------------------------------------

async def for_each(items: Iterable[T], fn: Callable[[T], Awaitable[None]], concurrency: int) -> None:
    """`await fn(item)` for every item, at most `concurrency` at once, started in the items' order
    (a server may wait for part 1 before it answers part 2). The first OSError cancels the calls not
    yet done and is raised alone (not wrapped in an ExceptionGroup)."""
    failed: list[OSError] = []
    slots = trio.Semaphore(max(1, concurrency))

    async def one(item: T, cancel: trio.CancelScope) -> None:
        try:
            await fn(item)
        except OSError as exc:
            failed.append(exc)
            cancel.cancel()
        finally:
            slots.release()

    async with trio.open_nursery() as nursery:
        for item in items:
            await slots.acquire()  # here, not in `one`: trio starts tasks in no promised order
            if failed:
                break
            nursery.start_soon(one, item, nursery.cancel_scope)
    if failed:
        raise failed[0]


ListKeys = Callable[[str, int], Awaitable[list[str]]]
"""`list_keys(prefix, n)`: up to `n` paths of keys that start with `prefix` (markers included)."""


async def is_empty_dir(path: str, list_keys: ListKeys) -> bool:
    """Whether nothing but the marker `path/` is below `path`."""
    return all(k == path + "/" for k in await list_keys(path + "/", 2))


async def move_dir(src: str, dst: str, dst_meta: ObjectMeta | None, *, replace: bool, limit: int, what: str,
                   list_keys: ListKeys, copy: Callable[[str, str], Awaitable[None]],
                   delete: Callable[[str], Awaitable[None]], concurrency: int = 16) -> None:
    """Rename the directory `src` (known to exist) to `dst` key by key: copy every key below `src/`
    to the same place below `dst/`, then delete the sources. `dst_meta` is what `dst` is now (None:
    nothing). EEXIST if `dst` exists and not `replace`; ENOTDIR onto a file; ENOTEMPTY onto a
    directory holding anything; EINVAL into itself; EXDEV if more than `limit` keys would move, found
    before anything changes. A copy that fails deletes the copies already made, so the source stays
    whole; a delete that fails leaves the destination whole and part of the source behind.
    The marker `src/` is copied last and deleted last, so the directory never vanishes midway.
    An object named like the directory itself (`src`, shadowed by it) stays where it is."""
    if not src or not dst:
        raise SiloError(errno.EBUSY, f"{what}: the root cannot be renamed")
    if dst.startswith(src + "/"):
        raise SiloError(errno.EINVAL, f"{what}: {dst} is inside {src}")
    if dst_meta is not None:
        if not replace:
            raise SiloError(errno.EEXIST, f"{what}/{dst}")
        if not dst_meta.is_dir:
            raise not_a_directory(f"{what}/{dst}")
        if not await is_empty_dir(dst, list_keys):
            raise SiloError(errno.ENOTEMPTY, f"{what}/{dst}")
    keys = await list_keys(src + "/", limit + 1)
    if len(keys) > limit:
        raise SiloError(errno.EXDEV, f"{what}/{src}: more than {limit} keys to move one by one")
    marker = src + "/"
    files = [k for k in keys if k != marker]

    def moved(key: str) -> str:
        return dst + key[len(src):]

    copied: list[str] = []

    async def copy_one(key: str) -> None:
        await copy(key, moved(key))
        copied.append(key)

    try:
        await for_each(files, copy_one, concurrency)
        if marker in keys:
            await copy(marker, moved(marker))
    except OSError:
        with contextlib.suppress(OSError):  # the source is whole: take the partial copy back
            await for_each(copied, lambda key: delete(moved(key)), concurrency)
        raise
    await for_each(files, delete, concurrency)
    if marker in keys:
        await delete(marker)
