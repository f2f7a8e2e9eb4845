"""A fault-injecting HTTP/1.1 proxy for tests: it sits on 127.0.0.1 in front of a real server (moto,
the GCS emulator, tests/drive_server.py) and, per request, passes it on or injects a fault.

Faults (`KINDS`), chosen at a seeded random `rate` or queued on command (`inject`), for requests whose
"METHOD /path?query" matches `match`, at most `limit` of them:
- "503", "500", "429": an S3-style XML error answered by the proxy; the server never sees the request;
- "reset_before": the connection is reset once the request's head is read (nothing reaches the server);
- "reset_request": the head and half the body reach the server, then both connections are reset;
- "reset_response": the server answers, the client gets the head and half the body, then a reset;
- "lost_response": the server gets and answers the whole request, the client only a reset (the server
  did the work; the client cannot know);
- "stall": nothing happens for `stall` seconds (ended early by teardown), then the request passes.

Modes, switchable at runtime: "pass" (the default), "refuse" (the listening socket is closed and open
connections are reset, so connects are refused: a silo that is down; "pass" listens again on the same
port), "reset" (every request is reset once its head is read, and counted: a silo that answers nothing;
a test counts the tries of a client).

Counters: `requests` (request heads read), `faults` (per kind), `connections`. `Expect: 100-continue`
is answered by the proxy itself and not passed on (botocore does not sign it). Every thread the
proxy starts ends when the `with` block does.
"""

from __future__ import annotations

import collections
import dataclasses
import random
import re
import socket
import struct
import threading
from typing import BinaryIO, Iterator

HOST = "127.0.0.1"
KINDS = ("503", "500", "429", "reset_before", "reset_request", "reset_response", "lost_response", "stall")
ERRORS = {"503": ("Service Unavailable", "ServiceUnavailable"), "500": ("Internal Server Error", "InternalError"),
          "429": ("Too Many Requests", "SlowDown")}
CHUNK = 64 * 1024
JOIN_TIMEOUT = 10.0


class Reset(Exception):
    """The connection was (or must be) torn down."""


@dataclasses.dataclass
class _Order:
    kind: str
    times: int
    match: re.Pattern[str] | None


@dataclasses.dataclass
class _Message:
    head: bytes
    start: str
    headers: dict[str, str]


def _read_message(f: BinaryIO) -> _Message | None:
    """A request's or response's head; None at a clean end of the connection."""
    lines: list[bytes] = []
    while True:
        line = f.readline(65536)
        if not line:
            if lines:
                raise Reset("connection closed inside a message head")
            return None
        if line in (b"\r\n", b"\n"):
            if lines:
                break
            continue
        lines.append(line)
    headers: dict[str, str] = {}
    for raw in lines[1:]:
        name, _, value = raw.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return _Message(b"".join(lines) + b"\r\n", lines[0].decode("latin-1").strip(), headers)


