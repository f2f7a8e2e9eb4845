"""Whether a silo can be reached: the per-silo breaker behind offline mode.

Every call of the backend protocol passes through `Backend`'s counting wrapper, which tells the
silo's `Health` how it went (`failed`, `answered`) and asks it first (`check`). A call that fails
because the silo cannot be reached (connection refused, host or network unreachable, DNS failure:
`UNREACHABLE`) takes the silo offline; a timeout (ETIMEDOUT: a silo gone, or one slow answer) has
the probe sent at once, and takes the silo offline only if the probe fails too; an answer of any kind, an error from a live server
(ENOENT, 403, 503) included, means it is online. While it is offline (and `[metadata] offline` is
"auto": `fail_fast`), calls fail at once with EHOSTDOWN instead of each waiting for its own timeout;
what vfs has cached is served by the layers above (vfs/metadata.py for listings and attributes, the
block cache for bytes). `watch` probes the silo in the background, with one real request each time
(`Backend.probe`), at growing intervals (1 s doubling to `PROBE_MAX`); the first answer brings it
back online, and the callbacks in `returned` run (the committer retries its uploads at once).
One log line when a silo goes offline, one when it returns.
"""

from __future__ import annotations

import contextvars
import errno
import logging
import time
from typing import Awaitable, Callable

import trio

from vfs.errors import SiloError
from vfs.metrics import Counter, Registry

log = logging.getLogger(__name__)

# What a failure means "the silo cannot be reached": each backend maps its SDK's connection, DNS and
# timeout errors to one of these (vfs/errors.py and the translate() of each backend).
UNREACHABLE = frozenset({errno.ECONNREFUSED, errno.EHOSTDOWN, errno.EHOSTUNREACH, errno.ENETUNREACH,
                         errno.ENETDOWN, errno.ETIMEDOUT})
# Seconds between two probes of an offline silo: the first, and the most (a silo down for an hour
# costs ~4 requests a minute).
PROBE_FIRST = 1.0
PROBE_MAX = 15.0

# True in the probe's own task: its calls go to the silo even while it is offline.
_probing: contextvars.ContextVar[bool] = contextvars.ContextVar("vfs_health_probing", default=False)


def unreachable(exc: BaseException) -> bool:
    """Whether `exc` says the silo could not be reached (not an answer of the silo)."""
    return isinstance(exc, OSError) and exc.errno in UNREACHABLE


class Health:
    """The breaker of one silo: online or offline, since when, and why."""

    def __init__(self, describe: Callable[[], str]) -> None:
        self._describe = describe
        self.fail_fast = True
        """`[metadata] offline = "auto"`: calls fail at once while offline, and caches serve stale
        entries; False ("never"): every call goes to the silo (the state is still tracked)."""
        self.online = True
        self.offline_since: float | None = None
        """time.time() when the silo went offline; None while online."""
        self.last_error = ""
        """The last failure that said the silo could not be reached."""
        self.returned: list[Callable[[], None]] = []
        """Called, on the trio thread, each time the silo comes back online."""
        self.refused = Counter()
        """Calls failed at once (EHOSTDOWN) because the silo was offline: no request sent."""
        self.probes = Counter()
        """Probes sent to an offline silo."""
        self._wake = trio.Event()
        """Set when the silo goes offline, or a call timed out (the probe decides)."""

    @property
    def serves_stale(self) -> bool:
        """Whether caches answer from expired entries now (offline, and offline mode is auto)."""
        return self.fail_fast and not self.online

    def offline_seconds(self) -> float:
        return 0.0 if self.offline_since is None else round(max(0.0, time.time() - self.offline_since), 3)

    # --- what the counting wrapper calls ----------------------------------------------------------

    def check(self) -> None:
        """Raise EHOSTDOWN at once if the silo is offline and calls should fail fast."""
        if self.online or not self.fail_fast or _probing.get():
            return
        self.refused.inc()
        since = time.strftime("%H:%M:%S", time.localtime(self.offline_since or time.time()))
        raise SiloError(errno.EHOSTDOWN, f"{self._describe()}: offline since {since}")

    def failed(self, exc: BaseException) -> None:
        """A call failed with `exc`: if it says the silo cannot be reached, the silo is offline."""
        if not unreachable(exc):
            self.answered()  # a live server's error (ENOENT, 403, 503...) is an answer
            return
        assert isinstance(exc, OSError)
        self.last_error = f"{errno.errorcode.get(exc.errno, exc.errno)}: {exc.strerror or exc}"
        if not self.online:
            return
        if exc.errno == errno.ETIMEDOUT and not _probing.get():
            self._wake.set()  # one slow answer, or a silo gone: the probe, sent now, tells
            return
        self.online, self.offline_since = False, time.time()
        log.warning("%s: offline (%s); serving what is cached, retrying in the background",
                    self._describe(), self.last_error)
        self._wake.set()

    def answered(self) -> None:
        """The silo answered a call: it is online."""
        if self.online:
            return
        log.warning("%s: back online after %.0f s offline", self._describe(), self.offline_seconds())
        self.online, self.offline_since = True, None
        for callback in self.returned:
            callback()

    # --- the background probe ---------------------------------------------------------------------

    async def watch(self, probe: Callable[[], Awaitable[object]]) -> None:
        """Forever: after a timeout, send `probe` (one real request) at once; while the silo is
        offline, at growing intervals until it answers."""
        _probing.set(True)
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            if self.online:  # a call timed out
                await self._probe(probe)
            delay = PROBE_FIRST
            while not self.online:
                await trio.sleep(delay)
                delay = min(2 * delay, PROBE_MAX)
                if not self.online:
                    await self._probe(probe)

    async def _probe(self, probe: Callable[[], Awaitable[object]]) -> None:
        self.probes.inc()
        try:
            await probe()
        except Exception as exc:  # noqa: BLE001  # any failure: still offline, or an answer
            if not isinstance(exc, OSError):
                log.debug("%s: probe failed: %r", self._describe(), exc)
                return
            self.failed(exc)
            return
        self.answered()

    # --- metrics ----------------------------------------------------------------------------------

    def register(self, registry: Registry, silo: str) -> None:
        """Show the state in `registry`, labelled with the mount path `silo` (the last error only in
        `.vfs/stats`: no label holds free text)."""
        registry.gauge("silo_online", "Whether the silo answers (1) or is offline (0)", ("silo",),
                       ("backends", "{silo}", "online")).labels(silo).set_function(lambda: int(self.online))
        registry.gauge("silo_offline_since_seconds", "Seconds the silo has been offline (0 while online)",
                       ("silo",), ("backends", "{silo}", "offline_s")).labels(silo).set_function(self.offline_seconds)
        registry.counter("silo_offline_refused", "Calls failed at once with EHOSTDOWN while the silo was offline",
                         ("silo",), ("backends", "{silo}", "offline_refused")).attach((silo,), self.refused)
        registry.counter("silo_probes", "Probes sent to an offline silo", ("silo",),
                         ("backends", "{silo}", "probes")).attach((silo,), self.probes)
        registry.static(("backends", silo, "offline_since"), lambda: None if self.offline_since is None else
                        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.offline_since)))
        registry.static(("backends", silo, "last_error"), lambda: self.last_error)
