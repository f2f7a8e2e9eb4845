"""Google Drive: the loopback Drive v3 server of tests/drive_server.py, seeded as a folder tree.

The backend authenticates with a token file in google-auth's authorized-user format (what
`vfs auth gdrive` stores) holding the server's fixed bearer token and an expiry far ahead, so a
`[[mount]]` entry can express it: backend, root_url, token_file (and token_uri = the server's
/token, should the token ever need a refresh). `fetch` reads the server's store directly; `small_parts`
uploads in 256 KiB chunks, Drive's smallest resumable chunk.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator

import google.oauth2.credentials

from tests.drive_server import DriveServer
from tests.silos import PAGE_SIZE, Silo
from vfs.mounts.gdrive import SLASH, UPLOAD_QUANTUM, DriveBackend, DriveOptions
from vfs.mounts.gdrive_auth import token_info


def write_token(server: DriveServer, path: Path) -> Path:
    info = token_info(server.token, refresh_token=server.refresh_token, client_id="vfs-test", client_secret="unused")
    path.write_text(json.dumps(info))
    path.chmod(0o600)
    return path


def folder(server: DriveServer, path: str) -> str:
    """The id of folder `path` ('' is the root), created with its parents as needed."""
    current = server.root_id
    for i, part in enumerate(p for p in path.split("/") if p):
        found = server.find("/".join(path.split("/")[: i + 1]))
        current = found if found is not None else server.add_folder(part, current)
    return current


def put(server: DriveServer, path: str, data: bytes) -> str:
    """Upload `data` at `path`: new content for an existing file, else a new file."""
    existing = server.find(path)
    if existing is not None:
        server.replace(existing, data)
        return existing
    parent, _, name = path.rpartition("/")
    return server.add_file(name, data, folder(server, parent))


def seed(server: DriveServer, files: dict[str, bytes], empty_dirs: list[str]) -> None:
    for path, data in files.items():
        put(server, path, data)
    for d in empty_dirs:
        folder(server, d)


@contextlib.contextmanager
def drive(tmp: Path) -> Iterator[tuple[DriveServer, Path]]:
    with DriveServer() as server:
        yield server, write_token(server, tmp / "drive-token.json")


@contextlib.contextmanager
def open_silo(tmp: Path, files: dict[str, bytes], empty_dirs: list[str], shadowed: dict[str, bytes]) -> Iterator[Silo]:
    # `shadowed` is for flat-keyed stores only: a Drive folder tree cannot hold a key that is also a prefix.
    with drive(tmp) as (server, token_file):
        seed(server, files, empty_dirs)

        def denied() -> DriveBackend:
            wrong = google.oauth2.credentials.Credentials(token="wrong-token")
            return DriveBackend(DriveOptions(root_url=server.url, credentials=wrong, max_retries=0))

        def make(chunk_size: int = DriveOptions.chunk_size) -> DriveBackend:
            return DriveBackend(DriveOptions(root_url=server.url, token_file=str(token_file), token_uri=server.url + "token",
                                             page_size=PAGE_SIZE, chunk_size=chunk_size))

        def fetch(path: str) -> bytes | None:
            return server.read([p.replace(SLASH, "/") for p in path.split("/")])  # shown names -> raw ones

        backend = make()
        yield Silo(
            backend=backend,
            flat_keys=False,
            replace=lambda path, data: put(server, path, data) and None,
            denied=denied,
            fetch=fetch,
            small_parts=lambda: make(chunk_size=UPLOAD_QUANTUM),
            mount_options={"backend": "gdrive", "root_url": server.url, "token_file": str(token_file),
                           "token_uri": server.url + "token"},
        )
