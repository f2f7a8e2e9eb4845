"""The `vfs` command: mount, unmount, and the cache's tools.

    vfs mount MOUNTPOINT --config FILE
    vfs mount MOUNTPOINT s3://bucket/prefix=/s3 /data/local=/local
    vfs unmount MOUNTPOINT

Without --foreground, `vfs mount` starts the filesystem in the background, waits until the mount is
up (or reports why it is not) and returns.

Whatever is wrong with the command line, the config, the mountpoint or a path it names, `vfs mount`
says so in one line on stderr (`vfs: FILE: KEY: PROBLEM`), exits non-zero and leaves nothing mounted;
an unexpected exception is one line too (its traceback goes to the log at debug level).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn

from vfs import config as vfs_config
from vfs import fstab
from vfs import preflight

log = logging.getLogger("vfs")

# How long `vfs mount` waits for a background mount to come up: long enough for a cold Python start
# and a slow credential chain (SSO, instance metadata), short enough that a hang is reported.
BACKGROUND_START_TIMEOUT = 60.0


def _setup_logging(level: str, log_file: str | None) -> None:
    handler: logging.Handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    for noisy in ("botocore", "boto3", "urllib3", "google", "googleapiclient", "s3transfer"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error in one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


class Refused(Exception):
    """`vfs mount` refuses: the message is the one line to print."""


def _load(args: argparse.Namespace) -> vfs_config.Config:
    if args.config and args.sources:  # the file's tables and mounts, plus the command line's mounts
        return vfs_config.from_sources(args.sources, vfs_config.read_toml(args.config),
                                       f"{args.config} + command line")
    if args.config:
        return vfs_config.load(args.config)
    if not args.sources:
        raise vfs_config.ConfigError("nothing to mount: give --config FILE or sources such as s3://bucket/prefix=/s3")
    return vfs_config.from_sources(args.sources)


def _default_log_file(mountpoint: str) -> str:
    state = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "vfs"
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    name = os.path.realpath(mountpoint).strip("/").replace("/", "_") or "root"
    return str(state / f"{name}.log")


def _prepare_mountpoint(path: str) -> None:
    """Create a missing mountpoint (Refused if it cannot be); refuse one that is not an empty directory.
    A stale or busy mountpoint is app.check_mountpoint's to report."""
    from vfs import app

    path = os.path.abspath(path)  # a relative mountpoint is named in full in every message
    try:
        os.lstat(path)
    except FileNotFoundError:
        try:
            os.makedirs(path)
        except OSError as exc:
            raise Refused(f"{path}: the mountpoint cannot be created: {exc.strerror}") from None
    except OSError:
        pass  # stale (ENOTCONN), too long...: check_mountpoint names it
    try:
        app.check_mountpoint(path)
    except app.MountError as exc:
        raise Refused(str(exc)) from None
    try:
        entries = os.listdir(path)
    except OSError as exc:
        raise Refused(f"{path}: cannot list the mountpoint: {exc.strerror}") from None
    if entries:
        raise Refused(f"{path}: not empty ({len(entries)} entries would be hidden under the mount); "
                      "mount on an empty directory")


def _configure(args: argparse.Namespace) -> vfs_config.Config:
    """The config `vfs mount` serves, checked, with the command line's overrides applied."""
    cfg = _load(args)
    if args.allow_other:
        cfg = dataclasses.replace(cfg, fuse=dataclasses.replace(cfg.fuse, allow_other=True))
    if args.trace:
        cfg = dataclasses.replace(cfg, cache=dataclasses.replace(cfg.cache, trace_file=os.path.abspath(args.trace)))
    if args.read_only:
        cfg = dataclasses.replace(cfg, fuse=dataclasses.replace(cfg.fuse, read_only=True))
    if args.write_mode:
        cfg = dataclasses.replace(cfg, write=dataclasses.replace(cfg.write, mode=args.write_mode))
    if args.metrics_addr is not None:
        try:
            vfs_config.check_addr(args.metrics_addr)
        except ValueError as exc:
            raise Refused(f"--metrics-addr: {exc}") from None
        cfg = dataclasses.replace(cfg, metrics=dataclasses.replace(cfg.metrics, addr=args.metrics_addr))
    problems = preflight.check_paths(cfg, args.log_file)
    if problems:
        raise Refused(problems[0])
    _prepare_mountpoint(args.mountpoint)
    return cfg


