"""`vfs cache simulate` and `vfs cache trace`: compare eviction policies on a trace, make synthetic traces.

`add_commands(sub)` adds both to the `vfs cache` subcommand group; each parser sets `func`, called as
`func(args) -> int` (exit status). Standalone until vfs.cli wires it in:

    python -m vfs.cache.commands trace --kind zipf --keys 10000 --requests 200000 --out zipf.trace
    python -m vfs.cache.commands simulate --trace zipf.trace --size 10% --policy lru s3fifo arc
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Iterator, Sequence

from vfs.cache import traces
from vfs.cache.policy import POLICIES, policy_class
from vfs.cache.simulate import render_table, simulate_all
from vfs.units import format_size, parse_size

log = logging.getLogger(__name__)


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _budget(text: str) -> str:
    """A --size value: bytes (`64MiB`) or a percentage of the trace's working set (`10%`); checked here,
    resolved once the trace is read."""
    if text.endswith("%"):
        try:
            percent = float(text[:-1])
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a percentage: {text!r}") from None
        if not 0 < percent <= 100:
            raise argparse.ArgumentTypeError(f"a percentage of the working set must be in (0, 100]: {text!r}")
        return text
    _size(text)
    return text


def _resolve_budget(text: str, working_set_bytes: int) -> int:
    if text.endswith("%"):
        return int(working_set_bytes * float(text[:-1]) / 100)
    return parse_size(text)


def _policy(name: str) -> str:
    try:
        policy_class(name)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return name


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add `simulate` and `trace` to the `vfs cache` subcommand group."""
    sim = sub.add_parser(
        "simulate", help="replay a trace through eviction policies and compare hit ratios",
        description="Replay a trace ('key size' lines) through each policy under a byte budget; print hit "
                    "ratio and byte hit ratio per policy.")
    sim.add_argument("--trace", type=Path, required=True, help="trace file: one 'key size' request per line")
    sim.add_argument("--policy", nargs="+", type=_policy, default=None, metavar="NAME",
                     help=f"policies to compare (default: all of {', '.join(POLICIES)}); module:Class for your own")
    sim.add_argument("--size", nargs="+", type=_budget, required=True, metavar="SIZE",
                     help="cache budget(s): bytes such as 64MiB, or a percentage of the trace's working set (10%%)")
    sim.set_defaults(func=run_simulate)

    gen = sub.add_parser(
        "trace", help="write a synthetic trace",
        description="Write a synthetic trace ('key size' lines), deterministic given --seed.")
    gen.add_argument("--kind", choices=traces.KINDS, required=True,
                     help="zipf: skewed popularity; zipf-scan: zipf plus one-time scans; loop: cyclic pass; "
                          "epochs: the whole dataset in a new random order per epoch")
    gen.add_argument("--out", type=Path, required=True, help="trace file to write")
    gen.add_argument("--keys", type=int, default=10_000, help="distinct keys (scan keys come on top) [10000]")
    gen.add_argument("--requests", type=int, default=200_000,
                     help="requests for zipf/zipf-scan (scans come on top) and loop [200000]")
    gen.add_argument("--alpha", type=float, default=1.0, help="zipf skew, 0.8-1.2 is typical [1.0]")
    gen.add_argument("--scan-every", type=int, default=None, help="zipf-scan: zipf requests between scans [2*keys]")
    gen.add_argument("--scan-length", type=int, default=None, help="zipf-scan: fresh keys per scan [keys/5]")
    gen.add_argument("--epochs", type=int, default=5, help="epochs: passes over the dataset [5]")
    gen.add_argument("--block-size", type=_size, default=traces.DEFAULT_BLOCK_SIZE,
                     help=f"size of every key [{format_size(traces.DEFAULT_BLOCK_SIZE)}]")
    gen.add_argument("--min-size", type=_size, default=None,
                     help="with this, key sizes are uniform in [min-size, block-size], drawn once per key")
    gen.add_argument("--seed", default="0", help="any string; same seed, same trace [0]")
    gen.set_defaults(func=run_trace)


def _generate(args: argparse.Namespace) -> Iterator[traces.Request]:
    low = args.block_size if args.min_size is None else args.min_size
    sizes = traces.KeySizes(low, args.block_size)
    if args.kind == "zipf":
        return traces.zipf(args.keys, args.requests, args.alpha, seed=args.seed, sizes=sizes)
    if args.kind == "zipf-scan":
        return traces.zipf_scan(args.keys, args.requests, args.alpha, args.scan_every, args.scan_length,
                                seed=args.seed, sizes=sizes)
    if args.kind == "loop":
        return traces.loop(args.keys, args.requests, seed=args.seed, sizes=sizes)
    return traces.epochs(args.keys, args.epochs, seed=args.seed, sizes=sizes)


def run_trace(args: argparse.Namespace) -> int:
    try:
        count = traces.write_trace(args.out, _generate(args))
    except ValueError as exc:
        print(f"vfs cache trace: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {count} requests to {args.out}")
    return 0


def run_simulate(args: argparse.Namespace) -> int:
    try:
        requests = list(traces.read_trace(args.trace))
    except (OSError, ValueError) as exc:
        print(f"vfs cache simulate: {exc}", file=sys.stderr)
        return 2
    keys, ws_bytes = traces.working_set(requests)
    names = args.policy or list(POLICIES)
    for text in args.size:
        capacity = _resolve_budget(text, ws_bytes)
        title = (f"{args.trace}: {len(requests)} requests, {keys} keys, working set {format_size(ws_bytes)}; "
                 f"cache {format_size(capacity)} ({text})")
        print(render_table(simulate_all(requests, names, capacity), title))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vfs cache", description="block cache tools")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
