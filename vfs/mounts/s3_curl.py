"""S3 ranged GETs over libcurl (pycurl): the hot path of the S3 backend.

boto3 spends ~1 ms of CPU in Python on every GET, mostly in its request and response machinery
(measured here: 0.7-1.2 ms per 100 KiB GET, against ~0.13 ms for libcurl, which signs with SigV4 and
speaks HTTP and TLS in C with the GIL released). So the GETs of block reads go through libcurl, and
everything else stays with boto3: listings, HEAD, the credential chain (refreshed per request), and
the object URL, which comes from botocore's own presigner (endpoint, region, addressing style).

One Curl handle per concurrent caller, kept in a free list, so keep-alive connections outlive the
worker threads. Errors go through vfs.errors' table; throttling, 5xx and broken connections are
retried with jittered backoff, up to the backend's `max_attempts`.
"""

from __future__ import annotations

import errno
import random
import re
import time
from typing import Any
from urllib.parse import quote

import pycurl

from vfs.errors import SiloError, silo_error

# Answers worth another try (the boto3 calls of vfs/mounts/s3.py use them too).
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
RETRY_CODES = frozenset({"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling"})
# libcurl errors worth another attempt: resolve/connect failures, timeouts, resets, truncated bodies.
_RETRY_CURL = frozenset({pycurl.E_COULDNT_RESOLVE_HOST, pycurl.E_COULDNT_CONNECT, pycurl.E_OPERATION_TIMEDOUT,
                         pycurl.E_GOT_NOTHING, pycurl.E_SEND_ERROR, pycurl.E_RECV_ERROR, pycurl.E_PARTIAL_FILE,
                         pycurl.E_SSL_CONNECT_ERROR})
_CODE = re.compile(rb"<Code>([^<]*)</Code>")


class _Handle:
    __slots__ = ("curl", "chunks", "keys")

    def __init__(self, curl: pycurl.Curl) -> None:
        self.curl, self.chunks, self.keys = curl, [], None


class CurlGetter:
    def __init__(self, bucket_url: str, region: str, credentials: Any, *, ca_file: str | None,
                 connect_timeout: float, read_timeout: float, max_attempts: int) -> None:
        """`bucket_url` + quoted key is an object's URL; `credentials` a botocore Credentials, or
        None for unsigned requests."""
        self.bucket_url = bucket_url
        self.sigv4 = f"aws:amz:{region}:s3"
        self.credentials = credentials
        self.ca_file = ca_file
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.max_attempts = max(1, max_attempts)
        self._idle: list[_Handle] = []  # list.pop/append are atomic: any worker thread may call

    @staticmethod
    def serves(key: str) -> bool:
        """libcurl would squash "." and ".." segments of a key into another key: not those."""
        return not any(part in (".", "..") for part in key.split("/"))

    def _handle(self) -> _Handle:
        try:
            return self._idle.pop()
        except IndexError:
            pass
        c = pycurl.Curl()
        c.setopt(pycurl.NOSIGNAL, 1)  # required with threads
        c.setopt(pycurl.TCP_NODELAY, 1)
        c.setopt(pycurl.BUFFERSIZE, 1 << 20)  # fewer, larger write callbacks
        c.setopt(pycurl.CONNECTTIMEOUT_MS, int(self.connect_timeout * 1000))
        # libcurl has no read timeout as such: give up when under 1 byte/s for read_timeout seconds.
        c.setopt(pycurl.LOW_SPEED_LIMIT, 1)
        c.setopt(pycurl.LOW_SPEED_TIME, max(1, int(self.read_timeout)))
        if self.ca_file:
            c.setopt(pycurl.CAINFO, self.ca_file)
        if self.credentials is not None:
            c.setopt(pycurl.AWS_SIGV4, self.sigv4)
        h = _Handle(c)
        c.setopt(pycurl.WRITEFUNCTION, h.chunks.append)  # a C-level callable: no Python frame per chunk
        return h

    def get(self, key: str, start: int, end: int, etag: str, what: str) -> tuple[bytes, int]:
        """(bytes [start, end) of the object if its ETag is still `etag`, retries made). Shorter
        only where the object ends; b"" from its end on. A changed object raises ESTALE. A raised
        error carries the retries made before it as `.retries`."""
        headers = [f"Range: bytes={start}-{end - 1}", f"If-Match: {etag}"]
        frozen = self.credentials.get_frozen_credentials() if self.credentials is not None else None
        if frozen is not None:
            headers.append("x-amz-content-sha256: UNSIGNED-PAYLOAD")
            if frozen.token:
                headers.append(f"x-amz-security-token: {frozen.token}")
        url = self.bucket_url + quote(key, safe="/~")
        for attempt in range(1, self.max_attempts + 1):
            h = self._handle()
            c = h.curl
            try:
                if frozen is not None and h.keys != (frozen.access_key, frozen.secret_key):
                    h.keys = (frozen.access_key, frozen.secret_key)
                    c.setopt(pycurl.USERNAME, frozen.access_key)
                    c.setopt(pycurl.PASSWORD, frozen.secret_key)
                c.setopt(pycurl.URL, url)
                c.setopt(pycurl.HTTPHEADER, headers)
                c.perform()
                status, failure = c.getinfo(pycurl.RESPONSE_CODE), None
            except pycurl.error as exc:
                status, failure = 0, exc
            body = h.chunks[0] if len(h.chunks) == 1 else b"".join(h.chunks)
            h.chunks.clear()
            self._idle.append(h)
            if failure is not None:
                code = failure.args[0]
                error = SiloError(errno.ETIMEDOUT if code == pycurl.E_OPERATION_TIMEDOUT else
                                  errno.EHOSTDOWN if code in (pycurl.E_COULDNT_CONNECT, pycurl.E_COULDNT_RESOLVE_HOST)
                                  else errno.EIO, f"{what}: {failure.args[1]}", retryable=code in _RETRY_CURL)
            elif status in (200, 206):
                if status == 200 and len(body) > end - start:  # a server that ignored Range
                    body = body[start:end]
                return body, attempt - 1
            elif status == 416:  # the range starts at or past the end
                return b"", attempt - 1
            else:
                found = _CODE.search(body)
                code_name = found.group(1).decode() if found else None
                error = silo_error(code_name, status, what)
                error.retryable = status in RETRY_STATUS or code_name in RETRY_CODES
            if not error.retryable or attempt == self.max_attempts:
                error.retries = attempt - 1  # type: ignore[attr-defined]  # counted by the caller, failed or not
                raise error
            time.sleep(random.uniform(0, min(20.0, 0.05 * 2 ** attempt)))  # full-jitter backoff
        raise AssertionError("unreachable")
