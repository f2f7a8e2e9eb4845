"""Backends, one per silo, found by name.

Backends are imported on first use, so a silo's SDK (libnfs, the Drive client) is only needed when a
mount uses it.
"""

from __future__ import annotations

import importlib

from vfs.mounts.base import Backend

# scheme -> "module:Class"
BACKENDS: dict[str, str] = {
    "s3": "vfs.mounts.s3:S3Backend",
    "local": "vfs.mounts.local:LocalBackend",
    "memory": "vfs.mounts.memory:MemoryBackend",
    "gcs": "vfs.mounts.gcs:GCSBackend",
    "nfs": "vfs.mounts.nfs:NFSBackend",
    "gdrive": "vfs.mounts.gdrive:DriveBackend",
}

# URL schemes of one-liner sources that differ from the backend name.
URL_SCHEMES: dict[str, str] = {"file": "local", "s3": "s3", "gs": "gcs", "gcs": "gcs", "nfs": "nfs", "gdrive": "gdrive", "memory": "memory"}


def backend_class(name: str) -> type[Backend]:
    """The Backend class registered under `name`; KeyError if unknown, ImportError if its SDK is missing."""
    module, _, cls = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)
