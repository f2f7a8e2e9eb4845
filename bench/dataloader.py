"""The PyTorch part of bench/compare.py: a DataLoader reading many small files through a directory tree.

`FileDataset` opens and reads one file fully per item (what an image or shard dataset does) and
returns its length; the collate function only sums lengths, so the time measured is the filesystem's
and the workers', not tensor work. `epochs()` times whole epochs of a DataLoader with `workers`
worker processes over a fixed list of paths (listed once beforehand, as a dataset indexes itself).

torch is an optional dependency (the `bench` extra); importing this module without it raises an
error that names the install command.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Sequence

try:
    import torch
    from torch.utils.data import DataLoader, Dataset
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
    raise ModuleNotFoundError(
        "PyTorch is not installed: .venv/bin/pip install -e '.[bench]' (torch==2.13.0 CPU), or run scripts/bench"
    ) from exc

log = logging.getLogger(__name__)
# torch warns when num_workers exceeds the vCPU count; the task's 4 workers on 2 vCPUs is deliberate
# (the workers wait on I/O, not on the CPU).
warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)

# The task's DataLoader: 4 workers (twice this machine kind's vCPUs, a usual num_workers for I/O-bound
# loading) and batches of 64.
WORKERS = 4
BATCH_SIZE = 64
# Workers read each file in one call of this size or less: 1 MiB, the largest FUSE request.
READ_SIZE = 1024 * 1024


class FileDataset(Dataset):
    """Item i = the number of bytes of paths[i], read fully with open/read/close."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> int:
        total = 0
        with open(self.paths[i], "rb", buffering=0) as f:
            while chunk := f.read(READ_SIZE):
                total += len(chunk)
        return total


def sum_lengths(batch: list[int]) -> int:
    return sum(batch)


def epochs(paths: Sequence[str], n: int = 2, workers: int = WORKERS, batch_size: int = BATCH_SIZE,
           seed: int = 0) -> list[dict[str, float]]:
    """Time `n` epochs over `paths` (shuffled, as training does); per epoch seconds, files/s and bytes."""
    loader = DataLoader(FileDataset(paths), batch_size=batch_size, shuffle=True, num_workers=workers,
                        collate_fn=sum_lengths, generator=torch.Generator().manual_seed(seed),
                        multiprocessing_context="fork")
    out = []
    for epoch in range(n):
        start = time.perf_counter()
        nbytes = sum(loader)  # workers start inside the timed epoch, as they do in training
        seconds = time.perf_counter() - start
        out.append({"seconds": seconds, "files_per_s": len(paths) / seconds, "bytes": nbytes})
        log.info("epoch %d: %d files in %.2f s (%.0f files/s)", epoch + 1, len(paths), seconds, len(paths) / seconds)
    return out
