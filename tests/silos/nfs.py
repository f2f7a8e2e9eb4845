"""NFS: nfs-ganesha (Debian `nfs-ganesha nfs-ganesha-vfs`) exporting a tmp directory over NFSv4 on
127.0.0.1, read through the libnfs backend. NFSv4 only, so no rpcbind is needed.

Ganesha runs in the foreground (-F) with its config, pid file, log and NFSv4 recovery directory all
under tmp; it is stopped by pid. Its FSAL VFS opens files by handle (open_by_handle_at needs
CAP_DAC_READ_SEARCH), so it must run as root, as the tests do in CI. Ganesha's own caches are
turned off (Attr_Expiration_Time = 0) because `replace` writes straight into the exported directory,
behind the server's back. The export is read-write (the writable suite); `fetch` reads the exported
directory on disk. The export root is mode 0700, so `denied` (AUTH_SYS uid/gid 65534) is refused by
the server itself: a real NFS4ERR_ACCESS.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import time
from pathlib import Path
from typing import Iterator

import trio

from tests.servers import HOST, free_port, server
from tests.silos import Silo
from tests.silos.local import replace_file, write_tree
from vfs.mounts.nfs import NFSBackend, NFSOptions

PSEUDO = "/vfs"  # where the export sits in the server's NFSv4 pseudo tree

CONFIG = """\
NFS_CORE_PARAM {{
    Protocols = 4;
    Bind_addr = {host};
    NFS_Port = {port};
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Enable_UDP = false;
}}
NFSV4 {{
    Graceless = true;          # serve at once: there are no clients to wait for
    RecoveryBackend = fs;
    RecoveryRoot = "{recovery}";
}}
NFS_KRB5 {{
    Active_krb5 = false;
}}
MDCACHE {{
    Dir_Chunk = 0;             # no cached directory chunks: the tests change the tree behind ganesha
}}
EXPORT {{
    Export_Id = 1;
    Path = "{root}";
    Pseudo = {pseudo};
    Access_Type = RW;
    Squash = No_Root_Squash;
    Protocols = 4;
    Transports = TCP;
    SecType = sys;
    Attr_Expiration_Time = 0;  # revalidate attributes on every request (files change behind ganesha)
    FSAL {{
        Name = VFS;
    }}
}}
"""

# Ganesha listens before it has finished loading exports; a mount may fail for a moment after.
MOUNT_ATTEMPTS = 100
MOUNT_RETRY_DELAY = 0.1  # seconds; 100 x 0.1 s bounds the wait at ~10 s (ganesha is up in < 1 s here)


def _wait_mountable(backend: NFSBackend) -> None:
    for _ in range(MOUNT_ATTEMPTS):
        try:
            trio.run(backend.stat, "")
            return
        except OSError as exc:
            if exc.errno not in (errno.EHOSTDOWN, errno.ENOENT, errno.EIO):
                raise
            last = exc
        time.sleep(MOUNT_RETRY_DELAY)
    raise TimeoutError(f"ganesha listens but {backend.describe()} cannot be mounted: {last}")


def _fetch(root: Path, path: str) -> bytes | None:
    """A file's bytes read straight from the exported directory, behind ganesha."""
    try:
        return (root / path).read_bytes()
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def ganesha(tmp: Path, root: Path) -> Iterator[str]:
    """Run nfs-ganesha exporting `root`; yield the libnfs URL of the export."""
    port = free_port()
    state = tmp / "ganesha"
    (state / "recovery").mkdir(parents=True)
    conf = state / "ganesha.conf"
    conf.write_text(CONFIG.format(host=HOST, port=port, recovery=state / "recovery", root=root, pseudo=PSEUDO))
    argv = ["ganesha.nfsd", "-F", "-f", str(conf), "-p", str(state / "ganesha.pid"), "-L", "STDERR", "-N", "NIV_EVENT"]
    with server(argv, port, state / "ganesha.log"):
        yield f"nfs://{HOST}{PSEUDO}?version=4&nfsport={port}"


@contextlib.contextmanager
def open_silo(tmp: Path, files: dict[str, bytes], empty_dirs: list[str], shadowed: dict[str, bytes]) -> Iterator[Silo]:
    root = tmp / "nfs-export"
    root.mkdir(mode=0o700)  # only root may look inside: the `denied` backend (uid nobody) is refused
    write_tree(root, files, empty_dirs)

    with ganesha(tmp, root) as url:
        backend = NFSBackend(NFSOptions(url=url))
        _wait_mountable(backend)

        def denied() -> NFSBackend:
            # AUTH_SYS credentials of uid/gid nobody: the server answers NFS4ERR_ACCESS.
            return NFSBackend(NFSOptions(url=f"{url}&uid=65534&gid=65534"))

        try:
            yield Silo(
                backend=backend,
                flat_keys=False,
                replace=functools.partial(replace_file, root),
                denied=denied,
                mount_options={"backend": "nfs", "url": url},
                rooted=lambda sub: NFSBackend(NFSOptions(url=url.replace("?", f"/{sub}?", 1))),
                fetch=functools.partial(_fetch, root),
            )
        finally:
            trio.run(backend.aclose)
