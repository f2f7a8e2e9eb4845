"""Synthetic block-cache traces for the policy simulator, and the trace file format.

A trace is a sequence of requests `(key, size)`; on disk one request per line, `key size` (key without
whitespace, size in bytes), `#` comments and blank lines ignored. Every generator is deterministic
given its seed (Python's Mersenne Twister seeded with an int or a str is stable across runs and
platforms), and a key always has the same size.

Kinds, each the shape of a real workload of a FUSE block cache:
- `zipf`: skewed popularity (alpha 0.8-1.2 covers web/object-store traces);
- `zipf-scan`: the same, with one-time scans of fresh keys mixed in (a `find | xargs cat`, a backup);
- `loop`: a cyclic pass over more keys than fit (LRU's worst case: a re-read of a big file);
- `epochs`: a dataset read in a fresh random order per epoch (a training DataLoader).
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import logging
import random
from pathlib import Path
from typing import Iterable, Iterator

log = logging.getLogger(__name__)

Request = tuple[str, int]

# 4 MiB: the block cache's default block size (vfs.config.CacheConfig.block_size).
DEFAULT_BLOCK_SIZE = 4 * 1024**2

KINDS = ("zipf", "zipf-scan", "loop", "epochs")


@dataclasses.dataclass(frozen=True)
class KeySizes:
    """Sizes of keys: uniform in [low, high] bytes per key, drawn once per key (low == high: fixed)."""

    low: int = DEFAULT_BLOCK_SIZE
    high: int = DEFAULT_BLOCK_SIZE

    def __post_init__(self) -> None:
        if not 0 <= self.low <= self.high:
            raise ValueError(f"need 0 <= low <= high, got low={self.low} high={self.high}")

    def draw(self, rng: random.Random, count: int) -> list[int]:
        if self.low == self.high:
            return [self.low] * count
        return [rng.randint(self.low, self.high) for _ in range(count)]


def _rngs(seed: int | str, kind: str) -> tuple[random.Random, random.Random]:
    """Independent generators for the request order and the key sizes."""
    return random.Random(f"{kind}:{seed}:order"), random.Random(f"{kind}:{seed}:sizes")


def _zipf_sampler(n_keys: int, alpha: float, rng: random.Random) -> Iterator[int]:
    """Key indices with P(rank r) proportional to 1 / r**alpha; ranks mapped to keys by a shuffle."""
    if n_keys < 1:
        raise ValueError("zipf needs at least one key")
    if alpha <= 0:
        raise ValueError(f"zipf alpha must be > 0, got {alpha}")
    cumulative = list(itertools.accumulate(1.0 / rank**alpha for rank in range(1, n_keys + 1)))
    total = cumulative[-1]
    by_rank = list(range(n_keys))
    rng.shuffle(by_rank)
    last = n_keys - 1
    while True:
        yield by_rank[min(bisect.bisect_right(cumulative, rng.random() * total), last)]


def zipf(n_keys: int, requests: int, alpha: float = 1.0, seed: int | str = 0,
         sizes: KeySizes = KeySizes()) -> Iterator[Request]:
    """`requests` requests over keys `k0..k{n_keys-1}` with Zipf(alpha) popularity."""
    order, size_rng = _rngs(seed, "zipf")
    key_size = sizes.draw(size_rng, n_keys)
    for index in itertools.islice(_zipf_sampler(n_keys, alpha, order), requests):
        yield f"k{index}", key_size[index]


def zipf_scan(n_keys: int, requests: int, alpha: float = 1.0, scan_every: int | None = None,
              scan_length: int | None = None, seed: int | str = 0,
              sizes: KeySizes = KeySizes()) -> Iterator[Request]:
    """`requests` Zipf requests over `k0..`, with a scan of `scan_length` fresh keys (`s<scan>-<i>`,
    each read once, never again) after every `scan_every` of them. Defaults: a scan of n_keys/5 keys
    after every 2*n_keys requests (scans are then ~10% of the requests, ~2/3 of the distinct keys)."""
    scan_every = 2 * n_keys if scan_every is None else scan_every
    scan_length = max(1, n_keys // 5) if scan_length is None else scan_length
    if scan_every < 1 or scan_length < 0:
        raise ValueError("scan_every must be >= 1 and scan_length >= 0")
    order, size_rng = _rngs(seed, "zipf-scan")
    key_size = sizes.draw(size_rng, n_keys)
    sampler = _zipf_sampler(n_keys, alpha, order)
    for done in range(1, requests + 1):
        index = next(sampler)
        yield f"k{index}", key_size[index]
        if done % scan_every == 0:
            scan = done // scan_every
            for i, size in enumerate(sizes.draw(size_rng, scan_length)):
                yield f"s{scan}-{i}", size


def loop(n_keys: int, requests: int, seed: int | str = 0, sizes: KeySizes = KeySizes()) -> Iterator[Request]:
    """`k0, k1, ..., k{n_keys-1}, k0, ...` for `requests` requests."""
    if n_keys < 1:
        raise ValueError("loop needs at least one key")
    _, size_rng = _rngs(seed, "loop")
    key_size = sizes.draw(size_rng, n_keys)
    for i in range(requests):
        index = i % n_keys
        yield f"k{index}", key_size[index]


def epochs(n_keys: int, n_epochs: int, seed: int | str = 0, sizes: KeySizes = KeySizes()) -> Iterator[Request]:
    """Every key of a dataset once per epoch, in a fresh shuffled order each epoch."""
    order, size_rng = _rngs(seed, "epochs")
    key_size = sizes.draw(size_rng, n_keys)
    indices = list(range(n_keys))
    for _ in range(n_epochs):
        order.shuffle(indices)
        for index in indices:
            yield f"k{index}", key_size[index]


def write_trace(path: Path, requests: Iterable[Request]) -> int:
    """Write `key size` lines to `path` (through a temporary file, then rename); the request count."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    with tmp.open("w", encoding="utf-8") as out:
        for key, size in requests:
            if not key or any(c.isspace() for c in key):
                raise ValueError(f"trace keys cannot be empty or contain whitespace: {key!r}")
            out.write(f"{key} {size}\n")
            count += 1
    tmp.replace(path)
    return count


def read_trace(path: Path) -> Iterator[Request]:
    """The requests of a trace file; ValueError naming the line for a malformed one."""
    with Path(path).open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            parts = text.split()
            if len(parts) != 2 or not parts[1].isdigit():
                raise ValueError(f"{path}:{number}: expected 'key size', got {line.rstrip()!r}")
            yield parts[0], int(parts[1])


def working_set(requests: Iterable[Request]) -> tuple[int, int]:
    """(distinct keys, their bytes) of a trace: the size a cache needs to hold everything."""
    sizes: dict[str, int] = {}
    for key, size in requests:
        sizes[key] = size
    return len(sizes), sum(sizes.values())
