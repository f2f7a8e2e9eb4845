"""The cluster cache tier: blocks shared by every vfs node through one Redis Cluster.

Owns the Redis side of a block: its key, the header its value carries, the lease that lets one node of the
cluster fetch a block from the silo while the others wait for it, and the tier's own health (consecutive
failures switch it off for a while). It does not decide when to ask it: the block cache and the reader do.

- Key: ``vfs:b:{<blake2b-128 of mount, silo, path, version, index, block_size>}``; the lease of that block is
  ``vfs:l:{<same hex>}`` (the hash tag puts both in one slot, so the lease scripts touch one node). The hashes
  spread the blocks over all the cluster's slots.
- Value: a 36-byte header (magic ``VFSB``, format 1, CRC32C of the bytes, their length, the 16-byte key digest)
  then the bytes. Every read checks all of it; a mismatch is a miss, counted in ``corrupt``, and the value is
  deleted. A block of an empty version is never stored; a value longer than block_size + header never returned.
- Failure is a miss: each Redis call is one attempt (redis-py's retries off: ``Retry(NoBackoff(), 0)``; socket
  connect and read timeouts = ``timeout``), any error is counted and the read goes to the silo. After
  ``fail_limit`` failures in a row the tier is off for ``off_seconds`` (one warning line), then one call tries
  again (one info line when it works). The password is never logged, and an expected Redis error never logs a
  traceback.

Client: redis-py's ``RedisCluster`` with hiredis, called from worker threads (the tier's callers already are).
bench/cluster_client.py against coredis 6.9 (anyio, native on trio), 4 MiB blocks, local 3-node cluster,
2 cores, median MiB/s of 5 runs at concurrency 1/4/8: GET redis-py 776/886/561, coredis 457/343/291
(coredis/redis-py 0.39-0.59); SET redis-py 775/910/901, coredis 673/898/567 (0.63-0.99). redis-py is as fast
or faster, bounds a blocking call by socket timeouts alone, and its retry and refresh rules can be turned off.
A value is sent as a memoryview: with bytes, redis-py's hiredis packer copies it first (SET 4 MiB: ~7-10 ms
against ~2.3 ms).
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import threading
import time
import uuid
from typing import Any

import google_crc32c

from vfs.cache.block import BlockKey
from vfs.config import parse_cluster_url

log = logging.getLogger(__name__)

MAGIC = b"VFSB"
FORMAT = 1
HEADER = struct.Struct(">4sB3xIQ16s")  # magic, format, crc32c, length, key digest
POLL_SECONDS = 0.015

# Drop the lease only if it is still ours (it may have expired and been taken by another node).
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
# One round trip of a waiter: {1} when the block is there, else {0, PTTL of the lease} (-2: no lease).
_POLL = "if redis.call('EXISTS', KEYS[1]) == 1 then return {1} end return {0, redis.call('PTTL', KEYS[2])}"

_COUNTERS = ("hits", "misses", "hit_bytes", "stores", "store_bytes", "corrupt", "errors", "fallbacks",
             "lease_won", "lease_waits", "lease_wait_hits", "lease_expired", "switched_off")


class ClusterTier:
    """Every method blocks; vfs calls them from worker threads (trio.to_thread.run_sync), never from the
    trio thread. Thread-safe: several worker threads call it at once."""

    def __init__(self, seeds: list[tuple[str, int]], *, password: str | None = None, tls: bool = False,
                 timeout: float = 0.5, block_size: int, lease_seconds: float = 2.0,
                 fail_limit: int = 3, off_seconds: float = 30.0) -> None:
        from redis.backoff import NoBackoff
        from redis.cluster import ClusterNode, RedisCluster
        from redis.retry import Retry

        self.block_size = block_size
        self.lease_ms = max(1, int(lease_seconds * 1000))
        self.fail_limit = max(1, fail_limit)
        self.off_seconds = off_seconds
        self._password = password
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(_COUNTERS, 0)
        self._fails = 0
        self._off = False
        self._off_until = 0.0
        self._probing = False
        self._token = uuid.uuid4().hex
        self._seq = 0
        self._leases: dict[str, str] = {}  # lease key -> our token, for the leases this node won
        self._local = threading.local()  # the key whose fallback this thread's get() already counted
        self._r = RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in seeds], password=password, ssl=tls,
            socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0),
            require_full_coverage=False)
        self._release = self._r.register_script(_RELEASE)
        self._poll = self._r.register_script(_POLL)

    @classmethod
    def connect(cls, url: str, **kw: Any) -> "ClusterTier | None":
        """Connect to the cluster at `url` and check that it answers; None (and one warning line) if not."""
        try:
            tls, seeds = parse_cluster_url(url, kw.pop("tls", False))
        except ValueError as e:
            log.warning("cluster tier not used: bad url (%s)", e)
            return None
        kw["tls"] = tls
        where = ",".join(f"{h}:{p}" for h, p in seeds)
        tier = None
        try:
            tier = cls(seeds, **kw)
            info = tier._r.cluster_info()
            if info.get("cluster_state") != "ok":
                raise RuntimeError(f"cluster_state is {info.get('cluster_state')}")
            return tier
        except Exception as e:  # noqa: BLE001 -- any reason the cluster cannot serve is a warning, not a crash
            log.warning("cluster tier not used: %s: %s", where, _reason(e, kw.get("password")))
            if tier is not None:
                tier.close()
            return None

    # ------------------------------------------------------------------ keys and values
    def digest(self, key: BlockKey, silo: str) -> bytes:
        fields = [key.mount, silo, key.path, key.version, key.index, self.block_size]
        return hashlib.blake2b(json.dumps(fields).encode(), digest_size=16, person=b"vfs-cluster-1").digest()

    def keys(self, key: BlockKey, silo: str) -> tuple[str, str, bytes]:
        """(block key, lease key, digest) of one block."""
        d = self.digest(key, silo)
        return f"vfs:b:{{{d.hex()}}}", f"vfs:l:{{{d.hex()}}}", d

    def _decode(self, value: bytes, digest: bytes) -> bytes | None:
        if len(value) < HEADER.size or len(value) > HEADER.size + self.block_size:
            return None
        magic, fmt, crc, length, kd = HEADER.unpack_from(value)
        if magic != MAGIC or fmt != FORMAT or kd != digest or length != len(value) - HEADER.size:
            return None
        data = value[HEADER.size:]
        return data if google_crc32c.value(data) == crc else None

    # ------------------------------------------------------------------ health
    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def _enter(self) -> bool:
        """May this call use Redis? False while the tier is off (one call probes when the time is up)."""
        with self._lock:
            if not self._off:
                return True
            if not self._probing and time.monotonic() >= self._off_until:
                self._probing = True
                return True
            return False

    def _ok(self) -> None:
        with self._lock:
            self._fails = 0
            if self._off:
                self._off = self._probing = False
                log.info("cluster tier back")

    def _failed(self, e: BaseException) -> None:
        with self._lock:
            self._counts["errors"] += 1
            self._fails += 1
            if self._off:  # the probe failed: off again, no new line
                self._probing = False
                self._off_until = time.monotonic() + self.off_seconds
                log.debug("cluster tier still off: %s", _reason(e, self._password))
            elif self._fails >= self.fail_limit:
                self._off = True
                self._off_until = time.monotonic() + self.off_seconds
                self._counts["switched_off"] += 1
                log.warning("cluster tier off for %g s: %s", self.off_seconds, _reason(e, self._password))

    def _fallback(self, bkey: str | None = None) -> None:
        """Count a read that goes to the silo because of the tier; once per read (get then claim_or_wait)."""
        if bkey is not None and getattr(self._local, "fell_back", None) == bkey:
            self._local.fell_back = None
            return
        self._local.fell_back = bkey
        self._count("fallbacks")

    def _call(self, fn: Any, *args: Any, **kw: Any) -> tuple[bool, Any]:
        """(True, result) or (False, None) after counting the failure."""
        try:
            result = fn(*args, **kw)
        except Exception as e:  # noqa: BLE001 -- the tier never raises: an error is a miss
            self._failed(e)
            return False, None
        self._ok()
        return True, result

    # ------------------------------------------------------------------ the tier
    def get(self, key: BlockKey, silo: str) -> bytes | None:
        self._local.fell_back = None
        if not key.version:
            self._count("misses")
            return None
        bkey, _, digest = self.keys(key, silo)
        if not self._enter():
            self._fallback(bkey)
            return None
        ok, data = self._read(bkey, digest)
        if not ok:
            self._fallback(bkey)
            return None
        if data is None:
            self._count("misses")
            return None
        with self._lock:
            self._counts["hits"] += 1
            self._counts["hit_bytes"] += len(data)
        return data

    def _read(self, bkey: str, digest: bytes) -> tuple[bool, bytes | None]:
        ok, value = self._call(self._r.get, bkey)
        if not ok or value is None:
            return ok, None
        data = self._decode(value, digest)
        if data is None:
            self._count("corrupt")
            self._call(self._r.delete, bkey)
        return True, data

    def claim_or_wait(self, key: BlockKey, silo: str) -> bytes | None:
        if not key.version:
            return None
        bkey, lkey, digest = self.keys(key, silo)
        if not self._enter():
            self._fallback(bkey)
            return None
        with self._lock:
            self._seq += 1
            token = f"{self._token}:{self._seq}"
        ok, won = self._call(self._r.set, lkey, token, nx=True, px=self.lease_ms)
        if not ok:
            self._fallback(bkey)
            return None
        self._local.fell_back = None
        if won:
            with self._lock:
                self._leases[lkey] = token
                self._counts["lease_won"] += 1
            return None
        self._count("lease_waits")
        deadline = time.monotonic() + self.lease_ms / 1000 + 0.1
        while time.monotonic() < deadline:
            if not self._enter():
                break
            ok, state = self._call(self._poll, keys=[bkey, lkey])
            if not ok:
                break
            if int(state[0]) == 1:
                ok, data = self._read(bkey, digest)
                if ok and data is not None:
                    self._count("lease_wait_hits")
                    return data
                break
            if int(state[1]) < 0:  # the lease is gone and no block: expired, or released after a failed fetch
                self._count("lease_expired")
                break
            time.sleep(POLL_SECONDS)
        else:
            self._count("lease_expired")
        self._fallback()
        return None

    def put(self, key: BlockKey, silo: str, data: bytes) -> None:
        if not key.version or len(data) > self.block_size:
            self.release(key, silo)
            return
        bkey, lkey, digest = self.keys(key, silo)
        if not self._enter():
            self._drop_lease(lkey)
            return
        value = HEADER.pack(MAGIC, FORMAT, google_crc32c.value(bytes(data)), len(data), digest) + data
        # as a memoryview: redis-py then sends it as a chunk of its own instead of copying it (hiredis packer)
        ok, _ = self._call(self._r.set, bkey, memoryview(value))
        if ok:
            with self._lock:
                self._counts["stores"] += 1
                self._counts["store_bytes"] += len(data)
        self.release(key, silo)

    def release(self, key: BlockKey, silo: str) -> None:
        _, lkey, _ = self.keys(key, silo)
        self._drop_lease(lkey)

    def _drop_lease(self, lkey: str) -> None:
        with self._lock:
            token = self._leases.pop(lkey, None)
        if token is not None and self._enter():
            self._call(self._release, keys=[lkey], args=[token])

    def stats(self) -> dict:
        with self._lock:
            return {**self._counts, "off": self._off}

    def close(self) -> None:
        try:
            self._r.close()
        except Exception as e:  # noqa: BLE001
            log.debug("cluster tier close: %s", _reason(e, self._password))


def _reason(e: BaseException, password: str | None) -> str:
    """One line for a log: the error's type and message, the password (if any) never in it."""
    text = f"{type(e).__name__}: {e}".replace("\n", " ")
    if password:
        text = text.replace(password, "***")
    return text[:300]
