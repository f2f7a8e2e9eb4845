"""Offline mode in the core, with no kernel: a Namespace over a real S3 silo (moto) behind the fault
proxy (tests/fault_proxy.py), whose `refuse` mode makes every connect fail, as a silo that is down.

While the silo is down: listings and attributes seen before and cached bytes are served after their
TTL; bytes never cached fail at once with EHOSTDOWN; the breaker's probe is a real request (a dead
silo is never declared back online) and is sent at growing intervals; a 503 or 403 of a live server
is no outage. When the silo answers again: fresh data is served, and failing uploads of mode `back`
are due at once. `offline = "never"` sends every call to the silo. Figures are printed (`pytest -s`).
"""

from __future__ import annotations

import errno
import socket
import time
from pathlib import Path
from typing import Awaitable, Callable, Iterator

import pytest
import trio

from tests.fault_proxy import FaultProxy
from tests.silos.s3 import MotoS3, moto_server
from tests.test_metadata import FakeClock
from tests.test_namespace import names, walk
from vfs.cache.tiered import build_cache
from vfs.metadata import MetadataCache
from vfs.metadata_store import MetadataStore
from vfs.mount_table import Mount, MountTable
from vfs.mounts import health
from vfs.mounts.s3 import S3Backend
from vfs.namespace import Namespace
from vfs.reader import Reader
from vfs.staging import StagingArea

BUCKET = "health"
TTL = 10.0
BS = 4096
WAIT = 60.0  # bound on waits for the breaker (a loaded 2-core CI box)


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    with moto_server(tmp_path_factory.mktemp("moto")) as m:
        client = m.client()
        client.create_bucket(Bucket=BUCKET)
        for key, data in {"hot/a.txt": b"alpha" * 100, "hot/b.txt": b"bravo", "cold/c.bin": b"c" * 50_000}.items():
            client.put_object(Bucket=BUCKET, Key=f"t/{key}", Body=data)
        yield m


@pytest.fixture()
def proxy(moto: MotoS3) -> Iterator[FaultProxy]:
    with FaultProxy(moto.endpoint, seed=7) as p:
        yield p


@pytest.fixture()
def fast_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "PROBE_FIRST", 0.2)
    monkeypatch.setattr(health, "PROBE_MAX", 0.5)


def silo(moto: MotoS3, proxy: FaultProxy) -> S3Backend:
    return moto.backend(BUCKET, "t", endpoint_url=proxy.url, max_attempts=2)


def make_ns(backend: S3Backend, tmp: Path | None = None, offline: str = "auto",
            store: MetadataStore | None = None) -> tuple[Namespace, FakeClock]:
    clock = FakeClock()
    mode = "back" if tmp is not None else "off"
    table = MountTable([Mount("/s3", backend, TTL, TTL, write_mode=mode)])
    reader = Reader(build_cache(BS, 256 * BS, "lru", None, 0, "lru"))
    staging = StagingArea(str(tmp / "staging"), 1 << 30) if tmp is not None else None
    ns = Namespace(table, reader, default_ttl=TTL, metadata=MetadataCache(clock=clock), opens=False,
                   staging=staging, write_back_delay=0.05, offline=offline, metadata_store=store)
    return ns, clock


async def read_all(ns: Namespace, path: str) -> bytes:
    entry = await walk(ns, path)
    return bytes(await ns.read(entry.ino, 0, entry.size + 1))


