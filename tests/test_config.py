"""Config (every error path is one line naming source, key and problem; sizes; one-liner sources;
per-mount TTLs), and the two small modules it stands on: vfs/units.py (sizes) and vfs/errors.py
(the errno table)."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vfs.config import ConfigError, from_sources, load, parse, source_entry
from vfs.errors import ERRNO_BY_CODE, ERRNO_BY_STATUS, SiloError, errno_for, errno_of, silo_error
from vfs.units import format_size, parse_size

SRC = "test.toml"
MEM = {"path": "/m", "backend": "memory"}


def with_mount(**tables: Any) -> dict[str, Any]:
    return {"mount": [dict(MEM)], **tables}


def error_of(data: dict[str, Any], source: str = SRC) -> str:
    with pytest.raises(ConfigError) as info:
        parse(data, source)
    message = str(info.value)
    assert "\n" not in message, "one line"
    assert message.startswith(f"{source}: "), "names the source"
    return message


# --- valid configurations -----------------------------------------------------------------------

def test_minimal_config_has_defaults() -> None:
    c = parse(with_mount(), SRC)
    assert c.source == SRC
    assert c.cache.block_size == 4 * 1024**2 and c.cache.ram_policy == "lru"
    assert c.metadata.ttl == 60.0 and c.metadata.negative_ttl == 5.0
    assert not c.fuse.read_only and c.fuse.auto_unmount and not c.fuse.allow_other
    assert c.write.mode == "through" and c.write.write_back_delay == 5.0 and c.write.staging_size == 10 * 1024**3
    (m,) = c.mounts
    assert (m.path, m.backend, m.ttl, m.negative_ttl) == ("/m", "memory", None, None)
    assert m.options.name == "mem"  # type: ignore[attr-defined]


def test_sizes_are_parsed() -> None:
    c = parse(with_mount(cache={"block_size": "4MiB", "ram_size": "1.5GiB", "ssd_size": 10_000_000}), SRC)
    assert c.cache.block_size == 4 * 1024**2
    assert c.cache.ram_size == 1536 * 1024**2
    assert c.cache.ssd_size == 10_000_000


def test_per_mount_ttl_override_and_backend_options() -> None:
    data = {
        "metadata": {"ttl": 30, "negative_ttl": 1.5},
        "mount": [
            {"path": "/s3/a", "backend": "s3", "bucket": "bkt", "prefix": "p/q", "ttl": 600, "negative_ttl": 0},
            {"path": "/s3/b/", "backend": "s3", "bucket": "other", "anonymous": True},
        ],
    }
    c = parse(data, SRC)
    a, b = c.mounts
    assert (a.path, a.ttl, a.negative_ttl) == ("/s3/a", 600.0, 0.0)
    assert isinstance(a.ttl, float)
    assert (a.options.bucket, a.options.prefix) == ("bkt", "p/q")  # type: ignore[attr-defined]
    assert (b.path, b.ttl, b.negative_ttl) == ("/s3/b", None, None)  # trailing slash normalised
    assert b.options.anonymous is True  # type: ignore[attr-defined]
    assert c.metadata.ttl == 30.0 and c.metadata.negative_ttl == 1.5


def test_load_reads_a_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "vfs.toml"
    path.write_text(
        '[cache]\nblock_size = "1MiB"\nram_policy = "sieve"\n\n'
        '[metadata]\nttl = 5\n\n'
        '[[mount]]\npath = "/"\nbackend = "local"\nroot = "/tmp"\n\n'
        '[[mount]]\npath = "/gcs"\nbackend = "gcs"\nbucket = "b"\nttl = 600\n'
    )
    c = load(path)
    assert c.source == str(path)
    assert c.cache.block_size == 1024**2 and c.cache.ram_policy == "sieve"
    assert [(m.path, m.backend, m.ttl) for m in c.mounts] == [("/", "local", None), ("/gcs", "gcs", 600.0)]


# --- every error path: one line naming source, key and problem ------------------------------------

@pytest.mark.parametrize("data, key, problem", [
    (with_mount(cahce={}), "cahce", "did you mean 'cache'"),
    (with_mount(cache={"blok_size": "4MiB"}), "cache.blok_size", "did you mean 'block_size'"),
    (with_mount(fuse={"zzz": 1}), "fuse.zzz", "unknown key"),
    ({"mount": [{**MEM, "nmae": "x"}]}, "mount #1 (/m).nmae", "did you mean 'name'"),
    ({"mount": [{"path": "/s3", "backend": "s3", "buket": "b"}]}, "mount #1 (/s3).buket", "did you mean 'bucket'"),
    ({"mount": [{"path": "/s3", "backend": "s3"}]}, "mount #1 (/s3).bucket", "required"),
    ({"mount": [{"backend": "memory"}]}, "mount #1.path", "absolute path"),
    ({"mount": [{"path": "/x"}]}, "mount #1 (/x).backend", "is not one of"),
    ({"mount": [{"path": "/x", "backend": "ftp"}]}, "mount #1 (/x).backend", "'ftp' is not one of"),
    (with_mount(metadata={"ttl": "long"}), "metadata.ttl", "expected a number"),
    (with_mount(metadata={"ttl": True}), "metadata.ttl", "expected a number"),
    (with_mount(fuse={"allow_other": "yes"}), "fuse.allow_other", "expected true or false"),
    (with_mount(cache={"prefetch_window": 2.5}), "cache.prefetch_window", "not a size"),
    (with_mount(cache={"ram_policy": 7}), "cache.ram_policy", "expected a string"),
    ({"mount": [{**MEM, "ttl": "x"}]}, "mount #1 (/m).ttl", "expected a number"),
    ({"mount": [{"path": "/s3", "backend": "s3", "bucket": "b", "anonymous": "no"}]}, "mount #1 (/s3).anonymous",
     "expected true or false"),
    ({"mount": [{"path": "/s3", "backend": "s3", "bucket": 5}]}, "mount #1 (/s3).bucket", "expected a string"),
    (with_mount(cache={"ram_size": "lots"}), "cache.ram_size", "not a size"),
    (with_mount(cache={"ram_size": "12 parsecs"}), "cache.ram_size", "unknown size unit"),
    (with_mount(cache={"ssd_size": -1}), "cache.ssd_size", "negative"),
    (with_mount(cache={"block_size": "0.5B"}), "cache.block_size", "whole number of bytes"),
    (with_mount(cache={"block_size": "1KiB"}), "cache.block_size", "between 4KiB and 1GiB"),
    (with_mount(cache={"ram_policy": "mru"}), "cache.ram_policy", "unknown eviction policy 'mru'"),
    (with_mount(cache={"ssd_policy": "nosuch.module:Cls"}), "cache.ssd_policy", "cannot load eviction policy"),
    ({"mount": [dict(MEM), {"path": "/n", "backend": "memory"}, {"path": "/m/", "backend": "memory"}]},
     "mount #3.path", "/m is already used by mount #1"),
    ({"mount": [{"path": "s3", "backend": "memory"}]}, "mount #1.path", "absolute path"),
    ({"mount": [{"path": "/a/../b", "backend": "memory"}]}, "mount #1.path", "'..' are not allowed"),
    ({"mount": [{"path": "/a/./b", "backend": "memory"}]}, "mount #1.path", "are not allowed"),
    ({"mount": [{"path": "/.vfs", "backend": "memory"}]}, "mount #1.path", "reserved"),
    ({"mount": [{"path": "/.vfs/x", "backend": "memory"}]}, "mount #1.path", "reserved"),
    ({"mount": []}, "mount", "at least one"),
    ({}, "mount", "at least one"),
    ({"mount": ["/m"]}, "mount #1", "expected a table"),
])
def test_error_names_source_key_and_problem(data: dict[str, Any], key: str, problem: str) -> None:
    message = error_of(data)
    assert message.startswith(f"{SRC}: {key}: ") or message.startswith(f"{SRC}: {key} "), message
    assert problem in message, message


def test_float_size_is_a_config_error() -> None:
    message = error_of(with_mount(cache={"ram_size": 1.5}))
    assert "cache.ram_size" in message


def test_double_slash_cannot_reach_the_reserved_dir() -> None:
    message = error_of({"mount": [{"path": "//.vfs", "backend": "memory"}]})
    assert "reserved" in message


def test_double_slash_mount_path_is_normalised() -> None:
    (m,) = parse({"mount": [{"path": "//s3", "backend": "memory"}]}, SRC).mounts
    assert m.path == "/s3"


def test_bad_toml_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[cache\nblock_size = 4\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not valid TOML") and "\n" not in message


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: cannot read") and "No such file" in message and "\n" not in message


def test_error_in_a_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "vfs.toml"
    path.write_text('[[mount]]\npath = "/x"\nbackend = "memory"\nttl = "soon"\n')
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == f"{path}: mount #1 (/x).ttl: expected a number, got 'soon'"


# --- one-liner sources ----------------------------------------------------------------------------

def test_s3_url_with_mount_path() -> None:
    assert source_entry("s3://bucket/some/prefix=/s3") == {
        "path": "/s3", "backend": "s3", "bucket": "bucket", "prefix": "some/prefix"}


def test_gs_url_defaults_to_bucket_name() -> None:
    assert source_entry("gs://b") == {"path": "/b", "backend": "gcs", "bucket": "b", "prefix": ""}
    assert source_entry("gcs://b/p=/g")["backend"] == "gcs"


def test_local_path(tmp_path: Path) -> None:
    d = tmp_path / "data"
    assert source_entry(str(d)) == {"path": "/data", "backend": "local", "root": str(d)}
    assert source_entry(f"{d}/=/here") == {"path": "/here", "backend": "local", "root": f"{d}/"}


def test_nfs_url() -> None:
    entry = source_entry("nfs://host/export")
    assert entry["backend"] == "nfs" and entry["url"] == "nfs://host/export"
    assert entry["path"].startswith("/") and "=" not in entry["path"]


def test_equals_sign_in_a_key_without_mount_suffix() -> None:
    assert source_entry("s3://b/year=2024") == {"path": "/b", "backend": "s3", "bucket": "b", "prefix": "year=2024"}
    assert source_entry("s3://b/k=v=/data") == {"path": "/data", "backend": "s3", "bucket": "b", "prefix": "k=v"}


def test_from_sources_builds_a_checked_config(tmp_path: Path) -> None:
    c = from_sources(["s3://bkt/pre=/s3", "gs://g", str(tmp_path)], base={"metadata": {"ttl": 7}})
    assert c.source == "command line"
    assert [(m.path, m.backend) for m in c.mounts] == [("/s3", "s3"), ("/g", "gcs"), ("/" + tmp_path.name, "local")]
    assert c.mounts[0].options.prefix == "pre"  # type: ignore[attr-defined]
    assert c.metadata.ttl == 7.0


def test_from_sources_errors_name_the_command_line() -> None:
    with pytest.raises(ConfigError) as info:
        from_sources(["s3://a=/x", "gs://b=/x"])
    assert str(info.value).startswith("command line: mount #2.path: /x is already used by mount #1")
    with pytest.raises(ConfigError) as info:
        from_sources([])
    assert str(info.value).startswith("command line: mount")


def test_current_directory_as_a_source() -> None:
    (m,) = from_sources(["."]).mounts
    assert m.backend == "local" and m.path not in ("/.", "/..")


def test_file_url_is_a_local_path() -> None:
    entry = source_entry("file:///tmp/x")
    assert (entry["backend"], entry["root"]) == ("local", "/tmp/x")


# --- units ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, size", [
    ("0", 0), ("4096", 4096), (4096, 4096), ("100B", 100), ("1b", 1),
    ("1KiB", 1024), ("64MiB", 64 * 2**20), ("1.5GiB", 3 * 2**29), ("2TiB", 2 * 2**40), ("1PiB", 2**50),
    ("1K", 1024), ("1.5G", 3 * 2**29), ("4M", 4 * 2**20), ("1kB", 1000), ("500MB", 500_000_000),
    ("2GB", 2_000_000_000), ("1.5KiB", 1536), (" 4 mib ", 4 * 2**20), ("1.", 1), (".5KiB", 512),
])
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MiB", "-1", -1, "1e3", "1.5", "0.5B", "4 XB", "1,000", "inf", True, "1 2"])
def test_parse_size_rejects(text: Any) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize("size, text", [
    (0, "0B"), (100, "100B"), (1023, "1023B"), (1024, "1KiB"), (1536, "1.5KiB"), (64 * 2**20, "64MiB"),
    (3 * 2**29, "1.5GiB"), (2**50, "1PiB"), (2**60, "1024PiB"), (-2048, "-2KiB"),
])
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text


@given(st.integers(0, 2047), st.integers(0, 5))
def test_format_size_round_trips_whole_and_half_units(halves: int, power: int) -> None:
    size = halves * 1024**power // 2 if power else halves % 1024  # n/2 of a unit: written exactly
    assert parse_size(format_size(size)) == size


# --- errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("code, status, err", [
    ("NoSuchKey", 404, errno.ENOENT), ("NoSuchBucket", None, errno.ENOENT), ("notFound", None, errno.ENOENT),
    ("AccessDenied", 403, errno.EACCES), ("forbidden", None, errno.EACCES),
    ("PreconditionFailed", 412, errno.ESTALE), ("conditionNotMet", None, errno.ESTALE),
    ("SlowDown", 503, errno.EAGAIN), ("rateLimitExceeded", 403, errno.EAGAIN),  # the code wins over the status
    ("InvalidRange", 416, errno.EINVAL), ("RequestTimeout", None, errno.ETIMEDOUT),
    (None, 404, errno.ENOENT), (None, 403, errno.EACCES), (None, 401, errno.EACCES), (None, 412, errno.ESTALE),
    (None, 429, errno.EAGAIN), (None, 503, errno.EAGAIN), (None, 500, errno.EIO), (None, 504, errno.ETIMEDOUT),
    ("SomethingNew", 404, errno.ENOENT), ("SomethingNew", None, errno.EIO),
    (None, 599, errno.EIO), (None, 507, errno.EIO), (None, 302, errno.EIO), (None, 418, errno.EIO),
    (None, None, errno.EIO), ("", None, errno.EIO),
])
def test_errno_for(code: str | None, status: int | None, err: int) -> None:
    assert errno_for(code, status) == err


def test_every_table_entry_is_a_real_errno() -> None:
    for table in (ERRNO_BY_CODE, ERRNO_BY_STATUS):
        for key, err in table.items():
            assert err in errno.errorcode, key


def test_silo_error_carries_errno_message_and_retryable() -> None:
    e = silo_error("SlowDown", 503, "s3://b/k")
    assert isinstance(e, OSError) and isinstance(e, SiloError)
    assert e.errno == errno.EAGAIN and e.retryable
    assert "s3://b/k" in str(e) and "503" in str(e) and "SlowDown" in str(e)
    e = silo_error(None, 404, "gs://b/k")
    assert e.errno == errno.ENOENT and not e.retryable
    assert silo_error(None, None, "x").errno == errno.EIO


@pytest.mark.parametrize("exc, err", [
    (SiloError(errno.EACCES, "x"), errno.EACCES),
    (FileNotFoundError(errno.ENOENT, "gone"), errno.ENOENT),
    (OSError(errno.ESTALE, "stale"), errno.ESTALE),
    (OSError("no errno"), errno.EIO),
    (NotImplementedError(), errno.ENOSYS),
    (ValueError("bug"), errno.EIO),
    (KeyError("k"), errno.EIO),
])
def test_errno_of(exc: BaseException, err: int) -> None:
    assert errno_of(exc) == err


# --- keys other parts read: [metrics] addr, [metadata] offline ------------------------------------

def test_metrics_and_offline_defaults_and_values() -> None:
    c = parse(with_mount(), SRC)
    assert c.metrics.addr == "" and c.metadata.offline == "auto"
    c = parse(with_mount(metrics={"addr": "127.0.0.1:9567"}, metadata={"offline": "never"}), SRC)
    assert c.metrics.addr == "127.0.0.1:9567" and c.metadata.offline == "never"
    for addr in (":0", "[::1]:9567", "localhost:80"):
        assert parse(with_mount(metrics={"addr": addr}), SRC).metrics.addr == addr


@pytest.mark.parametrize("addr", ["9567", "host:", "host:x", "[::1:9567", "1.2.3.4:65536", "a b:1", "h:-1"])
def test_metrics_addr_must_be_host_and_port(addr: str) -> None:
    assert "metrics.addr: expected" in error_of(with_mount(metrics={"addr": addr}))


@pytest.mark.parametrize("key, value, problem", [
    ("ttl", float("nan"), "finite"), ("ttl", float("inf"), "finite"), ("ttl", -5, "got -5"),
    ("concurrency", 0, "between 1 and 1024"), ("concurrency", 2**70, "between 1 and 1024"),
])
def test_numbers_out_of_range(key: str, value: Any, problem: str) -> None:
    assert problem in error_of({"mount": [{**MEM, key: value}]})


def test_a_secret_is_never_shown() -> None:
    message = error_of({"mount": [{"path": "/s3", "backend": "s3", "bucket": "b", "secret_access_key": 12345678}]})
    assert "secret_access_key" in message and "12345678" not in message and "hidden" in message


@pytest.mark.parametrize("arg, problem", [
    ("ftp://h/x", "unknown scheme 'ftp'"), ("=/x", "no source"), ("s3://k:s3cr3t@b", "credentials do not belong"),
])
def test_bad_one_liners(arg: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_sources([arg])
    assert str(info.value).startswith("command line: ") and problem in str(info.value)
    assert "s3cr3t" not in str(info.value)