def _body(f: BinaryIO, headers: dict[str, str], until_close: bool = False) -> Iterator[bytes]:
    """The raw bytes of a message body (chunk framing included), piece by piece."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = f.readline(65536)
            if not size_line:
                raise Reset("connection closed inside a chunked body")
            yield size_line
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers, up to the blank line
                    line = f.readline(65536)
                    if not line:
                        raise Reset("connection closed inside trailers")
                    yield line
                    if line in (b"\r\n", b"\n"):
                        return
            left = size + 2  # the chunk and its CRLF
            while left:
                piece = f.read(min(left, CHUNK))
                if not piece:
                    raise Reset("connection closed inside a chunk")
                left -= len(piece)
                yield piece
    elif "content-length" in headers:
        left = int(headers["content-length"])
        while left:
            piece = f.read(min(left, CHUNK))
            if not piece:
                raise Reset("connection closed inside a body")
            left -= len(piece)
            yield piece
    elif until_close:
        while piece := f.read1(CHUNK):
            yield piece


def _reset(sock: socket.socket | None) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a crashed peer or a middlebox does."""
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class FaultProxy:
    """See the module docstring. `upstream`: "http://host:port" of the real server."""

    def __init__(self, upstream: str, *, rate: float = 0.0, kinds: tuple[str, ...] = ("503",),
                 match: str | None = None, limit: int | None = None, seed: int = 0, stall: float = 5.0) -> None:
        host, _, port = upstream.removeprefix("http://").rstrip("/").partition(":")
        self.upstream = (host, int(port or 80))
        self.stall = stall
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._mode = "pass"
        self._orders: list[_Order] = []
        self._conns: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self.port = 0
        self.requests = 0
        self.connections = 0
        self.faults: collections.Counter[str] = collections.Counter()
        self.set_faults(rate, kinds, match, limit)

    # --- control ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def set_faults(self, rate: float, kinds: tuple[str, ...] = ("503",), match: str | None = None,
                   limit: int | None = None) -> None:
        """Random faults from now on: `rate` of the matching requests get one of `kinds`, at most
        `limit` (counted from this call)."""
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}")
        with self._lock:
            self._rate, self._kinds = rate, tuple(kinds)
            self._match = re.compile(match) if match else None
            self._limit, self._random_faults = limit, 0

    def inject(self, kind: str, times: int = 1, match: str | None = None) -> None:
        """The next `times` requests matching `match` get `kind` (before any random fault)."""
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}")
        with self._lock:
            self._orders.append(_Order(kind, times, re.compile(match) if match else None))

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        if mode not in ("pass", "refuse", "reset"):
            raise ValueError(f"unknown mode {mode!r}")
        with self._lock:
            self._mode = mode
            if mode == "refuse":
                self._close_listener()
            if mode != "pass":  # kept-alive connections would still get through
                for conn in list(self._conns):
                    _reset_quietly(conn)
        if mode != "refuse":
            self._listen()

    def snapshot(self) -> tuple[int, int, int]:
        """(requests, faults, connections) so far."""
        with self._lock:
            return self.requests, sum(self.faults.values()), self.connections

    # --- lifetime --------------------------------------------------------------------------------

    def __enter__(self) -> FaultProxy:
        self._listen()
        self._acceptor = threading.Thread(target=self._accept_loop, name="fault-proxy-accept", daemon=True)
        self._acceptor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with self._lock:
            self._close_listener()
            for conn in list(self._conns):
                _reset_quietly(conn)
        self._listening.set()
        threads = [self._acceptor] if self._acceptor else []
        with self._lock:
            threads += list(self._threads)
        for t in threads:
            t.join(JOIN_TIMEOUT)
        alive = [t.name for t in threads if t.is_alive()]
        if alive:
            raise RuntimeError(f"fault proxy threads still running: {alive}")

    def _listen(self) -> None:
        with self._lock:
            if self._listener is not None or self._stop.is_set():
                return
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((HOST, self.port))
            s.listen(128)
            s.settimeout(0.2)
            self.port = s.getsockname()[1]
            self._listener = s
            self._listening.set()

    def _close_listener(self) -> None:
        """With the lock held."""
        if self._listener is not None:
            _reset_quietly(self._listener)  # wakes an accept() in another thread; stops listening
            self._listener.close()
            self._listener = None
            self._listening.clear()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            listener = self._listener
            if listener is None:
                self._listening.wait(0.2)
                continue
            try:
                conn, _ = listener.accept()
            except (socket.timeout, OSError):
                continue
            with self._lock:
                self.connections += 1
                if self._stop.is_set():
                    _reset(conn)
                    continue
                self._conns.add(conn)
                t = threading.Thread(target=self._serve, args=(conn,), name="fault-proxy-conn", daemon=True)
                # Ended threads leave the set here, not by themselves: one that is ending is still
                # alive, and teardown must join it.
                self._threads = {other for other in self._threads if other.is_alive()}
                self._threads.add(t)
                t.start()  # under the lock: teardown never sees a thread it cannot join yet

    # --- one client connection -------------------------------------------------------------------

    def _decide(self, line: str) -> str | None:
        with self._lock:
            self.requests += 1
            if self._mode == "reset":
                self.faults["reset_before"] += 1
                return "reset_before"
            for order in self._orders:
                if order.match is None or order.match.search(line):
                    order.times -= 1
                    if order.times <= 0:
                        self._orders.remove(order)
                    self.faults[order.kind] += 1
                    return order.kind
            if (self._rate > 0 and (self._match is None or self._match.search(line))
                    and (self._limit is None or self._random_faults < self._limit)
                    and self._rng.random() < self._rate):
                kind = self._rng.choice(self._kinds)
                self._random_faults += 1
                self.faults[kind] += 1
                return kind
        return None

    def _serve(self, conn: socket.socket) -> None:
        upstream: socket.socket | None = None
        broken = False
        try:
            cf = conn.makefile("rb")
            uf: BinaryIO | None = None
            while not self._stop.is_set():
                req = _read_message(cf)
                if req is None:
                    return
                method, _, rest = req.start.partition(" ")
                kind = self._decide(f"{method} {rest.rpartition(' ')[0]}")
                expects = req.headers.get("expect", "").lower() == "100-continue"
                if kind in ERRORS:
                    self._answer_error(conn, cf, req, kind, expects)
                    return
                if kind == "reset_before":
                    raise Reset(kind)
                if kind == "stall":
                    self._stop.wait(self.stall)
                if upstream is None:
                    upstream = socket.create_connection(self.upstream, timeout=120)
                    uf = upstream.makefile("rb")
                    with self._lock:
                        self._conns.add(upstream)
                assert uf is not None
                if expects:
                    conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                self._forward_request(req, cf, upstream, kind == "reset_request")
                if not self._relay_response(method, uf, conn, kind):
                    return
        except (Reset, OSError, ValueError):
            broken = True
        finally:
            with self._lock:
                self._conns.discard(conn)
                if upstream is not None:
                    self._conns.discard(upstream)
            if broken:
                _reset(conn)
            else:
                conn.close()
            _reset(upstream)

    def _answer_error(self, conn: socket.socket, cf: BinaryIO, req: _Message, kind: str, expects: bool) -> None:
        if not expects:  # drain what the client sends, so closing does not reset it before it reads
            for _ in _body(cf, req.headers):
                pass
        reason, code = ERRORS[kind]
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                f"<Message>injected by the fault proxy</Message></Error>").encode()
        conn.sendall(f"HTTP/1.1 {kind} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {len(body)}\r\n"
                     f"Connection: close\r\n\r\n".encode() + body)
        conn.shutdown(socket.SHUT_WR)

    def _forward_request(self, req: _Message, cf: BinaryIO, upstream: socket.socket, cut: bool) -> None:
        head = b"".join(raw for raw in req.head.splitlines(keepends=True)
                        if not raw.lower().startswith(b"expect:"))
        upstream.sendall(head)
        declared = int(req.headers.get("content-length", "0") or 0)
        sent = 0
        for piece in _body(cf, req.headers):
            if cut and (sent + len(piece) > declared // 2 or not declared):
                upstream.sendall(piece[: max(0, declared // 2 - sent)])
                raise Reset("reset_request")
            upstream.sendall(piece)
            sent += len(piece)
        if cut:
            raise Reset("reset_request")

    def _relay_response(self, method: str, uf: BinaryIO, conn: socket.socket, kind: str | None) -> bool:
        """Pass the server's answer on (or lose it); False when the connection must end."""
        while True:
            resp = _read_message(uf)
            if resp is None:
                raise Reset("the server closed the connection")
            status = int(resp.start.split()[1])
            if status >= 200 or status == 101:
                break
            if kind != "lost_response":
                conn.sendall(resp.head)  # an interim answer the client asked for
        no_body = method == "HEAD" or status in (204, 304)
        close = "close" in resp.headers.get("connection", "").lower()
        until_close = not no_body and "content-length" not in resp.headers and \
            "chunked" not in resp.headers.get("transfer-encoding", "").lower()
        pieces = iter(()) if no_body else _body(uf, resp.headers, until_close)
        if kind == "lost_response":
            for _ in pieces:
                pass
            raise Reset(kind)
        conn.sendall(resp.head)
        declared = int(resp.headers.get("content-length", "0") or 0)
        sent = 0
        for piece in pieces:
            if kind == "reset_response" and sent + len(piece) > declared // 2:
                conn.sendall(piece[: max(0, declared // 2 - sent)])
                raise Reset(kind)
            conn.sendall(piece)
            sent += len(piece)
        if kind == "reset_response":
            raise Reset(kind)
        return not (close or until_close)


def _reset_quietly(sock: socket.socket) -> None:
    """Unblock a thread reading `sock` (from another thread): shut it down; its owner closes it."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass

