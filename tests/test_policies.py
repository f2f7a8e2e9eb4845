"""Eviction policies: one conformance suite over every registered policy, then each policy's own behaviour.

The conformance part is parametrised over vfs.cache.policy.POLICIES, so a newly registered policy is
checked automatically: random operation sequences (hypothesis) against a reference model of the
resident set, pinning, termination with everything pinned, bounded ghosts, and an amortised-cost
check that counts calls of the `pinned` predicate (no clocks).
"""

from __future__ import annotations

import random
import textwrap
from typing import Hashable

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from vfs.cache.policy import POLICIES, EvictionPolicy, make_policy, policy_class
from vfs.cache.simulate import simulate

NAMES = sorted(POLICIES)

# ----------------------------------------------------------------------------- conformance (all policies)

KEYS = st.integers(0, 11)  # a small key space, so keys come back: re-admits, ghost hits, removes of residents
OPS = st.one_of(
    st.tuples(st.just("admit"), KEYS, st.integers(0, 50)),
    st.tuples(st.just("touch"), KEYS),
    st.tuples(st.just("remove"), KEYS),
    st.tuples(st.just("evict"), st.frozensets(KEYS)),
)


class Model:
    """What any policy must agree with: the resident set, and the most keys ever resident at once."""

    def __init__(self) -> None:
        self.resident: dict[Hashable, int] = {}
        self.peak_keys = 0
        self.evicted_since_admit = 0

    def check(self, policy: EvictionPolicy, universe: range) -> None:
        assert len(policy) == len(self.resident)
        for key in universe:
            assert (key in policy) == (key in self.resident), key
        assert 0 <= policy.ghosts() <= self.peak_keys + self.evicted_since_admit


def apply(policy: EvictionPolicy, model: Model, op: tuple) -> None:
    kind = op[0]
    if kind == "admit":
        _, key, size = op
        policy.admit(key, size)
        model.resident[key] = size
        model.peak_keys = max(model.peak_keys, len(model.resident))
        model.evicted_since_admit = 0
    elif kind == "touch":
        policy.touch(op[1])  # harmless on a non-resident key
    elif kind == "remove":
        policy.remove(op[1])  # harmless on a non-resident key
        model.resident.pop(op[1], None)
    else:
        pinned_set = op[1]
        asked: list[Hashable] = []

        def pinned(key: Hashable) -> bool:
            asked.append(key)
            return key in pinned_set

        victim = policy.evict(pinned)
        assert all(key in model.resident for key in asked), "pinned() asked about a non-resident key"
        if victim is None:
            assert all(key in pinned_set for key in model.resident), "None while an unpinned key is resident"
        else:
            assert victim in model.resident, f"evicted non-resident {victim!r}"
            assert victim not in pinned_set, f"evicted pinned {victim!r}"
            del model.resident[victim]
            model.evicted_since_admit += 1


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(capacity=st.one_of(st.none(), st.integers(0, 400)), ops=st.lists(OPS, min_size=20, max_size=400))
def test_conforms_to_reference_model(name: str, capacity: int | None, ops: list[tuple]) -> None:
    policy = make_policy(name, capacity=capacity)
    model = Model()
    for op in ops:
        apply(policy, model, op)
        model.check(policy, range(12))


def random_ops(rng: random.Random, count: int, universe: int) -> list[tuple]:
    ops: list[tuple] = []
    for _ in range(count):
        roll = rng.random()
        key = rng.randrange(universe)
        if roll < 0.4:
            ops.append(("admit", key, rng.randint(0, 50)))
        elif roll < 0.65:
            ops.append(("touch", key))
        elif roll < 0.7:
            ops.append(("remove", key))
        else:
            ops.append(("evict", frozenset(k for k in range(universe) if rng.random() < rng.choice((0.0, 0.3, 0.9)))))
    return ops


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("capacity", [None, 0, 300])
def test_conforms_on_long_random_sequences(name: str, capacity: int | None) -> None:
    """The same model, on sequences far longer than hypothesis generates (seeded, reproducible)."""
    policy = make_policy(name, capacity=capacity)
    model = Model()
    evicted = 0
    for op in random_ops(random.Random(f"{name}:{capacity}"), 10_000, 24):
        before = len(model.resident)
        apply(policy, model, op)
        evicted += len(model.resident) < before and op[0] == "evict"
        model.check(policy, range(24))
    assert evicted > 1_000  # the sequence really exercised eviction


