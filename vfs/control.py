"""vfs's own files under `/.vfs`: `stats`, the JSON of the mount's metrics registry (vfs/metrics.py:
tiers, reader, backends, writes, FUSE requests).

`/.vfs` is left out of the root's listing but found by path. With opens, the stats file is rendered
afresh at each open and read with direct_io (its size is unknown until rendered); without opens, one
rendering is kept STATS_REFRESH seconds, so a reader sees one size and one content from its stat to
its last read.
"""

from __future__ import annotations

import itertools
import json
import time
from typing import Any, Callable

from vfs.mounts.base import ObjectMeta

CONTROL_DIR = "/.vfs"
STATS_FILE = "/.vfs/stats"
VIRTUAL_FH = 1 << 62  # handles of vfs's own files, apart from the reader's
STATS_REFRESH = 1.0  # seconds one rendering of the stats file is served without opens (one `cat`)


class ControlFiles:
    def __init__(self, stats: Callable[[], dict[str, Any]], opens: bool) -> None:
        self._stats = stats
        self.opens = opens
        self._rendering: tuple[float, bytes, int] = (-STATS_REFRESH, b"", 0)  # monotonic, bytes, mtime_ns
        self._open: dict[int, bytes] = {}
        self._ids = itertools.count(VIRTUAL_FH)

    @staticmethod
    def owns(path: str) -> bool:
        return path == CONTROL_DIR or path == STATS_FILE

    @staticmethod
    def owns_handle(fh: int) -> bool:
        return fh >= VIRTUAL_FH

    def meta(self, path: str) -> ObjectMeta:
        if path == CONTROL_DIR:
            return ObjectMeta(".vfs", True)
        if self.opens:  # made at each open, read with direct_io: the size is unknown here
            return ObjectMeta("stats", False, 0)
        _, data, mtime_ns = self.rendering()
        return ObjectMeta("stats", False, len(data), mtime_ns, str(mtime_ns))

    def listing(self) -> dict[str, ObjectMeta]:
        return {"stats": ObjectMeta("stats", False, 0)}

    def render(self) -> bytes:
        return json.dumps(self._stats(), indent=1, sort_keys=True).encode() + b"\n"

    def rendering(self) -> tuple[float, bytes, int]:
        if time.monotonic() - self._rendering[0] >= STATS_REFRESH:
            self._rendering = (time.monotonic(), self.render(), time.time_ns())
        return self._rendering

    def open(self) -> int:
        fh = next(self._ids)
        self._open[fh] = self.render()
        return fh

    def read(self, fh: int | None, offset: int, size: int) -> bytes:
        """Bytes of an open stats file, or (fh None, without opens) of the current rendering."""
        data = self.rendering()[1] if fh is None else self._open[fh]
        return data[offset:offset + size]

    def release(self, fh: int) -> None:
        self._open.pop(fh, None)
