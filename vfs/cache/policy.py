"""Eviction policies: which key leaves a tier next, and nothing else.

A policy knows keys and their sizes only. It holds no bytes and does no I/O: the store that owns the
bytes asks `evict()` for a victim, drops the victim's bytes itself, and keeps the byte accounting.
The same classes serve the RAM and the SSD tier.

Protocol (`EvictionPolicy`):
- construction: `cls(capacity=bytes)`, every policy (the built-in ones and a user's own) accepts the
  `capacity` keyword: the byte budget of the tier it serves, or None when unknown. Policies that size
  internal queues (S3-FIFO, ARC, 2Q) then use the largest number of resident bytes they have seen;
  the others ignore it;
- `admit(key, size)`: the key became resident (admitting a resident key re-admits it: remove + admit);
- `touch(key)`: a resident key was read (a hit); harmless for a non-resident key;
- `remove(key)`: the owner dropped a resident key for its own reasons (not an eviction); harmless for
  a non-resident key;
- `evict(pinned) -> key | None`: choose a resident key for which `pinned(key)` is false, forget it and
  return it; None when every resident key is pinned (or there is none). It always terminates, and
  costs O(1) amortised plus O(number of pinned keys met);
- `ghosts()`: how many non-resident keys the policy remembers (history); never more than the most
  keys it has held resident at once, plus the keys evicted since the last admit (ghost lists are
  trimmed at admit, after the admitted key was looked up in them).

`lru`, `lfu` and `fifo` are cachetools' classes used as ordered key sets (a cachetools Cache whose
values are sizes and whose maxsize is unbounded: it never evicts on its own). `rr` is our own O(1)
one: older cachetools releases (pyproject allows >=5.3) draw with `random.choice(list(self))`, O(n) per
eviction, which makes 100k-key tiers and the simulator crawl; its maintainer proposes deprecating
RRCache (tkem/cachetools#356); and ours is seeded, so simulations replay exactly. `s3fifo`, `sieve`, `arc` and `2q` are in vfs.cache.policies_modern.
A user's own policy is named by import path, `policy = "package.module:ClassName"`.
"""

from __future__ import annotations

import abc
import importlib
import inspect
import logging
import math
import random
from typing import Callable, ClassVar, Hashable

import cachetools

from vfs.cache import policies_modern

log = logging.getLogger(__name__)

Key = Hashable
Pinned = Callable[[Key], bool]


class EvictionPolicy(abc.ABC):
    """Chooses victims among resident keys; see the module docstring for the protocol."""

    name: ClassVar[str] = ""

    def __init__(self, capacity: int | None = None) -> None:
        self.capacity = capacity

    @abc.abstractmethod
    def admit(self, key: Key, size: int) -> None: ...

    @abc.abstractmethod
    def touch(self, key: Key) -> None: ...

    @abc.abstractmethod
    def remove(self, key: Key) -> None: ...

    @abc.abstractmethod
    def evict(self, pinned: Pinned) -> Key | None: ...

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def __contains__(self, key: object) -> bool: ...

    def ghosts(self) -> int:
        """Non-resident keys remembered; 0 for policies without history."""
        return 0


class CachetoolsPolicy(EvictionPolicy):
    """A cachetools Cache class used only for its ordering: values are sizes, nothing is stored."""

    cache_class: ClassVar[type[cachetools.Cache]]

    def __init__(self, capacity: int | None = None) -> None:
        super().__init__(capacity)
        self._order = self.cache_class(maxsize=math.inf)

    def admit(self, key: Key, size: int) -> None:
        self._order[key] = size

    def touch(self, key: Key) -> None:
        if key in self._order:
            self._order[key]  # a read is what moves the key in LRU and counts it in LFU

    def remove(self, key: Key) -> None:
        self._order.pop(key, None)

    def evict(self, pinned: Pinned) -> Key | None:
        held: list[tuple[Key, int]] = []
        victim = None
        while self._order:
            key, size = self._order.popitem()
            if not pinned(key):
                victim = key
                break
            held.append((key, size))
        for key, size in held:  # pinned keys go back (as if just used: they are in use)
            self._order[key] = size
        return victim

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, key: object) -> bool:
        return key in self._order


