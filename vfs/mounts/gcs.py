"""Google Cloud Storage on google-cloud-storage (the JSON API client).

Credentials: a service-account JSON key (`credentials_file`), no credentials at all (`anonymous`,
public buckets and emulators), or else Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS,
`gcloud auth application-default login`, the metadata server), so a user's existing set-up just
works. `endpoint` points the client at another server (an emulator, a private endpoint); the client
also honours STORAGE_EMULATOR_HOST by itself (and then sends no credentials).

Directories are name prefixes: `list_dir` is a delimiter listing (objects.list with prefix and
delimiter '/'), paged by the client's page iterator; marker objects (`dir/`) make empty directories
visible. A name that is also a prefix (`x` and `x/y`) is a directory; the object `x` is not shown.
Folders of hierarchical-namespace buckets that hold no object are not shown (only objects and their
prefixes are).

Version = the object's generation (decimal string). A generation is never reused and a replaced
object never gets an older one back, which makes the read check below sound:
- every ranged read carries `ifGenerationMatch=<version>`; GCS answers 412 conditionNotMet when the
  live object is another generation (-> ESTALE), atomically with the read;
- and the generation that served the bytes (the `x-goog-generation` response header, which GCS sends
  on every media download) must equal `version`, else ESTALE. gcp-storage-emulator ignores
  generation preconditions and the `generation` parameter and sends no such header: when the header
  is missing the backend asks for the live generation after the read. Since generations only grow,
  "live generation was `version` when the file was opened and still is after the read" means the
  bytes were of `version`. Against real GCS the header is always there, so this costs nothing.
Reading by explicit generation (`?generation=`) was not chosen: with object versioning it would keep
serving a replaced version instead of reporting it stale, and a non-versioned bucket answers 404,
which cannot be told apart from a deleted object.

Reads ask for the stored bytes (`raw_download`): an object uploaded with Content-Encoding gzip would
otherwise be decompressed on the way, and its bytes would no longer match its size or offsets.

Writes (WritableBackend). Every change carries a generation precondition, so a concurrent writer
elsewhere is never silently overwritten and the client may retry every request (a retry cannot
apply a change twice; one after a lost answer reports ESTALE):
- `write_file` uploads from the staged file with `ifGenerationMatch=0` (create) or `=<expected>`
  (replace); 412 conditionNotMet -> ESTALE. Files up to 8 MiB (the client's own threshold) go up in
  one multipart request; larger ones as a resumable upload in `chunk_size` requests (a multiple of
  256 KiB, default 8 MiB), so at most max(8 MiB, chunk_size) of a file is ever in memory.
- the modification time is custom metadata `vfs-mtime` (nanoseconds, a decimal string), returned by
  `stat` and by listings (LIST_FIELDS asks for `metadata`); objects without it show `updated`.
  Not `customTime`: GCS refuses to set it earlier than it was (touch -d, cp -p, tar) and keeps
  only microseconds. `set_mtime` patches the metadata with `ifGenerationMatch` (the bytes vfs saw):
  a patch changes the metageneration, not the generation, so the version (and cached pages) stay.
- `delete` and `rmdir` delete with `ifGenerationMatch` of what they found; `mkdir` writes the marker
  `dir/` with `ifGenerationMatch=0`.
- `rename` of a file is a rewrite (objects.rewrite: unlike copyTo it completes for any size or
  storage class, in as many calls as GCS asks) with `ifSourceGenerationMatch` of the source seen and
  `ifGenerationMatch` of the destination seen (0: none; replace=False allows only none), then a
  delete of the source with `ifGenerationMatch` of what was copied. A directory moves key by key
  (vfs/mounts/flat.py `move_dir`), each key under the same preconditions, the generations taken
  from the listing of its keys.

Retries: transient failures (429, 408, 5xx, connection resets, timeouts) are retried by the client
itself (`google.cloud.storage.retry.DEFAULT_RETRY`, exponential back-off 1 s..60 s) for at most
`retry_timeout` seconds per call; reads and listings are idempotent so retrying them is safe. What
is left is translated once, here, into a SiloError (EAGAIN/ETIMEDOUT/EHOSTDOWN...).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import logging
import mimetypes
import threading
from typing import Any, Callable, Iterator, TypeVar

import google.api_core.exceptions
import google.auth.exceptions
import requests
import requests.adapters
from google.api_core.page_iterator import Page
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage.exceptions import DataCorruption
from google.cloud.storage.retry import DEFAULT_RETRY
from google.oauth2 import service_account

from vfs.errors import SiloError, silo_error
from vfs.mounts.base import (DEFAULT_RENAME_LIMIT, BaseOptions, ObjectMeta, WritableBackend, join, not_a_directory,
                             not_found, stale)
from vfs.mounts.flat import Level, move_dir, stat_prefix_or_object

log = logging.getLogger(__name__)

T = TypeVar("T")

# The backend writes, so a key file is asked for read and write (not for changing ACLs or IAM).
READ_WRITE_SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"
# Only what ObjectMeta needs: a listing page of 1,000 objects shrinks about tenfold.
LIST_FIELDS = "items(name,size,updated,generation,metadata),prefixes,nextPageToken"
# Only names and generations, for the keys below a directory being renamed or removed.
KEY_FIELDS = "items(name,generation),nextPageToken"
MTIME_KEY = "vfs-mtime"
MIN_CHUNK = 256 * 1024  # resumable uploads go in multiples of this
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


@dataclasses.dataclass(frozen=True)
class GCSOptions(BaseOptions):
    bucket: str
    prefix: str = ""
    project: str | None = None
    """Project for the client (not needed to read a bucket); ADC's project is not looked up."""
    user_project: str | None = None
    """Project billed for requester-pays buckets."""
    credentials_file: str | None = None
    """A service-account JSON key; without it (and without `anonymous`), Application Default Credentials."""
    endpoint: str | None = None
    """API endpoint, e.g. `http://127.0.0.1:9023` for an emulator; STORAGE_EMULATOR_HOST also works."""
    anonymous: bool = False
    page_size: int = 1000  # objects.list maxResults' maximum
    connect_timeout: float = 10.0  # as S3Options: long enough for a cold TLS handshake across a continent
    read_timeout: float = 60.0  # google-cloud-storage's own default per-request timeout
    retry_timeout: float = 120.0  # google.api_core's default total deadline for DEFAULT_RETRY
    chunk_size: int = 8 * 1024 * 1024
    """Bytes per request of a resumable upload (files over 8 MiB); a multiple of 256 KiB."""

    def __post_init__(self) -> None:
        """ValueError `key: problem` for options no GCS client could use."""
        if not self.bucket:
            raise ValueError("bucket: required")
        if self.chunk_size <= 0 or self.chunk_size % MIN_CHUNK:
            raise ValueError(f"chunk_size: must be a positive multiple of 256KiB, got {self.chunk_size}")


