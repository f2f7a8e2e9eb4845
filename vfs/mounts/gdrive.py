"""Google Drive (v3) through the official google-api-python-client.

The client is built from the discovery document packaged with googleapiclient (no network fetch);
`root_url` points it at another server (the tests' loopback Drive). httplib2 is not thread-safe, so
every worker thread builds its own service and http object (`threading.local`); every call goes
through `Backend.run_sync`.

How Drive becomes a POSIX tree:
- Paths resolve to file ids walking from the root (`root`: "root" = My Drive, a folder id, or a
  shared drive via `drive_id`). Directory ids are cached per path (bounded, `dir_cache_ttl`:
  a moved folder shows at its old path at most that long; every listing refreshes its subfolders).
  The last component is looked up with one targeted `files.list` query (all raw names that can
  display as it), so a stat never pages through a large folder.
- Names: "/" in a Drive name becomes U+FF0F "／" (FULLWIDTH SOLIDUS); a name "." or ".." becomes
  U+FF0E "．" repeated; names over 255 bytes are left out.
- Duplicate names in one folder (Drive allows them): the item created first (createdTime, then id)
  keeps the name; each later one gets " [<first 8 chars of its id>]" before its extension
  ("report [1AbCdEfG].pdf"). A suffixed name always names the same file (it depends on that file
  alone, not on how many siblings share the name); only when the oldest goes does the next oldest
  take the bare name. A generated name never hides a real one (that duplicate is left out).
- Google Docs, Sheets, Slides, Drawings appear as exports: name + "." + extension (`export_formats`,
  defaults docx/xlsx/pdf/png; a type mapped to "" is hidden, as are Forms, Sites, Maps...). They
  are read-only (EPERM). Their size is the exported size: with `export_sizes` (default) a listing or stat
  exports each Doc not yet exported (once per (id, modifiedTime, format); bytes kept in a small
  bounded cache), so `st_size` is right and `cat` works; with it off, a Doc not yet exported reports
  size 0. A Doc whose export fails reports 0 and its read raises the error.
- Shortcuts are followed: the shortcut's name with the target's content (a folder shortcut is a
  directory); a dangling or trashed target hides the shortcut. Trashed items are never shown.
- version = md5Checksum, else headRevisionId, else modifiedTime (Docs: modifiedTime).

Reads and versions: a blob read is `files.get alt=media` with a Range header, followed by a metadata
check of (md5Checksum, headRevisionId, modifiedTime). The read is accepted only if that fingerprint
equals the one observed (by stat/list or a fresh lookup) *before* the read: Drive makes a new head
revision for every content change and never reuses one, so an unchanged fingerprint after the read
means no change happened around it, and the bytes are those of `version`. If the version differs:
ESTALE. If only the fingerprint moved (a metadata-only change, or a re-upload of identical bytes),
the read is repeated with the new observation. A Doc read serves its export cached for
(id, modifiedTime) after checking modifiedTime is still `version`; a fresh export is likewise
bracketed by the observation before and a check after.

Writes (a WritableBackend; `atomic_dir_rename`: moving a folder is one call):
- Names: a POSIX name becomes the Drive name with "／" turned back into "/" and nothing else changed
  (a name like "a [1AbCdEfG].txt" is then a real name and shows as itself). A path is looked up by
  the rules above, so writing "dup [1AbCdEfG].txt" writes that duplicate. A file or folder is
  created only if nothing shows under its name (write_file: ESTALE, mkdir: EEXIST); Drive itself
  would create a second item. After a create the name is looked up again: if another client created
  it meanwhile, the older item keeps the name (the duplicates rule), so the younger, when it is ours,
  is deleted for good (it held only what this call wrote) and the call fails as above. A success
  therefore always means the path names what was written.
- write_file: a create is files.create; a replace is files.update with media of the same id (a new
  head revision: sharing, comments and older revisions stay). Drive has no precondition on
  files.update (no If-Match, no etag in v3), so the version seen (md5Checksum, else headRevisionId)
  is compared with `expected` by a fresh lookup just before the upload and, for a resumable upload,
  again (files.get of the id: content, trash, name) just before the last chunk, which commits. The
  window left is that one request's time: a writer committing inside it is overwritten (its bytes
  stay in Drive's revision history). A file up to `chunk_size` goes up in one multipart request;
  above it, resumably in `chunk_size` chunks (a multiple of 256 KiB, Drive's rule) read from the
  source file as they are sent, one request per worker hop, each retried on its own (a retry asks
  the session what it kept and goes on from there). modifiedTime is `mtime_ns` (Drive keeps ms);
  the MIME type comes from the name's extension.
- delete and rmdir move the item to Drive's trash (files.update trashed=true), which a user can undo
  (Drive empties it after 30 days); files.delete is used only on our own item that lost a name race.
  rmdir is ENOTEMPTY while the folder holds any untrashed item, shown or not (a Form, a name too
  long), because trashing a folder trashes its contents; an item added between that check and the
  trash goes to the trash with the folder.
- rename: one files.update (name, and addParents/removeParents for a move): atomic, folders too.
  Replacing a target first trashes it: two calls, between which neither name shows the target.
- set_mtime: files.update of modifiedTime (no new revision; a blob's version stays).
- Google Docs, Sheets, Slides and Drawings are read-only: write_file, delete and set_mtime of one,
  and a rename over one, fail with EPERM. Not EACCES: that is what Drive's own 403s (sharing,
  permissions) map to, and it would send the user to check them; not EROFS: the rest of the mount is
  writable. EPERM is what Linux answers for an immutable file (chattr +i). Renaming or moving a Doc
  is allowed (it changes only a name): the new name keeps the export extension (".docx"), which is
  not part of the Drive name; another extension is EPERM.
- A shortcut is written through to its target (as a symlink is), but deleted and renamed itself.
- Caches: a write drops the lookups of every path it changes (the path, below a renamed or removed
  folder, and the duplicates whose generated names may move with it) and caches what it created.

Rate limits (403 userRateLimitExceeded/rateLimitExceeded, 429) and 5xx are retried with exponential
backoff and full jitter, `max_retries` times; then EAGAIN (EIO for 5xx). Other errors map through
vfs.errors by the JSON error body's reason, then by status.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import errno
import socket
import functools
import json
import logging
import mimetypes
import os
import random
import re
import threading
import time
from datetime import datetime
from importlib import resources
from typing import Any, Awaitable, Callable

import cachetools
import google.auth.exceptions
import google_auth_httplib2
import googleapiclient.discovery
import googleapiclient.errors
import googleapiclient.http
import httplib2
import trio

from vfs.errors import SiloError, silo_error
from vfs.mounts.base import (DEFAULT_RENAME_LIMIT, BaseOptions, ObjectMeta, WritableBackend, join, not_a_directory,
                             not_found, stale, valid_name)
from vfs.mounts.gdrive_auth import load_credentials

log = logging.getLogger(__name__)

FOLDER = "application/vnd.google-apps.folder"
SHORTCUT = "application/vnd.google-apps.shortcut"
APPS = "application/vnd.google-apps."
SLASH = "\uff0f"  # FULLWIDTH SOLIDUS stands for "/" in names (rclone's choice too)
DOT = "\uff0e"  # FULLWIDTH FULL STOP stands for the names "." and ".."

# Extension -> export MIME type (Drive's about.exportFormats).
EXPORT_MIME_BY_EXT: dict[str, str] = {
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "odt": "application/vnd.oasis.opendocument.text",
    "rtf": "application/rtf",
    "pdf": "application/pdf",
    "txt": "text/plain",
    "html": "text/html",
    "epub": "application/epub+zip",
    "md": "text/markdown",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "ods": "application/x-vnd.oasis.opendocument.spreadsheet",
    "csv": "text/csv",
    "tsv": "text/tab-separated-values",
    "pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "odp": "application/vnd.oasis.opendocument.presentation",
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "svg": "image/svg+xml",
    "json": "application/vnd.google-apps.script+json",
}
DEFAULT_EXPORT_FORMATS: dict[str, str] = {"document": "docx", "spreadsheet": "xlsx", "presentation": "pdf", "drawing": "png"}

FILE_FIELDS = ("id,name,mimeType,size,md5Checksum,headRevisionId,modifiedTime,createdTime,trashed,"
               "shortcutDetails(targetId,targetMimeType)")
CHECK_FIELDS = "id,mimeType,md5Checksum,headRevisionId,modifiedTime,trashed"
WRITE_CHECK_FIELDS = "id,name,mimeType,md5Checksum,headRevisionId,modifiedTime,trashed,size"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})  # Drive's docs: retry these with backoff
READ_ATTEMPTS = 3  # a read re-runs after a metadata-only change; a file changing that often is ESTALE
MAX_NAME_CANDIDATES = 64  # raw names a targeted lookup asks for; past this it lists the folder
UPLOAD_QUANTUM = 256 * 1024  # Drive's resumable chunks are multiples of this (all but the last)
READ_ONLY = errno.EPERM  # writes to Google Docs & co. (module docstring: why this errno)


@functools.cache
def _discovery() -> dict[str, Any]:
    """The packaged Drive v3 discovery document (parsed once; callers copy before changing it)."""
    path = resources.files("googleapiclient") / "discovery_cache" / "documents" / "drive.v3.json"
    return json.loads(path.read_text())


@dataclasses.dataclass(frozen=True)
class DriveOptions(BaseOptions):
    root: str = "root"
    """"root" (My Drive), or the id of a folder to mount."""
    drive_id: str | None = None
    """A shared drive to mount (its root folder; `root` is then ignored)."""
    token_file: str | None = None
    """An OAuth token stored by `vfs auth gdrive` (authorized-user JSON)."""
    token_uri: str | None = None
    """Another OAuth token endpoint to refresh `token_file` at (tests); default Google's."""
    credentials_file: str | None = None
    """A service-account key (JSON)."""
    subject: str | None = None
    """With a service account: the user to impersonate (domain-wide delegation)."""
    credentials: Any = dataclasses.field(default=None, repr=False, compare=False)
    """An already-built google.auth credentials object (programmatic use; not from config)."""
    export_formats: dict[str, str] = dataclasses.field(default_factory=dict)
    """Google type ("document", "spreadsheet", ...) -> extension; merged over the defaults; "" hides."""
    export_sizes: bool = True
    root_url: str | None = None
    """Another Drive endpoint, e.g. "http://127.0.0.1:8080/" (tests)."""
    page_size: int = 1000  # files.list's maximum
    max_retries: int = 6  # 1+2+4+...+32 s of backoff: over a minute, Drive's per-user quota window
    retry_base_delay: float = 1.0  # Drive's docs: start backoff at 1 s
    retry_max_delay: float = 32.0  # Drive's docs: cap backoff at 32-64 s
    timeout: float = 60.0
    dir_cache_size: int = 65536  # folder ids by path; ~200 bytes each
    dir_cache_ttl: float = 60.0  # seconds; the order of the namespace's metadata TTL
    file_cache_size: int = 65536  # last observation of each file (read pre-check); ~300 bytes each
    export_cache_bytes: int = 64 * 1024 * 1024  # Drive exports are at most 10 MB: room for six of the largest
    chunk_size: int = 8 * 1024 * 1024
    """Bytes per request of a resumable upload (a multiple of 256 KiB); a file up to this size goes up
    in one multipart request. Each chunk is read from the source file when it is sent."""

    def __post_init__(self) -> None:
        """ValueError `key: problem` for options Drive could not use."""
        if self.chunk_size <= 0 or self.chunk_size % UPLOAD_QUANTUM:
            raise ValueError(f"chunk_size: must be a positive multiple of 256KiB, got {self.chunk_size}")
        for kind, ext in self.export_formats.items():
            if not isinstance(ext, str):
                raise ValueError(f"export_formats.{kind}: expected an extension such as \"pdf\", got {ext!r}")
            ext = ext.lstrip(".").lower()
            if ext and ext not in EXPORT_MIME_BY_EXT:
                raise ValueError(f"export_formats.{kind}: unknown extension {ext!r} (known: {', '.join(EXPORT_MIME_BY_EXT)})")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One item of a folder, shortcuts already followed."""

    item_id: str  # the id of the item in the folder (the shortcut itself, for shortcuts)
    id: str  # the id whose content it shows (the target, for shortcuts)
    name: str  # raw Drive name
    kind: str  # "dir" | "blob" | "doc"
    created: str = ""
    modified: str = ""
    size: int = 0
    md5: str | None = None
    revision: str | None = None
    export_mime: str | None = None
    export_ext: str | None = None

    @property
    def version(self) -> str:
        if self.kind == "dir":
            return ""
        if self.kind == "doc":
            return self.modified
        return self.md5 or self.revision or self.modified

    @property
    def fingerprint(self) -> tuple[str | None, str | None, str]:
        return (self.md5, self.revision, self.modified)

    @property
    def export_key(self) -> tuple[str, str, str]:
        return (self.id, self.modified, self.export_mime or "")

    def observed(self, resource: dict[str, Any]) -> "Entry":
        """This entry with the content fields of a newer metadata answer."""
        return dataclasses.replace(self, md5=resource.get("md5Checksum"), revision=resource.get("headRevisionId"),
                                   modified=resource.get("modifiedTime", ""), size=int(resource.get("size") or 0))


def mtime_ns(stamp: str) -> int | None:
    if not stamp:
        return None
    dt = datetime.fromisoformat(stamp)
    return int(dt.timestamp()) * 10**9 + dt.microsecond * 1000


def fix_name(name: str) -> str:
    name = name.replace("/", SLASH)
    return DOT * len(name) if name in (".", "..") else name


def raw_name(name: str) -> str:
    """The Drive name a POSIX name is written as: "／" back to "/", nothing else changed."""
    return name.replace(SLASH, "/")


def rfc3339(ns: int) -> str:
    """A time in ns as Drive takes it (RFC 3339, UTC; Drive keeps milliseconds)."""
    secs, rest = divmod(ns, 10**9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{rest // 10**6:03d}Z"


def _unfix(name: str) -> set[str] | None:
    """Every raw name `fix_name` maps to `name`; None if there are too many."""
    if name in (DOT, DOT * 2):
        return {name, "." * len(name)}
    n = name.count(SLASH)
    if 2**n > MAX_NAME_CANDIDATES:
        return None
    out = {""}
    for ch in name:
        out = {p + c for p in out for c in ((ch, "/") if ch == SLASH else (ch,))}
    return out


def _split_ext(name: str) -> tuple[str, str]:
    dot = name.rfind(".")
    return (name[:dot], name[dot:]) if dot > 0 else (name, "")


def with_id(base: str, item_id: str, is_dir: bool) -> str:
    stem, ext = (base, "") if is_dir else _split_ext(base)
    return f"{stem} [{item_id}]{ext}"


_SUFFIXED = re.compile(r"(.*) \[[A-Za-z0-9_-]+\](\.[^.]*)?", re.S)


def quote(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def translate(exc: BaseException, what: str) -> SiloError:
    """Turn a googleapiclient/google-auth/transport exception into a SiloError (the Drive edge)."""
    if isinstance(exc, googleapiclient.errors.HttpError):
        status = exc.resp.status
        reason = None
        try:
            body = json.loads(exc.content.decode("utf-8", "replace"))
            error = body.get("error", {}) if isinstance(body, dict) else {}
            errors = error.get("errors") or [] if isinstance(error, dict) else []
            reason = errors[0].get("reason") if errors and isinstance(errors[0], dict) else None
        except (ValueError, AttributeError):
            pass
        err = silo_error(reason, status, what)
        if status in RETRY_STATUSES:
            err.retryable = True
        return err
    if isinstance(exc, google.auth.exceptions.RefreshError):
        if getattr(exc, "retryable", False):
            return SiloError(errno.EAGAIN, f"{what}: refreshing the token: {exc}", retryable=True)
        return SiloError(errno.EACCES, f"{what}: the Drive token cannot be refreshed ({exc})")
    if isinstance(exc, google.auth.exceptions.DefaultCredentialsError):
        return SiloError(errno.EACCES, f"{what}: no Google credentials ({exc})")
    if isinstance(exc, google.auth.exceptions.TransportError):
        return SiloError(errno.EIO, f"{what}: {exc}", retryable=True)
    if isinstance(exc, (httplib2.error.ServerNotFoundError, ConnectionRefusedError, socket.gaierror)):
        return SiloError(errno.EHOSTDOWN, f"{what}: {exc}", retryable=True)  # unreachable: offline mode
    if isinstance(exc, TimeoutError):
        return SiloError(errno.ETIMEDOUT, f"{what}: {exc}", retryable=True)
    if isinstance(exc, SiloError):
        return exc
    if isinstance(exc, (ConnectionError, httplib2.error.HttpLib2Error, OSError)):
        return SiloError(errno.EIO, f"{what}: {type(exc).__name__}: {exc}", retryable=True)
    return SiloError(errno.EIO, f"{what}: {type(exc).__name__}: {exc}")


class _ByteLRU:
    """Exported Docs by (id, modifiedTime, format), bounded by total bytes."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self.items: collections.OrderedDict[tuple[str, str, str], bytes] = collections.OrderedDict()

    def get(self, key: tuple[str, str, str]) -> bytes | None:
        data = self.items.get(key)
        if data is not None:
            self.items.move_to_end(key)
        return data

    def put(self, key: tuple[str, str, str], data: bytes) -> None:
        if len(data) > self.budget or key in self.items:
            return
        while self.used + len(data) > self.budget:
            _, old = self.items.popitem(last=False)
            self.used -= len(old)
        self.items[key] = data
        self.used += len(data)


