"""MountTable: longest-prefix routing, synthetic parent directories, a mount inside another mount's
tree (the overlay hides a same-named backend entry), sibling mounts under one synthetic directory."""

from __future__ import annotations

import pytest

from vfs.mount_table import Mount, MountTable, child_of, parent_of
from vfs.mounts.memory import MemoryBackend, MemoryOptions


def mount(path: str, name: str | None = None, ttl: float = 60.0) -> Mount:
    return Mount(path, MemoryBackend(MemoryOptions(name=name or path)), ttl=ttl, negative_ttl=5.0)


def test_parent_of_and_child_of() -> None:
    assert parent_of("/") == "/"
    assert parent_of("/a") == "/"
    assert parent_of("/a/b") == "/a"
    assert child_of("/", "a") == "/a"
    assert child_of("/a", "b") == "/a/b"


def test_longest_prefix_wins() -> None:
    root, s3, deep = mount("/"), mount("/s3"), mount("/s3/deep")
    table = MountTable([root, deep, s3])  # order given does not matter
    assert table.route("/") == (root, "")
    assert table.route("/x/y") == (root, "x/y")
    assert table.route("/s3") == (s3, "")
    assert table.route("/s3/x") == (s3, "x")
    assert table.route("/s3/deep") == (deep, "")
    assert table.route("/s3/deep/k/v") == (deep, "k/v")
    assert table.route("/s3/deeper") == (s3, "deeper")  # a name prefix is not a path prefix
    assert table.route("/s3x") == (root, "s3x")


def test_synthetic_parents() -> None:
    s3, local = mount("/data/s3"), mount("/data/local")
    table = MountTable([s3, local])
    assert table.synthetic == {"/", "/data"}
    assert table.route("/") is None
    assert table.route("/data") is None
    assert table.route("/data/other") is None
    assert table.route("/datax") is None
    assert table.route("/data/s3/k") == (s3, "k")
    assert table.route("/data/local") == (local, "")
    assert table.overlay("/") == ["data"]
    assert table.overlay("/data") == ["local", "s3"]
    assert table.overlay("/data/s3") == []
    for p in ("/", "/data", "/data/s3", "/data/local"):
        assert table.is_overlay(p)
    assert not table.is_overlay("/data/s3/k")
    assert not table.is_overlay("/data/other")


def test_mount_inside_root_mount() -> None:
    root, local = mount("/"), mount("/local")
    table = MountTable([root, local])
    assert table.synthetic == set()  # '/' is a real mount
    assert table.route("/local/f") == (local, "f")
    assert table.route("/localx") == (root, "localx")
    assert table.overlay("/") == ["local"]  # shown in '/' whatever the root backend holds
    assert table.is_overlay("/") and table.is_overlay("/local")
    assert not table.is_overlay("/other")


def test_deep_mount_inside_root_mount_leads_through_backend_dirs() -> None:
    root, deep = mount("/"), mount("/a/b")
    table = MountTable([root, deep])
    assert table.route("/a") == (root, "a")  # '/a' is served by the root mount ...
    assert table.is_overlay("/a")  # ... yet always shown as a directory leading to /a/b
    assert "/a" not in table.synthetic
    assert table.overlay("/a") == ["b"]


def test_nested_sibling_mounts() -> None:
    a, b = mount("/s3/a"), mount("/s3/b")
    table = MountTable([a, b])
    assert table.synthetic == {"/", "/s3"}
    assert table.overlay("/s3") == ["a", "b"]
    assert table.route("/s3/a/x") == (a, "x")
    assert table.route("/s3/b") == (b, "")
    assert table.route("/s3/ab") is None
    assert table.route("/s3/c") is None


@pytest.mark.parametrize("paths", [["/"], ["/a"], ["/a", "/b/c", "/b/d/e"]])
def test_every_path_routes_to_the_longest_matching_mount(paths: list[str]) -> None:
    mounts = [mount(p) for p in paths]
    table = MountTable(mounts)
    for probe in ["/", "/a", "/a/x", "/b", "/b/c", "/b/c/y", "/b/d", "/b/d/e/z", "/q"]:
        matching = [m for m in mounts if m.path == "/" or probe == m.path or probe.startswith(m.path + "/")]
        routed = table.route(probe)
        if not matching:
            assert routed is None
        else:
            best = max(matching, key=lambda m: len(m.path))
            assert routed is not None and routed[0] is best
            inner = probe[len(best.path):].lstrip("/")
            assert routed[1] == inner
