"""A faithful subset of the Google Drive v3 REST API on 127.0.0.1, for tests (no Drive emulator exists).

The official google-api-python-client talks to it unchanged (discovery document with rootUrl pointed
here). What it serves, shaped as the real API shapes it:
- `GET /drive/v3/files`: `q` (a real parser: `'<id>' in parents`, `name = / != / contains`,
  `mimeType = / !=`, `trashed = true|false`, joined with and/or/not and parentheses), `fields`
  (partial responses, nested `files(...)`), `pageSize` (1..1000, default 100) / `pageToken` /
  `nextPageToken`, `orderBy` (name, createdTime, modifiedTime, folder; `desc`);
- `GET /drive/v3/files/<id>`: metadata with `fields`, or `alt=media` honouring `Range` (206 +
  Content-Range; 416 + `Content-Range: bytes */size` when unsatisfiable); Docs Editors files answer
  403 fileNotDownloadable, as on Drive;
- `GET /drive/v3/files/<id>/export?mimeType=`: a deterministic byte rendering of a Google Doc,
  Sheet, Slides or Drawing (`render_export`); 403 fileNotExportable for blobs, 400 badRequest for a
  format the type does not export to;
- `POST /token`: the OAuth token endpoint, so stored authorized-user tokens can refresh against it;
- errors as `{"error": {"code", "message", "errors": [{"domain", "reason", "message", ...}]}}`;
  a missing bearer token is 401 `required`, a wrong one 401 `authError`.

Test hooks (in-process, thread-safe): `add_folder`, `add_file`, `add_doc`, `add_shortcut`,
`replace`, `trash`, `delete`, `fail_next` (inject rate-limit replies), `counts` (requests by kind).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import http.server
import itertools
import json
import logging
import random
import re
import threading
import time
import urllib.parse
from collections import Counter
from typing import Any, Callable

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
FOLDER = "application/vnd.google-apps.folder"
SHORTCUT = "application/vnd.google-apps.shortcut"
APPS = "application/vnd.google-apps."
DOC_KINDS = {"document", "spreadsheet", "presentation", "drawing"}
# What each Docs Editors type exports to (Drive's about.exportFormats, abridged).
EXPORT_FORMATS: dict[str, set[str]] = {
    "document": {
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/vnd.oasis.opendocument.text", "application/rtf", "application/pdf", "text/plain",
        "text/html", "application/epub+zip", "text/markdown",
    },
    "spreadsheet": {
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "application/vnd.oasis.opendocument.spreadsheet", "application/x-vnd.oasis.opendocument.spreadsheet",
        "application/pdf", "text/csv", "text/tab-separated-values",
    },
    "presentation": {
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        "application/vnd.oasis.opendocument.presentation", "application/pdf", "text/plain",
    },
    "drawing": {"application/pdf", "image/jpeg", "image/png", "image/svg+xml"},
}
EXPORT_LIMIT = 10 * 1024 * 1024  # Drive refuses exports above 10 MB (exportSizeLimitExceeded)
MAX_PAGE_SIZE = 1000  # files.list pageSize maximum
DEFAULT_PAGE_SIZE = 100  # files.list pageSize default
DEFAULT_FILE_FIELDS = ("kind", "id", "name", "mimeType")  # what files.get returns without `fields`


def render_export(file_id: str, content: bytes, modified: str, mime: str) -> bytes:
    """The bytes an export of a Google Doc yields: deterministic in (content, modifiedTime, format)."""
    return f"EXPORT {mime}\nid={file_id} modified={modified}\n".encode() + content


def rfc3339(ns: int) -> str:
    secs, rest = divmod(ns, 10**9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{rest // 10**6:03d}Z"


@dataclasses.dataclass
class DriveFile:
    id: str
    name: str
    mime: str
    parents: list[str]
    created_ns: int
    modified_ns: int
    content: bytes = b""
    revision: str | None = None
    trashed: bool = False
    target: str | None = None  # shortcuts

    def in_trash(self, store: dict[str, "DriveFile"]) -> bool:
        """Trashed itself or inside a trashed folder (Drive trashes a folder's contents with it)."""
        seen: set[str] = set()
        f: DriveFile | None = self
        while f is not None and f.id not in seen:
            if f.trashed:
                return True
            seen.add(f.id)
            f = store.get(f.parents[0]) if f.parents else None
        return False

    def resource(self, store: dict[str, "DriveFile"]) -> dict[str, Any]:
        r: dict[str, Any] = {
            "kind": "drive#file", "id": self.id, "name": self.name, "mimeType": self.mime,
            "parents": list(self.parents), "createdTime": rfc3339(self.created_ns),
            "modifiedTime": rfc3339(self.modified_ns), "trashed": self.in_trash(store),
            "explicitlyTrashed": self.trashed,
        }
        if not self.mime.startswith(APPS):
            r["size"] = str(len(self.content))  # int64 travels as a JSON string
            r["md5Checksum"] = hashlib.md5(self.content).hexdigest()
            r["headRevisionId"] = self.revision
        elif self.mime.removeprefix(APPS) in DOC_KINDS:
            r["size"] = str(1024 + len(self.content))  # storage size, not what an export yields
        if self.mime == SHORTCUT and self.target:
            target = store.get(self.target)
            r["shortcutDetails"] = {"targetId": self.target, "targetMimeType": target.mime if target else FOLDER}
        return r


class DriveError(Exception):
    def __init__(self, status: int, reason: str, message: str, domain: str = "global", **extra: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.domain, self.extra = status, reason, message, domain, extra
        self.headers: dict[str, str] = {}

    def body(self) -> dict[str, Any]:
        err = {"message": self.message, "domain": self.domain, "reason": self.reason, **self.extra}
        return {"error": {"code": self.status, "message": self.message, "errors": [err]}}


def not_found(file_id: str) -> DriveError:
    return DriveError(404, "notFound", f"File not found: {file_id}.", location="fileId", locationType="parameter")


def invalid(param: str, message: str = "Invalid Value") -> DriveError:
    return DriveError(400, "invalid", message, location=param, locationType="parameter")


# --- q: the files.list query language -------------------------------------------------------------

_TOKEN = re.compile(r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*')|(?P<op>!=|<=|>=|=|<|>|\(|\))|(?P<word>[A-Za-z_][A-Za-z0-9_.]*))")
Pred = Callable[[DriveFile], bool]


def _tokens(q: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(q):
        if q[pos:].strip() == "":
            break
        m = _TOKEN.match(q, pos)
        if not m:
            raise invalid("q")
        pos = m.end()
        if m.group("str") is not None:
            out.append(("str", re.sub(r"\\(.)", r"\1", m.group("str")[1:-1])))
        elif m.group("op") is not None:
            out.append(("op", m.group("op")))
        else:
            out.append(("word", m.group("word")))
    return out


def parse_query(q: str, resolve: Callable[[str], str], trashed: Callable[[DriveFile], bool]) -> Pred:
    """A predicate for Drive's query language (the subset documented in the module docstring)."""
    toks = _tokens(q)
    pos = 0

    def peek() -> tuple[str, str] | None:
        return toks[pos] if pos < len(toks) else None

    def take() -> tuple[str, str]:
        nonlocal pos
        if pos >= len(toks):
            raise invalid("q")
        pos += 1
        return toks[pos - 1]

    def is_word(tok: tuple[str, str] | None, word: str) -> bool:
        return tok is not None and tok[0] == "word" and tok[1].lower() == word

    def or_expr() -> Pred:
        parts = [and_expr()]
        while is_word(peek(), "or"):
            take()
            parts.append(and_expr())
        return parts[0] if len(parts) == 1 else (lambda f: any(p(f) for p in parts))

    def and_expr() -> Pred:
        parts = [unary()]
        while is_word(peek(), "and"):
            take()
            parts.append(unary())
        return parts[0] if len(parts) == 1 else (lambda f: all(p(f) for p in parts))

    def unary() -> Pred:
        tok = peek()
        if is_word(tok, "not"):
            take()
            inner = unary()
            return lambda f: not inner(f)
        if tok == ("op", "("):
            take()
            inner = or_expr()
            if take() != ("op", ")"):
                raise invalid("q")
            return inner
        return comparison()

    def comparison() -> Pred:
        left = take()
        if left[0] == "str":
            if not (is_word(take(), "in") and is_word(take(), "parents")):
                raise invalid("q")
            parent = resolve(left[1])
            return lambda f: parent in f.parents
        field = left[1]
        op = take()
        if is_word(op, "contains"):
            op = ("op", "contains")
        value = take()
        if op[0] != "op":
            raise invalid("q")
        if field == "trashed":
            if value[0] != "word" or value[1] not in ("true", "false") or op[1] not in ("=", "!="):
                raise invalid("q")
            want = value[1] == "true"
            return (lambda f: trashed(f) == want) if op[1] == "=" else (lambda f: trashed(f) != want)
        if field not in ("name", "mimeType") or value[0] != "str":
            raise invalid("q")
        text = value[1]
        get: Callable[[DriveFile], str] = (lambda f: f.name) if field == "name" else (lambda f: f.mime)
        if op[1] == "=":
            return lambda f: get(f) == text
        if op[1] == "!=":
            return lambda f: get(f) != text
        if op[1] == "contains" and field == "name":
            return lambda f: text.lower() in get(f).lower()
        raise invalid("q")

    pred = or_expr()
    if pos != len(toks):
        raise invalid("q")
    return pred


# --- fields: partial responses --------------------------------------------------------------------

def parse_fields(spec: str) -> dict[str, Any]:
    """'a,b(c,d)' -> {'a': None, 'b': {'c': None, 'd': None}}; '*' selects everything."""
    pos = 0

    def group() -> dict[str, Any]:
        nonlocal pos
        out: dict[str, Any] = {}
        while pos < len(spec):
            m = re.compile(r"\s*([A-Za-z_*][A-Za-z0-9_/]*)\s*").match(spec, pos)
            if not m:
                raise invalid("fields", "Invalid field selection")
            pos = m.end()
            name, sub = m.group(1), None
            if pos < len(spec) and spec[pos] == "(":
                pos += 1
                sub = group()
                if pos >= len(spec) or spec[pos] != ")":
                    raise invalid("fields", "Invalid field selection")
                pos += 1
            out[name] = sub
            while pos < len(spec) and spec[pos] == " ":
                pos += 1
            if pos < len(spec) and spec[pos] == ",":
                pos += 1
                continue
            break
        return out

    tree = group()
    if pos != len(spec):
        raise invalid("fields", "Invalid field selection")
    return tree


def select(obj: Any, tree: dict[str, Any] | None) -> Any:
    if tree is None or "*" in tree:
        return obj
    if isinstance(obj, list):
        return [select(x, tree) for x in obj]
    if not isinstance(obj, dict):
        return obj
    return {k: select(obj[k], sub) for k, sub in tree.items() if k in obj}


# --- the server -----------------------------------------------------------------------------------

class DriveServer:
    """An in-memory Drive with one user; start() binds 127.0.0.1 on a free port."""

    def __init__(self, token: str = "test-token", refresh_token: str = "test-refresh-token", seed: int = 0) -> None:
        self.token = token
        self.refresh_token = refresh_token
        self.lock = threading.RLock()
        self.files: dict[str, DriveFile] = {}
        self.counts: Counter[str] = Counter()
        self._failures: list[tuple[int, str]] = []
        self._rnd = random.Random(seed)
        self._revisions = itertools.count(1)
        self._last_ns = 0
        self.root_id = self._new_id()
        now = self._now()
        self.files[self.root_id] = DriveFile(self.root_id, "My Drive", FOLDER, [], now, now)
        self._httpd: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle
    def start(self) -> "DriveServer":
        handler = type("Handler", (_Handler,), {"drive": self})
        self._httpd = http.server.ThreadingHTTPServer((HOST, 0), handler)
        self._httpd.daemon_threads = True
        # serve_forever checks for shutdown() every poll_interval: 0.05 s keeps teardown quick.
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="drive-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> "DriveServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "not started"
        return f"http://{HOST}:{self._httpd.server_address[1]}/"

    # test hooks
    def _new_id(self) -> str:
        return "".join(self._rnd.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") for _ in range(33))

    def _now(self) -> int:
        """Server time in ns, strictly increasing by at least 1 ms (modifiedTime has ms resolution)."""
        self._last_ns = max(time.time_ns(), self._last_ns + 1_000_000)
        return self._last_ns

    def _add(self, name: str, mime: str, parent: str | None, content: bytes = b"", target: str | None = None) -> str:
        with self.lock:
            fid, now = self._new_id(), self._now()
            parent_id = self.root_id if parent in (None, "root") else parent
            if parent_id not in self.files:
                raise KeyError(parent_id)
            rev = None if mime.startswith(APPS) else f"0B{next(self._revisions):06d}"
            self.files[fid] = DriveFile(fid, name, mime, [parent_id], now, now, content, rev, target=target)
            return fid

    def add_folder(self, name: str, parent: str | None = None) -> str:
        return self._add(name, FOLDER, parent)

    def add_file(self, name: str, data: bytes, parent: str | None = None, mime: str = "application/octet-stream") -> str:
        return self._add(name, mime, parent, bytes(data))

    def add_doc(self, name: str, text: bytes, parent: str | None = None, kind: str = "document") -> str:
        assert kind in DOC_KINDS, kind
        return self._add(name, APPS + kind, parent, bytes(text))

    def add_shortcut(self, name: str, target: str, parent: str | None = None) -> str:
        return self._add(name, SHORTCUT, parent, target=target)

    def replace(self, file_id: str, data: bytes) -> None:
        """New content: new md5 (if the bytes differ), new head revision, new modifiedTime."""
        with self.lock:
            f = self.files[file_id]
            f.content = bytes(data)
            f.modified_ns = self._now()
            if not f.mime.startswith(APPS):
                f.revision = f"0B{next(self._revisions):06d}"

    def touch(self, file_id: str) -> None:
        """A metadata-only change: modifiedTime moves, content and head revision stay."""
        with self.lock:
            self.files[file_id].modified_ns = self._now()

    def trash(self, file_id: str) -> None:
        with self.lock:
            self.files[file_id].trashed = True

    def delete(self, file_id: str) -> None:
        with self.lock:
            del self.files[file_id]

    def find(self, path: str) -> str | None:
        """The id of the untrashed file at a '/'-path of raw Drive names (first match), or None."""
        with self.lock:
            current = self.root_id
            for part in [p for p in path.split("/") if p]:
                match = [f for f in self.files.values()
                         if current in f.parents and f.name == part and not f.in_trash(self.files)]
                if not match:
                    return None
                current = match[0].id
            return current

    def fail_next(self, n: int, status: int = 403, reason: str = "userRateLimitExceeded") -> None:
        """The next `n` authenticated API requests answer this rate-limit error instead."""
        with self.lock:
            self._failures.extend([(status, reason)] * n)

    # request handling (called from handler threads)
    def _take_failure(self) -> DriveError | None:
        with self.lock:
            if not self._failures:
                return None
            status, reason = self._failures.pop(0)
        message = "User Rate Limit Exceeded" if reason == "userRateLimitExceeded" else "Rate Limit Exceeded"
        return DriveError(status, reason, message, domain="usageLimits")

    def resolve(self, file_id: str) -> str:
        return self.root_id if file_id == "root" else file_id

    def list_files(self, params: dict[str, str]) -> dict[str, Any]:
        pred = parse_query(params["q"], self.resolve, lambda f: f.in_trash(self.files)) if params.get("q") else (lambda f: True)
        try:
            size = int(params.get("pageSize", DEFAULT_PAGE_SIZE))
        except ValueError:
            raise invalid("pageSize") from None
        if size < 1:
            raise invalid("pageSize")
        size = min(size, MAX_PAGE_SIZE)
        with self.lock:
            matches = [f for f in self.files.values() if f.id != self.root_id and pred(f)]
            for key in reversed([k.strip() for k in params.get("orderBy", "").split(",") if k.strip()]):
                field, _, direction = key.partition(" ")
                sort_key = {
                    "name": lambda f: f.name, "name_natural": lambda f: f.name,
                    "createdTime": lambda f: f.created_ns, "modifiedTime": lambda f: f.modified_ns,
                    "folder": lambda f: f.mime != FOLDER,
                }.get(field)
                if sort_key is None:
                    raise invalid("orderBy")
                matches.sort(key=sort_key, reverse=direction.strip().lower() == "desc")
            offset = 0
            if params.get("pageToken"):
                try:
                    offset = int(base64.urlsafe_b64decode(params["pageToken"].encode()).decode().removeprefix("offset:"))
                except ValueError:
                    raise invalid("pageToken") from None
            page = matches[offset:offset + size]
            out: dict[str, Any] = {"kind": "drive#fileList", "incompleteSearch": False,
                                   "files": [f.resource(self.files) for f in page]}
            if offset + size < len(matches):
                out["nextPageToken"] = base64.urlsafe_b64encode(f"offset:{offset + size}".encode()).decode()
        tree = parse_fields(params["fields"]) if params.get("fields") else {
            "kind": None, "nextPageToken": None, "incompleteSearch": None, "files": dict.fromkeys(DEFAULT_FILE_FIELDS)}
        return select(out, tree)

    def get_file(self, file_id: str) -> DriveFile:
        with self.lock:
            f = self.files.get(self.resolve(file_id))
            if f is None:
                raise not_found(file_id)
            return dataclasses.replace(f, parents=list(f.parents))

    def metadata(self, file_id: str, params: dict[str, str]) -> dict[str, Any]:
        f = self.get_file(file_id)
        with self.lock:
            resource = f.resource(self.files)
        tree = parse_fields(params["fields"]) if params.get("fields") else dict.fromkeys(DEFAULT_FILE_FIELDS)
        return select(resource, tree)

    def export(self, file_id: str, params: dict[str, str]) -> tuple[bytes, str]:
        f = self.get_file(file_id)
        mime = params.get("mimeType", "")
        if not mime:
            raise DriveError(400, "required", "Required parameter: mimeType", location="mimeType", locationType="parameter")
        kind = f.mime.removeprefix(APPS) if f.mime.startswith(APPS) else None
        if kind not in DOC_KINDS:
            raise DriveError(403, "fileNotExportable", "Export only supports Docs Editors files.")
        if mime not in EXPORT_FORMATS[kind]:
            raise DriveError(400, "badRequest", "The requested conversion is not supported.")
        data = render_export(f.id, f.content, rfc3339(f.modified_ns), mime)
        if len(data) > EXPORT_LIMIT:
            raise DriveError(403, "exportSizeLimitExceeded", "This file is too large to be exported.")
        return data, mime

    def media(self, file_id: str) -> DriveFile:
        f = self.get_file(file_id)
        if f.mime.startswith(APPS):
            raise DriveError(403, "fileNotDownloadable",
                             "Only files with binary content can be downloaded. Use Export with Docs Editors files.",
                             location="alt", locationType="parameter")
        return f


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class _Handler(http.server.BaseHTTPRequestHandler):
    drive: DriveServer
    protocol_version = "HTTP/1.1"  # keep-alive, as googleapis.com
    disable_nagle_algorithm = True  # small JSON replies would otherwise wait on delayed ACKs

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json; charset=UTF-8", headers)

    def _error(self, err: DriveError) -> None:
        self._json(err.status, err.body(), err.headers)

    def _authenticate(self) -> None:
        auth = self.headers.get("Authorization", "")
        if not auth:
            err = DriveError(401, "required", "Login Required.", location="Authorization", locationType="header")
        elif auth != f"Bearer {self.drive.token}":
            err = DriveError(401, "authError", "Invalid Credentials", location="Authorization", locationType="header")
        else:
            return
        err.headers["WWW-Authenticate"] = 'Bearer realm="https://accounts.google.com/", error="invalid_token"'
        with self.drive.lock:
            self.drive.counts["refused"] += 1
        raise err

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        params = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        parts = [urllib.parse.unquote(p) for p in url.path.split("/") if p]
        try:
            if parts[:3] != ["drive", "v3", "files"] or len(parts) > 5 or (len(parts) == 5 and parts[4] != "export"):
                raise DriveError(404, "notFound", f"Not Found: {url.path}")
            self._authenticate()
            failure = self.drive._take_failure()
            kind = "list" if len(parts) == 3 else "export" if len(parts) == 5 else \
                "media" if params.get("alt") == "media" else "get"
            with self.drive.lock:
                self.drive.counts[kind] += 1
                self.drive.counts["total"] += 1
            if failure is not None:
                raise failure
            if kind == "list":
                self._json(200, self.drive.list_files(params))
            elif kind == "get":
                self._json(200, self.drive.metadata(parts[3], params))
            elif kind == "export":
                data, mime = self.drive.export(parts[3], params)
                self._send(200, data, mime)
            else:
                self._media(self.drive.media(parts[3]))
        except DriveError as err:
            self._error(err)

    def _media(self, f: DriveFile) -> None:
        data, size = f.content, len(f.content)
        header = self.headers.get("Range")
        ctype = f.mime
        if header is None:
            self._send(200, data, ctype)
            return
        m = _RANGE.match(header.strip())
        if not m or (m.group(1) == "" and m.group(2) == ""):
            self._send(200, data, ctype)  # a Range it does not understand is ignored, per RFC 9110
            return
        if m.group(1) == "":
            start, end = max(0, size - int(m.group(2))), size - 1
        else:
            start = int(m.group(1))
            end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
        if start >= size or (m.group(1) == "" and int(m.group(2)) == 0) or end < start:
            err = DriveError(416, "requestedRangeNotSatisfiable", "Request range not satisfiable")
            err.headers["Content-Range"] = f"bytes */{size}"
            self._error(err)
            return
        self._send(206, data[start:end + 1], ctype, {"Content-Range": f"bytes {start}-{end}/{size}"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode()
        if urllib.parse.urlsplit(self.path).path != "/token":
            self._error(DriveError(404, "notFound", f"Not Found: {self.path}"))
            return
        form = dict(urllib.parse.parse_qsl(body))
        with self.drive.lock:
            self.drive.counts["token"] += 1
        if form.get("grant_type") != "refresh_token" or form.get("refresh_token") != self.drive.refresh_token:
            self._json(400, {"error": "invalid_grant", "error_description": "Token has been expired or revoked."})
            return
        self._json(200, {"access_token": self.drive.token, "expires_in": 3599, "token_type": "Bearer",
                         "scope": "https://www.googleapis.com/auth/drive.readonly"})