def owner_run(policy: EvictionPolicy, rng: random.Random, steps: int, capacity: int, universe: int,
              pin_every: int | None) -> tuple[int, int]:
    """Drive `policy` like a tier (evict until it fits, then admit), with a rotating pinned set;
    return (operations, calls of the pinned predicate)."""
    resident: dict[int, int] = {}
    used = 0
    calls = 0
    peak = 0
    pinned_set: set[int] = set()
    evictions = 0

    def pinned(key: Hashable) -> bool:
        nonlocal calls
        calls += 1
        return key in pinned_set

    for step in range(steps):
        if pin_every and step % pin_every == 0:
            pinned_set = {k for k in resident if rng.random() < 0.3}
        # half skewed (hits, ghost hits), half uniform over the universe (misses that fill the cache)
        key = int(rng.paretovariate(0.8)) % universe if rng.random() < 0.5 else rng.randrange(universe)
        roll = rng.random()
        if roll < 0.05:
            policy.remove(key)
            used -= resident.pop(key, 0)
        elif key in resident:
            policy.touch(key)
        else:
            size = rng.randint(1, 20)
            fits = True
            while used + size > capacity:
                victim = policy.evict(pinned)
                if victim is None:
                    assert all(k in pinned_set for k in resident)
                    fits = False
                    break
                assert victim in resident and victim not in pinned_set
                used -= resident.pop(victim)
                evictions += 1
            if fits:
                policy.admit(key, size)
                resident[key] = size
                used += size
                peak = max(peak, len(resident))
                assert policy.ghosts() <= peak  # trimmed at admit
        assert len(policy) == len(resident)
        assert policy.ghosts() <= 2 * peak
    assert evictions > steps // 10  # the tier ran full: eviction was exercised
    return steps, calls


@pytest.mark.parametrize("name", NAMES)
def test_long_run_with_pins_agrees_and_ghosts_stay_bounded(name: str) -> None:
    for capacity in (None, 2_000):
        owner_run(make_policy(name, capacity=capacity), random.Random(f"{name}:{capacity}"), steps=20_000,
                  capacity=2_000, universe=5_000, pin_every=50)


@pytest.mark.parametrize("name", NAMES)
def test_eviction_is_amortised_constant(name: str) -> None:
    """With nothing pinned, a policy asks about O(1) keys per operation on average, however many are
    resident (an O(n) scan per eviction would ask ~1,000 times more here)."""
    ops, calls = owner_run(make_policy(name, capacity=20_000), random.Random(name), steps=30_000,
                           capacity=20_000, universe=50_000, pin_every=None)
    assert calls <= 4 * ops


@pytest.mark.parametrize("name", NAMES)
def test_every_key_pinned_gives_none_and_keeps_state(name: str) -> None:
    policy = make_policy(name, capacity=100)
    for key in range(50):
        policy.admit(key, 2)
    for key in range(0, 50, 3):
        policy.touch(key)
    calls = 0

    def all_pinned(key: Hashable) -> bool:
        nonlocal calls
        calls += 1
        return True

    for _ in range(3):
        assert policy.evict(all_pinned) is None
    assert calls <= 3 * 3 * 50  # terminated after looking at each key a bounded number of times
    assert len(policy) == 50 and all(key in policy for key in range(50))
    assert policy.evict(lambda key: key != 17) == 17
    assert 17 not in policy and len(policy) == 49