def cmd_mount(args: argparse.Namespace) -> int:
    try:
        cfg = _configure(args)
    except (vfs_config.ConfigError, Refused) as exc:
        print(f"vfs: {exc}", file=sys.stderr)
        return 2
    from vfs import app  # pyfuse3, the cache, prometheus_client: only once there is something to mount

    if args.foreground:
        _setup_logging(args.log_level, args.log_file)
        try:
            app.run(cfg, args.mountpoint)
        except (vfs_config.ConfigError, app.MountError) as exc:
            print(f"vfs: {exc}", file=sys.stderr)
            return 2
        except RuntimeError as exc:  # pyfuse3.init: no /dev/fuse, no permission, ...
            print(f"vfs: cannot mount {args.mountpoint}: {exc}", file=sys.stderr)
            return 1
        return 0
    return _mount_in_background(args)


def _mount_in_background(args: argparse.Namespace) -> int:
    from vfs import app

    log_file = args.log_file or _default_log_file(args.mountpoint)
    argv = [sys.executable, "-m", "vfs", "mount", args.mountpoint, *args.sources, "--foreground",
            "--log-level", args.log_level, "--log-file", log_file]
    if args.config:
        argv += ["--config", args.config]
    if args.allow_other:
        argv.append("--allow-other")
    if args.read_only:
        argv.append("--read-only")
    if args.write_mode:
        argv += ["--write-mode", args.write_mode]
    if args.trace:
        argv += ["--trace", os.path.abspath(args.trace)]
    if args.metrics_addr is not None:
        argv += ["--metrics-addr", args.metrics_addr]
    try:
        with open(log_file, "ab") as out:
            start = out.tell()
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    except OSError as exc:
        print(f"vfs: {log_file}: {exc.strerror}", file=sys.stderr)
        return 1
    deadline = time.monotonic() + BACKGROUND_START_TIMEOUT
    while time.monotonic() < deadline:
        if app.mounted_at(args.mountpoint) == "fuse.vfs":
            print(f"mounted {args.mountpoint} (pid {proc.pid}, log {log_file})")
            return 0
        if proc.poll() is not None:
            print(_failure_line(log_file, start, proc.returncode), file=sys.stderr)
            return proc.returncode or 1
        time.sleep(0.1)
    print(f"vfs: {args.mountpoint} not mounted after {BACKGROUND_START_TIMEOUT:.0f}s; see {log_file}", file=sys.stderr)
    return 1