class _Chunk:
    """The next step of a resumable upload, shaped as a request for `_call`: `execute` sends one chunk
    (after the request that opens the session, the first time) over the calling worker's own http."""

    def __init__(self, request: googleapiclient.http.HttpRequest, http: Any) -> None:
        self.request = request
        self.http = http
        self.headers: dict[str, str] = {}

    def execute(self, num_retries: int = 0) -> tuple[Any, Any]:
        return self.request.next_chunk(http=self.http, num_retries=num_retries)


class DriveBackend(WritableBackend):
    scheme = "gdrive"
    Options = DriveOptions
    atomic_dir_rename = True  # a move is one files.update of the folder's parents

    def __init__(self, options: DriveOptions) -> None:
        super().__init__(options)
        self.o = options
        formats = {**DEFAULT_EXPORT_FORMATS, **options.export_formats}
        self.exports: dict[str, tuple[str, str]] = {}  # Google MIME type -> (extension, export MIME type)
        for kind, ext in formats.items():
            mime = kind if kind.startswith(APPS) else APPS + kind
            ext = ext.lstrip(".").lower()
            if not ext:
                continue
            self.exports[mime] = (ext, EXPORT_MIME_BY_EXT[ext])
        self.credentials = options.credentials or load_credentials(
            token_file=options.token_file, credentials_file=options.credentials_file, subject=options.subject,
            token_uri=options.token_uri)
        doc = copy.copy(_discovery())
        if options.root_url:
            root = options.root_url.rstrip("/") + "/"
            doc["rootUrl"] = root
            doc["baseUrl"] = root + doc["servicePath"]
            doc.pop("mtlsRootUrl", None)
        self._doc = doc
        self._local = threading.local()
        self._https: list[httplib2.Http] = []
        self._https_lock = threading.Lock()
        self.root_id = options.drive_id or options.root or "root"
        self._root = Entry(self.root_id, self.root_id, "", "dir")
        # The caches below are touched only on the trio thread.
        self._dirs: cachetools.TTLCache[str, Entry] = cachetools.TTLCache(options.dir_cache_size, options.dir_cache_ttl)
        self._seen: cachetools.LRUCache[str, Entry] = cachetools.LRUCache(options.file_cache_size)
        self._sizes: cachetools.LRUCache[tuple[str, str, str], int] = cachetools.LRUCache(options.file_cache_size)
        self._export_bytes = _ByteLRU(options.export_cache_bytes)
        self._export_flights: dict[tuple[str, str, str], trio.Event] = {}

    @classmethod
    def options_from_url(cls, url: str) -> dict[str, Any]:
        """gdrive:// or gdrive://root (My Drive), gdrive://<folder id>, gdrive://shared/<drive id>."""
        rest = url.removeprefix("gdrive://").strip("/")
        if rest.startswith("shared/"):
            return {"drive_id": rest.removeprefix("shared/")}
        return {"root": rest or "root"}

    def describe(self) -> str:
        return f"gdrive://shared/{self.o.drive_id}" if self.o.drive_id else f"gdrive://{self.root_id}"

    # --- calls ------------------------------------------------------------------------------------

    def _service(self) -> Any:
        service = getattr(self._local, "service", None)
        if service is None:
            http = httplib2.Http(timeout=self.o.timeout)
            # Drive answers 308 "Resume Incomplete" to resumable chunks: no redirect (as googleapiclient's build_http).
            http.redirect_codes = http.redirect_codes - {308}
            with self._https_lock:
                self._https.append(http)
            authed = google_auth_httplib2.AuthorizedHttp(self.credentials, http=http)
            service = googleapiclient.discovery.build_from_document(self._doc, http=authed)
            self._local.service = service
            self._local.http = authed
        return service

    def _execute(self, make: Callable[[Any], Any], headers: dict[str, str] | None) -> Any:
        request = make(self._service())
        if headers:
            request.headers.update(headers)
        return request.execute(num_retries=0)

    async def _call(self, make: Callable[[Any], Any], what: str, headers: dict[str, str] | None = None) -> Any:
        attempt = 0
        while True:
            try:
                return await self.run_sync(self._execute, make, headers)
            except Exception as exc:  # translated once, here
                err = translate(exc, f"{self.describe()}/{what}" if what else self.describe())
                if not err.retryable or attempt >= self.o.max_retries:
                    raise err from exc
            # Exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter").
            delay = random.uniform(0, min(self.o.retry_max_delay, self.o.retry_base_delay * 2**attempt))
            attempt += 1
            self.stats.retries += 1
            log.debug("%s: %s, retry %d in %.2fs", what, err, attempt, delay)
            await trio.sleep(delay)

    def _common(self) -> dict[str, Any]:
        return {"supportsAllDrives": True}

    def _list_kwargs(self, q: str, fields: str, page_size: int) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"q": q, "fields": fields, "pageSize": page_size, "spaces": "drive",
                                  "includeItemsFromAllDrives": True, "supportsAllDrives": True}
        if self.o.drive_id:
            kwargs.update(corpora="drive", driveId=self.o.drive_id)
        return kwargs

    async def _query(self, q: str, what: str) -> list[dict[str, Any]]:
        kwargs = self._list_kwargs(q, f"nextPageToken,files({FILE_FIELDS})", self.o.page_size)
        out: list[dict[str, Any]] = []
        while True:
            page = await self._call(lambda s, kw=dict(kwargs): s.files().list(**kw), what)
            out.extend(page.get("files", []))
            token = page.get("nextPageToken")
            if not token:
                return out
            kwargs["pageToken"] = token

    async def _get(self, file_id: str, fields: str, what: str) -> dict[str, Any]:
        return await self._call(lambda s: s.files().get(fileId=file_id, fields=fields, supportsAllDrives=True), what)

    # --- entries and names ------------------------------------------------------------------------

    def _entry(self, item: dict[str, Any], content: dict[str, Any]) -> Entry | None:
        """The Entry for folder item `item` showing `content` (the item itself, or a shortcut's target)."""
        if content.get("trashed"):
            return None
        mime = content.get("mimeType", "")
        common = dict(item_id=item["id"], id=content["id"], name=item.get("name", ""),
                      created=item.get("createdTime", ""), modified=content.get("modifiedTime", ""))
        if mime == FOLDER:
            return Entry(kind="dir", **common)
        if mime == SHORTCUT:
            return None  # Drive forbids shortcuts to shortcuts; never loop on one
        if mime.startswith(APPS):
            if mime not in self.exports:
                return None  # Forms, Sites, Maps, ... and types mapped to "": nothing to read
            ext, export_mime = self.exports[mime]
            return Entry(kind="doc", export_ext=ext, export_mime=export_mime, **common)
        return Entry(kind="blob", size=int(content.get("size") or 0), md5=content.get("md5Checksum"),
                     revision=content.get("headRevisionId"), **common)

    async def _entries(self, items: list[dict[str, Any]], what: str) -> list[Entry]:
        """Entries for raw folder items: trashed dropped, shortcuts followed (targets fetched together)."""
        targets: dict[str, dict[str, Any] | None] = {}
        for item in items:
            if item.get("mimeType") == SHORTCUT and "shortcutDetails" in item:
                targets[item["shortcutDetails"]["targetId"]] = None

        async def fetch(target_id: str) -> None:
            try:
                targets[target_id] = await self._get(target_id, FILE_FIELDS, what)
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.EACCES):
                    raise
                log.debug("%s: shortcut target %s unreadable: %s", what, target_id, exc)

        if targets:
            async with trio.open_nursery() as nursery:
                for target_id in targets:
                    nursery.start_soon(fetch, target_id)
        out = []
        for item in items:
            if item.get("trashed"):
                continue
            if item.get("mimeType") == SHORTCUT:
                target = targets.get(item.get("shortcutDetails", {}).get("targetId", ""))
                entry = self._entry(item, target) if target else None
            else:
                entry = self._entry(item, item)
            if entry is not None:
                out.append(entry)
        return out

    def _named(self, entries: list[Entry]) -> dict[str, Entry]:
        """Display name -> entry, duplicates resolved as the module docstring says."""
        groups: dict[str, list[Entry]] = {}
        for e in entries:
            base = fix_name(e.name) + (f".{e.export_ext}" if e.kind == "doc" else "")
            groups.setdefault(base, []).append(e)
        out: dict[str, Entry] = {}
        generated: list[tuple[str, Entry]] = []
        for base, group in groups.items():
            group.sort(key=lambda e: (e.created, e.item_id))
            out[base] = group[0]
            taken: set[str] = set()
            for e in group[1:]:
                name = with_id(base, e.item_id[:8], e.kind == "dir")
                if name in taken:  # two ids sharing 8 characters: the later one shows its whole id
                    name = with_id(base, e.item_id, e.kind == "dir")
                taken.add(name)
                generated.append((name, e))
        for name, e in generated:
            if name in out:
                log.warning("duplicate %r: its generated name %r is a real name too; left out", e.name, name)
                continue
            out[name] = e
        return {n: e for n, e in out.items() if valid_name(n)}

    def _raw_candidates(self, name: str) -> set[str] | None:
        bases = {name}
        m = _SUFFIXED.fullmatch(name)
        if m:
            bases.add(m.group(1) + (m.group(2) or ""))
        shown = set(bases)
        for base in bases:
            for ext, _ in self.exports.values():
                if base.endswith("." + ext) and len(base) > len(ext) + 1:
                    shown.add(base[: -len(ext) - 1])
        raws: set[str] = set()
        for s in shown:
            more = _unfix(s)
            if more is None:
                return None
            raws |= more
        return raws if len(raws) <= MAX_NAME_CANDIDATES else None

    # --- resolution -------------------------------------------------------------------------------

    async def _children(self, folder: Entry, path: str) -> dict[str, Entry]:
        q = f"{quote(folder.id)} in parents and trashed = false"
        return self._named(await self._entries(await self._query(q, path), path))

    async def _named_like(self, parent: Entry, path: str) -> dict[str, Entry]:
        """Fresh entries of folder `parent` by display name: at least every one that shows as `path`'s
        last name or shares its raw name (the duplicates whose generated names depend on it)."""
        name = path.rpartition("/")[2]
        if not valid_name(name):
            return {}
        raws = self._raw_candidates(name)
        if raws is None:
            return await self._children(parent, path)
        names = " or ".join(f"name = {quote(r)}" for r in sorted(raws))
        q = f"{quote(parent.id)} in parents and trashed = false and ({names})"
        return self._named(await self._entries(await self._query(q, path), path))

    async def _lookup(self, parent: Entry, path: str) -> Entry:
        """The entry at `path` (fresh metadata) in folder `parent`; ENOENT."""
        entry = (await self._named_like(parent, path)).get(path.rpartition("/")[2])
        if entry is None:
            raise not_found(f"{self.describe()}/{path}")
        return entry

    async def _siblings(self, path: str) -> tuple[Entry, dict[str, Entry]]:
        """`path`'s folder (ENOENT/ENOTDIR) and its fresh entries named like `path` (`_named_like`)."""
        parent = await self._resolve_dir(path.rpartition("/")[0])
        return parent, await self._named_like(parent, path)

    async def _resolve(self, path: str) -> Entry:
        if path == "":
            return self._root
        parent = await self._resolve_dir(path.rpartition("/")[0])
        entry = await self._lookup(parent, path)
        if entry.kind == "dir":
            self._dirs[path] = entry
        else:
            self._seen[path] = entry
        return entry

    async def _resolve_dir(self, path: str) -> Entry:
        if path == "":
            return self._root
        cached = self._dirs.get(path)
        if cached is not None:
            return cached
        entry = await self._resolve(path)
        if entry.kind != "dir":
            raise not_a_directory(f"{self.describe()}/{path}")
        return entry

    # --- Docs exports -----------------------------------------------------------------------------

    async def _export(self, entry: Entry, path: str) -> bytes:
        """The export of Doc `entry` as observed (its modifiedTime); ESTALE if it has changed since."""
        key = entry.export_key
        while True:
            data = self._export_bytes.get(key)
            if data is not None:
                return data
            flight = self._export_flights.get(key)
            if flight is None:
                break
            await flight.wait()
        flight = self._export_flights[key] = trio.Event()
        try:
            data = await self._call(
                lambda s: s.files().export_media(fileId=entry.id, mimeType=entry.export_mime), path)
            check = await self._get(entry.id, CHECK_FIELDS, path)
            if check.get("trashed") or check.get("modifiedTime") != entry.modified:
                raise stale(f"{self.describe()}/{path}")
            self._sizes[key] = len(data)
            self._export_bytes.put(key, data)
            return data
        finally:
            del self._export_flights[key]
            flight.set()

    async def _doc_size(self, entry: Entry, path: str) -> int:
        size = self._sizes.get(entry.export_key)
        if size is not None or not self.o.export_sizes:
            return size or 0
        try:
            return len(await self._export(entry, path))
        except OSError as exc:
            log.warning("%s/%s: cannot export to learn its size: %s", self.describe(), path, exc)
            return 0

    async def _meta(self, path: str, entry: Entry) -> ObjectMeta:
        mtime = mtime_ns(entry.modified)
        if entry.kind == "dir":
            return ObjectMeta(path, True, 0, mtime, "")
        size = await self._doc_size(entry, path) if entry.kind == "doc" else entry.size
        return ObjectMeta(path, False, size, mtime, entry.version)

    # --- the Backend protocol ---------------------------------------------------------------------

    async def probe(self) -> None:
        """One files.get of the root folder: it exists, is a folder, and the credentials may read it."""
        item = await self._get(self.root_id, "id,mimeType,trashed", "")
        if item.get("mimeType") != FOLDER or item.get("trashed"):
            raise not_a_directory(f"{self.describe()}: not a folder")

    async def stat(self, path: str) -> ObjectMeta:
        if path == "":
            return ObjectMeta("", True)
        return await self._meta(path, await self._resolve(path))

    async def list_dir(self, path: str) -> list[ObjectMeta]:
        cached = path in self._dirs
        folder = await self._resolve_dir(path)
        named = await self._children(folder, path)
        if not named and cached:
            # An empty answer may be a folder deleted or trashed since it was cached: ask about it once.
            try:
                check = await self._get(folder.id, "id,trashed", path)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
                check = {"trashed": True}
            if check.get("trashed"):
                self._dirs.pop(path, None)
                folder = await self._resolve_dir(path)
                named = await self._children(folder, path)
        out: dict[str, ObjectMeta] = {}

        async def one(name: str, entry: Entry) -> None:
            child = join(path, name)
            if entry.kind == "dir":
                self._dirs[child] = entry
            else:
                self._seen[child] = entry
            out[name] = await self._meta(child, entry)

        async with trio.open_nursery() as nursery:
            for name, entry in named.items():
                nursery.start_soon(one, name, entry)
        return [out[n] for n in sorted(out)]

    async def read_range(self, path: str, start: int, end: int, version: str) -> bytes:
        what = f"{self.describe()}/{path}"
        entry = self._seen.get(path)
        from_memory = entry is not None and entry.version == version
        if not from_memory:
            entry = await self._resolve(path)
        assert entry is not None
        if entry.kind == "dir":
            raise SiloError(errno.EISDIR, what)
        if entry.version != version:
            raise stale(what)
        if entry.kind == "doc":
            return await self._read_doc(path, entry, start, end, version)
        if end <= start:
            return b""
        for _ in range(READ_ATTEMPTS):
            try:
                data = await self._call(
                    lambda s, fid=entry.id: s.files().get_media(fileId=fid, supportsAllDrives=True), path,
                    headers={"Range": f"bytes={start}-{end - 1}"})
            except OSError as exc:
                if exc.errno == errno.EINVAL:  # 416: start at or past the end (checked below like any read)
                    data = b""
                elif exc.errno == errno.ENOENT and from_memory:  # that file is gone; the path may hold another
                    self._seen.pop(path, None)
                    from_memory = False
                    entry = await self._resolve(path)
                    if entry.kind != "blob" or entry.version != version:
                        raise stale(what) from exc
                    continue
                else:
                    raise
            try:
                check = await self._get(entry.id, CHECK_FIELDS, path)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    self._seen.pop(path, None)
                    raise stale(what) from exc
                raise
            observed = entry.observed(check)
            if not check.get("trashed") and observed.fingerprint == entry.fingerprint:
                return data
            if check.get("trashed") or observed.version != version:
                self._seen.pop(path, None)
                raise stale(what)
            entry = dataclasses.replace(observed, size=entry.size)  # same bytes, new fingerprint: read again
            self._seen[path] = entry
        raise stale(what)

    async def _read_doc(self, path: str, entry: Entry, start: int, end: int, version: str) -> bytes:
        data = self._export_bytes.get(entry.export_key)
        if data is None:
            data = await self._export(entry, path)  # bracketed by the observation and a check after
        else:
            check = await self._get(entry.id, CHECK_FIELDS, path)
            if check.get("trashed") or check.get("modifiedTime") != version:
                self._seen.pop(path, None)
                raise stale(f"{self.describe()}/{path}")
        return data[start:end]

    # --- writes: helpers --------------------------------------------------------------------------

    def _forget(self, path: str, named: dict[str, Entry] | None = None, *, tree: bool = False) -> None:
        """Drop cached lookups of `path` (and below it, for a folder), and of the siblings in `named`,
        whose generated names may have changed with it."""
        parent = path.rpartition("/")[0]
        paths = {path: tree, **{join(parent, n): e.kind == "dir" for n, e in (named or {}).items()}}
        for p, below in paths.items():
            self._dirs.pop(p, None)
            self._seen.pop(p, None)
            if below:
                prefix = p + "/"
                for cache in (self._dirs, self._seen):
                    for key in [k for k in list(cache.keys()) if k.startswith(prefix)]:
                        cache.pop(key, None)

    @staticmethod
    def _read_only(entry: Entry, what: str) -> None:
        """EPERM for a Google Doc & co. itself (a shortcut to one is the caller's to judge)."""
        if entry.kind == "doc":
            raise SiloError(READ_ONLY, f"{what}: a Google Docs Editors file (shown as its export) is read-only")

    @staticmethod
    def _drive_name(entry: Entry, name: str, what: str) -> str:
        """The Drive name for `entry` shown as POSIX `name`: a Doc keeps its export extension, which
        is not part of its Drive name (EPERM if `name` drops or changes it)."""
        if entry.kind == "doc":
            ext = f".{entry.export_ext}"
            if not name.endswith(ext) or name == ext:
                raise SiloError(READ_ONLY, f"{what}: a Google Doc keeps its extension {ext}")
            name = name[: -len(ext)]
        return raw_name(name)

    async def _trash(self, item_id: str, path: str) -> None:
        await self._call(lambda s: s.files().update(fileId=item_id, body={"trashed": True}, fields="id",
                                                     supportsAllDrives=True), path)

    async def _has_children(self, folder_id: str, path: str) -> bool:
        """Whether a folder holds any untrashed item, shown or not (a Form, a name too long...)."""
        kwargs = self._list_kwargs(f"{quote(folder_id)} in parents and trashed = false", "files(id)", 1)
        page = await self._call(lambda s: s.files().list(**kwargs), path)
        return bool(page.get("files"))

    async def _claim(self, parent: Entry, path: str, ours: Entry, lost: int) -> None:
        """After a create: `path` must now name `ours`. Drive lets two clients create one name at once;
        the older item keeps the name (the naming rule), so the younger, ours, is deleted for good (it
        held nothing but what this call wrote) and the call fails with `lost`."""
        owner = (await self._named_like(parent, path)).get(path.rpartition("/")[2])
        if owner is not None and owner.item_id == ours.item_id:
            return
        try:
            await self._call(lambda s: s.files().delete(fileId=ours.item_id, supportsAllDrives=True), path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
        what = f"{self.describe()}/{path}"
        if owner is None:  # the folder went to the trash meanwhile
            raise not_found(what)
        raise SiloError(lost, f"{what}: created by another client at the same time")

    async def _upload(self, start: Callable[[Any, googleapiclient.http.MediaFileUpload], Any], source: str,
                      size: int, mime: str, path: str,
                      before_commit: Callable[[], Awaitable[None]] | None = None) -> dict[str, Any]:
        """Send the file `source` as the content of the request `start(service, media)` builds: in one
        multipart request up to `chunk_size`, else resumably, one chunk per worker hop, each retried on
        its own (a retry asks the session what it kept and goes on from there). `before_commit` runs
        just before the request that commits (the only one, or the last chunk)."""
        if size <= self.o.chunk_size:
            if before_commit is not None:
                await before_commit()

            def whole(s: Any) -> Any:
                media = googleapiclient.http.MediaFileUpload(source, mimetype=mime, resumable=False)
                try:
                    return start(s, media)  # reads the bytes now
                finally:
                    media.stream().close()

            return await self._call(whole, path)
        media: googleapiclient.http.MediaFileUpload | None = None
        request: googleapiclient.http.HttpRequest | None = None

        def step(s: Any) -> _Chunk:
            nonlocal media, request
            if request is None:
                media = googleapiclient.http.MediaFileUpload(source, mimetype=mime, chunksize=self.o.chunk_size,
                                                             resumable=True)
                request = start(s, media)
            return _Chunk(request, self._local.http)  # this worker's own http, whichever built the request

        try:
            while True:
                sent = request.resumable_progress if request is not None else 0
                if before_commit is not None and size - sent <= self.o.chunk_size:
                    await before_commit()
                    before_commit = None
                _, body = await self._call(step, path)
                if body is not None:
                    return body
        finally:
            if media is not None:
                media.stream().close()

    # --- the WritableBackend protocol -------------------------------------------------------------

    async def write_file(self, path: str, source: str, expected: str | None, mtime_ns: int | None = None) -> ObjectMeta:
        what = f"{self.describe()}/{path}"
        if not path:
            raise SiloError(errno.EISDIR, what)
        parent, named = await self._siblings(path)
        name = path.rpartition("/")[2]
        current = named.get(name)
        if current is not None:
            if current.kind == "dir":
                raise SiloError(errno.EISDIR, what)
            self._read_only(current, what)
        if (current.version if current is not None else None) != expected:
            raise stale(what)
        size = await self.run_sync(os.path.getsize, source)
        mime = mimetypes.guess_type(name)[0] or "application/octet-stream"
        body: dict[str, Any] = {"modifiedTime": rfc3339(mtime_ns)} if mtime_ns is not None else {}
        if current is None:
            body.update(name=raw_name(name), parents=[parent.id])
            resource = await self._upload(
                lambda s, media: s.files().create(body=body, media_body=media, fields=FILE_FIELDS,
                                                  supportsAllDrives=True), source, size, mime, path)
            entry = self._entry(resource, resource)
            assert entry is not None
            await self._claim(parent, path, entry, errno.ESTALE)
        else:
            file_id = current.id

            async def unchanged() -> None:
                """The precondition, again, just before the commit (Drive has none of its own)."""
                now = await self._get(file_id, WRITE_CHECK_FIELDS, path)
                renamed = current.item_id == current.id and now.get("name") != current.name
                if now.get("trashed") or renamed or current.observed(now).version != expected:
                    raise stale(what)

            try:
                resource = await self._upload(
                    lambda s, media: s.files().update(fileId=file_id, body=body, media_body=media,
                                                      fields=FILE_FIELDS, supportsAllDrives=True),
                    source, size, mime, path, before_commit=None if size <= self.o.chunk_size else unchanged)
            except OSError as exc:
                if exc.errno == errno.ENOENT:  # deleted since it was looked at
                    raise stale(what) from exc
                raise
            entry = current.observed(resource)
        self._forget(path, named)
        self._seen[path] = entry
        return await self._meta(path, entry)

    async def delete(self, path: str) -> None:
        what = f"{self.describe()}/{path}"
        if not path:
            raise SiloError(errno.EISDIR, what)
        _, named = await self._siblings(path)
        entry = named.get(path.rpartition("/")[2])
        if entry is None:
            raise not_found(what)
        if entry.kind == "dir":
            raise SiloError(errno.EISDIR, what)
        if entry.item_id == entry.id:  # a shortcut goes, whatever it points to
            self._read_only(entry, what)
        await self._trash(entry.item_id, path)
        self._forget(path, named)

    async def mkdir(self, path: str) -> None:
        what = f"{self.describe()}/{path}"
        if not path:
            raise SiloError(errno.EEXIST, what)
        parent, named = await self._siblings(path)
        name = path.rpartition("/")[2]
        if name in named:
            raise SiloError(errno.EEXIST, what)
        body = {"name": raw_name(name), "mimeType": FOLDER, "parents": [parent.id]}
        resource = await self._call(
            lambda s: s.files().create(body=body, fields=FILE_FIELDS, supportsAllDrives=True), path)
        entry = self._entry(resource, resource)
        assert entry is not None
        await self._claim(parent, path, entry, errno.EEXIST)
        self._forget(path, named)
        self._dirs[path] = entry

    async def rmdir(self, path: str) -> None:
        what = f"{self.describe()}/{path}"
        if not path:
            raise SiloError(errno.EBUSY, f"{what}: the root cannot be removed")
        _, named = await self._siblings(path)
        entry = named.get(path.rpartition("/")[2])
        if entry is None:
            raise not_found(what)
        if entry.kind != "dir":
            raise not_a_directory(what)
        if await self._has_children(entry.id, path):
            raise SiloError(errno.ENOTEMPTY, what)
        await self._trash(entry.item_id, path)
        self._forget(path, named, tree=True)

    async def rename(self, src: str, dst: str, *, replace: bool = True, limit: int = DEFAULT_RENAME_LIMIT) -> None:
        what = f"{self.describe()}/{src}"
        if not src or not dst:
            raise SiloError(errno.EBUSY, f"{self.describe()}: the root cannot be renamed")
        if dst.startswith(src + "/"):
            raise SiloError(errno.EINVAL, f"{what}: cannot move a folder into itself")
        src_parent, src_named = await self._siblings(src)
        entry = src_named.get(src.rpartition("/")[2])
        if entry is None:
            raise not_found(what)
        if src == dst:
            return
        dst_parent, dst_named = await self._siblings(dst)
        dst_name = dst.rpartition("/")[2]
        name = self._drive_name(entry, dst_name, what)
        target = dst_named.get(dst_name)
        if target is not None and target.item_id != entry.item_id:
            there = f"{self.describe()}/{dst}"
            if not replace:
                raise SiloError(errno.EEXIST, there)
            if entry.kind == "dir" and target.kind != "dir":
                raise not_a_directory(there)
            if entry.kind != "dir" and target.kind == "dir":
                raise SiloError(errno.EISDIR, there)
            if target.item_id == target.id:
                self._read_only(target, there)
            if target.kind == "dir" and await self._has_children(target.id, dst):
                raise SiloError(errno.ENOTEMPTY, there)
            await self._trash(target.item_id, dst)
        kwargs: dict[str, Any] = {"fileId": entry.item_id, "body": {"name": name}, "fields": "id",
                                  "supportsAllDrives": True}
        if dst_parent.id != src_parent.id:
            kwargs.update(addParents=dst_parent.id, removeParents=src_parent.id)
        try:
            await self._call(lambda s: s.files().update(**kwargs), src)
        finally:
            self._forget(src, src_named, tree=entry.kind == "dir")
            self._forget(dst, dst_named, tree=True)

    async def set_mtime(self, path: str, mtime_ns: int) -> ObjectMeta:
        what = f"{self.describe()}/{path}"
        entry = await self._resolve(path)
        self._read_only(entry, what)
        resource = await self._call(
            lambda s: s.files().update(fileId=entry.id, body={"modifiedTime": rfc3339(mtime_ns)},
                                       fields=FILE_FIELDS, supportsAllDrives=True), path)
        entry = entry.observed(resource)
        if path:
            if entry.kind == "dir":
                self._dirs[path] = entry
            else:
                self._seen[path] = entry
        return await self._meta(path, entry)

    async def aclose(self) -> None:
        with self._https_lock:
            https, self._https = self._https, []
        for http in https:
            for conn in list(http.connections.values()):
                try:
                    conn.close()
                except OSError:
                    pass
