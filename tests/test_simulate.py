"""The trace generators, the policy simulator, `vfs cache trace|simulate`, and vfs.units."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from vfs.cache import traces
from vfs.cache.commands import main
from vfs.cache.policy import POLICIES, make_policy
from vfs.cache.simulate import SimResult, render_table, simulate, simulate_all
from vfs.units import format_size, parse_size

UNIT = traces.KeySizes(1, 1)

# ------------------------------------------------------------------------------------------ simulator


def test_byte_hit_ratio_on_a_hand_made_trace() -> None:
    trace = [("a", 100), ("b", 10), ("a", 100), ("b", 10), ("b", 10), ("c", 1000)]
    for name in POLICIES:
        result = simulate(trace, make_policy(name, capacity=500), 500, name=name)
        # hits: a once (100 bytes), b twice (20 bytes); c is larger than the cache: refused, a miss.
        assert (result.requests, result.hits, result.hit_bytes) == (6, 3, 120), name
        assert result.bytes_requested == 1230
        assert result.hit_ratio == pytest.approx(3 / 6)
        assert result.byte_hit_ratio == pytest.approx(120 / 1230)
        assert result.refused == 1 and result.evictions == 0


def test_budget_is_respected_and_victims_make_exact_room() -> None:
    trace = [("a", 60), ("b", 40), ("c", 50), ("a", 60)]
    result = simulate(trace, make_policy("fifo"), 100)
    # c evicts a (FIFO) and still fits beside b; a comes back and evicts b then c.
    assert result.hits == 0 and result.evictions == 3 and result.peak_used == 100


def test_a_changed_size_replaces_the_block() -> None:
    result = simulate([("a", 10), ("a", 20), ("a", 20)], make_policy("lru"), 100)
    assert (result.hits, result.hit_bytes, result.evictions) == (1, 20, 0)


def test_loop_larger_than_the_cache() -> None:
    trace = list(traces.loop(125, 5_000, sizes=UNIT))  # the loop is 1.25x the cache
    results = {r.policy: r for r in simulate_all(trace, POLICIES, 100)}
    for name in ("lru", "fifo"):
        assert results[name].hits == 0, name  # each key is evicted just before it comes back
    for name in ("rr", "2q", "s3fifo"):
        assert results[name].hit_ratio > 0.3, name  # they keep part of the loop
    for result in results.values():
        assert result.peak_used <= 100


@pytest.mark.parametrize("kind", traces.KINDS)
def test_ratios_are_sane_on_every_trace_kind(kind: str) -> None:
    sizes = traces.KeySizes(1_000, 4_000)
    trace = list({
        "zipf": lambda: traces.zipf(500, 5_000, alpha=1.0, seed=1, sizes=sizes),
        "zipf-scan": lambda: traces.zipf_scan(500, 5_000, alpha=1.0, seed=1, sizes=sizes),
        "loop": lambda: traces.loop(500, 5_000, seed=1, sizes=sizes),
        "epochs": lambda: traces.epochs(500, 10, seed=1, sizes=sizes),
    }[kind]())
    _, ws_bytes = traces.working_set(trace)
    capacity = ws_bytes // 10
    for result in simulate_all(trace, POLICIES, capacity):
        assert 0.0 <= result.hit_ratio <= 1.0
        assert 0.0 <= result.byte_hit_ratio <= 1.0
        assert result.peak_used <= capacity
        assert result.requests == len(trace)
        # misses = requests - hits; each miss either got in (perhaps after evictions) or was refused
        assert result.evictions <= result.requests - result.hits
    if kind == "zipf":  # skewed: a cache of 10% of the bytes serves far more than 10% of requests
        assert all(r.hit_ratio > 0.3 for r in simulate_all(trace, POLICIES, capacity))


def test_a_cache_holding_everything_misses_only_once_per_key() -> None:
    trace = list(traces.zipf(200, 3_000, seed=3, sizes=traces.KeySizes(10, 50)))
    keys, ws_bytes = traces.working_set(trace)
    for result in simulate_all(trace, POLICIES, ws_bytes):
        assert result.hits == len(trace) - keys and result.evictions == 0


def test_render_table_lists_every_policy() -> None:
    results = simulate_all(list(traces.zipf(100, 1_000, sizes=UNIT)), POLICIES, 10)
    table = render_table(results, title="zipf")
    lines = table.splitlines()
    assert lines[0] == "zipf" and lines[1].split()[:2] == ["policy", "capacity"]
    assert [line.split()[0] for line in lines[3:]] == list(POLICIES)
    first = results[0]
    assert f"{first.hit_ratio:.4f}" in lines[3] and f"{first.byte_hit_ratio:.4f}" in lines[3]


def test_simulate_rejects_a_policy_returning_a_non_resident_key() -> None:
    class Liar:
        name = "liar"

        def admit(self, key, size): pass
        def touch(self, key): pass
        def remove(self, key): pass
        def evict(self, pinned): return "ghost"

    with pytest.raises(RuntimeError, match="not resident"):
        simulate([("a", 1), ("b", 1)], Liar(), 1)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- traces


def test_generators_are_deterministic_given_a_seed() -> None:
    sizes = traces.KeySizes(1, 100)
    makers = [
        lambda seed: traces.zipf(1_000, 2_000, alpha=0.9, seed=seed, sizes=sizes),
        lambda seed: traces.zipf_scan(1_000, 2_000, alpha=1.1, seed=seed, sizes=sizes),
        lambda seed: traces.loop(1_000, 2_000, seed=seed, sizes=sizes),
        lambda seed: traces.epochs(1_000, 2, seed=seed, sizes=sizes),
    ]
    for make in makers:
        assert list(make(5)) == list(make(5))
        assert list(make(5)) != list(make(6))


def test_a_key_always_has_the_same_size() -> None:
    for trace in (traces.zipf_scan(300, 3_000, sizes=traces.KeySizes(1, 1_000)),
                  traces.epochs(300, 3, sizes=traces.KeySizes(1, 1_000))):
        seen: dict[str, int] = {}
        for key, size in trace:
            assert seen.setdefault(key, size) == size
            assert 1 <= size <= 1_000


@pytest.mark.parametrize("alpha", [0.8, 1.0, 1.2])
def test_zipf_is_skewed_and_more_so_with_alpha(alpha: float) -> None:
    counts = collections.Counter(key for key, _ in traces.zipf(1_000, 50_000, alpha=alpha, seed=2))
    top = [count for _, count in counts.most_common()]
    top10_share = sum(top[:10]) / 50_000
    expected = sum(1 / r**alpha for r in range(1, 11)) / sum(1 / r**alpha for r in range(1, 1_001))
    assert top10_share == pytest.approx(expected, abs=0.02)
    assert all(size == traces.DEFAULT_BLOCK_SIZE for _, size in traces.zipf(10, 10))


def test_zipf_scan_keys_are_read_once() -> None:
    trace = list(traces.zipf_scan(100, 1_000, scan_every=200, scan_length=30, seed=4, sizes=UNIT))
    scans = [key for key, _ in trace if key.startswith("s")]
    assert len(scans) == 5 * 30 and len(set(scans)) == len(scans)
    assert len(trace) == 1_000 + 150
    assert trace[200][0] == "s1-0"  # the first scan follows the 200th zipf request


def test_loop_and_epochs_shapes() -> None:
    assert [key for key, _ in traces.loop(3, 7, sizes=UNIT)] == ["k0", "k1", "k2", "k0", "k1", "k2", "k0"]
    trace = [key for key, _ in traces.epochs(50, 3, seed=9, sizes=UNIT)]
    epochs = [trace[i:i + 50] for i in range(0, 150, 50)]
    assert all(sorted(epoch) == sorted(f"k{i}" for i in range(50)) for epoch in epochs)
    assert epochs[0] != epochs[1] != epochs[2]


def test_trace_files_round_trip(tmp_path: Path) -> None:
    trace = list(traces.zipf_scan(50, 500, seed=1, sizes=traces.KeySizes(1, 9)))
    path = tmp_path / "t.trace"
    assert traces.write_trace(path, trace) == len(trace)
    assert list(traces.read_trace(path)) == trace
    (tmp_path / "c.trace").write_text("# comment\n\na 1\nb 2  # trailing\n")
    assert list(traces.read_trace(tmp_path / "c.trace")) == [("a", 1), ("b", 2)]
    (tmp_path / "bad.trace").write_text("a 1\nb two\n")
    with pytest.raises(ValueError, match="bad.trace:2"):
        list(traces.read_trace(tmp_path / "bad.trace"))
    with pytest.raises(ValueError, match="whitespace"):
        traces.write_trace(tmp_path / "w.trace", [("a b", 1)])


# -------------------------------------------------------------------------------------------- commands


def test_trace_then_simulate_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "loop.trace"
    assert main(["trace", "--kind", "loop", "--keys", "100", "--requests", "1000", "--block-size", "1KiB",
                 "--out", str(path)]) == 0
    assert list(traces.read_trace(path))[:2] == [("k0", 1024), ("k1", 1024)]
    capsys.readouterr()
    assert main(["simulate", "--trace", str(path), "--size", "50%", "80KiB", "--policy", "lru", "rr"]) == 0
    out = capsys.readouterr().out
    assert "working set 100KiB; cache 50KiB (50%)" in out and "cache 80KiB (80KiB)" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("lru ", "rr "))]
    assert [row[0] for row in rows] == ["lru", "rr", "lru", "rr"]
    assert rows[0][3] == "0"  # LRU on a loop larger than the cache: no hits


def test_simulate_defaults_to_every_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "z.trace"
    main(["trace", "--kind", "zipf", "--keys", "50", "--requests", "500", "--min-size", "1", "--block-size", "10",
          "--alpha", "1.2", "--seed", "x", "--out", str(path)])
    capsys.readouterr()
    assert main(["simulate", "--trace", str(path), "--size", "100"]) == 0
    out = capsys.readouterr().out
    assert {line.split()[0] for line in out.splitlines()[3:] if line} == set(POLICIES)


@pytest.mark.parametrize("argv", [
    ["simulate", "--trace", "x", "--size", "lots"],
    ["simulate", "--trace", "x", "--size", "0%"],
    ["simulate", "--trace", "x", "--size", "1MiB", "--policy", "nope"],
    ["trace", "--kind", "spiral", "--out", "x"],
])
def test_commands_reject_bad_arguments(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert "error" in capsys.readouterr().err


def test_simulate_reports_an_unreadable_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--trace", str(tmp_path / "absent"), "--size", "1MiB"]) == 2
    assert "absent" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- units


@pytest.mark.parametrize("text, size", [
    ("4096", 4096), ("0", 0), ("64MiB", 64 * 2**20), ("64mib", 64 * 2**20), ("1.5GiB", 3 * 2**29),
    ("1.5G", 3 * 2**29), ("2 KiB", 2048), ("1K", 1024), ("500MB", 500_000_000), ("1kB", 1000),
    ("3TB", 3 * 10**12), ("1TiB", 2**40), ("7B", 7), (".5KiB", 512), (12, 12),
])
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MiB", "1.2.3", "-1", "5XB", "0.5B", "1 0", -3, True])
def test_parse_size_rejects(text: str | int) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize("size, text", [
    (0, "0B"), (1023, "1023B"), (1024, "1KiB"), (64 * 2**20, "64MiB"), (3 * 2**29, "1.5GiB"), (2**40, "1TiB"),
])
def test_format_size_round_trips(size: int, text: str) -> None:
    assert format_size(size) == text
    assert parse_size(text) == size


def test_sim_result_ratios_of_an_empty_trace() -> None:
    empty = SimResult("lru", 1, 0, 0, 0, 0, 0, 0, 0)
    assert empty.hit_ratio == 0.0 and empty.byte_hit_ratio == 0.0
