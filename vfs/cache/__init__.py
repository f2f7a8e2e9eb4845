"""The block cache: BlockKey -> bytes in tiers (RAM, then SSD), each with a byte budget and a
pluggable eviction policy. Only vfs.reader uses it."""

from vfs.cache.block import BlockKey, TierStats
from vfs.cache.tiered import BlockCache

__all__ = ["BlockCache", "BlockKey", "TierStats"]
