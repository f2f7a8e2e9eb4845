"""The in-memory backend as a silo (a flat-keyed store, like S3)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from tests.silos import Silo
from vfs.mounts.memory import MemoryBackend


@contextlib.contextmanager
def open_silo(tmp: Path, files: dict[str, bytes], empty_dirs: list[str], shadowed: dict[str, bytes]) -> Iterator[Silo]:
    backend = MemoryBackend()
    for key, data in {**files, **shadowed}.items():
        backend.put(key, data)
    for d in empty_dirs:
        backend.put(d + "/", b"")

    def fetch(path: str) -> bytes | None:
        found = backend.objects.get(path)
        return found[0] if found else None

    yield Silo(backend=backend, flat_keys=True, replace=backend.put, fetch=fetch)
