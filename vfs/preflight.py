"""Checks before a mount serves: what a config names on this machine (`check_paths`, before anything
starts) and whether each silo's root answers (`check_roots`, one bounded request per mount).

Each returns one line per problem naming the config source (or the mount) and what is wrong, so
that `vfs mount` can refuse in one line and mount nothing. Neither changes anything: a directory vfs
creates later (ssd_dir, staging_dir) may be missing when its nearest existing ancestor is a writable
directory. A probe is bounded by `timeout` and by the backend's own timeouts (a blocking SDK call is
waited for, not abandoned, so the larger of the two bounds it).
"""

from __future__ import annotations

import dataclasses
import errno
import os

import trio

from vfs.config import Config
from vfs.mount_table import Mount, MountTable

# One probe per silo may wait this long (seconds) before its mount is reported as not answering:
# a cold TLS handshake plus a first token fetch fit well inside; a black hole is reported in time.
ROOT_TIMEOUT = 20.0
# Options naming a file of credentials a backend reads (some only at the first request).
CREDENTIAL_FILES = ("token_file", "credentials_file")


def _directory_problem(path: str) -> str | None:
    """Why `path` cannot be a directory vfs uses (and creates when missing), or None."""
    path = os.path.abspath(os.path.expanduser(path))
    try:
        if os.path.isdir(path):
            return None if os.access(path, os.W_OK | os.X_OK) else f"{path}: not writable"
        if os.path.lexists(path):
            return f"{path}: not a directory"
    except (OSError, ValueError) as exc:
        return f"{path}: {getattr(exc, 'strerror', None) or exc}"
    parent = os.path.dirname(path)
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"{path}: cannot be created, {parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{path}: cannot be created in {parent} (not writable)"
    return None


def _root_problem(root: str) -> str | None:
    """Why the directory `root` cannot be a local silo's root, or None."""
    path = os.path.abspath(os.path.expanduser(root))
    if not root:
        return "required, got an empty path"
    try:
        os.stat(path)
    except (OSError, ValueError) as exc:
        return f"{path}: {getattr(exc, 'strerror', None) or exc}"
    if not os.path.isdir(path):
        return f"{path}: not a directory"
    if not os.access(path, os.R_OK | os.X_OK):
        return f"{path}: not readable"
    return None


def _readable_problem(path: str) -> str | None:
    """Why the file `path` cannot be read, or None."""
    path = os.path.abspath(os.path.expanduser(path))
    try:
        with open(path, "rb"):
            return None
    except OSError as exc:
        return f"{path}: {exc.strerror}"


def _file_problem(path: str) -> str | None:
    """Why vfs cannot append to the file `path` (created when missing), or None."""
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(path):
        return f"{path}: is a directory"
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        return f"{path}: no such directory {parent}"
    if not os.access(path if os.path.exists(path) else parent, os.W_OK):
        return f"{path}: not writable"
    return None


def writable(config: Config, i: int) -> bool:
    """Whether mount `i` of `config` takes writes (the mode app.open_backends gives it)."""
    return not config.fuse.read_only and (config.mounts[i].write_mode or config.write.mode) != "off"


def check_paths(config: Config, log_file: str | None = None) -> list[str]:
    """One line per local path of `config` (and the log file) that vfs could not use."""
    problems: list[tuple[str, str | None]] = []
    c = config.cache
    if c.ssd_dir and c.ssd_size > 0:
        problems.append(("cache.ssd_dir", _directory_problem(c.ssd_dir)))
    if c.trace_file:
        problems.append(("cache.trace_file", _file_problem(c.trace_file)))
    if any(writable(config, i) for i in range(len(config.mounts))):
        problems.append(("write.staging_dir", _directory_problem(config.write.staging_dir)))
    for i, m in enumerate(config.mounts):
        for key in CREDENTIAL_FILES:
            if getattr(m.options, key, None):
                problems.append((f"mount #{i + 1} ({m.path}).{key}", _readable_problem(getattr(m.options, key))))
        if m.backend == "local":
            problems.append((f"mount #{i + 1} ({m.path}).root", _root_problem(m.options.root)))  # type: ignore[attr-defined]
    out = [f"{config.source}: {key}: {problem}" for key, problem in problems if problem]
    if log_file is not None:
        problem = _file_problem(log_file)
        if problem:
            out.append(f"--log-file: {problem}")
    return out


@dataclasses.dataclass(frozen=True)
class RootProblem:
    """A silo root that did not answer as it should before serving."""

    mount: str
    """The mount's path in the tree."""
    errno: int
    lasting: bool
    """True when waiting will not help (no such bucket or folder, refused credentials); False when the
    silo could not be reached or did not answer in time, which may pass (offline mode can serve)."""
    line: str

    def __str__(self) -> str:
        return self.line


async def _probe(mount: Mount) -> None:
    """One bounded request at the silo's root: the backend's `probe()` (the one offline mode uses),
    else a listing of the root (one page, for a root of up to page_size entries)."""
    probe = getattr(mount.backend, "probe", None)
    if probe is not None:
        await probe()
    else:
        await mount.backend.list_dir("")


async def check_roots(table: MountTable, timeout: float = ROOT_TIMEOUT) -> list[RootProblem]:
    """One problem per mount whose silo root does not answer (missing bucket, export or folder, refused
    credentials, a server that is down or silent for `timeout` seconds), probed all at once."""
    problems: dict[str, RootProblem] = {}

    async def check(mount: Mount) -> None:
        where = f"mount {mount.path} ({mount.backend.describe()})"
        try:
            with trio.fail_after(timeout):
                await _probe(mount)
        except trio.TooSlowError:
            problems[mount.path] = RootProblem(mount.path, errno.ETIMEDOUT, False,
                                               f"{where}: no answer within {timeout:g}s")
        except OSError as exc:
            err = exc.errno or errno.EIO
            lasting = err in (errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.EINVAL)
            text = exc.strerror or str(exc) or os.strerror(err)  # SiloError: "strerror: what"
            text = (text.splitlines() or [""])[0]
            if not text.startswith(os.strerror(err)):
                text = f"{os.strerror(err)}: {text}"
            problems[mount.path] = RootProblem(mount.path, err, lasting, f"{where}: {text}")

    async with trio.open_nursery() as nursery:
        for mount in table.mounts:
            nursery.start_soon(check, mount)
    return [problems[m.path] for m in sorted(table.mounts, key=lambda m: m.path) if m.path in problems]
