"""Drive-specific behaviour of the gdrive backend, against the loopback Drive v3 server.

Conformance (tests/test_backend_conformance.py, VFS_TEST_SILOS=gdrive) covers the common contract;
these cover what only Drive has: duplicate names, shortcuts, trash, Docs exports, rate limits; and,
for writes (tests/test_backend_writes.py has the common contract): names written back, read-only Docs,
the trash, resumable chunks, the precondition checked before the commit, create races.
"""

from __future__ import annotations

import errno
import functools
import json
import random
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import google.oauth2.credentials
import pytest
import trio

from tests.drive_server import DriveServer, Upload, render_export, rfc3339
from tests.silos.gdrive import drive, put, write_token
from vfs.mounts.gdrive import DOT, SLASH, UPLOAD_QUANTUM, DriveBackend, DriveOptions
from vfs.mounts.gdrive_auth import token_info

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def run(fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
    return trio.run(functools.partial(fn, *args, **kwargs))


def expect_errno(err: int, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> OSError:
    with pytest.raises(OSError) as info:
        run(fn, *args, **kwargs)
    assert info.value.errno == err, f"expected {errno.errorcode[err]}, got {info.value!r}"
    return info.value


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[DriveServer, Callable[..., DriveBackend]]]:
    with drive(tmp_path) as (server, token_file):

        def backend(**extra: Any) -> DriveBackend:
            opts = {"root_url": server.url, "token_file": str(token_file), "retry_base_delay": 0.001, **extra}
            return DriveBackend(DriveOptions(**opts))

        yield server, backend


def listing(backend: DriveBackend, path: str = "") -> dict[str, Any]:
    return {m.name: m for m in run(backend.list_dir, path)}


def read_all(backend: DriveBackend, path: str) -> bytes:
    meta = run(backend.stat, path)
    return run(backend.read_range, path, 0, meta.size + 100, meta.version)


def file_meta(server: DriveServer, file_id: str) -> dict[str, Any]:
    return server.metadata(file_id, {"fields": "*"})


def test_duplicate_names_are_disambiguated_by_id(env) -> None:
    server, make = env
    first = server.add_file("dup.txt", b"first")
    second = server.add_file("dup.txt", b"second")
    third = server.add_file("dup.txt", b"third")
    d1 = server.add_folder("folder")
    d2 = server.add_folder("folder")
    backend = make()
    got = listing(backend)
    assert set(got) == {"dup.txt", f"dup [{second[:8]}].txt", f"dup [{third[:8]}].txt", "folder", f"folder [{d2[:8]}]"}
    assert read_all(backend, "dup.txt") == b"first"  # the oldest keeps the name
    assert read_all(backend, f"dup [{second[:8]}].txt") == b"second"
    assert read_all(backend, f"dup [{third[:8]}].txt") == b"third"
    assert run(backend.stat, f"folder [{d2[:8]}]").is_dir
    # stat (a targeted lookup) agrees with the listing
    for name, meta in got.items():
        assert run(backend.stat, name) == meta
    # a suffixed name depends on its file alone: dropping a younger sibling renames nobody...
    server.delete(second)
    assert set(n for n in listing(backend) if n.startswith("dup")) == {"dup.txt", f"dup [{third[:8]}].txt"}
    assert read_all(backend, f"dup [{third[:8]}].txt") == b"third"
    # ...and when the oldest goes, the next oldest takes the bare name
    server.delete(first)
    assert set(n for n in listing(backend) if n.startswith("dup")) == {"dup.txt"}
    assert read_all(backend, "dup.txt") == b"third"
    server.add_file("x", b"", d1)
    assert set(listing(backend, "folder")) == {"x"}


def test_generated_name_never_hides_a_real_one(env) -> None:
    server, make = env
    server.add_file("a.txt", b"one")
    second = server.add_file("a.txt", b"two")
    server.add_file(f"a [{second[:8]}].txt", b"real")
    backend = make()
    got = listing(backend)
    assert set(got) == {"a.txt", f"a [{second[:8]}].txt"}
    assert read_all(backend, f"a [{second[:8]}].txt") == b"real"


def test_odd_raw_names(env) -> None:
    server, make = env
    server.add_file("a/b", b"slash")
    server.add_file("it's \\ here", b"quote")
    server.add_file("..", b"dots")
    backend = make()
    got = listing(backend)
    assert set(got) == {f"a{SLASH}b", "it's \\ here", DOT * 2}
    assert read_all(backend, f"a{SLASH}b") == b"slash"
    assert read_all(backend, "it's \\ here") == b"quote"
    assert read_all(backend, DOT * 2) == b"dots"


def test_shortcuts_are_followed(env) -> None:
    server, make = env
    target_dir = server.add_folder("target dir")
    server.add_file("inside.txt", b"inside", target_dir)
    target = server.add_file("target.bin", b"target bytes")
    doc = server.add_doc("Plan", b"the plan")
    server.add_shortcut("link.bin", target)
    server.add_shortcut("link dir", target_dir)
    server.add_shortcut("link doc", doc)
    gone = server.add_file("gone.bin", b"x")
    server.add_shortcut("dangling", gone)
    server.delete(gone)
    trashed = server.add_file("trashed.bin", b"x")
    server.add_shortcut("to trash", trashed)
    server.trash(trashed)
    backend = make()
    got = listing(backend)
    assert "dangling" not in got and "to trash" not in got
    assert not got["link.bin"].is_dir and got["link.bin"].size == len(b"target bytes")
    assert got["link.bin"].version == got["target.bin"].version
    assert read_all(backend, "link.bin") == b"target bytes"
    assert got["link dir"].is_dir
    assert set(listing(backend, "link dir")) == {"inside.txt"}
    assert read_all(backend, "link dir/inside.txt") == b"inside"
    assert read_all(backend, "link doc.docx") == read_all(backend, "Plan.docx")
    expect_errno(errno.ENOENT, backend.stat, "dangling")


def test_trashed_items_are_hidden(env) -> None:
    server, make = env
    keep = server.add_file("keep.txt", b"keep")
    bin_ = server.add_file("bin.txt", b"bin")
    folder = server.add_folder("old")
    server.add_file("child", b"c", folder)
    backend = make()
    assert {"keep.txt", "bin.txt", "old"} <= set(listing(backend))
    meta = run(backend.stat, "bin.txt")
    server.trash(bin_)
    server.trash(folder)
    assert set(listing(backend)) == {"keep.txt"}
    expect_errno(errno.ENOENT, backend.stat, "bin.txt")
    expect_errno(errno.ENOENT, backend.list_dir, "old")  # its id was cached by the first listing
    expect_errno(errno.ENOENT, backend.stat, "old/child")
    expect_errno(errno.ESTALE, backend.read_range, "bin.txt", 0, 10, meta.version)
    assert keep


def test_google_docs_are_exported(env) -> None:
    server, make = env
    doc = server.add_doc("Report", b"hello doc")
    sheet = server.add_doc("Budget", b"1,2,3", kind="spreadsheet")
    server.add_doc("Deck", b"slides", kind="presentation")
    server.add_doc("Sketch", b"lines", kind="drawing")
    backend = make()
    got = listing(backend)
    assert set(got) == {"Report.docx", "Budget.xlsx", "Deck.pdf", "Sketch.png"}
    expected = render_export(doc, b"hello doc", file_meta(server, doc)["modifiedTime"], DOCX)
    assert got["Report.docx"].size == len(expected) and not got["Report.docx"].is_dir
    assert got["Report.docx"].version == file_meta(server, doc)["modifiedTime"]
    assert run(backend.read_range, "Report.docx", 0, 1 << 20, got["Report.docx"].version) == expected
    assert run(backend.read_range, "Report.docx", 3, 9, got["Report.docx"].version) == expected[3:9]
    assert run(backend.stat, "Report.docx") == got["Report.docx"]
    sheet_bytes = render_export(sheet, b"1,2,3", file_meta(server, sheet)["modifiedTime"], XLSX)
    assert read_all(backend, "Budget.xlsx") == sheet_bytes
    # exported once per (id, modifiedTime): stat and reads reuse the bytes
    assert server.counts["export"] == 4
    expect_errno(errno.ENOENT, backend.stat, "Report")


def test_export_formats_are_configurable(env) -> None:
    server, make = env
    server.add_doc("Notes", b"text")
    server.add_doc("Deck", b"slides", kind="presentation")
    backend = make(export_formats={"document": "txt", "presentation": ""})
    got = listing(backend)
    assert set(got) == {"Notes.txt"}
    assert read_all(backend, "Notes.txt").startswith(b"EXPORT text/plain\n")
    with pytest.raises(ValueError):
        make(export_formats={"document": "nope"})


def test_doc_sizes_without_export(env) -> None:
    server, make = env
    server.add_doc("Lazy", b"lazy text")
    backend = make(export_sizes=False)
    meta = listing(backend)["Lazy.docx"]
    assert meta.size == 0 and server.counts["export"] == 0
    data = run(backend.read_range, "Lazy.docx", 0, 1 << 20, meta.version)
    assert data.endswith(b"lazy text") and server.counts["export"] == 1
    assert run(backend.stat, "Lazy.docx").size == len(data)  # known once exported


def test_rate_limits_are_retried(env) -> None:
    server, make = env
    server.add_file("f.txt", b"payload")
    backend = make()
    server.fail_next(2, 403, "userRateLimitExceeded")
    server.fail_next(1, 429, "rateLimitExceeded")
    server.fail_next(1, 403, "rateLimitExceeded")
    before = server.counts["total"]
    assert read_all(backend, "f.txt") == b"payload"
    assert server.counts["total"] - before == 4 + 3  # four refused, then lookup, media, check


def test_rate_limits_exhausted_are_eagain(env) -> None:
    server, make = env
    server.add_file("f.txt", b"payload")
    backend = make(max_retries=2)
    server.fail_next(3, 403, "userRateLimitExceeded")
    expect_errno(errno.EAGAIN, backend.stat, "f.txt")
    assert server.counts["total"] == 3
    server.fail_next(3, 429, "rateLimitExceeded")
    expect_errno(errno.EAGAIN, backend.list_dir, "")
    assert run(backend.stat, "f.txt").size == len(b"payload")


def test_listing_spans_pages(env) -> None:
    server, make = env
    folder = server.add_folder("big")
    for i in range(23):
        server.add_file(f"n{i:02d}", bytes([i]) * i, folder)
    backend = make(page_size=5)
    run(backend.stat, "big")
    before = server.counts["list"]
    got = run(backend.list_dir, "big")
    assert [m.name for m in got] == [f"n{i:02d}" for i in range(23)]
    assert [m.size for m in got] == list(range(23))
    assert server.counts["list"] - before == 5  # ceil(23 / 5) pages


def test_changed_file_is_estale(env) -> None:
    server, make = env
    fid = server.add_file("v.bin", b"version one")
    doc = server.add_doc("Doc", b"draft")
    backend = make()
    old = run(backend.stat, "v.bin")
    old_doc = run(backend.stat, "Doc.docx")
    server.replace(fid, b"version two!")
    server.replace(doc, b"final")
    expect_errno(errno.ESTALE, backend.read_range, "v.bin", 0, 100, old.version)
    expect_errno(errno.ESTALE, backend.read_range, "Doc.docx", 0, 100, old_doc.version)
    new = run(backend.stat, "v.bin")
    assert new.version != old.version
    assert run(backend.read_range, "v.bin", 0, 100, new.version) == b"version two!"
    assert read_all(backend, "Doc.docx").endswith(b"final")


def test_change_seen_only_by_the_check_after_the_read_is_estale(env) -> None:
    """The path's last observation is the pre-read state; a change before the read is caught after it."""
    server, make = env
    fid = server.add_file("w.bin", b"aaaa")
    backend = make()
    meta = run(backend.stat, "w.bin")  # observed: md5/revision of "aaaa"
    server.replace(fid, b"bbbb")  # changes between the observation and the read
    expect_errno(errno.ESTALE, backend.read_range, "w.bin", 0, 4, meta.version)
    assert server.counts["media"] == 1  # the read went out and its bytes were refused


def test_metadata_only_change_rereads(env) -> None:
    server, make = env
    fid = server.add_file("m.bin", b"same bytes")
    backend = make()
    meta = run(backend.stat, "m.bin")
    server.touch(fid)  # modifiedTime moves, content does not
    assert run(backend.read_range, "m.bin", 0, 100, meta.version) == b"same bytes"
    server.replace(fid, b"same bytes")  # re-upload of identical bytes: new revision, same md5
    assert run(backend.read_range, "m.bin", 0, 100, meta.version) == b"same bytes"


def test_wrong_token_is_eacces(env) -> None:
    server, make = env
    server.add_file("f.txt", b"x")
    backend = make(credentials=google.oauth2.credentials.Credentials(token="wrong"), max_retries=0)
    expect_errno(errno.EACCES, backend.stat, "f.txt")
    assert server.counts["refused"] >= 1


def test_expired_token_is_refreshed(env, tmp_path: Path) -> None:
    server, make = env
    server.add_file("f.txt", b"fresh")
    token_file = tmp_path / "expired.json"
    token_file.write_text(json.dumps(token_info("stale-token", refresh_token=server.refresh_token, client_id="c",
                                                client_secret="s", expiry="2001-01-01T00:00:00Z")))
    backend = make(token_file=str(token_file), token_uri=server.url + "token")
    assert read_all(backend, "f.txt") == b"fresh"
    assert server.counts["token"] >= 1
    bad = tmp_path / "revoked.json"
    bad.write_text(json.dumps(token_info("stale-token", refresh_token="revoked", client_id="c", client_secret="s",
                                         expiry="2001-01-01T00:00:00Z")))
    expect_errno(errno.EACCES, make(token_file=str(bad), token_uri=server.url + "token").stat, "f.txt")


def test_root_folder_and_url_forms(env) -> None:
    server, make = env
    sub = server.add_folder("sub")
    put(server, "sub/inner.txt", b"inner")
    backend = make(root=sub)
    assert set(listing(backend)) == {"inner.txt"}
    assert read_all(backend, "inner.txt") == b"inner"
    assert set(listing(make(drive_id=sub))) == {"inner.txt"}  # a shared drive's root is a folder id too
    assert DriveBackend.options_from_url(f"gdrive://{sub}") == {"root": sub}
    assert DriveBackend.options_from_url("gdrive://") == {"root": "root"}
    assert DriveBackend.options_from_url("gdrive://shared/0AbC") == {"drive_id": "0AbC"}


def test_server_errors_are_shaped_like_drive(env) -> None:
    server, _ = env
    import httplib2

    http = httplib2.Http()
    resp, body = http.request(server.url + "drive/v3/files/nope", headers={"Authorization": "Bearer test-token"})
    assert resp.status == 404
    assert json.loads(body) == {"error": {"code": 404, "message": "File not found: nope.", "errors": [
        {"message": "File not found: nope.", "domain": "global", "reason": "notFound",
         "location": "fileId", "locationType": "parameter"}]}}
    resp, body = http.request(server.url + "drive/v3/files", headers={"Authorization": "Bearer bad"})
    assert resp.status == 401 and json.loads(body)["error"]["errors"][0]["reason"] == "authError"
    fid = server.add_file("r.bin", b"0123456789")
    auth = {"Authorization": "Bearer test-token"}
    resp, body = http.request(f"{server.url}drive/v3/files/{fid}?alt=media", headers={**auth, "Range": "bytes=2-4"})
    assert (resp.status, body, resp["content-range"]) == (206, b"234", "bytes 2-4/10")
    resp, _ = http.request(f"{server.url}drive/v3/files/{fid}?alt=media", headers={**auth, "Range": "bytes=10-"})
    assert resp.status == 416 and resp["content-range"] == "bytes */10"
    assert rfc3339(0) == "1970-01-01T00:00:00.000Z"


def test_mount_options_token_file_loads(tmp_path: Path) -> None:
    with DriveServer() as server:
        token_file = write_token(server, tmp_path / "t.json")
        server.add_file("hello", b"hi")
        backend = DriveBackend(DriveOptions(root_url=server.url, token_file=str(token_file)))
        assert read_all(backend, "hello") == b"hi"
        assert server.counts["token"] == 0  # a valid stored token is used as is


# --- writes ---------------------------------------------------------------------------------------

@pytest.fixture
def src(tmp_path: Path) -> Callable[[bytes], str]:
    def make(data: bytes) -> str:
        p = tmp_path / f"src-{len(list(tmp_path.glob('src-*')))}"
        p.write_bytes(data)
        return str(p)
    return make


def test_written_names_map_back_to_drive_names(env, src) -> None:
    server, make = env
    backend = make()
    run(backend.write_file, f"a{SLASH}b.txt", src(b"slash"), None)
    fid = server.find(["a/b.txt"])
    assert fid is not None and server.read(["a/b.txt"]) == b"slash"
    run(backend.mkdir, f"x{SLASH}y")
    assert server.find(["x/y"]) is not None
    # a rename sets the name as shown, "／" back to "/", nothing stripped (a suffix is a real name then)
    run(backend.rename, f"a{SLASH}b.txt", f"x{SLASH}y/c{SLASH}d [12345678].txt")
    assert server.get_file(fid).name == "c/d [12345678].txt" and server.get_file(fid).parents == [server.find(["x/y"])]
    assert set(listing(backend, f"x{SLASH}y")) == {f"c{SLASH}d [12345678].txt"}
    assert read_all(backend, f"x{SLASH}y/c{SLASH}d [12345678].txt") == b"slash"
    # many "／": the lookup asks for every raw spelling, a URL too long for GET (sent as a POST override)
    long = SLASH.join(["part"] * 6) + "-" * 150
    run(backend.write_file, long, src(b"long"), None)
    assert server.read([long.replace(SLASH, "/")]) == b"long" and read_all(backend, long) == b"long"
    expect_errno(errno.ESTALE, backend.write_file, long, src(b"again"), None)


def test_writes_beside_duplicate_names_follow_the_naming_rules(env, src) -> None:
    server, make = env
    first = server.add_file("dup.txt", b"first")
    second = server.add_file("dup.txt", b"second")
    backend = make()
    younger = f"dup [{second[:8]}].txt"
    assert set(listing(backend)) == {"dup.txt", younger}
    expect_errno(errno.ESTALE, backend.write_file, "dup.txt", src(b"new"), None)  # the name is taken
    expect_errno(errno.ESTALE, backend.write_file, younger, src(b"new"), None)  # so is the generated one
    seen = run(backend.stat, younger)
    meta = run(backend.write_file, younger, src(b"second, edited"), seen.version)  # that very file, same id
    assert server.get_file(second).content == b"second, edited" and server.get_file(first).content == b"first"
    assert meta.path == younger and run(backend.stat, younger) == meta
    # the oldest goes (to the trash): the next oldest takes the bare name, its generated one is gone
    run(backend.delete, "dup.txt")
    assert server.get_file(first).trashed
    expect_errno(errno.ENOENT, backend.stat, younger)
    assert read_all(backend, "dup.txt") == b"second, edited"


def test_docs_are_read_only(env, src) -> None:
    server, make = env
    doc = server.add_doc("Report", b"text")
    server.add_file("plain.bin", b"x")
    folder = server.add_folder("archive")
    backend = make()
    meta = run(backend.stat, "Report.docx")
    for call in ((backend.write_file, "Report.docx", src(b"x"), meta.version),
                 (backend.write_file, "Report.docx", src(b"x"), None),
                 (backend.delete, "Report.docx"),
                 (backend.set_mtime, "Report.docx", 10**18)):
        err = expect_errno(errno.EPERM, *call)
        assert "read-only" in str(err)
    expect_errno(errno.EPERM, backend.rename, "plain.bin", "Report.docx")  # would trash the Doc
    expect_errno(errno.EPERM, backend.rename, "Report.docx", "Report.pdf")  # a Doc keeps its extension
    expect_errno(errno.EPERM, backend.rename, "Report.docx", ".docx")
    assert not server.get_file(doc).trashed and server.get_file(doc).content == b"text"
    # renaming or moving one only changes a name: allowed, the extension is not part of the Drive name
    run(backend.rename, "Report.docx", "archive/Report 2024.docx")
    f = server.get_file(doc)
    assert (f.name, f.parents) == ("Report 2024", [folder])
    assert read_all(backend, "archive/Report 2024.docx").endswith(b"text")
    expect_errno(errno.ENOENT, backend.stat, "Report.docx")


def test_delete_and_rmdir_use_the_trash(env, src) -> None:
    server, make = env
    fid = server.add_file("f.bin", b"x")
    empty = server.add_folder("empty")
    hidden = server.add_folder("holds a form")
    server._add("Survey", "application/vnd.google-apps.form", hidden)  # not shown, but there
    backend = make()
    run(backend.delete, "f.bin")
    run(backend.rmdir, "empty")
    assert server.get_file(fid).trashed and server.get_file(empty).trashed  # undoable, not deleted
    assert run(backend.list_dir, "holds a form") == []
    expect_errno(errno.ENOTEMPTY, backend.rmdir, "holds a form")
    assert not server.get_file(hidden).trashed
    expect_errno(errno.EISDIR, backend.delete, "holds a form")
    expect_errno(errno.EBUSY, backend.rmdir, "")


def test_large_files_go_up_in_resumable_chunks(env, src) -> None:
    server, make = env
    backend = make(chunk_size=UPLOAD_QUANTUM)
    data = random.Random(3).randbytes(5 * UPLOAD_QUANTUM + 1000)
    when = 1_500_000_000_123 * 10**6
    meta = run(backend.write_file, "big.bin", src(data), None, when)
    assert (server.counts["upload"], server.counts["chunk"], server.counts["create"]) == (1, 6, 0)
    assert meta.size == len(data) and meta.mtime_ns == when
    fid = server.find("big.bin")
    assert fid is not None and server.read("big.bin") == data
    before = file_meta(server, fid)
    new = data[::-1]
    server.fail_next(1, 503, "backendError")  # a chunk refused: retried, the session goes on
    meta2 = run(backend.write_file, "big.bin", src(new), meta.version)
    after = file_meta(server, fid)
    assert server.find("big.bin") == fid and server.read("big.bin") == new  # a new revision of the same id
    assert after["headRevisionId"] != before["headRevisionId"] and int(after["version"]) > int(before["version"])
    assert meta2.version == after["md5Checksum"] != meta.version
    assert server.counts["upload"] == 2 and backend.stats.retries == 1
    small = run(backend.write_file, "small.bin", src(b"tiny"), None)  # up to a chunk: one multipart request
    assert server.counts["create"] == 1 and server.counts["upload"] == 2 and small.size == 4


def test_change_before_the_last_chunk_is_estale(env, src, monkeypatch) -> None:
    server, make = env
    fid = server.add_file("f.bin", b"original")
    backend = make(chunk_size=UPLOAD_QUANTUM)
    seen = run(backend.stat, "f.bin")
    put_chunk = server.put_chunk

    def theirs_lands_meanwhile(upload_id: str, content_range: str | None, body: bytes) -> tuple[int, Upload]:
        if server.counts["chunk"] == 2:
            server.replace(fid, b"theirs")
        return put_chunk(upload_id, content_range, body)

    monkeypatch.setattr(server, "put_chunk", theirs_lands_meanwhile)
    data = random.Random(4).randbytes(3 * UPLOAD_QUANTUM)
    expect_errno(errno.ESTALE, backend.write_file, "f.bin", src(data), seen.version)
    assert server.read("f.bin") == b"theirs" and server.counts["chunk"] == 2  # the last chunk never went


def test_a_create_racing_another_keeps_the_older(env, src, monkeypatch) -> None:
    server, make = env
    backend = make()
    create = server.create

    def another_client_first(metadata: dict[str, Any], media: Any) -> Any:
        if metadata.get("name") == "race.txt":
            server.add_file("race.txt", b"theirs")  # older than ours by a millisecond
        elif metadata.get("name") == "d":
            server.add_folder("d")
        return create(metadata, media)

    monkeypatch.setattr(server, "create", another_client_first)
    expect_errno(errno.ESTALE, backend.write_file, "race.txt", src(b"ours"), None)
    assert set(listing(backend)) == {"race.txt"} and read_all(backend, "race.txt") == b"theirs"
    assert len([f for f in server.files.values() if f.name == "race.txt"]) == 1  # ours deleted for good

    def another_client_after(metadata: dict[str, Any], media: Any) -> Any:
        made = create(metadata, media)
        if metadata.get("name") == "late.txt":
            server.add_file("late.txt", b"theirs")  # younger: shows with a suffix, ours keeps the name
        return made

    monkeypatch.setattr(server, "create", another_client_after)
    run(backend.write_file, "late.txt", src(b"ours"), None)
    assert read_all(backend, "late.txt") == b"ours"
    monkeypatch.setattr(server, "create", another_client_first)
    expect_errno(errno.EEXIST, backend.mkdir, "d")  # mkdir: the same, with EEXIST
    assert len([f for f in server.files.values() if f.name == "d"]) == 1 and run(backend.stat, "d").is_dir


def test_directory_rename_is_one_call_and_forgets_old_paths(env, src) -> None:
    server, make = env
    backend = make()
    run(backend.mkdir, "a")
    run(backend.mkdir, "a/b")
    run(backend.write_file, "a/b/f.txt", src(b"deep"), None)
    assert read_all(backend, "a/b/f.txt") == b"deep" and listing(backend, "a/b")  # cached under a/...
    before = server.counts["update"]
    run(backend.rename, "a", "z")
    assert server.counts["update"] - before == 1
    expect_errno(errno.ENOENT, backend.stat, "a/b/f.txt")
    expect_errno(errno.ENOENT, backend.list_dir, "a/b")
    assert read_all(backend, "z/b/f.txt") == b"deep"
    expect_errno(errno.EINVAL, backend.rename, "z", "z/b/inside")
    run(backend.mkdir, "empty")
    run(backend.rename, "z", "empty")  # over an empty folder: it goes to the trash
    assert read_all(backend, "empty/b/f.txt") == b"deep"
    run(backend.mkdir, "full")
    run(backend.write_file, "full/x", src(b"x"), None)
    expect_errno(errno.ENOTEMPTY, backend.rename, "empty", "full")
    expect_errno(errno.ENOTDIR, backend.rename, "empty", "full/x")
    expect_errno(errno.EISDIR, backend.rename, "full/x", "empty")


def test_shortcuts_write_through_but_go_themselves(env, src) -> None:
    server, make = env
    target = server.add_file("target.bin", b"target")
    link = server.add_shortcut("link.bin", target)
    backend = make()
    seen = run(backend.stat, "link.bin")
    run(backend.write_file, "link.bin", src(b"through the link"), seen.version)
    assert server.get_file(target).content == b"through the link"
    run(backend.rename, "link.bin", "moved link.bin")
    assert server.get_file(link).name == "moved link.bin" and server.get_file(target).name == "target.bin"
    run(backend.delete, "moved link.bin")
    assert server.get_file(link).trashed and not server.get_file(target).trashed


def test_set_mtime_keeps_the_version(env) -> None:
    server, make = env
    fid = server.add_file("f.bin", b"same")
    backend = make()
    meta = run(backend.stat, "f.bin")
    after = run(backend.set_mtime, "f.bin", 1_234_567_890_000 * 10**6)
    assert after.mtime_ns == 1_234_567_890_000 * 10**6 and after.version == meta.version
    assert file_meta(server, fid)["modifiedTime"] == "2009-02-13T23:31:30.000Z"
    assert run(backend.read_range, "f.bin", 0, 10, meta.version) == b"same"


def test_chunk_size_must_be_a_multiple_of_256_kib(env) -> None:
    _, make = env
    with pytest.raises(ValueError):
        make(chunk_size=UPLOAD_QUANTUM + 1)
    with pytest.raises(ValueError):
        make(chunk_size=0)