@pytest.mark.parametrize("name", NAMES)
def test_empty_policy(name: str) -> None:
    policy = make_policy(name, capacity=None)
    assert policy.evict(lambda key: False) is None
    policy.remove("absent")
    policy.touch("absent")
    assert len(policy) == 0 and "absent" not in policy


@pytest.mark.parametrize("name", NAMES)
def test_drains_in_some_order(name: str) -> None:
    policy = make_policy(name, capacity=10)
    for key in range(10):
        policy.admit(key, 1)
    victims = [policy.evict(lambda key: False) for _ in range(10)]
    assert sorted(victims) == list(range(10))  # type: ignore[type-var]
    assert policy.evict(lambda key: False) is None and len(policy) == 0


# ------------------------------------------------------------------------------ each policy's behaviour


def never(key: Hashable) -> bool:
    return False


def test_lru_evicts_least_recently_used() -> None:
    policy = make_policy("lru")
    for key in "abc":
        policy.admit(key, 1)
    policy.touch("a")
    assert [policy.evict(never) for _ in range(3)] == ["b", "c", "a"]


def test_fifo_ignores_touches() -> None:
    policy = make_policy("fifo")
    for key in "abc":
        policy.admit(key, 1)
    policy.touch("a")
    policy.touch("a")
    assert [policy.evict(never) for _ in range(3)] == ["a", "b", "c"]


def test_lfu_evicts_least_frequently_used() -> None:
    policy = make_policy("lfu")
    for key in "abc":
        policy.admit(key, 1)
    for key in "aacccb":
        policy.touch(key)
    assert [policy.evict(never) for _ in range(3)] == ["b", "a", "c"]


def test_rr_is_reproducible_and_spreads() -> None:
    def order() -> list:
        policy = make_policy("rr")
        for key in range(100):
            policy.admit(key, 1)
        return [policy.evict(never) for _ in range(100)]

    first = order()
    assert first == order()
    assert first != list(range(100)) and sorted(first) == list(range(100))


def test_sieve_keeps_a_visited_key_over_an_unvisited_one() -> None:
    policy = make_policy("sieve")
    for key in "abc":
        policy.admit(key, 1)
    policy.touch("a")
    assert policy.evict(never) == "b"  # the hand passes "a" (clearing its bit) and takes "b"
    assert policy.evict(never) == "c"
    policy.admit("d", 1)
    policy.touch("d")
    assert policy.evict(never) == "a"  # "a" was passed once and not read since; "d" is visited


class NaiveSieve:
    """SIEVE as the paper's pseudocode, on a Python list (O(n)): the reference for the linked version."""

    def __init__(self) -> None:
        self.queue: list = []  # index 0 is the tail (oldest)
        self.visited: dict = {}
        self.hand: int | None = None

    def admit(self, key: Hashable) -> None:
        self.queue.append(key)
        self.visited[key] = False

    def touch(self, key: Hashable) -> None:
        if key in self.visited:
            self.visited[key] = True

    def remove(self, key: Hashable) -> None:
        if key not in self.visited:
            return
        index = self.queue.index(key)
        self.queue.pop(index)
        del self.visited[key]
        if self.hand is not None:
            if index < self.hand:
                self.hand -= 1
            if self.hand >= len(self.queue):
                self.hand = None

    def evict(self) -> Hashable:
        index = 0 if self.hand is None else self.hand
        while self.visited[self.queue[index]]:
            self.visited[self.queue[index]] = False
            index = (index + 1) % len(self.queue)
        key = self.queue.pop(index)
        del self.visited[key]
        self.hand = index if index < len(self.queue) else None
        return key


def test_sieve_matches_the_papers_algorithm() -> None:
    rng = random.Random(7)
    policy, naive = make_policy("sieve"), NaiveSieve()
    for _ in range(20_000):
        key = rng.randrange(60)
        roll = rng.random()
        if key in naive.visited:
            if roll < 0.1:
                policy.remove(key)
                naive.remove(key)
            else:
                policy.touch(key)
                naive.touch(key)
        else:
            if len(naive.queue) >= 30:
                assert policy.evict(never) == naive.evict()
            policy.admit(key, 1)
            naive.admit(key)