async def until(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    with trio.fail_after(timeout):
        while not check():
            await trio.sleep(0.05)


def run(main: Callable[[Namespace], Awaitable[None]], ns: Namespace) -> None:
    async def wrapper() -> None:
        async with trio.open_nursery() as nursery:
            ns.start(nursery)
            await main(ns)
            nursery.cancel_scope.cancel()

    trio.run(wrapper)


def test_offline_serves_what_was_seen_and_fails_fast_on_the_rest(moto: MotoS3, proxy: FaultProxy,
                                                                 fast_probes: None) -> None:
    backend = silo(moto, proxy)
    ns, clock = make_ns(backend)

    async def main(ns: Namespace) -> None:
        assert sorted(await names(ns, "/s3")) == ["cold", "hot"]
        assert sorted(await names(ns, "/s3/hot")) == ["a.txt", "b.txt"]
        assert await read_all(ns, "/s3/hot/a.txt") == b"alpha" * 100
        cold = await walk(ns, "/s3/cold/c.bin")  # attributes seen, bytes never read
        proxy.mode = "refuse"
        clock.advance(TTL + 1)  # everything seen has expired: each answer needs the silo
        requests = backend.stats.requests
        # The expired listings are asked for again, refused: the silo is offline, and what was
        # seen is served from then on, the first answer included; the rest fails at once.
        assert (await walk(ns, "/s3/hot/a.txt")).size == 500
        assert not backend.health.online and backend.stats.requests > requests
        await trio.sleep(0.1)  # calls the walk-ahead had on their way when the silo went down
        requests = backend.stats.requests
        assert sorted(await names(ns, "/s3/hot")) == ["a.txt", "b.txt"]
        assert await read_all(ns, "/s3/hot/a.txt") == b"alpha" * 100
        assert (await walk(ns, "/s3/cold/c.bin")).size == 50_000
        with pytest.raises(OSError) as missing:
            await walk(ns, "/s3/hot/never.txt")  # the listing seen before says it is not there
        assert missing.value.errno == errno.ENOENT
        start = time.monotonic()
        with pytest.raises(OSError) as uncached:
            await ns.read(cold.ino, 0, 4096)
        waited = time.monotonic() - start
        assert uncached.value.errno == errno.EHOSTDOWN
        with pytest.raises(OSError) as unseen:
            await walk(make_ns(backend)[0], "/s3/hot")  # a namespace that never saw it
        assert unseen.value.errno == errno.EHOSTDOWN
        assert backend.stats.requests == requests  # nothing went to the silo but the probes
        assert ns.meta.expires_in(ns.table.by_path["/s3"], "hot/a.txt") <= 1.0  # the kernel re-asks soon
        stats = ns.stats()["backends"]["/s3"]
        assert stats["online"] == 0 and stats["offline_since"] and "EHOSTDOWN" in stats["last_error"]
        assert stats["offline_refused"] >= 1
        assert {"silo_online", "silo_offline_since_seconds", "silo_probes"} <= set(ns.metrics.families)
        print(f"\nsilo refused: an uncached read failed with EHOSTDOWN after {waited * 1000:.1f} ms")

        moto.client().put_object(Bucket=BUCKET, Key="t/hot/a.txt", Body=b"changed while offline")
        proxy.mode = "pass"
        await until(lambda: backend.health.online, "the breaker to see the silo back")
        assert ns.stats()["backends"]["/s3"]["online"] == 1
        clock.advance(TTL + 1)
        assert await read_all(ns, "/s3/hot/a.txt") == b"changed while offline"
        assert await read_all(ns, "/s3/cold/c.bin") == b"c" * 50_000

    run(main, ns)


def test_the_probe_is_a_real_request_at_growing_intervals(moto: MotoS3, proxy: FaultProxy) -> None:
    """A dead silo is never declared back online (a probe that sends no request would), and is not
    hammered: probes at 1, 2, 4, 8... s."""
    backend = silo(moto, proxy)
    ns, _ = make_ns(backend)
    outage = 4.0

    async def main(ns: Namespace) -> None:
        await names(ns, "/s3")
        proxy.mode = "refuse"
        with pytest.raises(OSError):
            await backend.stat("hot/a.txt")
        assert not backend.health.online
        await trio.sleep(outage)
        assert not backend.health.online  # every probe was refused
        probes = int(backend.health.probes.value)
        print(f"\nsilo refused for {outage:.0f} s: {probes} probes of one request each")
        assert 1 <= probes <= 3  # at 1 and 3 s: at most 2 on time, one more on a slow box
        proxy.mode = "pass"
        await until(lambda: backend.health.online, "the breaker to see the silo back", 2 * health.PROBE_MAX + WAIT)

    run(main, ns)


def test_errors_of_a_live_server_are_no_outage(moto: MotoS3, proxy: FaultProxy) -> None:
    backend = silo(moto, proxy)

    async def main() -> None:
        for kind in ("503", "500", "429"):
            proxy.set_faults(1.0, (kind,))
            with pytest.raises(OSError) as busy:
                await backend.stat("hot/a.txt")
            assert busy.value.errno != errno.EHOSTDOWN and backend.health.online, kind
        proxy.set_faults(0.0)
        with pytest.raises(OSError) as gone:
            await backend.stat("no/such")
        assert gone.value.errno == errno.ENOENT and backend.health.online
        assert backend.health.last_error == ""

    trio.run(main)


def test_a_timeout_takes_the_silo_offline_only_if_the_probe_times_out_too(moto: MotoS3, proxy: FaultProxy,
                                                                          fast_probes: None) -> None:
    backend = moto.backend(BUCKET, "t", endpoint_url=proxy.url, max_attempts=1, read_timeout=1.0)
    ns, _ = make_ns(backend)
    proxy.stall = 3.0

    async def main(ns: Namespace) -> None:
        proxy.inject("stall", match=r"^GET [^ ]*list-type=2")  # one slow answer
        with pytest.raises(OSError) as slow:
            await backend.list_dir("hot")  # one LIST request
        assert slow.value.errno == errno.ETIMEDOUT
        await until(lambda: backend.health.probes.value >= 1, "the probe after a timeout")
        with trio.move_on_after(2.0):
            await until(lambda: not backend.health.online, "")
        assert backend.health.online  # the probe was answered: no outage
        proxy.set_faults(1.0, ("stall",))  # every request stalls: a black hole
        with pytest.raises(OSError):
            await backend.stat("hot/a.txt")
        await until(lambda: not backend.health.online, "the probe to time out too")
        assert "ETIMEDOUT" in backend.health.last_error
        proxy.set_faults(0.0)
        await until(lambda: backend.health.online, "the breaker to see the silo back")

    run(main, ns)


def test_back_writes_during_an_outage_are_due_at_once_on_return(moto: MotoS3, proxy: FaultProxy,
                                                               tmp_path: Path, fast_probes: None) -> None:
    backend = silo(moto, proxy)
    ns, _ = make_ns(backend, tmp_path)

    async def main(ns: Namespace) -> None:
        top = await walk(ns, "/s3/cold")
        await names(ns, "/s3/cold")
        proxy.mode = "refuse"
        with pytest.raises(OSError):
            await backend.stat("cold/c.bin")
        fh, entry = await ns.create(top.ino, "w.txt", 0)  # the fresh listing says the name is free
        await ns.write(fh, 0, b"written offline")
        await ns.flush(fh)  # close: accepted, staged
        assert ns.committer is not None
        await until(lambda: ns.committer.failing() == 1, "the first commit try to fail")
        (sf,) = ns.staging.files.values()  # type: ignore[union-attr]
        sf.due = trio.current_time() + 3600  # as after many failures: only retry_now makes it due
        proxy.mode = "pass"
        await until(lambda: backend.health.online, "the breaker to see the silo back")
        await until(lambda: ns.committer.pending() == 0, "the commit", 30.0)
        assert moto.client().get_object(Bucket=BUCKET, Key="t/cold/w.txt")["Body"].read() == b"written offline"

    run(main, ns)


def test_an_unmount_while_the_silo_is_down_does_not_wait_for_it(moto: MotoS3, proxy: FaultProxy,
                                                                tmp_path: Path) -> None:
    backend = silo(moto, proxy)
    ns, _ = make_ns(backend, tmp_path)

    async def main(ns: Namespace) -> None:
        top = await walk(ns, "/s3/cold")
        await names(ns, "/s3/cold")
        proxy.mode = "refuse"
        with pytest.raises(OSError):
            await backend.stat("cold/c.bin")
        fh, _ = await ns.create(top.ino, "u.txt", 0)
        await ns.write(fh, 0, b"kept for the next mount")
        await ns.flush(fh)
        start = time.monotonic()
        with trio.fail_after(30):  # far below the drain timeout given
            left = await ns.drain(600.0)
        print(f"\nunmount with the silo down: drain returned after {time.monotonic() - start:.2f} s, {left} left")
        assert left == 1 and ns.staging is not None and len(ns.staging.files) == 1  # journaled, kept
        proxy.mode = "pass"

    run(main, ns)


def test_offline_never_sends_every_call_to_the_silo(moto: MotoS3, proxy: FaultProxy) -> None:
    backend = silo(moto, proxy)
    ns, clock = make_ns(backend, offline="never")

    async def main(ns: Namespace) -> None:
        assert {"a.txt", "b.txt"} <= set(await names(ns, "/s3/hot"))
        proxy.mode = "refuse"
        clock.advance(TTL + 1)
        for _ in range(2):
            requests = backend.stats.requests
            with pytest.raises(OSError) as info:
                await names(ns, "/s3/hot")  # no stale listing: the silo is asked, each time
            assert info.value.errno == errno.EHOSTDOWN and backend.stats.requests > requests
        assert not backend.health.online  # the state is tracked all the same
        proxy.mode = "pass"

    run(main, ns)


def test_a_namespace_started_while_the_silo_is_down_serves_what_an_earlier_run_saw(
        moto: MotoS3, proxy: FaultProxy, tmp_path: Path) -> None:
    path = tmp_path / "metadata" / "mnt.db"
    ns, _ = make_ns(silo(moto, proxy), store=MetadataStore(str(path)))

    async def first(ns: Namespace) -> None:
        assert sorted(await names(ns, "/s3/hot")) == ["a.txt", "b.txt"]
        await walk(ns, "/s3/cold/c.bin")
        await ns.drain(1.0)  # at unmount: saved

    run(first, ns)
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    proxy.mode = "refuse"
    backend = silo(moto, proxy)
    again, _ = make_ns(backend, store=MetadataStore(str(path)))

    async def second(ns: Namespace) -> None:
        assert sorted(await names(ns, "/s3/hot")) == ["a.txt", "b.txt"]  # refused, then served
        assert not backend.health.online
        assert (await walk(ns, "/s3/cold/c.bin")).size == 50_000
        with pytest.raises(OSError) as missing:
            await walk(ns, "/s3/hot/never.txt")
        assert missing.value.errno == errno.ENOENT
        with pytest.raises(OSError) as uncached:
            await read_all(ns, "/s3/cold/c.bin")
        assert uncached.value.errno == errno.EHOSTDOWN

    run(second, again)
    assert MetadataStore(str(path)).load(MetadataCache(), MountTable([Mount("/s3", backend, TTL, TTL)])) > 0
    other = moto.backend(BUCKET, "elsewhere", endpoint_url=proxy.url)  # /s3 pointed at another silo since
    assert MetadataStore(str(path)).load(MetadataCache(), MountTable([Mount("/s3", other, TTL, TTL)])) == 0
    path.write_bytes(b"not a database" * 100)  # damaged: removed, never fatal
    assert MetadataStore(str(path)).load(MetadataCache(), MountTable([Mount("/s3", backend, TTL, TTL)])) == 0
    assert not path.exists()


def test_a_refused_drive_connection_is_unreachable() -> None:
    import httplib2
    from vfs.mounts.gdrive import translate

    with socket.socket() as s:  # a port nothing listens on: connects are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(OSError) as refused:
        httplib2.Http(timeout=5).request(f"http://127.0.0.1:{port}/drive/v3/files")
    assert health.unreachable(translate(refused.value, "gdrive://"))
