"""S3 (and S3-compatible servers) on boto3.

Credentials and endpoint come from boto3's standard chain and environment (AWS_PROFILE,
AWS_ENDPOINT_URL_S3, AWS_REGION, instance roles, SSO...) unless the mount entry names them, so a
user's existing AWS set-up just works.

Directories are key prefixes: `list_dir` is a delimiter listing, paged; marker objects (`dir/`) make
empty directories visible. A key that is also a prefix (`x` and `x/y`) is a directory; the object
`x` is not shown. Version = ETag, and every ranged GET carries `If-Match: <etag>`, so bytes of two
versions are never mixed (a changed object answers 412 -> ESTALE). Block GETs go through libcurl
(vfs/mounts/s3_curl.py); boto3 does everything else.
"""

from __future__ import annotations

import dataclasses
import datetime
import email.utils
import errno
from typing import Any, Callable

import boto3
import botocore.config
import botocore.exceptions
import botocore.handlers
import botocore.httpsession
from botocore import UNSIGNED

from vfs.errors import SiloError, silo_error
from vfs.mounts.base import Backend, BaseOptions, ObjectMeta, join
from vfs.mounts.flat import Level, stat_prefix_or_object
from vfs.mounts.s3_curl import CurlGetter


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
    max_attempts: int = 5  # boto3 "standard" retry mode: throttling, 5xx and connection errors
    connect_timeout: float = 10.0
    read_timeout: float = 60.0


def mtime_ns(value: str | datetime.datetime) -> int:
    """Nanoseconds since the epoch of an S3 timestamp: ISO 8601 in listings, RFC 1123 in headers."""
    if isinstance(value, str):
        try:
            value = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            value = email.utils.parsedate_to_datetime(value)
    return int(value.timestamp() * 1e9)


def translate(exc: Exception, what: str) -> OSError:
    """Turn a boto3/botocore exception into an OSError with an errno (the S3 edge)."""
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return silo_error(err.get("Code"), status, what)
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


class S3Backend(Backend):
    scheme = "s3"
    Options = S3Options

    def __init__(self, options: S3Options) -> None:
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
            retries={"mode": "standard", "max_attempts": options.max_attempts},
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
        # only CopyObject/CompleteMultipartUpload do; none of our calls can (1.9 of ~11 ms a page).
        self.client.meta.events.unregister("before-parse.s3.*", botocore.handlers._handle_200_error)
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

    async def _call(self, op: Callable[..., dict], what: str, read_body: bool = False, **kwargs: Any) -> dict:
        def call() -> dict:
            resp = op(Bucket=self.o.bucket, **kwargs)
            if read_body:  # the GET and its body in one trip to a worker thread (~40 us each)
                with resp["Body"] as body:
                    resp["Body"] = body.read()
            return resp

        try:
            resp = await self.run_sync(call)
        except Exception as exc:  # translated once, here
            if isinstance(exc, botocore.exceptions.ClientError):
                self.stats.retries += exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
            raise translate(exc, f"{self.describe()}/{what}" if what else self.describe()) from exc
        self.stats.retries += resp.get("ResponseMetadata", {}).get("RetryAttempts", 0)
        return resp

    def _meta(self, path: str, obj: dict) -> ObjectMeta:
        return ObjectMeta(
            path,
            False,
            int(obj.get("Size", obj.get("ContentLength", 0))),
            mtime_ns(obj["LastModified"]) if "LastModified" in obj else None,
            obj.get("ETag", ""),
        )

    async def _is_prefix(self, path: str) -> bool:
        page = await self._call(self.client.list_objects_v2, path, Prefix=self._key(path) + "/", MaxKeys=1)
        return page.get("KeyCount", 0) > 0

    async def _head(self, path: str) -> ObjectMeta | None:
        try:
            return self._meta(path, await self._call(self.client.head_object, path, Key=self._key(path)))
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise

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
            data, retries = await self.run_sync(self.curl.get, key, start, end, version, f"{self.describe()}/{path}")
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
