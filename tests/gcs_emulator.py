"""gcp-storage-emulator made to honour generation preconditions; run as a script with the emulator's
own arguments (`python tests/gcs_emulator.py start -H 127.0.0.1 --port N --in-memory`).

Real GCS checks `ifGenerationMatch`, `ifGenerationNotMatch`, `ifMetagenerationMatch` and
`ifMetagenerationNotMatch` (and their `ifSource...` forms on copies and rewrites) on every request
that changes an object, and answers 412 `conditionNotMet` when one does not hold; a generation of 0
means "no live object", so `ifGenerationMatch=0` creates only. The stock emulator ignores them all,
so a test of vfs's preconditions would pass against it whatever the backend sent. This module wraps
the emulator's object handlers with that check, then runs its server unchanged. The server answers
one request at a time (http.server.HTTPServer, not threaded), so a check and the change it guards
are one step, as on GCS.

Checked here, before the stock handler runs:
- uploads: media, multipart and resumable, when the session starts and again on every chunk (each
  chunk's URL is the session URL, which carries the query of the request that started it), so the
  chunk that finalizes the object is checked against the object live at that moment;
- `copyTo` and `rewriteTo`: the destination (`if...`) and the source (`ifSource...`);
- `compose` (the destination), deletes and metadata patches (a missing object stays a 404, as on GCS).
A finalized resumable upload also gets its generation when it lands, not when its session began,
so generations only grow, as on GCS. Not covered: the XML API, batch requests, and reads (the
backend's own check after a read covers the emulator's missing `x-goog-generation`; see
vfs/mounts/gcs.py).
"""

from __future__ import annotations

import functools
import sys
import time
from http import HTTPStatus
from typing import Any, Callable

from gcp_storage_emulator import server
from gcp_storage_emulator.__main__ import main
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

Handler = Callable[..., Any]
Target = Callable[[Any, Any], "tuple[str, str] | None"]

CONDITION_NOT_MET = "At least one of the pre-conditions you specified did not hold."


def _live(storage: Any, bucket: str, name: str) -> dict[str, Any] | None:
    try:
        return storage.get_file_obj(bucket, name)
    except NotFound:
        return None


def _holds(query: dict[str, list[str]], obj: dict[str, Any] | None, prefix: str) -> bool:
    """Whether `obj` (the live object, None: none) meets the `{prefix}...` preconditions of `query`."""
    generation = int(obj["generation"]) if obj else 0
    metageneration = int(obj["metageneration"]) if obj else None
    tests: dict[str, Callable[[int], bool]] = {
        "GenerationMatch": lambda n: generation == n,
        "GenerationNotMatch": lambda n: generation != n,
        "MetagenerationMatch": lambda n: metageneration == n,
        "MetagenerationNotMatch": lambda n: metageneration is not None and metageneration != n,
    }
    return all(test(int(query[prefix + name][0])) for name, test in tests.items() if prefix + name in query)


def _condition_not_met(response: Any) -> None:
    """412 with the body GCS sends."""
    response.status = HTTPStatus.PRECONDITION_FAILED
    response.json({"error": {"code": 412, "message": CONDITION_NOT_MET, "errors": [{
        "message": CONDITION_NOT_MET, "domain": "global", "reason": "conditionNotMet",
        "locationType": "header", "location": "If-Match",
    }]}})


def checked(handler: Handler, target: Target, *, source: bool = False, must_exist: bool = False) -> Handler:
    """`handler`, answering 412 instead when the object `target(request, storage)` names (bucket,
    name) breaks the request's `if...` preconditions, or (`source`) when the source object of a
    copy or rewrite breaks its `ifSource...` ones. `must_exist`: a missing object is left to the
    handler's 404."""

    @functools.wraps(handler)
    def wrapper(request: Any, response: Any, storage: Any, *args: Any, **kwargs: Any) -> Any:
        found = target(request, storage)
        if found is not None:
            obj = _live(storage, *found)
            if not (must_exist and obj is None) and not _holds(request.query, obj, "if"):
                return _condition_not_met(response)
        if source:
            obj = _live(storage, request.params["bucket_name"], request.params["object_id"])
            if obj is not None and not _holds(request.query, obj, "ifSource"):
                return _condition_not_met(response)
        return handler(request, response, storage, *args, **kwargs)

    return wrapper


def _named(request: Any, storage: Any) -> tuple[str, str]:
    return request.params["bucket_name"], request.params["object_id"]


def _destination(request: Any, storage: Any) -> tuple[str, str]:
    return request.params["dest_bucket_name"], request.params["dest_object_id"]


def _upload_target(request: Any, storage: Any) -> tuple[str, str] | None:
    """The object a new upload (media, multipart, or a resumable session's start) writes."""
    if "upload_id" in request.query:  # a chunk POSTed to the upload URL: see upload_partial
        return _session_target(request, storage)
    if "name" in request.query:
        return request.params["bucket_name"], request.query["name"][0]
    data = request.data if isinstance(request.data, dict) else {}
    name = (data.get("meta") or data).get("name")
    return (request.params["bucket_name"], name) if name else None


def _session_target(request: Any, storage: Any) -> tuple[str, str] | None:
    """The object a resumable session writes; its generation is stamped afresh at every chunk, so
    the object gets the time of its last one."""
    try:
        obj = storage.get_resumable_file_obj(request.query["upload_id"][0])
    except (NotFound, KeyError):
        return None  # the stock handler answers 404
    obj["generation"] = str(time.time_ns())
    return obj["bucket"], obj["name"]


def install() -> None:
    """Wrap the emulator's object handlers, in its route table and in the module (its router falls
    back on `objects.insert` by name)."""
    wrapped = {
        objects.insert: checked(objects.insert, _upload_target),
        objects.upload_partial: checked(objects.upload_partial, _session_target),
        objects.copy: checked(objects.copy, _destination, source=True),
        objects.rewrite: checked(objects.rewrite, _destination, source=True),
        objects.compose: checked(objects.compose, _named),
        objects.delete: checked(objects.delete, _named, must_exist=True),
        objects.patch: checked(objects.patch, _named, must_exist=True),
    }
    for _, methods in server.HANDLERS:
        for method, handler in methods.items():
            methods[method] = wrapped.get(handler, handler)
    objects.insert = wrapped[objects.insert]


if __name__ == "__main__":
    install()
    main(sys.argv[1:])
