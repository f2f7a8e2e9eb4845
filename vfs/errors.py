"""The one errno table of vfs.

Backends turn every SDK error into a `SiloError` (an OSError carrying an errno) at their edge, using
`errno_for` below; nothing downstream ever looks at an SDK exception or at message text. The FUSE
adapter turns any exception into an errno with `errno_of`, in one place.

The table is keyed by the error codes the silos themselves send (S3 `Code`, GCS/Drive `reason`) and
falls back on the HTTP status, so S3, GCS and Drive share one mapping.
"""

from __future__ import annotations

import errno
import os


class SiloError(OSError):
    """An error reported by a silo (or on the way to it), carrying the errno a reader should see."""

    def __init__(self, err: int, what: str, *, retryable: bool = False) -> None:
        super().__init__(err, f"{os.strerror(err)}: {what}")
        self.retryable = retryable


# Error codes as the silos spell them (S3 <Code>, GCS and Drive error "reason").
ERRNO_BY_CODE: dict[str, int] = {
    # not there
    "NoSuchKey": errno.ENOENT,
    "NoSuchBucket": errno.ENOENT,
    "NotFound": errno.ENOENT,
    "notFound": errno.ENOENT,
    # refused
    "AccessDenied": errno.EACCES,
    "AllAccessDisabled": errno.EACCES,
    "InvalidAccessKeyId": errno.EACCES,
    "SignatureDoesNotMatch": errno.EACCES,
    "ExpiredToken": errno.EACCES,
    "InvalidToken": errno.EACCES,
    "TokenRefreshRequired": errno.EACCES,
    "forbidden": errno.EACCES,
    "insufficientPermissions": errno.EACCES,
    "authError": errno.EACCES,
    "cannotDownloadAbusiveFile": errno.EACCES,
    # changed behind our back: a handle's version is gone
    "PreconditionFailed": errno.ESTALE,
    "conditionNotMet": errno.ESTALE,
    # throttled (retried by the backend first; what is left reaches the reader as EAGAIN)
    "SlowDown": errno.EAGAIN,
    "Throttling": errno.EAGAIN,
    "ThrottlingException": errno.EAGAIN,
    "RequestLimitExceeded": errno.EAGAIN,
    "TooManyRequests": errno.EAGAIN,
    "rateLimitExceeded": errno.EAGAIN,
    "userRateLimitExceeded": errno.EAGAIN,
    "RequestTimeout": errno.ETIMEDOUT,
    # asked for something the silo cannot give
    "InvalidRange": errno.EINVAL,
    "InvalidObjectState": errno.EIO,  # e.g. an object archived to Glacier
    "exportSizeLimitExceeded": errno.EFBIG,
    "fileNotDownloadable": errno.EACCES,
}

ERRNO_BY_STATUS: dict[int, int] = {
    400: errno.EINVAL,
    401: errno.EACCES,
    403: errno.EACCES,
    404: errno.ENOENT,
    408: errno.ETIMEDOUT,
    409: errno.EEXIST,
    412: errno.ESTALE,
    416: errno.EINVAL,
    429: errno.EAGAIN,
    500: errno.EIO,
    502: errno.EAGAIN,
    503: errno.EAGAIN,
    504: errno.ETIMEDOUT,
}

RETRYABLE_ERRNOS = frozenset({errno.EAGAIN, errno.ETIMEDOUT})


def errno_for(code: str | None, status: int | None) -> int:
    """The errno for a silo's error code and/or HTTP status; EIO when neither is known."""
    if code and code in ERRNO_BY_CODE:
        return ERRNO_BY_CODE[code]
    if status is not None:
        if status in ERRNO_BY_STATUS:
            return ERRNO_BY_STATUS[status]
        if status >= 500:
            return errno.EIO
    return errno.EIO


def silo_error(code: str | None, status: int | None, what: str) -> SiloError:
    """A SiloError for a silo's (code, status) answer about `what` (a path or URL)."""
    err = errno_for(code, status)
    detail = " ".join(str(x) for x in (status, code) if x)
    return SiloError(err, f"{what} ({detail})" if detail else what, retryable=err in RETRYABLE_ERRNOS)


# What read() answers instead: a program takes EAGAIN from a regular file for "no data yet" (Python's
# read() returns the bytes so far, or None, with no error: a throttled silo would cut files short).
READ_ERRNOS = {errno.EAGAIN: errno.EIO}


def errno_of(exc: BaseException, op: str = "") -> int:
    """The errno a reader gets for any exception raised below the FUSE adapter (in FUSE operation `op`)."""
    if isinstance(exc, OSError) and exc.errno:
        return READ_ERRNOS.get(exc.errno, exc.errno) if op == "read" else exc.errno
    if isinstance(exc, NotImplementedError):
        return errno.ENOSYS
    return errno.EIO
