"""The fault proxy (tests/fault_proxy.py) itself, in front of a small stdlib HTTP server: bytes pass
exactly over keep-alive connections, each fault kind shows as it should on both sides, `match` and
`limit` hold, `refuse` refuses and `pass` listens again on the same port, teardown ends every thread.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import socket
import threading
import time
from typing import Iterator

import pytest

from tests.fault_proxy import FaultProxy

BODY = bytes(range(256)) * 1000


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, str, int]] = []

    def _answer(self) -> None:
        got = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.seen.append((self.command, self.path, len(got)))
        body = got or BODY
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = _answer

    def log_message(self, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # connections the proxy reset on purpose


@pytest.fixture()
def upstream() -> Iterator[str]:
    _Handler.seen = []
    srv = _Server(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(10)


def request(proxy: FaultProxy, method: str, path: str, body: bytes | None = None,
            conn: http.client.HTTPConnection | None = None) -> tuple[int, bytes]:
    c = conn or http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    try:
        c.request(method, path, body=body)
        resp = c.getresponse()
        return resp.status, resp.read()
    finally:
        if conn is None:
            c.close()


def test_bytes_pass_exactly_over_keep_alive(upstream: str) -> None:
    with FaultProxy(upstream) as proxy:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
        with contextlib.closing(conn):
            assert request(proxy, "GET", "/a", conn=conn) == (200, BODY)
            assert request(proxy, "PUT", "/b", b"x" * 300_001, conn=conn) == (200, b"x" * 300_001)
            assert request(proxy, "HEAD", "/c", conn=conn) == (200, b"")
            assert request(proxy, "GET", "/d", conn=conn) == (200, BODY)
        assert proxy.snapshot() == (4, 0, 1)
    assert [s[:2] for s in _Handler.seen] == [("GET", "/a"), ("PUT", "/b"), ("HEAD", "/c"), ("GET", "/d")]


@pytest.mark.parametrize("kind, reaches_server", [("reset_before", False), ("reset_request", True),
                                                  ("reset_response", True), ("lost_response", True)])
def test_resets(upstream: str, kind: str, reaches_server: bool) -> None:
    with FaultProxy(upstream) as proxy:
        proxy.inject(kind, match=r"^PUT /x")
        request(proxy, "GET", "/before")  # not matched: passes
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            request(proxy, "PUT", "/x", b"y" * 100_000)
        assert request(proxy, "PUT", "/x", b"z") == (200, b"z")  # the order was for one request
        assert proxy.faults == {kind: 1}
    # The server got the whole request only where the client lost (half) the answer.
    bodies = [n for _, path, n in _Handler.seen if path == "/x"]
    assert 1 in bodies and (100_000 in bodies) == (kind in ("reset_response", "lost_response"))
    assert reaches_server or bodies == [1]

def test_errors_match_limit_and_stall(upstream: str) -> None:
    with FaultProxy(upstream, rate=1.0, kinds=("503", "429"), match=r"^GET /f", limit=3, stall=0.5) as proxy:
        statuses = [request(proxy, "GET", f"/f{i}")[0] for i in range(5)]
        assert sorted(statuses[:3]) != [200] * 3 and set(statuses[:3]) <= {503, 429} and statuses[3:] == [200, 200]
        assert request(proxy, "GET", "/other")[0] == 200
        assert request(proxy, "PUT", "/put", b"p")[0] == 200  # the server never saw the failed ones
        assert [path for _, path, _ in _Handler.seen] == ["/f3", "/f4", "/other", "/put"]
        proxy.inject("stall")
        start = time.monotonic()
        assert request(proxy, "GET", "/slow") == (200, BODY)
        assert time.monotonic() - start >= 0.5
        assert proxy.snapshot()[:2] == (8, 4)


def test_refuse_then_pass_on_the_same_port_and_reset_mode(upstream: str) -> None:
    with FaultProxy(upstream) as proxy:
        port = proxy.port
        proxy.mode = "refuse"
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        proxy.mode = "pass"
        assert proxy.port == port and request(proxy, "GET", "/back")[0] == 200
        proxy.mode = "reset"
        before = proxy.requests
        for _ in range(3):
            with pytest.raises((ConnectionError, http.client.HTTPException)):
                request(proxy, "GET", "/gone")
        assert proxy.requests - before == 3 and "/gone" not in [path for _, path, _ in _Handler.seen]
    assert not [t for t in threading.enumerate() if t.name.startswith("fault-proxy")]


def test_teardown_ends_a_stalled_request(upstream: str) -> None:
    proxy = FaultProxy(upstream, stall=3600)
    with proxy:
        proxy.inject("stall")
        c = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=60)
        c.request("GET", "/never")
        while proxy.snapshot()[1] == 0:
            time.sleep(0.01)
    c.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("fault-proxy")]
