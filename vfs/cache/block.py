"""What the block cache stores: immutable blocks of one version of one object.

The key carries the object's version, so a block of an older version can never answer for a newer
one: a changed object simply has other keys, and its old blocks age out under the eviction policy.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, slots=True)
class BlockKey:
    mount: str
    """The mount's path in the tree (`/s3/a`): two mounts of one bucket do not share blocks."""
    path: str
    """Backend-relative path of the object."""
    version: str
    index: int
    """Block number: the block covers bytes [index * block_size, (index + 1) * block_size)."""

    def __str__(self) -> str:
        return f"{self.mount}\0{self.path}\0{self.version}\0{self.index}"


@dataclasses.dataclass
class TierStats:
    """Counters of one tier, read by `.vfs/stats`."""

    hits: int = 0
    misses: int = 0
    hit_bytes: int = 0
    inserts: int = 0
    insert_bytes: int = 0
    evictions: int = 0
    eviction_bytes: int = 0
    refused: int = 0
    """Blocks not stored: larger than the tier, or every resident block pinned."""