def test_s3fifo_one_hit_wonders_leave_from_the_small_queue_first() -> None:
    policy = make_policy("s3fifo", capacity=10)
    for key in range(10):
        policy.admit(f"hot{key}", 1)
    for key in range(5):
        policy.touch(f"hot{key}")
    # hot0..hot4 were read while in the small queue: they move to the main queue; hot5 leaves first.
    assert policy.evict(never) == "hot5"
    victims = [policy.evict(never) for _ in range(4)]
    assert victims == ["hot6", "hot7", "hot8", "hot9"]
    for wonder in range(50):  # a stream of keys read once: each leaves before any hot key
        policy.admit(f"wonder{wonder}", 1)
        policy.admit(f"wonder{wonder}b", 1)
        assert policy.evict(never) == f"wonder{wonder}"
        assert policy.evict(never) == f"wonder{wonder}b"
    assert all(f"hot{key}" in policy for key in range(5))


def test_s3fifo_ghost_hit_goes_to_the_main_queue() -> None:
    policy = make_policy("s3fifo", capacity=10)
    for key in range(10):
        policy.admit(key, 1)
    assert policy.evict(never) == 0  # unread in the small queue: leaves, remembered as a ghost
    assert policy.ghosts() == 1
    policy.admit(0, 1)  # back soon: straight into the main queue
    assert policy.ghosts() == 0
    victims = [policy.evict(never) for _ in range(9)]
    assert victims == list(range(1, 10))  # the small queue drains before the main queue is touched
    assert policy.evict(never) == 0


def test_s3fifo_frequency_is_capped_at_three() -> None:
    """Ten reads buy a key in the main queue three reinsertions, not ten."""
    policy = make_policy("s3fifo", capacity=10)
    policy.admit("x", 1)
    policy.touch("x")
    for key in range(9):
        policy.admit(key, 1)
    assert policy.evict(never) == 0  # "x" (read in the small queue) moved to the main queue on the way
    for _ in range(10):
        policy.touch("x")
    for key in range(1, 9):  # the small queue drains first
        assert policy.evict(never) == key
    for key in "abc":  # three keys that come straight into the main queue (ghost hits)
        policy.admit(key, 1)
        assert policy.evict(never) == key
        policy.admit(key, 1)
    # main queue, oldest first: x(3) a b c. x is reinserted with 2, then a b c leave, then x(2 -> 1),
    # x(1 -> 0), and x leaves: with 10 counted reads it would have outlived many more keys.
    assert [policy.evict(never) for _ in range(4)] == ["a", "b", "c", "x"]


def scan_resistance(name: str) -> tuple[int, int]:
    """Hits on a hot set of 50 keys in a cache of 100 after a one-time scan of 1,000 keys, for `name`
    and for LRU."""
    hot = [f"hot{i}" for i in range(50)]
    warm = []
    for round_ in range(20):  # the hot set is read again and again amid keys read once
        warm += hot + [f"cold{round_}-{i}" for i in range(50)]
    scan = [f"scan{i}" for i in range(1_000)]
    hits = {}
    for policy_name in (name, "lru"):
        before = simulate([(k, 1) for k in warm + scan], make_policy(policy_name, capacity=100), 100)
        after = simulate([(k, 1) for k in warm + scan + hot], make_policy(policy_name, capacity=100), 100)
        hits[policy_name] = after.hits - before.hits
    return hits[name], hits["lru"]


@pytest.mark.parametrize("name", ["arc", "2q", "s3fifo"])
def test_scan_does_not_flush_the_hot_set(name: str) -> None:
    survived, lru_survived = scan_resistance(name)
    assert lru_survived == 0  # LRU: the scan pushed every hot key out
    assert survived >= 45, f"{name}: only {survived}/50 hot keys survived a one-time scan"