def _reason(exc: google.api_core.exceptions.GoogleAPICallError) -> str | None:
    """The GCS error reason (`notFound`, `conditionNotMet`...) of an API error, if it carries one."""
    for err in exc.errors or ():
        if isinstance(err, dict) and err.get("reason"):
            return str(err["reason"])
    return exc.reason


def translate(exc: BaseException, what: str) -> OSError:
    """Turn a google-cloud-storage / google-auth / requests exception into an OSError (the GCS edge)."""
    if isinstance(exc, google.api_core.exceptions.RetryError):
        # The client's retry deadline passed: report the last failure it retried.
        if isinstance(exc.cause, Exception):
            return translate(exc.cause, what)
        return SiloError(errno.ETIMEDOUT, f"{what}: {exc}", retryable=True)
    if isinstance(exc, google.api_core.exceptions.GoogleAPICallError):
        status = exc.code if isinstance(exc.code, int) else None
        return silo_error(_reason(exc), status, what)
    if isinstance(exc, (google.auth.exceptions.DefaultCredentialsError, google.auth.exceptions.RefreshError)):
        return SiloError(errno.EACCES, f"{what}: no usable Google credentials ({exc})")
    if isinstance(exc, google.auth.exceptions.TransportError):  # e.g. the token endpoint unreachable
        return SiloError(errno.EHOSTDOWN, f"{what}: {exc}", retryable=True)
    if isinstance(exc, requests.exceptions.Timeout):
        return SiloError(errno.ETIMEDOUT, f"{what}: {exc}", retryable=True)
    if isinstance(exc, requests.exceptions.ConnectionError):
        return SiloError(errno.EHOSTDOWN, f"{what}: {exc}", retryable=True)
    if isinstance(exc, requests.exceptions.RequestException):
        return SiloError(errno.EIO, f"{what}: {exc}", retryable=True)
    if isinstance(exc, DataCorruption):
        return SiloError(errno.EIO, f"{what}: {exc}")
    if isinstance(exc, OSError):
        return exc
    return SiloError(errno.EIO, f"{what}: {type(exc).__name__}: {exc}")


