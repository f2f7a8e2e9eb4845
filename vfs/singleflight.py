"""Single-flight: N concurrent callers asking for the same key cause one call, and all get its result.

Used for block fetches (N readers of one missing block -> one GET) and metadata (a DataLoader's stat
storm on one directory -> one listing). If the caller doing the work is cancelled (an interrupted
read), a waiter takes over rather than failing.
"""

from __future__ import annotations

from typing import Awaitable, Callable, Generic, Hashable, TypeVar

import trio

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Flight(Generic[V]):
    __slots__ = ("done", "value", "error", "ok")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.value: V | None = None
        self.error: BaseException | None = None
        self.ok = False


def _again(exc: BaseException) -> BaseException:
    """A fresh exception for a waiter (one exception object must not be raised in several tasks)."""
    if isinstance(exc, OSError) and exc.errno:
        args = (exc.errno, exc.strerror, *((exc.filename,) if exc.filename else ()))
        fresh = OSError.__new__(type(exc), *args)  # same class (SiloError...), same attributes
        OSError.__init__(fresh, *args)
        fresh.__dict__.update(exc.__dict__)
        return fresh
    return exc


class SingleFlight(Generic[K, V]):
    def __init__(self) -> None:
        self._flights: dict[K, _Flight[V]] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._flights

    def __len__(self) -> int:
        return len(self._flights)

    async def do(self, key: K, fn: Callable[[], Awaitable[V]]) -> V:
        while (flight := self._flights.get(key)) is not None:
            await flight.done.wait()
            if flight.ok:
                return flight.value  # type: ignore[return-value]
            if flight.error is not None:
                raise _again(flight.error)
            # the caller doing the work was cancelled: take over
        flight = _Flight[V]()
        self._flights[key] = flight
        try:
            flight.value = await fn()
            flight.ok = True
            return flight.value
        except Exception as exc:
            flight.error = exc
            raise
        finally:
            del self._flights[key]
            flight.done.set()
