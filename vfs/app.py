"""Running one mount: build the backends, cache, reader and namespace from a Config, mount them
through pyfuse3, serve until SIGTERM/SIGINT (or `vfs unmount`), and unmount cleanly. Around that:
the Prometheus endpoint (vfs/prometheus.py) and systemd's notify protocol (vfs/sd_notify.py).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import signal
from pathlib import Path

import pyfuse3
import trio

from vfs import preflight
from vfs.cache.tiered import build_cache, open_cluster
from vfs.config import Config, ConfigError
from vfs.fuse_ops import FuseOps
from vfs.metadata_store import open_store
from vfs.mount_table import Mount, MountTable
from vfs.mounts import backend_class
from vfs.mounts.base import Backend, WritableBackend
from vfs.mounts.faults import Faults
from vfs.namespace import Namespace
from vfs.prometheus import MetricsServer
from vfs.reader import Reader
from vfs.sd_notify import Notifier
from vfs.staging import StagingArea

log = logging.getLogger(__name__)


# Signals a running mount takes from `vfs cache clear --mount`: which tier to empty.
CLEAR_SIGNALS = {signal.SIGUSR1: "ram", signal.SIGUSR2: "ssd"}
# Seconds between two checks of the STATUS line sent to systemd (without a watchdog).
STATUS_EVERY = 5.0
# Seconds systemd is asked to wait at a stop beyond the drain of uploads (closing the SSD tier).
STOP_MARGIN = 30.0


class MountError(RuntimeError):
    """The mountpoint cannot be used; the message says why and what to do, in one line."""


def _mountinfo(path: str, resolve: bool = True) -> list[str] | None:
    """The last /proc/self/mountinfo line mounted exactly at `path`, split into fields.

    Resolving `path` with realpath stats the mountpoint: the process serving that mount must pass
    a resolved path and `resolve=False` (it would otherwise wait on itself).
    """
    target = os.path.realpath(path) if resolve else path
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:
        fields = line.split()
        if fields[4].encode().decode("unicode_escape") == target:
            found = fields
    return found


def mounted_at(path: str) -> str | None:
    """The filesystem type mounted exactly at `path`, if any."""
    fields = _mountinfo(path)
    return None if fields is None else fields[fields.index("-") + 1]


def mount_device(resolved: str) -> str | None:
    """`major:minor` of the filesystem mounted exactly at the already resolved path `resolved`."""
    fields = _mountinfo(resolved, resolve=False)
    return None if fields is None else fields[2]


def set_read_ahead(mountpoint: str, kb: int) -> None:
    """Raise the kernel's readahead of the mount (its bdi), if permitted; log what changed.
    `mountpoint` must be resolved already (see _mountinfo)."""
    device = mount_device(mountpoint)
    if not kb or device is None:
        return
    knob = Path("/sys/class/bdi") / device / "read_ahead_kb"
    try:
        before = knob.read_text().strip()
        knob.write_text(str(kb))
    except OSError as exc:
        log.info("read_ahead_kb of %s left as it is (%s): run as root to raise it", mountpoint, exc.strerror)
        return
    log.info("read_ahead_kb of %s: %s -> %d", mountpoint, before, kb)


def check_mountpoint(path: str) -> None:
    """Refuse a mountpoint that is stale, already mounted or not a directory, in one clear line.

    An autofs trigger there is no mount to refuse: fstab's `x-systemd.automount` puts one at the
    mountpoint and, at the first access, runs the mount helper, which mounts vfs on top of it. Only
    the stat and /proc/self/mountinfo look at it then (they do not trigger an automount; a statfs would,
    and would wait for the very mount it is part of)."""
    stale = MountError(f"{path}: stale mount left by a vfs process that died; "
                       f"clear it with `vfs unmount {path}` (or `fusermount3 -u -z {path}`)")
    try:
        os.stat(path)
        fstype = mounted_at(path)
        if fstype is not None and fstype != "autofs":
            os.statvfs(path)  # a stat may come from the kernel's cache; statfs always asks the daemon
            raise MountError(f"{path}: already mounted ({fstype}); unmount it first with `vfs unmount {path}`")
    except FileNotFoundError:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise MountError(f"{path}: cannot be created ({exc.strerror})") from None
        return
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise stale from None
        raise MountError(f"{path}: {exc.strerror}") from None
    if not os.path.isdir(path):
        raise MountError(f"{path}: not a directory")


def open_backends(config: Config) -> list[Mount]:
    mounts = []
    for i, m in enumerate(config.mounts):
        try:
            backend: Backend = backend_class(m.backend)(m.options)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"{config.source}: mount #{i + 1} ({m.path}): {exc}") from None
        if m.faults is not None:
            backend.faults = Faults(m.faults)
            log.warning("mount %s: faults injected into %s (%s), as the config asks", m.path, backend.describe(), m.faults)
        mode = "off" if config.fuse.read_only else (m.write_mode or config.write.mode)
        if mode != "off" and not isinstance(backend, WritableBackend):
            raise ConfigError(f"{config.source}: mount #{i + 1} ({m.path}).write_mode: {m.backend} cannot be written")
        mounts.append(Mount(
            m.path, backend,
            ttl=config.metadata.ttl if m.ttl is None else m.ttl,
            negative_ttl=config.metadata.negative_ttl if m.negative_ttl is None else m.negative_ttl,
            write_mode=mode, rename_limit=config.write.rename_limit,
        ))
    return mounts


def staging_area(config: Config, mountpoint: str) -> StagingArea:
    """The staging area of a mountpoint: a directory of its own under `staging_dir`, so that pending
    commits resume when the same mountpoint is mounted again."""
    name = os.path.realpath(mountpoint).strip("/").replace("/", "_") or "root"
    directory = os.path.join(os.path.expanduser(config.write.staging_dir), name)
    try:
        return StagingArea(directory, config.write.staging_size)
    except OSError as exc:
        raise ConfigError(f"{config.source}: write.staging_dir: {exc}") from None


def build_namespace(config: Config, mountpoint: str | None = None) -> Namespace:
    c = config.cache
    cluster = (open_cluster(c.cluster, password=c.cluster_password, password_file=c.cluster_password_file,
                            tls=c.cluster_tls, timeout=c.cluster_timeout, lease=c.cluster_lease, block_size=c.block_size)
               if mountpoint is not None else None)
    cache = build_cache(c.block_size, c.ram_size, c.ram_policy, os.path.expanduser(c.ssd_dir), c.ssd_size, c.ssd_policy,
                        cluster)
    trace = open(os.path.expanduser(c.trace_file), "a", buffering=1 << 16) if c.trace_file else None
    reader = Reader(cache, prefetch_window=c.prefetch_window, prefetch_memory=c.prefetch_memory, trace=trace)
    table = MountTable(open_backends(config))
    staging = None
    if mountpoint is not None and any(m.writable for m in table.mounts):
        staging = staging_area(config, mountpoint)
        recovered, dropped = staging.recover()
        for path in dropped:
            log.info("staging: %s held bytes no close accepted; dropped", path)
        for sf in recovered:
            if sf.mount not in table.by_path or not table.by_path[sf.mount].writable:
                log.warning("staging: %s%s waits for a mount at %s that is writable; kept", sf.mount, sf.path, sf.mount)
        if recovered:
            log.info("staging: %d file(s) from an earlier run resume their commits", len(recovered))
    # Beside the SSD tier, and only where that tier is on (its directory is ours and usable).
    store = (open_store(os.path.expanduser(c.ssd_dir), c.ssd_size, mountpoint)
             if mountpoint is not None and cache.ssd is not None else None)
    return Namespace(table, reader, default_ttl=config.metadata.ttl,
                     opens=needs_opens(config.fuse.pin_handle_version), staging=staging,
                     write_back_delay=config.write.write_back_delay, offline=config.metadata.offline,
                     metadata_store=store)


def needs_opens(pin_handle_version: bool) -> bool:
    """Whether every open must reach vfs: when asked, or when pyfuse3 lacks scripts/setup's patch
    that passes the inode to read() of a file opened without vfs."""
    if pin_handle_version:
        return True
    if not getattr(pyfuse3, "READ_INODE_WITHOUT_OPEN", False):
        log.warning("pyfuse3 is not the build patched by scripts/setup: every open and close costs a "
                    "request (as with pin_handle_version = true)")
        return True
    return False


def fuse_options(config: Config) -> set[str]:
    options = set(pyfuse3.default_options)
    options |= {"fsname=vfs", "subtype=vfs"}
    if config.fuse.read_only or all((m.write_mode or config.write.mode) == "off" for m in config.mounts):
        options.add("ro")  # the kernel refuses every write itself
    if config.fuse.auto_unmount:
        options.add("auto_unmount")
    if config.fuse.allow_other:
        options.add("allow_other")
    return options


def status_line(ns: Namespace) -> str:
    """One line for `systemctl status`: the silos, and the uploads waiting."""
    silos = ", ".join(f"{m.path} <- {m.backend.describe()}" for m in sorted(ns.table.mounts, key=lambda m: m.path))
    line = f"serving {len(ns.table.mounts)} silo(s): {silos}"
    if ns.committer is not None:
        line += f"; {ns.committer.pending()} upload(s) pending, {ns.committer.failing()} failing"
    return line


async def _after_init(ns: Namespace, mountpoint: str, read_ahead_kb: int, notifier: Notifier) -> None:
    """Once the mount answers: raise readahead, tell systemd READY=1, then keep its STATUS line and
    watchdog fed.

    A stat of the mountpoint returns only once the kernel has processed FUSE INIT (which also sets
    readahead to min(its value, what INIT negotiated)); it runs in a worker thread, as it waits for
    this very trio thread to answer."""
    await trio.to_thread.run_sync(os.stat, mountpoint)
    set_read_ahead(mountpoint, read_ahead_kb)
    if not notifier.enabled:
        return
    if mount_device(mountpoint) is None:
        log.warning("%s answers but is not in /proc/self/mountinfo; READY=1 sent anyway", mountpoint)
    status = status_line(ns)
    notifier.ready(status)
    while True:
        await trio.sleep(notifier.watchdog_interval or STATUS_EVERY)
        if notifier.watchdog_interval:
            notifier.watchdog()
        if status_line(ns) != status:
            status = status_line(ns)
            notifier.status(status)


def serve_metrics(ns: Namespace, addr: str) -> MetricsServer | None:
    """The Prometheus endpoint on `addr` (`[metrics] addr`, `--metrics-addr`), or None: none asked
    for, or it cannot be served (logged; the mount goes on)."""
    if not addr:
        return None
    try:
        server = MetricsServer(addr, ns.metrics, trio.lowlevel.current_trio_token())
    except (OSError, ValueError) as exc:
        log.error("metrics not served on %s: %s", addr, exc)
        return None
    ns.metrics.static(("metrics_url",), server.url)
    log.info("metrics on %s", server.url)
    return server


async def _serve(ns: Namespace, mountpoint: str, read_ahead_kb: int, drain_timeout: float, metrics: str) -> None:
    notifier = Notifier()
    server = serve_metrics(ns, metrics)
    try:
        await _serve_until_unmounted(ns, mountpoint, read_ahead_kb, drain_timeout, notifier)
    finally:
        notifier.stopping("unmounted")
        notifier.close()
        if server is not None:
            with trio.CancelScope(shield=True):  # a scrape in flight waits for this thread
                await trio.to_thread.run_sync(server.close)


async def _serve_until_unmounted(ns: Namespace, mountpoint: str, read_ahead_kb: int, drain_timeout: float,
                                 notifier: Notifier) -> None:
    async with trio.open_nursery() as nursery:
        ns.start(nursery)
        nursery.start_soon(_after_init, ns, mountpoint, read_ahead_kb, notifier)

        async def on_signal() -> None:
            stop = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
            with trio.open_signal_receiver(*stop, *CLEAR_SIGNALS) as signals:
                async for signum in signals:
                    if signum in CLEAR_SIGNALS:  # `vfs cache clear --mount`
                        dropped = await ns.reader.clear(CLEAR_SIGNALS[signum])
                        log.info("cache cleared: %s", dropped)
                        continue
                    log.info("%s: unmounting", signal.Signals(signum).name)
                    notifier.stopping(f"{signal.Signals(signum).name}: unmounting")
                    pyfuse3.terminate()
                    return

        nursery.start_soon(on_signal)
        await pyfuse3.main()
        notifier.stopping("unmounting")
        pending = ns.committer.pending() if ns.committer is not None else 0
        if pending:  # beyond TimeoutStopSec if need be: the SSD tier is written out after the drain too
            notifier.extend_timeout(drain_timeout + STOP_MARGIN, f"unmounting: {pending} upload(s) to finish")
        left = await ns.drain(drain_timeout)
        if left:
            log.warning("%d file(s) not committed yet: they stay in the staging area and their commits "
                        "resume at the next mount of %s", left, mountpoint)
        nursery.cancel_scope.cancel()
    await trio.to_thread.run_sync(ns.reader.close)  # the SSD tier writes out RAM's blocks
    if ns.staging is not None:
        ns.staging.close()
    ns.control.close()
    for mount in ns.table.mounts:
        await mount.backend.aclose()


def check_silos(table: MountTable, offline: str) -> None:
    """One bounded request at every silo's root before mounting. A bucket, export or folder that does
    not exist is a mistake in the config: the mount stops, in one line. Refused credentials only warn
    (the other silos serve; that mount's readers get EACCES), and so does a silo that cannot be reached
    (offline mode serves what is cached) unless `[metadata] offline = "never"`."""
    for p in trio.run(preflight.check_roots, table):
        if p.errno in (errno.ENOENT, errno.ENOTDIR) or (offline == "never" and not p.lasting):
            raise MountError(str(p))
        log.warning("%s; mounting anyway: %s", p, "its readers get this error" if p.lasting
                    else "what is cached is served until it answers")


# glibc's malloc gives each thread that allocates its own arena and keeps what is freed there: with
# 4 MiB blocks made and dropped by many worker threads, RSS grew to twice the RAM budget (soak with
# an SSD tier: 640 MiB, with two arenas 352 MiB at the same throughput).
M_ARENA_MAX = -8
MALLOC_ARENAS = 2


def limit_malloc_arenas() -> None:
    """Before any worker thread starts; nothing happens where libc has no mallopt (not glibc)."""
    try:
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, MALLOC_ARENAS)
    except (OSError, AttributeError):
        pass


def run(config: Config, mountpoint: str) -> None:
    """Mount and serve in this process until told to stop."""
    limit_malloc_arenas()
    check_mountpoint(mountpoint)
    mountpoint = os.path.realpath(mountpoint)  # resolved before mounting: afterwards a stat would ask us
    ns = build_namespace(config, mountpoint)
    check_silos(ns.table, config.metadata.offline)
    pyfuse3.init(FuseOps(ns), mountpoint, fuse_options(config))
    log.info("mounted %s: %s", mountpoint, ", ".join(f"{m.path} <- {m.backend.describe()}" for m in ns.table.mounts))
    try:
        trio.run(_serve, ns, mountpoint, config.fuse.read_ahead_kb, config.write.drain_timeout, config.metrics.addr)
    finally:
        pyfuse3.close(unmount=True)
        log.info("unmounted %s", mountpoint)