def _failure_line(log_file: str, start: int, code: int) -> str:
    """One line saying why a background mount failed: the child's own `vfs: ...` line, else the last
    line it logged, pointing at the log."""
    with open(log_file, "rb") as f:
        f.seek(start)
        lines = [line.strip() for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    said = [line for line in lines if line.startswith("vfs: ")]
    if said:
        return said[-1]
    last = f": {lines[-1][:300]}" if lines else ""
    return f"vfs: mount failed (exit {code}){last}; see {log_file}"


def cmd_unmount(args: argparse.Namespace) -> int:
    from vfs import app

    if app.mounted_at(args.mountpoint) is None:
        print(f"vfs: {args.mountpoint} is not mounted", file=sys.stderr)
        return 1
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is None:
        print("vfs: fusermount3 not found (apt-get install fuse3)", file=sys.stderr)
        return 1
    flags = ["-u", "-z"] if args.lazy else ["-u"]
    done = subprocess.run([tool, *flags, args.mountpoint], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"vfs: {done.stderr.strip() or 'unmount failed'}", file=sys.stderr)
        if "busy" in done.stderr:
            print(f"vfs: files are open under {args.mountpoint}; close them or use --lazy", file=sys.stderr)
        return done.returncode
    return 0


def cmd_auth_gdrive(args: argparse.Namespace) -> int:
    from vfs.mounts.gdrive_auth import authorize

    from vfs.mounts.gdrive_auth import DEFAULT_TOKEN_FILE

    token_file = args.token_file or str(DEFAULT_TOKEN_FILE)
    try:
        authorize(args.client_secrets, token_file, open_browser=not args.no_browser)
    except (OSError, ValueError) as exc:
        print(f"vfs: Google Drive authorization failed: {exc}", file=sys.stderr)
        return 1
    print(f"token stored in {token_file}; mount with backend = \"gdrive\" (token_file = \"{token_file}\")")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="vfs", description="One FUSE mount over S3, GCS, NFS and Google Drive.")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("mount", help="mount silos at MOUNTPOINT")
    m.add_argument("mountpoint")
    m.add_argument("sources", nargs="*", help="SOURCE[=/path]: s3://bucket/prefix, gs://bucket/prefix, nfs://host/export, a local dir")
    m.add_argument("-c", "--config", help="TOML config file")
    m.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground, log to stderr")
    m.add_argument("--read-only", action="store_true", help="refuse every write (EROFS), whatever the write modes say")
    m.add_argument("--write-mode", choices=["through", "back", "cache", "off"],
                   help="write mode of every mount that does not name its own (default: [write] mode, else through)")
    m.add_argument("--allow-other", action="store_true", help="let other users see the mount (needs user_allow_other in /etc/fuse.conf)")
    m.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    m.add_argument("--log-file", help="log here instead of stderr (background mounts default to ~/.local/state/vfs/)")
    m.add_argument("--trace", metavar="FILE", help="record block accesses for `vfs cache simulate --trace FILE`")
    m.add_argument("--metrics-addr", metavar="ADDR", help="serve Prometheus metrics at HOST:PORT ('' : off; default: [metrics] addr)")
    m.set_defaults(func=cmd_mount)

    u = sub.add_parser("unmount", aliases=["umount"], help="unmount MOUNTPOINT")
    u.add_argument("mountpoint")
    u.add_argument("-z", "--lazy", action="store_true", help="detach now even if files are open")
    u.set_defaults(func=cmd_unmount)

    a = sub.add_parser("auth", help="authorize vfs to read a silo")
    asub = a.add_subparsers(dest="auth_command", required=True)
    g = asub.add_parser("gdrive", help="OAuth for Google Drive: opens a browser, stores a token")
    g.add_argument("--client-secrets", required=True, help="OAuth client JSON (a Desktop app client from the Google Cloud console)")
    g.add_argument("--token-file", help="where to store the token (default ~/.config/vfs/gdrive-token.json, under $XDG_CONFIG_HOME if set)")
    g.add_argument("--no-browser", action="store_true", help="print the URL instead of opening a browser")
    g.set_defaults(func=cmd_auth_gdrive)

    c = sub.add_parser("cache", help="inspect, clear and simulate the block cache")
    csub = c.add_subparsers(dest="cache_command", required=True)
    from vfs import observe
    from vfs.cache import commands

    observe.add_commands(sub, csub)
    commands.add_commands(csub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if fstab.is_helper_call(argv):  # `vfs SOURCE MOUNTPOINT -o OPTS`: mount.fuse3 for an fstab line
        try:
            argv = fstab.translate(argv)
        except fstab.BadOptions as exc:
            print(f"vfs: {exc}", file=sys.stderr)
            return 2
        if argv is None:  # mount -f: nothing to do
            return 0
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # `vfs mount MNT --config c.toml s3://b=/x`: sources after options are sources too
        if args.command != "mount" or any(a.startswith("-") for a in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.sources = [*args.sources, *extra]
    try:
        return args.func(args)
    except Exception as exc:  # a bug, still reported in one line; the traceback goes to the log (debug)
        log.debug("unexpected error", exc_info=True)
        print(f"vfs: unexpected error ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
              "this is a bug, please report it with --log-level debug", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
