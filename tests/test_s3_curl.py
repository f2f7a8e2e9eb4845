"""The S3 backend's libcurl GET path (vfs/mounts/s3_curl.py) against real HTTP servers on 127.0.0.1.

A scripted server (each request answered by the next step of a script) checks retries, errnos,
timeouts and what is sent; moto checks signing with real credentials, odd keys, keys with "." and
".." segments (which go through boto3), and ESTALE when an object changes.
"""

from __future__ import annotations

import errno
import http.server
import socket
import threading
from typing import Callable, Iterator

import pytest
import trio

from tests.silos.s3 import MotoS3, moto_server
from vfs.mounts.s3 import S3Backend, S3Options
from vfs.mounts.s3_curl import CurlGetter

BODY = bytes(range(256)) * 64  # 16 KiB

Step = Callable[[http.server.BaseHTTPRequestHandler], None]


def reply(status: int, body: bytes = b"", code: str | None = None) -> Step:
    def step(h: http.server.BaseHTTPRequestHandler) -> None:
        data = f"<Error><Code>{code}</Code></Error>".encode() if code else body
        h.send_response(status)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
    return step


def ranged(h: http.server.BaseHTTPRequestHandler) -> None:
    start, end = (int(x) for x in h.headers["Range"].removeprefix("bytes=").split("-"))
    reply(206, BODY[start:end + 1])(h)


def reset_mid_body(h: http.server.BaseHTTPRequestHandler) -> None:
    h.send_response(206)
    h.send_header("Content-Length", "1000")
    h.end_headers()
    h.wfile.write(b"x" * 10)
    h.wfile.flush()
    h.connection.shutdown(socket.SHUT_RDWR)  # the client sees the body end 990 bytes short
    h.close_connection = True


def stall(h: http.server.BaseHTTPRequestHandler) -> None:
    h.send_response(206)
    h.send_header("Content-Length", "1000")
    h.end_headers()
    h.wfile.flush()
    h.server.stop.wait(10)  # type: ignore[attr-defined]


