"""The `vfs` command: mount, unmount, and the cache's tools.

    vfs mount MOUNTPOINT --config FILE
    vfs mount MOUNTPOINT s3://bucket/prefix=/s3 /data/local=/local
    vfs unmount MOUNTPOINT

Without --foreground, `vfs mount` starts the filesystem in the background, waits until the mount is
up (or reports why it is not) and returns.
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

from vfs import config as vfs_config

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


def _load(args: argparse.Namespace) -> vfs_config.Config:
    if args.config and args.sources:  # the file's tables and mounts, plus the command line's mounts
        return vfs_config.from_sources(args.sources, vfs_config.read_toml(args.config))
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


def cmd_mount(args: argparse.Namespace) -> int:
    from vfs import app

    try:
        cfg = _load(args)
        if args.allow_other:
            cfg = dataclasses.replace(cfg, fuse=dataclasses.replace(cfg.fuse, allow_other=True))
        if args.trace:
            cfg = dataclasses.replace(cfg, cache=dataclasses.replace(cfg.cache, trace_file=os.path.abspath(args.trace)))
        if args.read_only:
            cfg = dataclasses.replace(cfg, fuse=dataclasses.replace(cfg.fuse, read_only=True))
        if args.write_mode:
            cfg = dataclasses.replace(cfg, write=dataclasses.replace(cfg.write, mode=args.write_mode))
        if not args.foreground:  # refuse here rather than in the background child (app.run checks too)
            app.check_mountpoint(args.mountpoint)
    except (vfs_config.ConfigError, app.MountError) as exc:
        print(f"vfs: {exc}", file=sys.stderr)
        return 2
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
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    deadline = time.monotonic() + BACKGROUND_START_TIMEOUT
    while time.monotonic() < deadline:
        if app.mounted_at(args.mountpoint) == "fuse.vfs":
            print(f"mounted {args.mountpoint} (pid {proc.pid}, log {log_file})")
            return 0
        if proc.poll() is not None:
            tail = Path(log_file).read_text(errors="replace").strip().splitlines()[-5:]
            print(f"vfs: mount failed (exit {proc.returncode}):\n" + "\n".join(tail), file=sys.stderr)
            return proc.returncode or 1
        time.sleep(0.1)
    print(f"vfs: {args.mountpoint} not mounted after {BACKGROUND_START_TIMEOUT:.0f}s; see {log_file}", file=sys.stderr)
    return 1


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

    try:
        authorize(args.client_secrets, args.token_file, open_browser=not args.no_browser)
    except (OSError, ValueError) as exc:
        print(f"vfs: Google Drive authorization failed: {exc}", file=sys.stderr)
        return 1
    print(f"token stored in {args.token_file}; mount with backend = \"gdrive\" (token_file = \"{args.token_file}\")")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vfs", description="One FUSE mount over S3, GCS, NFS and Google Drive.")
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
    m.set_defaults(func=cmd_mount)

    u = sub.add_parser("unmount", aliases=["umount"], help="unmount MOUNTPOINT")
    u.add_argument("mountpoint")
    u.add_argument("-z", "--lazy", action="store_true", help="detach now even if files are open")
    u.set_defaults(func=cmd_unmount)

    a = sub.add_parser("auth", help="authorize vfs to read a silo")
    asub = a.add_subparsers(dest="auth_command", required=True)
    g = asub.add_parser("gdrive", help="OAuth for Google Drive: opens a browser, stores a token")
    g.add_argument("--client-secrets", required=True, help="OAuth client JSON (a Desktop app client from the Google Cloud console)")
    from vfs.mounts.gdrive_auth import DEFAULT_TOKEN_FILE
    g.add_argument("--token-file", default=str(DEFAULT_TOKEN_FILE), help="where to store the token (default %(default)s)")
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
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
