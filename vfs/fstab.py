"""The mount-helper calling convention, so an /etc/fstab line mounts vfs:

    /home/me/.config/vfs/data.toml  /mnt/data  fuse.vfs  _netdev,nofail,x-systemd.automount  0 0

For type `fuse.vfs`, mount(8) runs /sbin/mount.fuse.vfs if there is one, else mount.fuse3, which
runs `vfs SOURCE MOUNTPOINT -o OPTIONS` through /bin/sh (its default PATH: /usr/local/bin, /usr/bin).
Both call shapes come here: `SOURCE MOUNTPOINT [-o OPTS]... [-t TYPE] [-s] [-f] [-n] [-v] [-N NS]`.
This module turns one into the `vfs mount` command line that does the same (a background mount:
the helper returns once the mount is up, or with one line saying why not).

SOURCE is a config file when it names a file or ends in .toml, else a one-liner source (`s3://bucket/prefix=/s3`, a
local directory). Options that mean nothing to vfs (what mount(8), mount.fuse3 and systemd add:
`_netdev`, `nofail`, `x-systemd.*`, `rw`, `dev`, `suid`, ...) are accepted and ignored; `ro` is
`--read-only`, `allow_other` is `--allow-other`, and `write_mode=`, `log_file=`, `log_level=`,
`metrics_addr=`, `trace=` pass through. Any other option is refused, naming it.
"""

from __future__ import annotations

import os

# Generic mount(8) options, and what mount(8), mount.fuse3 and systemd put in the option string.
IGNORED = frozenset({
    "defaults", "rw", "auto", "noauto", "user", "nouser", "users", "owner", "group", "nofail", "_netdev",
    "dev", "nodev", "suid", "nosuid", "exec", "noexec", "sync", "async", "dirsync", "atime", "noatime",
    "diratime", "nodiratime", "relatime", "norelatime", "strictatime", "nostrictatime", "lazytime",
    "nolazytime", "iversion", "noiversion", "mand", "nomand", "silent", "loud", "remount", "bind",
    "drop_privileges",
})
# Prefixes of options that are someone else's: systemd's, comments, and mount.fuse3's own.
IGNORED_PREFIXES = ("x-", "comment=", "setuid=", "fsname=", "subtype=", "user=")
# option=VALUE -> the `vfs mount` flag it becomes
VALUED = {
    "write_mode": "--write-mode",
    "log_file": "--log-file",
    "log_level": "--log-level",
    "metrics_addr": "--metrics-addr",
    "trace": "--trace",
}
# Flags of mount(8)'s helper convention that change nothing here; -f (fake) means: do not mount.
HELPER_FLAGS = frozenset({"-s", "-n", "-v", "-f"})


class BadOptions(ValueError):
    """The helper's command line cannot be served; the message is the one line to print."""


def is_helper_call(argv: list[str]) -> bool:
    """True for `SOURCE MOUNTPOINT ...` as a mount helper passes it: the first argument is a path or a
    URL (it has a `/`), which no `vfs` subcommand or option has."""
    return len(argv) >= 2 and "/" in argv[0] and not argv[0].startswith("-")


def translate(argv: list[str]) -> list[str] | None:
    """The `vfs mount ...` arguments for a helper call; None for a fake mount (-f)."""
    source, mountpoint, rest = argv[0], argv[1], argv[2:]
    options: list[str] = []
    fake = False
    i = 0
    while i < len(rest):
        arg = rest[i]
        if arg in ("-o", "-t", "-N"):
            if i + 1 >= len(rest):
                raise BadOptions(f"{arg} needs a value")
            if arg == "-o":
                options += [o for o in rest[i + 1].split(",") if o]
            i += 2
            continue
        if arg.startswith("-o") and len(arg) > 2:
            options += [o for o in arg[2:].split(",") if o]
        elif arg in HELPER_FLAGS:
            fake = fake or arg == "-f"
        else:
            raise BadOptions(f"unexpected argument {arg!r} (a mount helper takes SOURCE MOUNTPOINT -o OPTIONS)")
        i += 1
    flags = option_flags(options)
    if fake:
        return None
    what = ["--config", source] if os.path.isfile(source) or source.endswith(".toml") else [source]
    return ["mount", mountpoint, *what, *flags]


def option_flags(options: list[str]) -> list[str]:
    """`vfs mount` flags for mount options; BadOptions names the first one vfs does not know."""
    flags: list[str] = []
    read_only = False
    for opt in options:
        name, eq, value = opt.partition("=")
        if opt in IGNORED or opt.startswith(IGNORED_PREFIXES):
            read_only = False if opt == "rw" else read_only  # the last of ro and rw wins
        elif opt == "ro":
            read_only = True
        elif opt == "allow_other":
            flags.append("--allow-other")
        elif name in VALUED and eq:
            flags += [VALUED[name], value]
        elif name in VALUED:
            raise BadOptions(f"option {name} needs a value ({name}=...)")
        else:
            raise BadOptions(f"unknown mount option {opt!r} (vfs takes ro, allow_other, "
                             f"{'=, '.join(VALUED)}=, and ignores generic ones such as _netdev, nofail, x-systemd.*)")
    return [*flags, "--read-only"] if read_only else flags