def test_arc_adapts_toward_recency_on_b1_hits() -> None:
    policy = make_policy("arc", capacity=4)
    for key in "abcd":
        policy.admit(key, 1)
    assert policy.evict(never) == "a"  # T1's LRU goes to B1
    assert policy.ghosts() == 1
    policy.admit("a", 1)  # a B1 hit: p grows, "a" enters T2
    assert policy._p > 0  # type: ignore[attr-defined]
    assert policy.ghosts() == 0


def test_2q_reads_in_a1in_do_not_promote() -> None:
    policy = make_policy("2q", capacity=8)
    for key in range(8):
        policy.admit(key, 1)
    for _ in range(5):
        policy.touch(0)  # correlated references: key 0 still leaves A1in first
    assert policy.evict(never) == 0
    policy.admit(0, 1)  # remembered in A1out: now it goes to Am
    assert [policy.evict(never) for _ in range(5)] == [1, 2, 3, 4, 5]
    # A1in is down to Kin (25% of 8 = 2 keys): now Am's LRU key goes.
    assert policy.evict(never) == 0
    assert policy.evict(never) == 6


# ---------------------------------------------------------------------------- policy_class and loading


USER_MODULE = textwrap.dedent("""
    from vfs.cache.policy import EvictionPolicy

    class Newest(EvictionPolicy):
        '''Evicts the most recently admitted unpinned key (a stack).'''
        name = "newest"

        def __init__(self, capacity=None):
            super().__init__(capacity)
            self.keys = []

        def admit(self, key, size):
            self.remove(key)
            self.keys.append(key)

        def touch(self, key):
            pass

        def remove(self, key):
            if key in self.keys:
                self.keys.remove(key)

        def evict(self, pinned):
            for key in reversed(self.keys):
                if not pinned(key):
                    self.keys.remove(key)
                    return key
            return None

        def __len__(self):
            return len(self.keys)

        def __contains__(self, key):
            return key in self.keys

    class NoCapacity(Newest):
        def __init__(self):
            super().__init__()

    class Incomplete(EvictionPolicy):
        pass

    not_a_class = 3
""")


@pytest.fixture
def user_module(tmp_path, monkeypatch) -> str:
    (tmp_path / "my_policies.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_policies"


def test_policy_class_loads_a_users_class(user_module: str) -> None:
    cls = policy_class(f"{user_module}:Newest")
    assert cls.__name__ == "Newest" and issubclass(cls, EvictionPolicy)
    policy = make_policy(f"{user_module}:Newest", capacity=1_000)
    assert policy.capacity == 1_000
    for key in "abc":
        policy.admit(key, 1)
    assert policy.evict(never) == "c"
    result = simulate([("a", 1), ("b", 1), ("a", 1)], policy_class(f"{user_module}:Newest")(capacity=1), 1)
    assert result.requests == 3 and result.hits == 0


@pytest.mark.parametrize("name, message", [
    ("nope", "unknown eviction policy 'nope'; one of 2q, arc, fifo, lfu, lru, rr, s3fifo, sieve"),
    ("no_such_module_xyz:Policy", "cannot load eviction policy"),
    ("vfs.cache.policy:NoSuchClass", "cannot load eviction policy"),
    ("vfs.cache.policy:", "unknown eviction policy"),
    (":LRU", "unknown eviction policy"),
    ("builtins:dict", "is not an EvictionPolicy subclass"),
])
def test_policy_class_bad_names(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        policy_class(name)


@pytest.mark.parametrize("attr, message", [
    ("NoCapacity", "must accept the keyword argument capacity="),
    ("Incomplete", "is abstract"),
    ("not_a_class", "is not an EvictionPolicy subclass"),
])
def test_policy_class_rejects_unusable_user_classes(user_module: str, attr: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        policy_class(f"{user_module}:{attr}")


@pytest.mark.parametrize("name", NAMES)
def test_registered_policies_are_named_and_take_capacity(name: str) -> None:
    cls = policy_class(name)
    assert cls.name == name
    policy = cls(capacity=123)
    assert isinstance(policy, EvictionPolicy)
    assert policy.capacity == 123