class Scripted(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        self.script: list[Step] = []
        self.seen: list[dict[str, str]] = []
        self.stop = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                outer.seen.append({"path": self.path, **dict(self.headers)})
                (outer.script.pop(0) if outer.script else ranged)(self)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture
def server() -> Iterator[Scripted]:
    s = Scripted()
    thread = threading.Thread(target=s.serve_forever, daemon=True)
    thread.start()
    try:
        yield s
    finally:
        s.stop.set()
        s.shutdown()
        s.server_close()
        thread.join(10)


def getter(s: Scripted, attempts: int = 3, read_timeout: float = 60) -> CurlGetter:
    return CurlGetter(f"http://127.0.0.1:{s.server_address[1]}/bucket/", "us-east-1", None, ca_file=None,
                      connect_timeout=5, read_timeout=read_timeout, max_attempts=attempts)


def failing(g: CurlGetter, *args: object) -> OSError:
    with pytest.raises(OSError) as info:
        g.get(*args)  # type: ignore[arg-type]
    return info.value


def test_a_range_with_if_match_and_a_quoted_key(server: Scripted) -> None:
    assert getter(server).get("dir/a b+c%ü.bin", 100, 300, '"etag-1"', "w") == (BODY[100:300], 0)
    sent = server.seen[0]
    assert sent["path"] == "/bucket/dir/a%20b%2Bc%25%C3%BC.bin"
    assert sent["Range"] == "bytes=100-299" and sent["If-Match"] == '"etag-1"'


def test_throttling_and_5xx_are_retried(server: Scripted) -> None:
    server.script = [reply(503, code="SlowDown"), reply(500, code="InternalError")]
    assert getter(server).get("k", 0, 10, "e", "w") == (BODY[:10], 2)


def test_retries_stop_at_max_attempts_with_a_retryable_error(server: Scripted) -> None:
    server.script = [reply(503, code="SlowDown")] * 3
    err = failing(getter(server, attempts=3), "k", 0, 10, "e", "w")
    assert err.errno == errno.EAGAIN and err.retryable  # type: ignore[attr-defined]
    assert len(server.seen) == 3


@pytest.mark.parametrize("status,code,want", [
    (404, "NoSuchKey", errno.ENOENT), (412, "PreconditionFailed", errno.ESTALE),
    (403, "SignatureDoesNotMatch", errno.EACCES), (403, None, errno.EACCES), (400, None, errno.EINVAL),
])
def test_errors_map_through_the_errno_table_without_retry(server: Scripted, status: int, code: str | None,
                                                          want: int) -> None:
    server.script = [reply(status, code=code)]
    err = failing(getter(server), "k", 0, 10, "e", "bucket/k")
    assert err.errno == want and "bucket/k" in str(err)
    assert len(server.seen) == 1


def test_a_range_past_the_end_is_empty(server: Scripted) -> None:
    server.script = [reply(416, code="InvalidRange")]
    assert getter(server).get("k", 10**9, 10**9 + 10, "e", "w") == (b"", 0)


def test_a_server_that_ignores_range_is_sliced(server: Scripted) -> None:
    server.script = [reply(200, BODY)]
    assert getter(server).get("k", 5, 15, "e", "w") == (BODY[5:15], 0)


def test_a_connection_reset_mid_body_is_retried(server: Scripted) -> None:
    server.script = [reset_mid_body]
    assert getter(server).get("k", 0, 1000, "e", "w") == (BODY[:1000], 1)


def test_a_stalled_body_times_out(server: Scripted) -> None:
    server.script = [stall]
    err = failing(getter(server, attempts=1, read_timeout=1), "k", 0, 1000, "e", "w")
    assert err.errno == errno.ETIMEDOUT


def test_a_refused_connection_is_ehostdown() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        g = CurlGetter(f"http://127.0.0.1:{port}/b/", "us-east-1", None, ca_file=None, connect_timeout=5,
                       read_timeout=5, max_attempts=1)
        err = failing(g, "k", 0, 10, "e", "w")
    assert err.errno == errno.EHOSTDOWN and err.retryable  # type: ignore[attr-defined]


# --- through the S3 backend, against moto with credentials checked ------------------------------

KEYS = {
    "plain.txt": b"plain\n",
    "odd/a b+c%d=e&f;g,h@i$j(k)!l*m'n~o.txt": b"odd\n",
    "odd/ünïcødé ✓.txt": b"unicode\n",
    "dots/./x.txt": b"dot segment\n",
    "dots/../y.txt": b"dotdot segment\n",
}


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    with moto_server(tmp_path_factory.mktemp("moto"), check_credentials=True) as m:
        client = m.client()
        client.create_bucket(Bucket="bkt")
        for key, data in KEYS.items():
            client.put_object(Bucket="bkt", Key=key, Body=data)
        yield m


def backend(m: MotoS3) -> S3Backend:
    return S3Backend(S3Options(**{k: v for k, v in m.options(bucket="bkt").items() if k != "backend"}))


@pytest.mark.parametrize("key", list(KEYS))
def test_signed_gets_of_odd_keys(moto: MotoS3, key: str) -> None:
    b = backend(moto)

    async def main() -> bytes:
        meta = await b._head(key)
        assert meta is not None
        return await b.read_range(key, 0, 100, meta.version)

    assert trio.run(main) == KEYS[key]


def test_a_changed_object_is_estale_and_credentials_are_checked(moto: MotoS3) -> None:
    b = backend(moto)
    client = moto.client()
    client.put_object(Bucket="bkt", Key="changing.txt", Body=b"one")
    version = client.head_object(Bucket="bkt", Key="changing.txt")["ETag"]
    assert trio.run(b.read_range, "changing.txt", 0, 3, version) == b"one"
    client.put_object(Bucket="bkt", Key="changing.txt", Body=b"two")
    with pytest.raises(OSError) as info:
        trio.run(b.read_range, "changing.txt", 0, 3, version)
    assert info.value.errno == errno.ESTALE
    refused = S3Backend(S3Options(**{**{k: v for k, v in moto.options(bucket="bkt").items() if k != "backend"},
                                     "access_key_id": "AKIAREFUSED", "secret_access_key": "no", "max_attempts": 1}))
    with pytest.raises(OSError) as info:
        trio.run(refused.read_range, "plain.txt", 0, 3, version)
    assert info.value.errno == errno.EACCES
