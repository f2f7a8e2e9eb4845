"""Faults injected into any backend's calls, to rehearse failures: from a `[[mount]]`'s `faults` table
or from a test.

    [[mount]]
    path = "/s3"
    backend = "s3"
    bucket = "data"
    faults = { rate = 0.1, errno = "ETIMEDOUT", ops = "read_range,list_dir", delay = 0.05, seed = 1 }

Every protocol call named in `ops` (default: all of them) first waits `delay` seconds; then, at
`rate` (seeded random) or when a test ordered it (`Faults.inject`), it fails: after `stall` seconds,
with an OSError of `errno`, or, with `truncate`, a read_range returns only half of its bytes (a body
cut short that a backend did not notice). The backend's call wrapper (vfs/mounts/base.py) applies
them to outer calls only, before the request is sent; the mount logs one warning that faults are on.
"""

from __future__ import annotations

import dataclasses
import errno as errno_names
import random

import trio

from vfs.errors import SiloError

OPS = ("stat", "list_dir", "read_range", "write_file", "delete", "mkdir", "rmdir", "rename", "set_mtime")


@dataclasses.dataclass(frozen=True)
class FaultSpec:
    rate: float = 0.0
    """Share of the calls named in `ops` that fail, 0 to 1."""
    errno: str = "EIO"
    """The error injected, by name (EIO, ETIMEDOUT, EHOSTDOWN, EAGAIN...)."""
    ops: str = "all"
    """Comma-separated protocol calls the faults apply to, or "all"."""
    delay: float = 0.0
    """Seconds added to every call named in `ops`."""
    stall: float = 0.0
    """Seconds a failing call hangs before it fails."""
    truncate: bool = False
    """A failing read_range returns half its bytes instead of raising."""
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"rate: {self.rate} is not between 0 and 1")
        if not isinstance(getattr(errno_names, self.errno, None), int) or not self.errno.startswith("E"):
            raise ValueError(f"errno: {self.errno!r} is not an errno name such as EIO or ETIMEDOUT")
        unknown = set(self.calls()) - set(OPS)
        if unknown:
            raise ValueError(f"ops: {', '.join(sorted(unknown))} not among {', '.join(OPS)}")
        if self.delay < 0 or self.stall < 0:
            raise ValueError("delay and stall: seconds, 0 or more")

    def calls(self) -> tuple[str, ...]:
        return OPS if self.ops.strip() == "all" else tuple(op.strip() for op in self.ops.split(",") if op.strip())


class Faults:
    """The faults of one backend: what its call wrapper asks before each call."""

    def __init__(self, spec: FaultSpec) -> None:
        self.spec = spec
        self._ops = frozenset(spec.calls())
        self._rng = random.Random(spec.seed)
        self._ordered = 0
        self.injected = 0

    def inject(self, times: int = 1) -> None:
        """The next `times` calls named in `ops` fail, whatever the rate."""
        self._ordered += times

    async def before(self, op: str, what: str) -> bool:
        """Delay, then fail (raise) or, for a truncated read, return True: the call's bytes are cut."""
        if op not in self._ops:
            return False
        if self.spec.delay:
            await trio.sleep(self.spec.delay)
        if self._ordered:
            self._ordered -= 1
        elif not (self.spec.rate and self._rng.random() < self.spec.rate):
            return False
        self.injected += 1
        if self.spec.stall:
            await trio.sleep(self.spec.stall)
        if self.spec.truncate and op == "read_range":
            return True
        code = getattr(errno_names, self.spec.errno)
        raise SiloError(code, f"{what}: injected fault ({self.spec.errno})", retryable=True)
