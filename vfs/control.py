"""vfs's own files under `/.vfs`: `stats`, the JSON of the mount's metrics registry (vfs/metrics.py:
tiers, reader, backends, writes, FUSE requests, warm-ups), and `warm`, write-only, to which `vfs warm`
writes its requests (vfs/warm.py): one JSON object per line, all of them in one write (a write is
one FUSE request of at most 128 KiB); a request the mount refuses fails the write with EINVAL.

A read-only mount cannot take writes (the kernel refuses them with EROFS before vfs sees them), so
requests have a second way in that only reads the mount: the request goes into a file
`<requests_dir>/<id>.json` (`requests_dir` is named in `.vfs/stats`: a 0700 directory of the mount's
user, under $XDG_RUNTIME_DIR or the temp directory, removed at unmount), and a getxattr of
`user.vfs.request.<id>` on `/.vfs/warm` hands it over (the file is taken and removed; EINVAL as for
a write if the mount refuses it, ENOENT if there is no such file). Only the mount's user (and root)
can put a request there.

`/.vfs` is left out of the root's listing, and `warm` out of `/.vfs`'s, but both are found by path. With opens, the stats file is rendered
afresh at each open and read with direct_io (its size is unknown until rendered); without opens, one
rendering is kept STATS_REFRESH seconds, so a reader sees one size and one content from its stat to
its last read.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import re
import shutil
import tempfile
import time
from typing import Any, Callable

from vfs.mounts.base import ObjectMeta

CONTROL_DIR = "/.vfs"
STATS_FILE = "/.vfs/stats"
WARM_FILE = "/.vfs/warm"
VIRTUAL_FH = 1 << 62  # handles of vfs's own files, apart from the reader's
STATS_REFRESH = 1.0  # seconds one rendering of the stats file is served without opens (one `cat`)
REQUEST_XATTR = b"user.vfs.request."  # + the id of a request file in requests_dir
REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class ControlFiles:
    def __init__(self, stats: Callable[[], dict[str, Any]], opens: bool,
                 requests: Callable[[dict[str, Any]], None] | None = None) -> None:
        self._stats = stats
        self._requests = requests
        """Takes each request written to `warm` (ValueError: refused)."""
        self.opens = opens
        self._rendering: tuple[float, bytes, int] = (-STATS_REFRESH, b"", 0)  # monotonic, bytes, mtime_ns
        self._open: dict[int, bytes] = {}
        self._ids = itertools.count(VIRTUAL_FH)
        self._requests_dir: str | None = None

    @staticmethod
    def owns(path: str) -> bool:
        return path in (CONTROL_DIR, STATS_FILE, WARM_FILE)

    @staticmethod
    def writable(path: str) -> bool:
        return path == WARM_FILE

    @staticmethod
    def owns_handle(fh: int) -> bool:
        return fh >= VIRTUAL_FH

    def meta(self, path: str) -> ObjectMeta:
        if path == CONTROL_DIR:
            return ObjectMeta(".vfs", True)
        if path == WARM_FILE:
            return ObjectMeta("warm", False, 0)
        if self.opens:  # made at each open, read with direct_io: the size is unknown here
            return ObjectMeta("stats", False, 0)
        _, data, mtime_ns = self.rendering()
        return ObjectMeta("stats", False, len(data), mtime_ns, str(mtime_ns))

    def listing(self) -> dict[str, ObjectMeta]:
        return {"stats": ObjectMeta("stats", False, 0)}

    def render(self) -> bytes:
        stats = self._stats()
        if self._requests is not None:
            stats["requests_dir"] = self.requests_dir()
        return json.dumps(stats, indent=1, sort_keys=True).encode() + b"\n"

    def requests_dir(self) -> str:
        """The directory read-only mounts take requests from (made at the first rendering of stats)."""
        if self._requests_dir is None:
            base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
            self._requests_dir = tempfile.mkdtemp(prefix="vfs-requests-", dir=base if os.path.isdir(base) else None)
        return self._requests_dir

    def take_request(self, path: str, name: bytes) -> bytes:
        """getxattr of `name` on `path`: the request file it names, handed over like a write to `warm`."""
        if path != WARM_FILE or not name.startswith(REQUEST_XATTR):
            raise OSError(errno.ENODATA, os.strerror(errno.ENODATA))
        rid = name[len(REQUEST_XATTR):].decode(errors="replace")
        if not REQUEST_ID.fullmatch(rid) or self._requests_dir is None:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), f"{WARM_FILE}: no request {rid!r}")
        file = os.path.join(self._requests_dir, rid + ".json")
        try:
            with open(file, "rb") as f:
                data = f.read(1 << 20)
            os.unlink(file)
        except OSError as exc:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), f"{WARM_FILE}: request {rid}: {exc.strerror}") from None
        self.write(data)
        return b"accepted"

    def close(self) -> None:
        if self._requests_dir is not None:
            shutil.rmtree(self._requests_dir, ignore_errors=True)
            self._requests_dir = None

    def rendering(self, refresh: bool = True) -> tuple[float, bytes, int]:
        """The stats file as served without opens. A new rendering is made only when the kernel asks
        for the file's attributes (`refresh`, at most every STATS_REFRESH s), never at a read: a read
        serves the bytes whose size the kernel was told. A rendering never shrinks (padded with
        spaces, which JSON ignores), so a reader told an older, larger size reads no NUL bytes."""
        if (refresh or not self._rendering[1]) and time.monotonic() - self._rendering[0] >= STATS_REFRESH:
            data, old = self.render(), len(self._rendering[1])
            if len(data) < old:
                data = data[:-1] + b" " * (old - len(data)) + b"\n"
            self._rendering = (time.monotonic(), data, time.time_ns())
        return self._rendering

    def open(self, path: str = STATS_FILE) -> int:
        fh = next(self._ids)
        self._open[fh] = self.render() if path == STATS_FILE else b""
        return fh

    def read(self, fh: int | None, offset: int, size: int, path: str = STATS_FILE) -> bytes:
        """Bytes of an open control file, or (fh None, without opens) of the file at `path`: the
        current rendering of stats; `warm` reads empty."""
        if fh is None:
            data = self.rendering(refresh=False)[1] if path == STATS_FILE else b""
        else:
            data = self._open[fh]
        return data[offset:offset + size]

    def write(self, data: bytes) -> int:
        """Requests written to `warm`: each line a JSON object, handed over once all of them parse."""
        try:
            requests = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
            if self._requests is None or not all(isinstance(r, dict) for r in requests):
                raise ValueError("not a JSON object per line")
            for request in requests:
                self._requests(request)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors too
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), f"{WARM_FILE}: {exc}") from None
        return len(data)

    def release(self, fh: int) -> None:
        self._open.pop(fh, None)
