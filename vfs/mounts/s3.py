"""S3 (and S3-compatible servers) on boto3.

Credentials and endpoint come from boto3's standard chain and environment (AWS_PROFILE,
AWS_ENDPOINT_URL_S3, AWS_REGION, instance roles, SSO...) unless the mount entry names them, so a
user's existing AWS set-up just works.

Directories are key prefixes: `list_dir` is a delimiter listing, paged; marker objects (`dir/`) make
empty directories visible. A key that is also a prefix (`x` and `x/y`) is a directory; the object
`x` is not shown. Version = ETag, and every ranged GET carries `If-Match: <etag>`, so bytes of two
versions are never mixed (a changed object answers 412 -> ESTALE). Block GETs go through libcurl
(vfs/mounts/s3_curl.py); boto3 does everything else.

Writes carry their precondition to the server: PutObject with `If-None-Match: *` (create) or
`If-Match: <etag>` (replace) up to `part_size`; larger files go up as a multipart upload, parts of
`part_size` (grown so no file needs more than 10,000) sent `upload_concurrency` at a time, each read
from the source at its offset (memory: parts in flight), then CompleteMultipartUpload with the same
header; any failure aborts the upload. 412 -> ESTALE; 409 ConditionalRequestConflict (another
conditional write racing ours) is retried a few times. A commit whose answer was lost (the server did
it, the connection broke) meets its own object when retried (412, or NoSuchUpload for a completed
multipart upload): on those answers a HEAD tells ours apart, by the MD5 ETag of a single PUT or by a
token the multipart upload wrote in its user metadata (`vfs-upload`), and ours is success; so is a
directory marker holding the token of our `mkdir`. The token is the same for every try of one commit
of the same staged bytes, so a later try (or one after a restart) that finds the object an earlier
one completed takes it as done instead of starting over into a conflict.

Retries: botocore makes one attempt per call (its standard mode keeps a retry quota per client that
failed calls drain, after which it silently stops retrying); `_call` retries throttling, 5xx,
timeouts and broken connections itself, up to `max_attempts` tries with full-jitter backoff.

Servers that ignore If-Match on CompleteMultipartUpload (moto does) are covered by a HEAD just before
the complete; between the two a concurrent replacement can still be overwritten. The mtime lives in
user metadata `mtime` as rclone writes it (seconds with up to 9 decimals, so nanoseconds survive;
rclone reads ours and we read its): `stat` (HEAD) returns it, listings cannot (they carry
LastModified, the upload time).
`set_mtime` is a CopyObject of the object onto itself (MetadataDirective REPLACE, CopySourceIfMatch).
Directories: `mkdir` writes the marker `dir/` (If-None-Match), `rmdir` deletes it when nothing else is
below, a directory rename copies then deletes every key below it (vfs/mounts/flat.py `move_dir`,
EXDEV over `limit` keys). CopyObject stops at 5 GiB and UploadPartCopy is not used, so renaming or
touching an object larger than that fails with EFBIG.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import decimal
import email.utils
import errno
import hashlib
import os
import random
import secrets
import time
from typing import Any, Awaitable, Callable

import boto3
import botocore.config
import botocore.exceptions
import botocore.handlers
import botocore.httpsession
import trio
from botocore import UNSIGNED

from vfs.errors import SiloError, silo_error
from vfs.mounts.base import (DEFAULT_RENAME_LIMIT, BaseOptions, ObjectMeta, WritableBackend, join, not_a_directory,
                             not_found, stale)
from vfs.mounts.flat import Level, for_each, move_dir, stat_prefix_or_object
from vfs.mounts.s3_curl import RETRY_CODES, RETRY_STATUS, CurlGetter

MIB = 1 << 20
MIN_PART_SIZE = 5 * MIB  # S3's smallest part (all but the last)
MAX_PARTS = 10_000  # S3's most parts in one upload
MAX_COPY_SIZE = 5 << 30  # CopyObject's largest source
CONFLICT_ATTEMPTS = 4  # tries of a conditional commit that meets 409 ConditionalRequestConflict
RETRY_BASE = 0.05  # seconds: the longest wait before the first retry of a call; doubles per retry
RETRY_CAP = 2.0  # seconds: the longest wait between two tries of a call
# Answers to a retried commit that mean "maybe it was ours": the object is there, or the upload is done.
AMBIGUOUS = frozenset({"PreconditionFailed", "NoSuchUpload"})
UPLOAD_TOKEN = "vfs-upload"  # user metadata naming the multipart upload (or mkdir) that wrote the object
# Headers a metadata-replacing CopyObject would otherwise reset; HEAD returns each under the same name.
KEPT_ON_COPY = ("ContentType", "CacheControl", "ContentDisposition", "ContentEncoding", "ContentLanguage",
                "StorageClass", "ServerSideEncryption", "SSEKMSKeyId")


@dataclasses.dataclass(frozen=True)
class S3Options(BaseOptions):
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    anonymous: bool = False
    addressing_style: str = "auto"
    page_size: int = 1000  # ListObjectsV2's maximum
    max_attempts: int = 5  # tries of one call: throttling, 5xx, timeouts and connection errors are retried
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    part_size: int = 8 * MIB  # files up to this go up in one PUT; larger ones in parts this big (at least)
    upload_concurrency: int = 4  # parts of one file in flight at once


def mtime_ns(value: str | datetime.datetime) -> int:
    """Nanoseconds since the epoch of an S3 timestamp: ISO 8601 in listings, RFC 1123 in headers."""
    if isinstance(value, str):
        try:
            value = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            value = email.utils.parsedate_to_datetime(value)
    return int(value.timestamp() * 1e9)


def mtime_text(ns: int) -> str:
    """An mtime as rclone stores it in `mtime` metadata: seconds, '.' and up to 9 digits, exact."""
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)
    seconds, frac = divmod(ns, 10**9)
    return f"{sign}{seconds}" + (f".{frac:09d}".rstrip("0") if frac else "")


def mtime_from_text(text: str) -> int | None:
    """Nanoseconds of an `mtime` metadata value (rclone's form); None if it is not a number."""
    try:
        value = decimal.Decimal(text.strip())
    except decimal.InvalidOperation:
        return None
    return int(value.scaleb(9).to_integral_value()) if value.is_finite() else None


def md5_of(path: str) -> str:
    """The hex MD5 of a file's bytes."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def commit_token(source: str, stat: os.stat_result, meta: dict[str, str]) -> str:
    """A multipart upload's token: the same for every try of one commit of the same bytes (even
    after a restart), another once the source file changes."""
    ident = f"{source}\0{stat.st_ino}\0{stat.st_size}\0{stat.st_mtime_ns}\0{sorted(meta.items())}"
    return hashlib.sha256(ident.encode()).hexdigest()[:24]


def error_code(exc: BaseException) -> str | None:
    """The S3 error code behind an OSError that `_call` translated (None if there was none)."""
    cause = exc.__cause__
    if isinstance(cause, botocore.exceptions.ClientError):
        return cause.response.get("Error", {}).get("Code")
    return None


def translate(exc: Exception, what: str) -> OSError:
    """Turn a boto3/botocore exception into an OSError with an errno (the S3 edge); `retryable`
    where another try may succeed."""
    if isinstance(exc, botocore.exceptions.ClientError):
        code = exc.response.get("Error", {}).get("Code")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        error = silo_error(code, status, what)
        error.retryable = error.retryable or status in RETRY_STATUS or code in RETRY_CODES
        return error
    if isinstance(exc, (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError)):
        return SiloError(errno.EACCES, f"{what}: no usable AWS credentials ({exc})")
    if isinstance(exc, botocore.exceptions.ProfileNotFound):
        return SiloError(errno.EACCES, f"{what}: {exc}")
    if isinstance(exc, (botocore.exceptions.ConnectTimeoutError, botocore.exceptions.ReadTimeoutError)):
        return SiloError(errno.ETIMEDOUT, f"{what}: {exc}", retryable=True)
    if isinstance(exc, botocore.exceptions.EndpointConnectionError):
        return SiloError(errno.EHOSTDOWN, f"{what}: {exc}", retryable=True)
    if isinstance(exc, (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError)):
        return SiloError(errno.EIO, f"{what}: {exc}", retryable=True)
    if isinstance(exc, OSError):
        return exc
    return SiloError(errno.EIO, f"{what}: {type(exc).__name__}: {exc}")


class S3Backend(WritableBackend):
    scheme = "s3"
    Options = S3Options

    def __init__(self, options: S3Options) -> None:
        if options.part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size {options.part_size} is below S3's minimum of {MIN_PART_SIZE} (5 MiB)")
        if options.upload_concurrency < 1:
            raise ValueError("upload_concurrency must be at least 1")
        super().__init__(options)
        self.o = options
        self.prefix = options.prefix.strip("/")
        session = boto3.session.Session(
            profile_name=options.profile,
            aws_access_key_id=options.access_key_id,
            aws_secret_access_key=options.secret_access_key,
            region_name=options.region,
        )
        config = botocore.config.Config(
            # One attempt per call (botocore reads "max_attempts" here as retries): `_call` retries, with no quota.
            retries={"mode": "standard", "total_max_attempts": 1},
            max_pool_connections=options.concurrency,
            connect_timeout=options.connect_timeout,
            read_timeout=options.read_timeout,
            s3={"addressing_style": options.addressing_style},
            signature_version=UNSIGNED if options.anonymous else None,
        )
        # Timestamps stay strings: botocore's dateutil parsing is 3/4 of the CPU of a listing page
        # (39 -> 9 ms per 1,000 keys, measured here); `mtime_ns` parses them much faster.
        session._session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=str)
        self.client = session.client("s3", endpoint_url=options.endpoint_url, config=config)
        # botocore parses every XML body once more looking for an error sent with status 200, which
        # only CopyObject/CompleteMultipartUpload do (1.9 of ~11 ms a listing page): kept for those.
        self.client.meta.events.unregister("before-parse.s3.*", botocore.handlers._handle_200_error)
        for op in ("CopyObject", "CompleteMultipartUpload", "UploadPartCopy"):
            self.client.meta.events.register_first(f"before-parse.s3.{op}", botocore.handlers._handle_200_error)
        # Parts carry a CRC32 the complete repeats, as boto3's own transfers do, unless checksums are off.
        checksums = self.client.meta.config.request_checksum_calculation == "when_supported"
        self.checksum: dict[str, str] = {"ChecksumAlgorithm": "CRC32"} if checksums else {}
        # Block reads go through libcurl (vfs/mounts/s3_curl.py) to URLs that botocore itself makes
        # (endpoint, region, addressing style), presigned by an unsigned twin of the client.
        unsigned = session.client("s3", endpoint_url=options.endpoint_url,
                                  config=config.merge(botocore.config.Config(signature_version=UNSIGNED)))
        probe = unsigned.generate_presigned_url("get_object", Params={"Bucket": options.bucket, "Key": "k"})
        self.curl = CurlGetter(
            probe.partition("?")[0].removesuffix("k"), self.client.meta.region_name or "us-east-1",
            None if options.anonymous else session.get_credentials(),
            ca_file=session._session.get_config_variable("ca_bundle") or botocore.httpsession.get_cert_path(True),
            connect_timeout=options.connect_timeout, read_timeout=options.read_timeout,
            max_attempts=options.max_attempts,
        )

    @classmethod
    def options_from_url(cls, url: str) -> dict[str, Any]:
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        return {"bucket": bucket, "prefix": prefix}

    def describe(self) -> str:
        return f"s3://{self.o.bucket}/{self.prefix}".rstrip("/")

    def _key(self, path: str) -> str:
        return join(self.prefix, path) if path else self.prefix

    def _what(self, path: str) -> str:
        return f"{self.describe()}/{path}"

    async def _call(self, op: Callable[..., dict], what: str, read_body: bool = False, **kwargs: Any) -> dict:
        """`op` in a worker thread, tried up to `max_attempts` times while its error is retryable."""
        def call() -> dict:
            resp = op(Bucket=self.o.bucket, **kwargs)
            if read_body:  # the GET and its body in one trip to a worker thread (~40 us each)
                with resp["Body"] as body:
                    resp["Body"] = body.read()
            return resp

        attempts = max(1, self.o.max_attempts)
        for attempt in range(1, attempts + 1):
            try:
                return await self.run_sync(call)
            except Exception as exc:  # translated once, here
                error = translate(exc, f"{self.describe()}/{what}" if what else self.describe())
                if attempt == attempts or not getattr(error, "retryable", False):
                    raise error from exc
            self.stats.retries += 1
            await trio.sleep(random.uniform(0, min(RETRY_CAP, RETRY_BASE * 2**attempt)))  # full jitter
        raise AssertionError("unreachable")

    def _meta(self, path: str, obj: dict) -> ObjectMeta:
        """Metadata from a listing entry or a HEAD; HEAD's `mtime` user metadata wins over LastModified."""
        stored = obj.get("Metadata", {}).get("mtime")
        mtime = mtime_from_text(stored) if stored is not None else None
        if mtime is None and "LastModified" in obj:
            mtime = mtime_ns(obj["LastModified"])
        return ObjectMeta(path, False, int(obj.get("Size", obj.get("ContentLength", 0))), mtime, obj.get("ETag", ""))

    async def _is_prefix(self, path: str) -> bool:
        page = await self._call(self.client.list_objects_v2, path, Prefix=self._key(path) + "/", MaxKeys=1)
        return page.get("KeyCount", 0) > 0

    async def _head_raw(self, path: str) -> dict | None:
        try:
            return await self._call(self.client.head_object, path, Key=self._key(path))
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise

    async def _head(self, path: str) -> ObjectMeta | None:
        resp = await self._head_raw(path)
        return None if resp is None else self._meta(path, resp)

    async def stat(self, path: str) -> ObjectMeta:
        return await stat_prefix_or_object(path, f"{self.describe()}/{path}", self._is_prefix, self._head)

    async def list_dir(self, path: str) -> list[ObjectMeta]:
        level = Level(path, self._key(path) + "/" if self._key(path) else "")
        kwargs: dict[str, Any] = {"Prefix": level.prefix, "Delimiter": "/", "MaxKeys": self.o.page_size}
        while True:
            page = await self._call(self.client.list_objects_v2, path, **kwargs)
            for cp in page.get("CommonPrefixes", []):
                level.add_prefix(cp["Prefix"])
            for obj in page.get("Contents", []):
                level.add_object(obj["Key"], lambda p, obj=obj: self._meta(p, obj))
            if not page.get("IsTruncated"):
                break
            kwargs["ContinuationToken"] = page["NextContinuationToken"]
        return await level.finish(f"{self.describe()}/{path}", self._head)

    async def read_range(self, path: str, start: int, end: int, version: str) -> bytes:
        if end <= start:
            return b""
        key = self._key(path)
        if CurlGetter.serves(key):
            try:
                data, retries = await self.run_sync(self.curl.get, key, start, end, version, f"{self.describe()}/{path}")
            except OSError as exc:
                self.stats.retries += getattr(exc, "retries", 0)
                raise
            self.stats.retries += retries
            return data
        try:  # keys with "." or ".." segments
            resp = await self._call(self.client.get_object, path, read_body=True, Key=key,
                                    Range=f"bytes={start}-{end - 1}", IfMatch=version)
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # InvalidRange: start is at or past the end of the object
                return b""
            raise
        return resp["Body"]

    # --- writing -------------------------------------------------------------------------------------

    async def _lookup(self, path: str) -> ObjectMeta | None:
        """`stat` without counting a protocol call; None if nothing is there."""
        try:
            return await stat_prefix_or_object(path, self._what(path), self._is_prefix, self._head)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise

    async def _list_keys(self, prefix: str, n: int) -> list[str]:
        return [p for p, _ in await self._list_sized(prefix, n)]

    async def _list_sized(self, prefix: str, n: int) -> list[tuple[str, int]]:
        """Up to `n` (path, size) of the keys below `prefix` (a path ending in '/'), in key order."""
        cut = len(self.prefix) + 1 if self.prefix else 0
        kwargs: dict[str, Any] = {"Prefix": self._key(prefix.rstrip("/")) + "/"}
        out: list[tuple[str, int]] = []
        while len(out) < n:
            page = await self._call(self.client.list_objects_v2, prefix, MaxKeys=min(n - len(out), 1000), **kwargs)
            out += [(obj["Key"][cut:], int(obj.get("Size", 0))) for obj in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                break
            kwargs["ContinuationToken"] = page["NextContinuationToken"]
        return out[:n]

    async def _commit(self, op: Callable[..., dict], path: str, expected: str | None,
                      ours: Callable[[dict], Awaitable[bool]], **kwargs: Any) -> dict:
        """A conditional write: retried on 409 ConditionalRequestConflict; ESTALE when the version
        `expected` is gone (412, or 404 for a key deleted since), unless what is there now is `ours`
        (a HEAD's answer; a try whose answer was lost did the write)."""
        for attempt in range(CONFLICT_ATTEMPTS):
            try:
                return await self._call(op, path, **kwargs)
            except OSError as exc:
                code = error_code(exc)
                if code in AMBIGUOUS:
                    found = await self._head_raw(path)
                    if found is not None and await ours(found):
                        return found
                if code == "ConditionalRequestConflict":
                    if attempt + 1 < CONFLICT_ATTEMPTS:
                        self.stats.retries += 1
                        await trio.sleep(0.05 * 2**attempt)
                        continue
                    raise stale(self._what(path)) from exc
                if expected is not None and code == "NoSuchKey":
                    raise stale(self._what(path)) from exc
                raise
        raise AssertionError("unreachable")

    async def _check_version(self, path: str, expected: str | None) -> None:
        """ESTALE unless `path` holds version `expected` now (None: no object)."""
        found = await self._head(path)
        if (found.version if found else None) != expected:
            raise stale(self._what(path))

    def _part_size(self, size: int) -> int:
        """`part_size`, grown in whole MiB so `size` needs at most MAX_PARTS parts."""
        least = -(-size // MAX_PARTS)
        return max(self.o.part_size, -(-least // MIB) * MIB)

    async def write_file(self, path: str, source: str, expected: str | None, mtime_ns: int | None = None) -> ObjectMeta:
        if not path or (expected is None and await self._is_prefix(path)):
            raise SiloError(errno.EISDIR, self._what(path))
        stat = await self.run_sync(os.stat, source)
        size = stat.st_size
        mtime = time.time_ns() if mtime_ns is None else mtime_ns
        meta = {"mtime": mtime_text(mtime)}
        cond = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": expected}
        if size <= self.o.part_size:
            def put(**kwargs: Any) -> dict:
                with open(source, "rb") as f:
                    return self.client.put_object(Body=f.read(), **kwargs)

            async def same_bytes(found: dict) -> bool:  # a single PUT's ETag is the MD5 of its bytes
                return found.get("ETag", "").strip('"') == await self.run_sync(md5_of, source)

            resp = await self._commit(put, path, expected, same_bytes, Key=self._key(path), Metadata=meta, **cond)
        else:
            resp = await self._multipart(path, source, stat, expected, meta, cond)
        return ObjectMeta(path, False, size, mtime, resp["ETag"])

    async def _multipart(self, path: str, source: str, stat: os.stat_result, expected: str | None,
                         meta: dict[str, str], cond: dict[str, str]) -> dict:
        size = stat.st_size
        key, part = self._key(path), self._part_size(size)
        token = commit_token(source, stat, meta)

        async def same_upload(found: dict) -> bool:
            return found.get("Metadata", {}).get(UPLOAD_TOKEN) == token

        found = await self._head_raw(path)  # before sending gigabytes for nothing
        if found is not None and await same_upload(found):
            return found  # an earlier try of this very commit completed; its answer was lost
        if (found["ETag"] if found else None) != expected:
            raise stale(self._what(path))
        created = await self._call(self.client.create_multipart_upload, path, Key=key,
                                   Metadata={**meta, UPLOAD_TOKEN: token}, **self.checksum)
        upload = created["UploadId"]
        note = await self.run_sync(self.uploads.started, key, upload) if self.uploads is not None else None
        finished = False  # completed or aborted: the ledger forgets it
        try:
            parts: dict[int, dict] = {}
            fd = await self.run_sync(os.open, source, os.O_RDONLY)
            try:
                async def send(number: int) -> None:
                    offset = (number - 1) * part

                    def upload_part(**kwargs: Any) -> dict:  # read in the worker thread, part by part
                        body = os.pread(fd, min(part, size - offset), offset)
                        return self.client.upload_part(Body=body, **kwargs)

                    resp = await self._call(upload_part, path, Key=key, UploadId=upload, PartNumber=number,
                                            **self.checksum)
                    sums = {k: v for k, v in resp.items() if k.startswith("Checksum") and k != "ChecksumType"}
                    parts[number] = {"PartNumber": number, "ETag": resp["ETag"], **sums}

                await for_each(range(1, -(-size // part) + 1), send, self.o.upload_concurrency)
            finally:
                os.close(fd)
            if expected is not None:  # moto ignores If-Match on the complete; S3 honours it
                await self._check_version(path, expected)
            resp = await self._commit(self.client.complete_multipart_upload, path, expected, same_upload,
                                      Key=key, UploadId=upload,
                                      MultipartUpload={"Parts": [parts[n] for n in sorted(parts)]}, **cond)
            finished = True
            return resp
        except BaseException:
            with trio.CancelScope(shield=True), contextlib.suppress(OSError):
                await self.abort_upload(key, upload)
                finished = True
            raise
        finally:
            if finished and note is not None:
                with trio.CancelScope(shield=True):
                    await self.run_sync(self.uploads.finished, note)  # type: ignore[union-attr]

    async def abort_upload(self, key: str, upload: str) -> None:
        try:
            await self._call(self.client.abort_multipart_upload, "", Key=key, UploadId=upload)
        except OSError as exc:
            if error_code(exc) != "NoSuchUpload" and exc.errno != errno.ENOENT:
                raise

    async def _delete_key(self, path: str) -> None:
        await self._call(self.client.delete_object, path, Key=self._key(path))

    async def _copy(self, src: str, dst: str, size: int | None, *, version: str | None = None,
                    create: bool = False) -> None:
        """CopyObject `src` to `dst` (metadata, hence the mtime, comes along). `version`: only that
        version of `src`; `create`: only if nothing is at `dst` (EEXIST)."""
        if size is not None and size > MAX_COPY_SIZE:
            raise SiloError(errno.EFBIG, f"{self._what(src)}: CopyObject stops at 5 GiB")
        cond = {"CopySourceIfMatch": version} if version else {}
        if create:
            cond["IfNoneMatch"] = "*"
        try:
            await self._call(self.client.copy_object, dst, Key=self._key(dst),
                             CopySource={"Bucket": self.o.bucket, "Key": self._key(src)}, **cond)
        except OSError as exc:
            if exc.errno == errno.ESTALE and create and await self._head(dst) is not None:
                raise SiloError(errno.EEXIST, self._what(dst)) from exc
            raise

    async def delete(self, path: str) -> None:
        meta = await self._lookup(path)
        if meta is None:
            raise not_found(self._what(path))
        if meta.is_dir:
            raise SiloError(errno.EISDIR, self._what(path))
        await self._delete_key(path)

    async def mkdir(self, path: str) -> None:
        if await self._lookup(path) is not None:
            raise SiloError(errno.EEXIST, self._what(path))
        marker, token = self._key(path) + "/", secrets.token_hex(12)
        try:
            await self._call(self.client.put_object, path, Key=marker, Body=b"", IfNoneMatch="*",
                             Metadata={UPLOAD_TOKEN: token})
        except OSError as exc:
            if exc.errno != errno.ESTALE:
                raise
            # The marker appeared meanwhile: someone else's, or ours from a try whose answer was lost.
            with contextlib.suppress(OSError):
                found = await self._call(self.client.head_object, path, Key=marker)
                if found.get("Metadata", {}).get(UPLOAD_TOKEN) == token:
                    return
            raise SiloError(errno.EEXIST, self._what(path)) from exc

    async def rmdir(self, path: str) -> None:
        if not path:
            raise SiloError(errno.EBUSY, f"{self.describe()}: the root cannot be removed")
        keys = await self._list_keys(path + "/", 2)
        if not keys:
            if await self._head(path) is not None:
                raise not_a_directory(self._what(path))
            raise not_found(self._what(path))
        if any(k != path + "/" for k in keys):
            raise SiloError(errno.ENOTEMPTY, self._what(path))
        await self._delete_key(path + "/")

    async def rename(self, src: str, dst: str, *, replace: bool = True, limit: int = DEFAULT_RENAME_LIMIT) -> None:
        meta = await self._lookup(src)
        if meta is None:
            raise not_found(self._what(src))
        if src == dst:
            return
        target = await self._lookup(dst)
        if meta.is_dir:
            sizes: dict[str, int] = {}

            async def list_keys(prefix: str, n: int) -> list[str]:
                found = await self._list_sized(prefix, n)
                sizes.update(found)
                return [p for p, _ in found]

            await move_dir(src, dst, target, replace=replace, limit=limit, what=self.describe(), list_keys=list_keys,
                           copy=lambda a, b: self._copy(a, b, sizes.get(a)), delete=self._delete_key,
                           concurrency=self.o.concurrency)
            return
        if target is not None:
            if target.is_dir:
                raise SiloError(errno.EISDIR, self._what(dst))
            if not replace:  # checked here too: moto ignores If-None-Match on CopyObject
                raise SiloError(errno.EEXIST, self._what(dst))
        await self._copy(src, dst, meta.size, version=meta.version, create=not replace)
        await self._delete_key(src)

    async def set_mtime(self, path: str, mtime_ns: int) -> ObjectMeta:
        heads: dict[str, dict] = {}

        async def head(p: str) -> ObjectMeta | None:
            resp = await self._head_raw(p)
            if resp is None:
                return None
            heads[p] = resp
            return self._meta(p, resp)

        meta = await stat_prefix_or_object(path, self._what(path), self._is_prefix, head)
        if meta.is_dir:
            return meta  # a prefix has no time of its own to set
        if meta.size > MAX_COPY_SIZE:
            raise SiloError(errno.EFBIG, f"{self._what(path)}: CopyObject stops at 5 GiB")
        resp = heads[path]
        kept = {k: resp[k] for k in KEPT_ON_COPY if resp.get(k)}
        out = await self._call(self.client.copy_object, path, Key=self._key(path),
                               CopySource={"Bucket": self.o.bucket, "Key": self._key(path)},
                               CopySourceIfMatch=meta.version, MetadataDirective="REPLACE",
                               Metadata={**resp.get("Metadata", {}), "mtime": mtime_text(mtime_ns)}, **kept)
        return ObjectMeta(path, False, meta.size, mtime_ns, out["CopyObjectResult"]["ETag"])

    async def probe(self) -> None:
        """One real request, not retried (a listing of at most one key under the mount's prefix):
        whether the silo answers, for the offline breaker (vfs/mounts/health.py) and preflight."""
        try:
            await self.run_sync(self.client.list_objects_v2, Bucket=self.o.bucket, Prefix=self.prefix, MaxKeys=1)
        except Exception as exc:  # translated once, here
            raise translate(exc, self.describe()) from exc