class LRU(CachetoolsPolicy):
    name = "lru"
    cache_class = cachetools.LRUCache


class LFU(CachetoolsPolicy):
    name = "lfu"
    cache_class = cachetools.LFUCache


class FIFO(CachetoolsPolicy):
    name = "fifo"
    cache_class = cachetools.FIFOCache


# Fixed so that simulations and tests replay exactly; the randomness only breaks pathological access
# patterns (loops), it is no defence against anyone, so a predictable sequence costs nothing.
RR_SEED = 0x5EED


class RR(EvictionPolicy):
    """Random replacement in O(1): keys in an array with an index, removal swaps with the last slot.

    A pinned draw is swapped behind the draw window, so each pinned key is met at most once per call.
    """

    name = "rr"

    def __init__(self, capacity: int | None = None, *, seed: int = RR_SEED) -> None:
        super().__init__(capacity)
        self._random = random.Random(seed)
        self._keys: list[Key] = []
        self._slot: dict[Key, int] = {}

    def admit(self, key: Key, size: int) -> None:
        if key not in self._slot:
            self._slot[key] = len(self._keys)
            self._keys.append(key)

    def touch(self, key: Key) -> None:
        pass

    def remove(self, key: Key) -> None:
        slot = self._slot.pop(key, None)
        if slot is None:
            return
        last = self._keys.pop()
        if slot < len(self._keys):
            self._keys[slot] = last
            self._slot[last] = slot

    def _swap(self, i: int, j: int) -> None:
        keys = self._keys
        keys[i], keys[j] = keys[j], keys[i]
        self._slot[keys[i]] = i
        self._slot[keys[j]] = j

    def evict(self, pinned: Pinned) -> Key | None:
        window = len(self._keys)
        while window:
            slot = self._random.randrange(window)
            key = self._keys[slot]
            if not pinned(key):
                self.remove(key)
                return key
            window -= 1
            self._swap(slot, window)
        return None

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._slot


# The modern policies do not import this module (no import cycle); they implement the same protocol
# and are registered here as virtual subclasses, so issubclass/isinstance checks hold for them too.
for _modern in policies_modern.MODERN_POLICIES:
    EvictionPolicy.register(_modern)

POLICIES: dict[str, type[EvictionPolicy]] = {
    p.name: p for p in (LRU, LFU, FIFO, RR, *policies_modern.MODERN_POLICIES)
}


def policy_class(name: str) -> type[EvictionPolicy]:
    """A registered policy by name, or a user's class by `module:Class`; ValueError if neither.

    The class is constructed by its owner as `cls(capacity=bytes_or_None)`: a user's class must accept
    that keyword (subclassing EvictionPolicy without overriding __init__ does).
    """
    if name in POLICIES:
        return POLICIES[name]
    module, sep, attr = name.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"unknown eviction policy {name!r}; one of {', '.join(sorted(POLICIES))}, or module:Class")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load eviction policy {name!r}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, EvictionPolicy)):
        raise ValueError(f"{name!r} is not an EvictionPolicy subclass")
    if inspect.isabstract(cls):
        raise ValueError(f"{name!r} is abstract: it does not implement {', '.join(sorted(cls.__abstractmethods__))}")
    try:
        inspect.signature(cls).bind(capacity=None)
    except TypeError as exc:
        raise ValueError(f"eviction policy {name!r} must accept the keyword argument capacity=: {exc}") from exc
    except ValueError:  # no signature to inspect (a C type): let construction tell
        pass
    return cls


def make_policy(name: str, capacity: int | None = None) -> EvictionPolicy:
    """A new policy instance for a tier of `capacity` bytes (None: unknown)."""
    return policy_class(name)(capacity=capacity)
