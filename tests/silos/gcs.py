"""GCS: gcp-storage-emulator on 127.0.0.1, in memory, talked to with the real google-cloud-storage client.

The emulator runs with `--in-memory`: its on-disk mode keeps object bodies in files named after the
keys, so an object `both` and an object `both/child` (or a marker `dir/`) cannot both exist there.

What the emulator does not do, and how each part is covered instead:
- credentials: it accepts anything, so `denied` is None (the EACCES case runs on S3; both backends go
  through the one errno table, GCS's 401/403 and reasons `forbidden`/`authError` included).
- generation preconditions on changes: the stock emulator ignores them, so it runs here through
  tests/gcs_emulator.py, which makes uploads (media, multipart, resumable), copies, rewrites,
  deletes and metadata patches honour them with GCS's 412 conditionNotMet; the write tests of
  lost races (ESTALE) fail against the stock emulator and pass against this one.
- preconditions on reads, `?generation=` and the `x-goog-generation` header: still ignored/absent.
  The backend then checks the live generation after each read (see vfs/mounts/gcs.py), so the
  conformance test of a replaced object (ESTALE) runs for real here, through that path.
- `fetch` reads behind the backend with a plain client; `small_parts` is a backend whose resumable
  uploads go in 256 KiB chunks, so the 12 MiB write test sends dozens of them.
- maxResults / pageToken: every listing comes back as one page, so `many/` never spans pages here. The
  backend holds no paging logic of its own: it walks the client's `HTTPIterator.pages` (which sends
  maxResults=page_size and follows nextPageToken until there is none), one page per worker-thread
  call, reads each page's own `prefixes` as it arrives (never the iterator's accumulated set before
  the last page), and walks on past pages that come back empty but carry a token (GCS does that).
  Here that loop runs on every listing, with one page. It was also run once, by hand, against a
  loopback objects.list server that honours maxResults/pageToken and starts with an empty page:
  `many/` (25 objects, 2 prefixes, a marker) came back whole in 5 requests of maxResults=7. That
  server is not kept as a test: it would be a second emulator written by us.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Iterator

from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from tests.servers import HOST, free_port, server
from tests.silos import PAGE_SIZE, Silo
from vfs.mounts.gcs import MIN_CHUNK, GCSBackend, GCSOptions

# The emulator with generation preconditions honoured (tests/gcs_emulator.py says why).
LAUNCHER = Path(__file__).resolve().parent.parent / "gcs_emulator.py"
BUCKET = "vfs-test"
PROJECT = "vfs-test"


@contextlib.contextmanager
def emulator(tmp: Path) -> Iterator[str]:
    """gcp-storage-emulator, honouring preconditions, on a free port of 127.0.0.1; yields its URL."""
    port = free_port()
    argv = [sys.executable, str(LAUNCHER), "start", "-H", HOST, "--port", str(port), "--in-memory"]
    with server(argv, port, tmp / "gcp-storage-emulator.log"):
        yield f"http://{HOST}:{port}"


def client(endpoint: str) -> storage.Client:
    """A client for the emulator, set up by options only (STORAGE_EMULATOR_HOST stays unset)."""
    return storage.Client(project=PROJECT, credentials=AnonymousCredentials(), client_options={"api_endpoint": endpoint})


def seed(bucket: storage.Bucket, files: dict[str, bytes], empty_dirs: list[str] = ()) -> None:  # type: ignore[assignment]
    for key, data in files.items():
        bucket.blob(key).upload_from_string(data, content_type="application/octet-stream")
    for d in empty_dirs:
        bucket.blob(d + "/").upload_from_string(b"", content_type="application/octet-stream")


@contextlib.contextmanager
def open_silo(tmp: Path, files: dict[str, bytes], empty_dirs: list[str], shadowed: dict[str, bytes]) -> Iterator[Silo]:
    with emulator(tmp) as endpoint:
        gcs = client(endpoint)
        bucket = gcs.create_bucket(BUCKET)
        seed(bucket, {**files, **shadowed}, empty_dirs)

        def replace(path: str, data: bytes) -> None:
            bucket.blob(path).upload_from_string(data, content_type="application/octet-stream")

        def fetch(path: str) -> bytes | None:
            blob = bucket.get_blob(path)
            return None if blob is None else blob.download_as_bytes()

        options = {"bucket": BUCKET, "endpoint": endpoint, "anonymous": True}
        backend = GCSBackend(GCSOptions(page_size=PAGE_SIZE, **options))  # type: ignore[arg-type]
        try:
            yield Silo(
                backend=backend,
                flat_keys=True,
                replace=replace,
                denied=None,
                mount_options={"backend": "gcs", **options},
                rooted=lambda sub: GCSBackend(GCSOptions(prefix=sub, **options)),  # type: ignore[arg-type]
                fetch=fetch,
                small_parts=lambda: GCSBackend(GCSOptions(chunk_size=MIN_CHUNK, **options)),  # type: ignore[arg-type]
            )
        finally:
            gcs.close()
