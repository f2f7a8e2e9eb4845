"""Eviction policies: which key leaves a tier next, and nothing else.

A policy knows keys and their sizes only. It holds no bytes and does no I/O: the store that owns the
bytes asks `evict()` for a victim, drops the victim's bytes itself, and keeps the byte accounting.
The same classes serve the RAM and the SSD tier.

Protocol (`EvictionPolicy`):
- `admit(key, size)`: the key became resident;
- `touch(key)`: a resident key was read (a hit);
- `remove(key)`: the owner dropped a resident key for its own reasons (not an eviction);
- `evict(pinned) -> key | None`: choose a resident key for which `pinned(key)` is false, forget it and
  return it; None when every resident key is pinned (or there is none).

`lru`, `lfu`, `fifo` and `rr` are cachetools' classes used as ordered key sets (a cachetools Cache
whose values are sizes and whose maxsize is unbounded: it never evicts on its own). A user's own
policy is named by import path, `policy = "package.module:ClassName"`.
"""

from __future__ import annotations

import abc
import importlib
import math
from typing import Callable, ClassVar, Hashable

import cachetools

Key = Hashable
Pinned = Callable[[Key], bool]


class EvictionPolicy(abc.ABC):
    """Chooses victims among resident keys; see the module docstring for the protocol."""

    name: ClassVar[str] = ""

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


class CachetoolsPolicy(EvictionPolicy):
    """A cachetools Cache class used only for its ordering: values are sizes, nothing is stored."""

    cache_class: ClassVar[type[cachetools.Cache]]

    def __init__(self) -> None:
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


class RR(CachetoolsPolicy):
    name = "rr"
    cache_class = cachetools.RRCache


POLICIES: dict[str, type[EvictionPolicy]] = {p.name: p for p in (LRU, LFU, FIFO, RR)}


def policy_class(name: str) -> type[EvictionPolicy]:
    """A registered policy by name, or a user's class by `module:Class`; ValueError if neither."""
    if name in POLICIES:
        return POLICIES[name]
    module, sep, attr = name.partition(":")
    if not sep:
        raise ValueError(f"unknown eviction policy {name!r}; one of {', '.join(sorted(POLICIES))}, or module:Class")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load eviction policy {name!r}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, EvictionPolicy)):
        raise ValueError(f"{name!r} is not an EvictionPolicy subclass")
    return cls
