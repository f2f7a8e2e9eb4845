"""SingleFlight: N concurrent callers of one key cause one call; its result or its error (with the
errno) reaches every waiter; a cancelled leader lets a waiter take over."""

from __future__ import annotations

import errno

import pytest
import trio
import trio.testing

from vfs.errors import SiloError
from vfs.singleflight import SingleFlight


def test_one_call_for_n_waiters() -> None:
    calls = 0
    results: list[int] = []

    async def main() -> None:
        flights: SingleFlight[str, int] = SingleFlight()
        release = trio.Event()

        async def work() -> int:
            nonlocal calls
            calls += 1
            await release.wait()
            return 42

        async def caller() -> None:
            results.append(await flights.do("k", work))

        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(caller)
            await trio.testing.wait_all_tasks_blocked()
            assert "k" in flights and len(flights) == 1
            release.set()
        assert "k" not in flights and len(flights) == 0

        # a finished flight is not a cache: the next caller calls again
        release.set()
        assert await flights.do("k", work) == 42

    trio.run(main)
    assert calls == 2
    assert results == [42] * 10


def test_distinct_keys_do_not_share() -> None:
    calls: list[str] = []

    async def main() -> None:
        flights: SingleFlight[str, str] = SingleFlight()

        def work(k: str):  # type: ignore[no-untyped-def]
            async def fn() -> str:
                calls.append(k)
                await trio.sleep(0)
                return k
            return fn

        async with trio.open_nursery() as nursery:
            for k in "abc":
                nursery.start_soon(flights.do, k, work(k))

    trio.run(main)
    assert sorted(calls) == ["a", "b", "c"]


def test_error_reaches_every_waiter_with_its_errno() -> None:
    calls = 0
    errors: list[BaseException] = []

    async def main() -> None:
        flights: SingleFlight[str, bytes] = SingleFlight()
        release = trio.Event()

        async def work() -> bytes:
            nonlocal calls
            calls += 1
            await release.wait()
            raise SiloError(errno.EACCES, "bucket/key")

        async def caller() -> None:
            try:
                await flights.do("k", work)
            except OSError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(caller)
            await trio.testing.wait_all_tasks_blocked()
            release.set()
        assert len(flights) == 0

    trio.run(main)
    assert calls == 1
    assert len(errors) == 5
    assert all(isinstance(e, OSError) and e.errno == errno.EACCES for e in errors)
    assert all("bucket/key" in str(e) for e in errors)
    assert len({id(e) for e in errors}) == 5  # one exception object per task


def test_leader_and_waiters_see_the_same_errno() -> None:
    caught: list[OSError] = []

    async def main() -> None:
        flights: SingleFlight[str, bytes] = SingleFlight()

        async def work() -> bytes:
            await trio.sleep(0)
            raise SiloError(errno.ENOENT, "gone")

        async def caller() -> None:
            try:
                await flights.do("k", work)
            except OSError as exc:
                caught.append(exc)

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(caller)

    trio.run(main)
    assert [e.errno for e in caught] == [errno.ENOENT] * 3
    assert sum(isinstance(e, SiloError) for e in caught) >= 1  # the leader gets the backend's own exception


def test_non_oserror_reaches_waiters() -> None:
    seen: list[type] = []

    async def main() -> None:
        flights: SingleFlight[str, int] = SingleFlight()

        async def work() -> int:
            await trio.sleep(0)
            raise ValueError("bad")

        async def caller() -> None:
            try:
                await flights.do("k", work)
            except ValueError as exc:
                seen.append(type(exc))

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(caller)

    trio.run(main)
    assert seen == [ValueError] * 3


def test_cancelled_leader_lets_a_waiter_take_over() -> None:
    calls = 0
    got: list[str] = []

    async def main() -> None:
        flights: SingleFlight[str, str] = SingleFlight()
        release = trio.Event()

        async def work() -> str:
            nonlocal calls
            calls += 1
            n = calls
            await release.wait()
            return f"call {n}"

        leader_scope = trio.CancelScope()

        async def leader() -> None:
            with leader_scope:
                await flights.do("k", work)
                raise AssertionError("the leader was cancelled")

        async def waiter() -> None:
            got.append(await flights.do("k", work))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(leader)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert calls == 1
            leader_scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert calls == 2 and "k" in flights  # the waiter is now the one calling
            release.set()
        assert leader_scope.cancelled_caught

    trio.run(main)
    assert got == ["call 2"]


def test_cancelled_waiter_does_not_disturb_the_leader() -> None:
    async def main() -> None:
        flights: SingleFlight[str, str] = SingleFlight()
        release = trio.Event()

        async def work() -> str:
            await release.wait()
            return "v"

        result: list[str] = []

        async def leader() -> None:
            result.append(await flights.do("k", work))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(leader)
            await trio.testing.wait_all_tasks_blocked()
            with trio.move_on_after(0) as scope:
                await flights.do("k", work)
            assert scope.cancelled_caught
            release.set()
        assert result == ["v"]

    trio.run(main)


def test_waiters_get_the_leaders_exception_class_and_attributes() -> None:
    caught: list[OSError] = []

    async def main() -> None:
        flights: SingleFlight[str, bytes] = SingleFlight()

        async def work() -> bytes:
            await trio.sleep(0)
            exc = SiloError(errno.EAGAIN, "throttled", retryable=True)
            exc.silo = "s3://bucket"  # type: ignore[attr-defined]  # as Backend's counting wrapper sets it
            raise exc

        async def caller() -> None:
            try:
                await flights.do("k", work)
            except OSError as exc:
                caught.append(exc)

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(caller)

    trio.run(main)
    assert len(caught) == 3
    for exc in caught:
        assert isinstance(exc, SiloError) and exc.retryable and exc.silo == "s3://bucket"  # type: ignore[attr-defined]