def mtime_ns(updated: datetime.datetime | None) -> int | None:
    """Nanoseconds since the epoch, exactly (no float on the way)."""
    if updated is None:
        return None
    return (updated - EPOCH) // datetime.timedelta(microseconds=1) * 1000


def stored_mtime(blob: storage.Blob) -> int | None:
    """The mtime vfs stored with the object (`vfs-mtime`), else its `updated` time."""
    value = (blob.metadata or {}).get(MTIME_KEY)
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return mtime_ns(blob.updated)


def generation(version: str, what: str) -> int:
    """The generation a version names; ESTALE for anything else (no object has that version)."""
    if version.isascii() and version.isdigit():
        return int(version)
    raise stale(what)


class GCSBackend(WritableBackend):
    scheme = "gcs"
    Options = GCSOptions

    def __init__(self, options: GCSOptions) -> None:
        super().__init__(options)
        self.o = options
        self.prefix = options.prefix.strip("/")
        self.retry = DEFAULT_RETRY.with_timeout(options.retry_timeout)
        self.timeout = (options.connect_timeout, options.read_timeout)
        # The client is made on first use, in a worker thread: finding Application Default
        # Credentials may read files or probe the metadata server.
        self._client: storage.Client | None = None
        self._bucket: storage.Bucket | None = None
        self._client_lock = threading.Lock()

    @classmethod
    def options_from_url(cls, url: str) -> dict[str, Any]:
        for scheme in ("gs://", "gcs://"):
            if url.startswith(scheme):
                bucket, _, prefix = url.removeprefix(scheme).partition("/")
                return {"bucket": bucket, "prefix": prefix}
        raise ValueError(f"not a gs:// URL: {url}")

    def describe(self) -> str:
        return f"gs://{self.o.bucket}/{self.prefix}".rstrip("/")

    def _key(self, path: str) -> str:
        return join(self.prefix, path) if path else self.prefix

    def _path(self, key: str) -> str:
        return key[len(self.prefix) + 1:] if self.prefix else key

    def _what(self, path: str) -> str:
        return f"{self.describe()}/{path}"

    # -- the client (worker threads only) -------------------------------------------------------

    def _make_client(self) -> storage.Client:
        o = self.o
        credentials: Any = None  # None: the client finds ADC itself (or goes anonymous for STORAGE_EMULATOR_HOST)
        if o.anonymous:
            credentials = AnonymousCredentials()
        elif o.credentials_file:
            try:
                credentials = service_account.Credentials.from_service_account_file(
                    o.credentials_file, scopes=[READ_WRITE_SCOPE]
                )
            except (OSError, ValueError) as exc:
                raise SiloError(errno.EACCES, f"credentials_file {o.credentials_file}: {exc}") from exc
        client_options = {"api_endpoint": o.endpoint} if o.endpoint else None
        # project=None (not omitted) keeps the client from looking a default project up.
        client = storage.Client(project=o.project, credentials=credentials, client_options=client_options)
        # google-cloud-storage >= 3.10 fetches bucket metadata (one extra GET, in a daemon thread
        # outside our limiter) only to label OpenTelemetry spans, which vfs does not emit. Every use
        # of the attribute in the client is guarded by its truthiness, so None turns it off.
        if getattr(client, "_bucket_metadata_cache", None) is not None:
            client._bucket_metadata_cache = None
        # requests keeps 10 connections per host by default; every worker thread gets its own.
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=o.concurrency)
        client._http.mount("https://", adapter)
        client._http.mount("http://", adapter)
        return client

    def _bucket_handle(self) -> storage.Bucket:
        with self._client_lock:
            if self._bucket is None:
                self._client = self._make_client()
                self._bucket = self._client.bucket(self.o.bucket, user_project=self.o.user_project)
            return self._bucket

    async def _call(self, fn: Callable[..., T], what: str, *args: Any, **kwargs: Any) -> T:
        """Run one blocking client call in a worker thread; translate its errors, once."""
        try:
            return await self.run_sync(fn, *args, **kwargs)
        except Exception as exc:
            raise translate(exc, f"{self.describe()}/{what}" if what else self.describe()) from exc

    # -- blocking pieces, run by _call ----------------------------------------------------------

    def _get_blob(self, key: str) -> storage.Blob | None:
        return self._bucket_handle().get_blob(key, timeout=self.timeout, retry=self.retry)

    def _pages(self, prefix: str, page_size: int) -> Iterator[Page]:
        iterator = self._bucket_handle().list_blobs(
            prefix=prefix or None, delimiter="/", page_size=page_size, fields=LIST_FIELDS,
            timeout=self.timeout, retry=self.retry,
        )
        return iterator.pages

    def _download(self, key: str, start: int, end: int, version: str) -> tuple[bytes, str | None]:
        blob = self._bucket_handle().blob(key)
        precondition = int(version) if version.isascii() and version.isdigit() else None
        data = blob.download_as_bytes(
            start=start,
            end=end - 1,  # the client's end is inclusive
            raw_download=True,
            if_generation_match=precondition,
            # A ranged response carries the whole object's hash, which cannot check a part.
            checksum=None,
            timeout=self.timeout,
            retry=self.retry,
        )
        generation = blob.generation  # from x-goog-generation; None when the server sent none
        return data, None if generation is None else str(generation)

    def _upload(self, key: str, source: str, if_generation_match: int, mtime: int | None) -> storage.Blob:
        blob = self._bucket_handle().blob(key, chunk_size=self.o.chunk_size)  # used above 8 MiB only
        if mtime is not None:
            blob.metadata = {MTIME_KEY: str(mtime)}
        blob.upload_from_filename(
            source, content_type=mimetypes.guess_type(key)[0] or "application/octet-stream",
            if_generation_match=if_generation_match, timeout=self.timeout, retry=self.retry,
        )
        return blob  # its properties are the new object's, from the upload's answer

    def _put_marker(self, key: str) -> None:
        self._bucket_handle().blob(key).upload_from_string(
            b"", content_type="application/octet-stream", if_generation_match=0, timeout=self.timeout, retry=self.retry,
        )

    def _delete_blob(self, key: str, if_generation_match: int) -> None:
        self._bucket_handle().delete_blob(key, if_generation_match=if_generation_match, timeout=self.timeout,
                                          retry=self.retry)

    def _patch_mtime(self, key: str, if_generation_match: int, mtime: int) -> storage.Blob:
        blob = self._bucket_handle().blob(key)
        blob.metadata = {MTIME_KEY: str(mtime)}  # a patch of `metadata` sets this key, keeps the others
        blob.patch(if_generation_match=if_generation_match, timeout=self.timeout, retry=self.retry)
        return blob

    def _rewrite_step(self, src_key: str, dst_key: str, token: str | None, if_source_generation_match: int,
                      if_generation_match: int) -> tuple[str | None, int]:
        """One objects.rewrite call: the token to go on with (None when done) and then the new generation."""
        bucket = self._bucket_handle()
        dst = bucket.blob(dst_key)
        token, _, _ = dst.rewrite(
            bucket.blob(src_key), token=token, if_generation_match=if_generation_match,
            if_source_generation_match=if_source_generation_match, timeout=self.timeout, retry=self.retry,
        )
        return token, int(dst.generation or 0)

    def _keys(self, prefix: str, n: int) -> list[tuple[str, int]]:
        """Up to `n` keys starting with `prefix`, with their generations."""
        blobs = self._bucket_handle().list_blobs(
            prefix=prefix, max_results=n, fields=KEY_FIELDS, timeout=self.timeout, retry=self.retry,
        )
        return [(blob.name, int(blob.generation)) for blob in blobs]

    # -- the Backend protocol -------------------------------------------------------------------

    def _meta(self, path: str, blob: storage.Blob) -> ObjectMeta:
        return ObjectMeta(path, False, int(blob.size or 0), stored_mtime(blob), str(blob.generation or ""))

    async def _next_page(self, pages: Iterator[Page], what: str) -> Page | None:
        return await self._call(next, what, pages, None)

    async def _is_prefix(self, path: str) -> bool:
        pages = await self._call(self._pages, path, self._key(path) + "/", 1)
        # GCS may answer a page with nothing in it and a next-page token; go on until something shows.
        while (page := await self._next_page(pages, path)) is not None:
            if page.num_items or page.prefixes:
                return True
        return False

    async def _head(self, path: str) -> ObjectMeta | None:
        blob = await self._call(self._get_blob, path, self._key(path))
        return None if blob is None else self._meta(path, blob)

    async def _find(self, path: str) -> ObjectMeta:
        return await stat_prefix_or_object(path, self._what(path), self._is_prefix, self._head)

    async def _find_or_none(self, path: str) -> ObjectMeta | None:
        try:
            return await self._find(path)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise

    async def stat(self, path: str) -> ObjectMeta:
        return await self._find(path)

    async def list_dir(self, path: str) -> list[ObjectMeta]:
        level = Level(path, self._key(path) + "/" if self._key(path) else "")
        pages = await self._call(self._pages, path, level.prefix, self.o.page_size)
        # One page per worker-thread call: the limiter stays fair and a cancel lands between pages.
        while (page := await self._next_page(pages, path)) is not None:
            for p in page.prefixes:
                level.add_prefix(p)
            for blob in page:
                level.add_object(blob.name, lambda p, blob=blob: self._meta(p, blob))
        return await level.finish(f"{self.describe()}/{path}", self._head)

    async def read_range(self, path: str, start: int, end: int, version: str) -> bytes:
        if end <= start:
            return b""
        try:
            data, served = await self._call(self._download, path, self._key(path), start, end, version)
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # 416: start is at or past the end of the object
                return b""
            raise
        if served is None:
            # No x-goog-generation header (gcp-storage-emulator): check the live generation now.
            live = await self._head(path)
            served = None if live is None else live.version
        if served != version:
            raise stale(f"{self.describe()}/{path}")
        return data

    async def aclose(self) -> None:
        client, self._client, self._bucket = self._client, None, None
        if client is not None:
            await self.run_sync(client.close)

    # -- the WritableBackend protocol -----------------------------------------------------------

    async def write_file(self, path: str, source: str, expected: str | None, mtime_ns: int | None = None) -> ObjectMeta:
        match = 0 if expected is None else generation(expected, self._what(path))
        blob = await self._call(self._upload, path, self._key(path), source, match, mtime_ns)
        return self._meta(path, blob)

    async def delete(self, path: str) -> None:
        meta = await self._find(path)
        if meta.is_dir:
            raise SiloError(errno.EISDIR, self._what(path))
        await self._call(self._delete_blob, path, self._key(path), generation(meta.version, self._what(path)))

    async def mkdir(self, path: str) -> None:
        if await self._find_or_none(path) is not None:
            raise SiloError(errno.EEXIST, self._what(path))
        try:
            await self._call(self._put_marker, path, self._key(path) + "/")
        except OSError as exc:
            if exc.errno == errno.ESTALE:  # the marker appeared since: made by someone else
                raise SiloError(errno.EEXIST, self._what(path)) from exc
            raise

    async def rmdir(self, path: str) -> None:
        if path == "":
            raise SiloError(errno.EBUSY, f"{self.describe()}: the root cannot be removed")
        marker = path + "/"
        keys = await self._list_keys(marker, 2, {})
        if not keys:
            if await self._head(path) is not None:
                raise not_a_directory(self._what(path))
            raise not_found(self._what(path))
        if any(k != marker for k, _ in keys):
            raise SiloError(errno.ENOTEMPTY, self._what(path))
        await self._call(self._delete_blob, path, self._key(marker), keys[0][1])

    async def rename(self, src: str, dst: str, *, replace: bool = True, limit: int = DEFAULT_RENAME_LIMIT) -> None:
        meta = await self._find_or_none(src)
        if meta is None:
            raise not_found(self._what(src))
        if src == dst:
            return
        target = await self._find_or_none(dst)
        if meta.is_dir:
            await self._move_dir(src, dst, target, replace, limit)
            return
        if target is not None:
            if target.is_dir:
                raise SiloError(errno.EISDIR, self._what(dst))
            if not replace:
                raise SiloError(errno.EEXIST, self._what(dst))
        seen = generation(meta.version, self._what(src))
        copied = await self._copy(src, dst, seen, 0 if target is None else generation(target.version, self._what(dst)))
        try:
            await self._call(self._delete_blob, src, self._key(src), seen)
        except OSError as exc:
            if exc.errno == errno.ENOENT:  # deleted by someone else since the copy: the move is whole
                return
            if exc.errno == errno.ESTALE and target is None:  # rewritten since the copy: take the copy back
                with contextlib.suppress(OSError):
                    await self._call(self._delete_blob, dst, self._key(dst), copied)
            raise

    async def set_mtime(self, path: str, mtime_ns: int) -> ObjectMeta:
        meta = await self._find(path)
        if meta.is_dir:
            return meta  # a prefix has no time of its own to set
        seen = generation(meta.version, self._what(path))
        blob = await self._call(self._patch_mtime, path, self._key(path), seen, mtime_ns)
        return self._meta(path, blob)

    # -- renaming, key by key -------------------------------------------------------------------

    async def _list_keys(self, prefix: str, n: int, generations: dict[str, int]) -> list[tuple[str, int]]:
        """Up to `n` paths below `prefix` (a path ending in '/'), with their generations, which go into
        `generations` too."""
        found = [(self._path(k), g) for k, g in await self._call(self._keys, prefix, self._key(prefix), n)]
        generations.update(found)
        return found

    async def _copy(self, src: str, dst: str, if_source_generation_match: int, if_generation_match: int) -> int:
        """Rewrite `src` onto `dst` under both preconditions; the new generation of `dst`."""
        token: str | None = None
        while True:  # one call per step: the limiter stays fair and a cancel lands between steps
            token, new = await self._call(self._rewrite_step, dst, self._key(src), self._key(dst), token,
                                          if_source_generation_match, if_generation_match)
            if token is None:
                return new

    async def _move_dir(self, src: str, dst: str, target: ObjectMeta | None, replace: bool, limit: int) -> None:
        """flat.move_dir, every key copied and deleted under the generation its listing showed (the
        destination's: none, or the marker of an empty directory replaced)."""
        generations: dict[str, int] = {}

        async def list_keys(prefix: str, n: int) -> list[str]:
            return [p for p, _ in await self._list_keys(prefix, n, generations)]

        async def copy(a: str, b: str) -> None:
            generations[b] = await self._copy(a, b, generations[a], generations.get(b, 0))

        async def delete(p: str) -> None:
            await self._call(self._delete_blob, p, self._key(p), generations[p])

        await move_dir(src, dst, target, replace=replace, limit=limit, what=self.describe(),
                       list_keys=list_keys, copy=copy, delete=delete, concurrency=self.o.concurrency)

    async def probe(self) -> None:
        """One real request, not retried (a listing of at most one key under the mount's prefix):
        whether the silo answers, for the offline breaker (vfs/mounts/health.py) and preflight."""
        def one() -> None:
            blobs = self._bucket_handle().list_blobs(prefix=self.prefix or None, max_results=1, fields=KEY_FIELDS,
                                                     timeout=self.timeout, retry=None)
            next(iter(blobs), None)

        await self._call(one, "")
