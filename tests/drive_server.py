"""A faithful subset of the Google Drive v3 REST API on 127.0.0.1, for tests (no Drive emulator exists).

The official google-api-python-client talks to it unchanged (discovery document with rootUrl pointed
here). What it serves, shaped as the real API shapes it:
- `GET /drive/v3/files` (or a POST of its query with `X-HTTP-Method-Override: GET`, which
  googleapiclient sends for a URL over 2048 characters): `q` (a real parser: `'<id>' in parents`,
  `name = / != / contains`, `mimeType = / !=`, `trashed = true|false`, joined with and/or/not and
  parentheses), `fields`
  (partial responses, nested `files(...)`), `pageSize` (1..1000, default 100) / `pageToken` /
  `nextPageToken`, `orderBy` (name, createdTime, modifiedTime, folder; `desc`);
- `GET /drive/v3/files/<id>`: metadata with `fields`, or `alt=media` honouring `Range` (206 +
  Content-Range; 416 + `Content-Range: bytes */size` when unsatisfiable); Docs Editors files answer
  403 fileNotDownloadable, as on Drive;
- `GET /drive/v3/files/<id>/export?mimeType=`: a deterministic byte rendering of a Google Doc,
  Sheet, Slides or Drawing (`render_export`); 403 fileNotExportable for blobs, 400 badRequest for a
  format the type does not export to;
- `POST /drive/v3/files`: files.create from metadata alone (folders, empty files, shortcuts);
  `POST /upload/drive/v3/files?uploadType=media|multipart|resumable`: files.create with content;
- `PATCH /drive/v3/files/<id>`: files.update of metadata (`name`, `mimeType`, `modifiedTime`,
  `trashed`, `description`; moves with `addParents`/`removeParents`; `parents` in the body is 403
  fieldNotWritable, as on Drive); `PATCH /upload/drive/v3/files/<id>?uploadType=...`: new content for
  the same id: a new head revision, new md5Checksum and size, `version` + 1, modifiedTime = the body's
  or now;
- resumable uploads: the initial request (POST or PATCH, `uploadType=resumable`, metadata as JSON,
  `X-Upload-Content-Type`/`X-Upload-Content-Length`) answers 200 with the session URI in `Location`;
  chunks are `PUT <session URI>` with `Content-Range: bytes a-b/total|*`; an unfinished upload answers
  308 with `Range: bytes=0-<last byte kept>` (no Range before the first byte); a chunk that is not the
  last keeps only a multiple of 256 KiB (the rest must be sent again, as Drive's upload servers do);
  `Content-Range: bytes */total` asks for the state; a chunk starting past the bytes received is 400;
  the file is created or updated only when the last byte arrives (the commit); a PUT without
  Content-Range is the whole content at once;
- `DELETE /drive/v3/files/<id>`: files.delete, for good (a folder with everything below it), 204;
- `version` (int64 as a string) grows with every change; modifiedTime moves only with content or
  when set (a rename or a move leaves it, as on Drive's web UI); trashing a folder trashes its
  contents (`trashed` is true below it, `explicitlyTrashed` only on it);
- `POST /token`: the OAuth token endpoint, so stored authorized-user tokens can refresh against it;
- errors as `{"error": {"code", "message", "errors": [{"domain", "reason", "message", ...}]}}`;
  a missing bearer token is 401 `required`, a wrong one 401 `authError`.

Test hooks (in-process, thread-safe): `add_folder`, `add_file`, `add_doc`, `add_shortcut`,
`replace`, `touch`, `trash`, `delete`, `find`, `read`, `fail_next` (inject rate-limit replies to any
API request), `counts` (requests by kind: list, get, media, export, create, update, delete, upload
(a resumable session started), chunk).
Drive has no precondition on files.update (no If-Match, no etag in v3): a client that must not
overwrite a concurrent change compares md5Checksum/headRevisionId itself just before its commit.
"""

from __future__ import annotations

import base64
import calendar
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
from datetime import datetime
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
UPLOAD_QUANTUM = 256 * 1024  # resumable chunks other than the last are kept in multiples of this
# Body fields a client may set (Drive's "writable" File fields, the subset this server keeps).
CREATE_FIELDS = frozenset({"name", "mimeType", "parents", "modifiedTime", "createdTime", "description", "shortcutDetails"})
UPDATE_FIELDS = frozenset({"name", "mimeType", "modifiedTime", "trashed", "description"})


def render_export(file_id: str, content: bytes, modified: str, mime: str) -> bytes:
    """The bytes an export of a Google Doc yields: deterministic in (content, modifiedTime, format)."""
    return f"EXPORT {mime}\nid={file_id} modified={modified}\n".encode() + content


def rfc3339(ns: int) -> str:
    secs, rest = divmod(ns, 10**9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{rest // 10**6:03d}Z"


def parse_time(stamp: Any, field: str) -> int:
    """An RFC 3339 time from a request body, in ns, cut to Drive's millisecond resolution."""
    try:
        dt = datetime.fromisoformat(str(stamp))
    except ValueError:
        raise DriveError(400, "invalid", f"Invalid value for: {field}", location=field, locationType="other") from None
    if dt.tzinfo is None:
        raise DriveError(400, "invalid", f"Invalid value for: {field}", location=field, locationType="other")
    secs = calendar.timegm(dt.utctimetuple())
    return secs * 10**9 + dt.microsecond // 1000 * 10**6


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
    version: int = 1
    description: str | None = None

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
            "explicitlyTrashed": self.trashed, "version": str(self.version),
        }
        if self.description is not None:
            r["description"] = self.description
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


@dataclasses.dataclass
class Upload:
    """A resumable upload session: what its first request asked for, and the bytes kept so far."""

    id: str
    file_id: str | None  # None: files.create
    metadata: dict[str, Any]
    params: dict[str, str]
    mime: str
    total: int | None
    data: bytearray = dataclasses.field(default_factory=bytearray)
    result: DriveFile | None = None
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


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
        self.uploads: dict[str, Upload] = {}  # resumable sessions by upload_id
        self.done_uploads: dict[str, Upload] = {}  # committed sessions answer their file again
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

    def _new_revision(self) -> str:
        return f"0B{next(self._revisions):06d}"

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
            rev = None if mime.startswith(APPS) else self._new_revision()
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
            f.version += 1
            if not f.mime.startswith(APPS):
                f.revision = self._new_revision()

    def touch(self, file_id: str) -> None:
        """A metadata-only change: modifiedTime moves, content and head revision stay."""
        with self.lock:
            f = self.files[file_id]
            f.modified_ns = self._now()
            f.version += 1

    def trash(self, file_id: str) -> None:
        with self.lock:
            f = self.files[file_id]
            f.trashed = True
            f.version += 1

    def delete(self, file_id: str) -> None:
        with self.lock:
            del self.files[file_id]

    def find(self, path: str | list[str]) -> str | None:
        """The id of the untrashed file at a '/'-path of raw Drive names (or a list of them, which may
        hold "/"), first match, or None."""
        with self.lock:
            current = self.root_id
            for part in [p for p in (path.split("/") if isinstance(path, str) else path) if p]:
                match = [f for f in self.files.values()
                         if current in f.parents and f.name == part and not f.in_trash(self.files)]
                if not match:
                    return None
                current = match[0].id
            return current

    def read(self, path: str | list[str]) -> bytes | None:
        """The content of the file at `path` (as `find` takes it), or None (no such file, or a folder)."""
        with self.lock:
            fid = self.find(path)
            f = self.files.get(fid) if fid is not None else None
            return None if f is None or f.mime == FOLDER else f.content

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

    # writes (called from handler threads)
    def _parent(self, parent_id: str) -> DriveFile:
        parent = self.files.get(self.resolve(parent_id))
        if parent is None:
            raise not_found(parent_id)
        if parent.mime != FOLDER:
            raise DriveError(400, "invalid", "The specified parent is not a folder.", location="parents", locationType="other")
        return parent

    @staticmethod
    def _writable(metadata: dict[str, Any], allowed: frozenset[str]) -> None:
        for key in metadata:
            if key not in allowed:
                raise DriveError(403, "fieldNotWritable",
                                 f"The resource body includes fields which are not directly writable: {key}.")

    def create(self, metadata: dict[str, Any], media: tuple[bytes, str] | None) -> DriveFile:
        """files.create: a new file (a new id, even beside another of the same name, as on Drive)."""
        self._writable(metadata, CREATE_FIELDS)
        parents = metadata.get("parents") or ["root"]
        if not isinstance(parents, list) or len(parents) > 1:
            raise DriveError(403, "cannotAddParent", "Increasing the number of parents is not allowed.")
        mime = metadata.get("mimeType") or (media[1] if media else None) or "application/octet-stream"
        target = None
        if mime == SHORTCUT:
            target = (metadata.get("shortcutDetails") or {}).get("targetId")
            if not target:
                raise DriveError(400, "required", "A shortcut requires shortcutDetails.targetId.",
                                 location="shortcutDetails.targetId", locationType="other")
        if media is not None and mime.startswith(APPS):
            raise DriveError(400, "badRequest", "Conversion to this Google type is not supported here.")
        with self.lock:
            parent = self._parent(parents[0])
            if target is not None and target not in self.files:
                raise not_found(target)
            fid, now = self._new_id(), self._now()
            created = parse_time(metadata["createdTime"], "createdTime") if "createdTime" in metadata else now
            modified = parse_time(metadata["modifiedTime"], "modifiedTime") if "modifiedTime" in metadata else now
            rev = None if mime.startswith(APPS) else self._new_revision()
            f = DriveFile(fid, str(metadata.get("name", "Untitled")), mime, [parent.id], created, modified,
                          media[0] if media else b"", rev, target=target, description=metadata.get("description"))
            self.files[fid] = f
            return dataclasses.replace(f, parents=list(f.parents))

    def update(self, file_id: str, metadata: dict[str, Any], params: dict[str, str],
               media: tuple[bytes, str] | None) -> DriveFile:
        """files.update: metadata, a move (addParents/removeParents) and/or new content for the same id."""
        if "parents" in metadata:
            raise DriveError(403, "fieldNotWritable", "The parents field is not directly writable in update requests. "
                             "Use the addParents and removeParents parameters instead.")
        self._writable(metadata, UPDATE_FIELDS)
        with self.lock:
            f = self.files.get(self.resolve(file_id))
            if f is None:
                raise not_found(file_id)
            if media is not None and (f.mime == FOLDER or f.mime.startswith(APPS)):
                raise DriveError(400, "badRequest", "Media content cannot be uploaded to this file.")
            mime = metadata.get("mimeType")
            if mime is not None and mime != f.mime and (mime.startswith(APPS) or f.mime.startswith(APPS)):
                raise DriveError(403, "fieldNotWritable", "The mimeType of this file cannot be changed.")
            parents = list(f.parents)
            for pid in [p for p in params.get("removeParents", "").split(",") if p]:
                pid = self.resolve(pid)
                if pid in parents:
                    parents.remove(pid)
            for pid in [p for p in params.get("addParents", "").split(",") if p]:
                parent = self._parent(pid)
                if parent.id not in parents:
                    parents.append(parent.id)
                self._no_cycle(f, parent)
            if len(parents) > 1:
                raise DriveError(403, "cannotAddParent", "Increasing the number of parents is not allowed. "
                                 "A file can only have one parent.")
            modified = parse_time(metadata["modifiedTime"], "modifiedTime") if "modifiedTime" in metadata else None
            # checks done: apply
            f.parents = parents
            if "name" in metadata:
                f.name = str(metadata["name"])
            if mime is not None:
                f.mime = mime
            if "description" in metadata:
                f.description = metadata["description"]
            if "trashed" in metadata:
                f.trashed = bool(metadata["trashed"])
            if media is not None:
                f.content = media[0]
                f.revision = self._new_revision()
                f.modified_ns = self._now()
            if modified is not None:
                f.modified_ns = modified
            f.version += 1
            return dataclasses.replace(f, parents=list(f.parents))

    def _no_cycle(self, f: DriveFile, parent: DriveFile) -> None:
        seen: set[str] = set()
        p: DriveFile | None = parent
        while p is not None and p.id not in seen:
            if p.id == f.id:
                raise DriveError(403, "invalidParent", "A folder cannot be moved into itself or one of its descendants.")
            seen.add(p.id)
            p = self.files.get(p.parents[0]) if p.parents else None

    def delete_file(self, file_id: str) -> None:
        """files.delete: gone for good, with everything below a folder (Drive skips the trash)."""
        with self.lock:
            f = self.files.get(self.resolve(file_id))
            if f is None:
                raise not_found(file_id)
            if f.id == self.root_id:
                raise DriveError(403, "insufficientFilePermissions", "The user does not have sufficient permissions for this file.")
            doomed, frontier = {f.id}, [f.id]
            while frontier:
                pid = frontier.pop()
                for child in self.files.values():
                    if pid in child.parents and child.id not in doomed:
                        doomed.add(child.id)
                        frontier.append(child.id)
            for fid in doomed:
                del self.files[fid]

    def start_upload(self, file_id: str | None, metadata: dict[str, Any], params: dict[str, str],
                     headers: Any) -> str:
        """The first request of a resumable upload: checks what it can now, answers the session URI."""
        self._writable(metadata, CREATE_FIELDS if file_id is None else UPDATE_FIELDS)
        total = headers.get("X-Upload-Content-Length")
        with self.lock:
            if file_id is not None and self.resolve(file_id) not in self.files:
                raise not_found(file_id)
            for parent in (metadata.get("parents") or [])[:1] if file_id is None else params.get("addParents", "").split(","):
                if parent:
                    self._parent(parent)  # a missing parent is refused now, not after the upload
            upload_id = "ADPyc" + self._new_id()
            self.uploads[upload_id] = Upload(
                upload_id, file_id, metadata, dict(params),
                headers.get("X-Upload-Content-Type") or "application/octet-stream",
                int(total) if total is not None and total.isdigit() else None)
        path = "upload/drive/v3/files" + (f"/{file_id}" if file_id is not None else "")
        return f"{self.url}{path}?uploadType=resumable&upload_id={upload_id}"  # the session keeps the rest

    def put_chunk(self, upload_id: str, content_range: str | None, body: bytes) -> tuple[int, "Upload"]:
        """One PUT to a session URI: (200, session) once committed, else (308, session)."""
        with self.lock:
            up = self.uploads.get(upload_id) or self.done_uploads.get(upload_id)
        if up is None:
            raise DriveError(404, "notFound", "No such upload session.")
        with up.lock:
            if up.result is not None:
                return 200, up
            if content_range is None:  # the whole content at once
                if up.total is not None and up.total != len(body):
                    raise DriveError(400, "badContent", "The upload length differs from X-Upload-Content-Length.")
                up.data[:] = body
                return 200, self._commit(up)
            m = re.fullmatch(r"bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)", content_range.strip())
            if not m:
                raise DriveError(400, "badContent", f"Failed to parse Content-Range header: {content_range}")
            total = None if m.group(3) == "*" else int(m.group(3))
            if total is not None:
                if up.total is not None and total != up.total:
                    raise DriveError(400, "badContent", "The total size differs from the one declared before.")
                up.total = total
            if m.group(1) is not None:
                start, end = int(m.group(1)), int(m.group(2))
                if end < start or len(body) != end - start + 1 or (up.total is not None and end >= up.total):
                    raise DriveError(400, "badContent", "The Content-Range does not match the bytes sent.")
                received = len(up.data)
                if start > received:
                    raise DriveError(400, "badContent", f"Invalid request. According to the Content-Range header, "
                                     f"the upload offset is {start} byte(s), which exceeds already uploaded size "
                                     f"of {received} byte(s).")
                up.data += body[received - start:]
                if up.total is None or len(up.data) < up.total:  # not the last chunk: keep whole quanta only
                    del up.data[len(up.data) // UPLOAD_QUANTUM * UPLOAD_QUANTUM:]
            if up.total is not None and len(up.data) == up.total:
                return 200, self._commit(up)
            return 308, up

    def _commit(self, up: "Upload") -> "Upload":
        media = (bytes(up.data), up.mime)
        if up.file_id is None:
            up.result = self.create(up.metadata, media)
        else:
            up.result = self.update(up.file_id, up.metadata, up.params, media)
        with self.lock:
            self.uploads.pop(up.id, None)
            self.done_uploads[up.id] = up
        return up

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
        parts, params = self._route()
        self._get(parts, params)

    def _get(self, parts: list[str], params: dict[str, str]) -> None:
        try:
            if parts[:3] != ["drive", "v3", "files"] or len(parts) > 5 or (len(parts) == 5 and parts[4] != "export"):
                raise DriveError(404, "notFound", f"Not Found: {self.path}")
            kind = "list" if len(parts) == 3 else "export" if len(parts) == 5 else \
                "media" if params.get("alt") == "media" else "get"
            self._api(kind)
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

    def _body(self) -> bytes:
        """The whole request body (always read, so a keep-alive connection stays in step)."""
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _api(self, kind: str) -> None:
        """Authenticate, count, and play an injected failure, for one API request of `kind`."""
        self._authenticate()
        failure = self.drive._take_failure()
        with self.drive.lock:
            self.drive.counts[kind] += 1
            self.drive.counts["total"] += 1
        if failure is not None:
            raise failure

    def _route(self) -> tuple[list[str], dict[str, str]]:
        url = urllib.parse.urlsplit(self.path)
        params = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        return [urllib.parse.unquote(p) for p in url.path.split("/") if p], params

    def _file(self, status: int, f: DriveFile, params: dict[str, str]) -> None:
        with self.drive.lock:
            resource = f.resource(self.drive.files)
        tree = parse_fields(params["fields"]) if params.get("fields") else dict.fromkeys(DEFAULT_FILE_FIELDS)
        self._json(status, select(resource, tree))

    def _metadata_and_media(self, body: bytes, params: dict[str, str]) -> tuple[dict[str, Any], tuple[bytes, str] | None]:
        """The File resource and the content a create/update request carries, by its uploadType."""
        ctype = self.headers.get("Content-Type", "")
        upload = params.get("uploadType")
        if upload == "media":
            return {}, (body, ctype.split(";")[0].strip() or "application/octet-stream")
        if upload == "multipart":
            parts = parse_related(body, ctype)
            if len(parts) != 2:
                raise DriveError(400, "badContent", "A multipart upload has exactly two parts: metadata, then media.")
            (_, meta), (headers, data) = parts
            return _json_object(meta), (data, headers.get("content-type", "application/octet-stream"))
        return (_json_object(body) if body.strip() else {}), None

    def do_POST(self) -> None:
        body = self._body()
        parts, params = self._route()
        if self.headers.get("X-HTTP-Method-Override", "").upper() == "GET":
            # A GET whose URL is too long (googleapiclient: over 2048 characters) comes as a POST of its query.
            self._get(parts, {**params, **dict(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True))})
            return
        try:
            if parts == ["token"]:
                self._token(body)
            elif parts == ["drive", "v3", "files"]:
                self._api("create")
                self._file(200, self.drive.create(_json_object(body) if body.strip() else {}, None), params)
            elif parts == ["upload", "drive", "v3", "files"]:
                self._upload(None, body, params)
            else:
                raise DriveError(404, "notFound", f"Not Found: {self.path}")
        except DriveError as err:
            self._error(err)

    def do_PATCH(self) -> None:
        body = self._body()
        parts, params = self._route()
        try:
            if len(parts) == 4 and parts[:3] == ["drive", "v3", "files"]:
                self._api("update")
                self._file(200, self.drive.update(parts[3], _json_object(body) if body.strip() else {}, params, None), params)
            elif len(parts) == 5 and parts[:4] == ["upload", "drive", "v3", "files"]:
                self._upload(parts[4], body, params)
            else:
                raise DriveError(404, "notFound", f"Not Found: {self.path}")
        except DriveError as err:
            self._error(err)

    def _upload(self, file_id: str | None, body: bytes, params: dict[str, str]) -> None:
        """files.create (file_id None) or files.update with content, by `uploadType`."""
        upload = params.get("uploadType")
        if upload not in ("media", "multipart", "resumable"):
            raise DriveError(400, "badRequest", "Upload requests must include an uploadType URL parameter and a URL "
                             "path beginning with /upload/")
        if upload == "resumable":
            self._api("upload")
            metadata = _json_object(body) if body.strip() else {}
            location = self.drive.start_upload(file_id, metadata, params, self.headers)
            self._send(200, b"", "text/plain; charset=utf-8", {"Location": location})
            return
        self._api("create" if file_id is None else "update")
        metadata, media = self._metadata_and_media(body, params)
        f = self.drive.create(metadata, media) if file_id is None else self.drive.update(file_id, metadata, params, media)
        self._file(200, f, params)

    def do_PUT(self) -> None:
        body = self._body()
        parts, params = self._route()
        try:
            if parts[:4] != ["upload", "drive", "v3", "files"] or len(parts) > 5 or "upload_id" not in params:
                raise DriveError(404, "notFound", f"Not Found: {self.path}")
            # The session URI is the credential (Drive does not ask for the bearer token again).
            failure = self.drive._take_failure()
            with self.drive.lock:
                self.drive.counts["chunk"] += 1
                self.drive.counts["total"] += 1
            if failure is not None:
                raise failure
            status, up = self.drive.put_chunk(params["upload_id"], self.headers.get("Content-Range"), body)
            if status == 200:
                assert up.result is not None
                self._file(200, up.result, up.params)
            else:
                kept = len(up.data)
                self._send(308, b"", "text/plain; charset=utf-8", {"Range": f"bytes=0-{kept - 1}"} if kept else {})
        except DriveError as err:
            self._error(err)

    def do_DELETE(self) -> None:
        self._body()
        parts, _ = self._route()
        try:
            if len(parts) != 4 or parts[:3] != ["drive", "v3", "files"]:
                raise DriveError(404, "notFound", f"Not Found: {self.path}")
            self._api("delete")
            self.drive.delete_file(parts[3])
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()
        except DriveError as err:
            self._error(err)

    def _token(self, body: bytes) -> None:
        form = dict(urllib.parse.parse_qsl(body.decode()))
        with self.drive.lock:
            self.drive.counts["token"] += 1
        if form.get("grant_type") != "refresh_token" or form.get("refresh_token") != self.drive.refresh_token:
            self._json(400, {"error": "invalid_grant", "error_description": "Token has been expired or revoked."})
            return
        self._json(200, {"access_token": self.drive.token, "expires_in": 3599, "token_type": "Bearer",
                         "scope": "https://www.googleapis.com/auth/drive"})


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(body)
    except ValueError:
        raise DriveError(400, "parseError", "Parse Error") from None
    if not isinstance(obj, dict):
        raise DriveError(400, "parseError", "Parse Error")
    return obj


def parse_related(body: bytes, ctype: str) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart/related body (RFC 2387): (lower-cased headers, bytes) each, bytes exact."""
    m = re.search(r'boundary="?([^";]+)"?', ctype)
    if not ctype.lower().startswith("multipart/related") or not m:
        raise DriveError(400, "badContent", "Expected a multipart/related body with a boundary.")
    delim = b"--" + m.group(1).encode()
    if not body.startswith(delim):
        raise DriveError(400, "badContent", "The multipart body does not start with its boundary.")
    nl = b"\r\n" if body[len(delim):].startswith(b"\r\n") else b"\n"  # the line break the client used
    pieces = body[len(delim) + len(nl):].split(nl + delim)
    if len(pieces) < 2 or not pieces[-1].startswith(b"--"):
        raise DriveError(400, "badContent", "The multipart body is not closed.")
    out = []
    for i, piece in enumerate(pieces[:-1]):
        if i:
            piece = piece.removeprefix(nl)  # the rest of the boundary line
        head, sep, data = piece.partition(nl + nl)
        if not sep:
            head, data = piece.removeprefix(nl), b""  # no headers
        headers = {}
        for line in head.split(nl):
            name, colon, value = line.decode("latin-1").partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        out.append((headers, data))
    return out
