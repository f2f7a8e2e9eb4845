"""Bad input to `vfs mount`: each malformed config, one-liner, option or mountpoint below is run as a
real `python -m vfs mount ...` process, which must exit non-zero with exactly one line on stderr
naming the file (or the command line), the key and the problem, with no traceback, no secret, and
nothing mounted (/proc/mounts) or left running.

The cases run in a thread pool once per session (a process each, ~0.5 s); each is then its own test.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from tests.kernel import fuse_available, unmount

ROOT = Path(__file__).parent.parent
SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"
MEM = '[[mount]]\npath = "/m"\nbackend = "memory"\n'
S3 = '[[mount]]\npath = "/s3"\nbackend = "s3"\nbucket = "data"\n'
GCS = '[[mount]]\npath = "/g"\nbackend = "gcs"\nbucket = "data"\n'
LOCAL = '[[mount]]\npath = "/l"\nbackend = "local"\nroot = "{tmp}"\n'


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    args: tuple[str, ...]
    """After `vfs mount`: {mnt} is the mountpoint, {tmp} the case's directory, {cfg} its c.toml."""
    expect: tuple[str, ...]
    """Substrings of the one line (file, key, problem); {tmp} and {mnt} are replaced."""
    config: str | bytes | None = None
    """Contents of {cfg}; {tmp} is replaced in text."""
    setup: Callable[[Path], None] | None = None
    secret: str | None = None


def cfg(name: str, text: str | bytes, *expect: str, secret: str | None = None) -> Case:
    return Case(name, ("{mnt}", "--config", "{cfg}"), ("c.toml", *expect), text, secret=secret)


def line(name: str, *args: str, expect: tuple[str, ...], config: str | None = None,
         setup: Callable[[Path], None] | None = None, secret: str | None = None) -> Case:
    return Case(name, args, expect, config, setup, secret)


def mkfile(rel: str, data: bytes = b"x") -> Callable[[Path], None]:
    def make(tmp: Path) -> None:
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_bytes(data)
    return make


def mkdir(rel: str) -> Callable[[Path], None]:
    return lambda tmp: (tmp / rel).mkdir(parents=True)


CASES = [
    # --- the file itself ---
    cfg("toml_syntax", "[[mount]\npath = '/m'\n", "not valid TOML", "line 1"),
    cfg("toml_unterminated_string", 'x = "abc\n', "not valid TOML"),
    cfg("toml_duplicate_key", MEM + 'path = "/n"\n', "not valid TOML"),
    cfg("toml_binary", b"\x00\x01\x02[[mount]]", "not valid TOML"),
    cfg("non_utf8", b'[[mount]]\npath = "/\xff\xfe"\nbackend = "memory"\n', "not UTF-8", "0xff"),
    cfg("non_utf8_comment", b"# caf\xe9\n" + MEM.encode(), "not UTF-8", "0xe9"),
    cfg("deep_nesting", "x = " + "[" * 5000 + "]" * 5000 + "\n" + MEM, "nested too deeply"),
    cfg("empty_file", "", "mount:", "at least one [[mount]]"),
    cfg("mount_single_table", '[mount]\npath = "/m"\nbackend = "memory"\n', "mount:", "array of tables"),
    cfg("mount_not_tables", "mount = [1, 2]\n", "mount #1:", "expected a table"),
    cfg("cache_not_table", "cache = 5\n" + MEM, "cache:", "expected a table"),
    line("config_missing", "{mnt}", "--config", "{tmp}/absent.toml", expect=("absent.toml", "cannot read", "No such file")),
    line("config_is_dir", "{mnt}", "--config", "{tmp}", expect=("cannot read", "Is a directory")),
    # --- unknown tables and keys ---
    cfg("unknown_table", "[cahce]\n" + MEM, "cahce: unknown table", "did you mean 'cache'"),
    cfg("unknown_top_value", "verbose = true\n" + MEM, "verbose: unknown table"),
    cfg("unknown_cache_key", '[cache]\nblok_size = "4MiB"\n' + MEM, "cache.blok_size", "did you mean 'block_size'"),
    cfg("unknown_mount_key", S3.replace("bucket", "buket"), "mount #1 (/s3).buket", "did you mean 'bucket'"),
    cfg("unknown_key_odd_chars", MEM + '"we\\tird\\nkey" = 1\n', "mount #1 (/m).we\\tird\\nkey", "unknown key"),
    cfg("mistyped_secret_key", S3 + f'secret_acess_key = "{SECRET}"\n', "mount #1 (/s3).secret_acess_key",
        "did you mean 'secret_access_key'", secret=SECRET),
    cfg("secret_wrong_type", S3 + f'secret_access_key = ["{SECRET}"]\n', "mount #1 (/s3).secret_access_key",
        "expected a string", "hidden", secret=SECRET),
    cfg("secret_in_wrong_table", f'[cache]\nsecret_access_key = "{SECRET}"\n' + S3, "cache.secret_access_key",
        "unknown key", secret=SECRET),
    # --- wrong types ---
    cfg("ttl_string", '[metadata]\nttl = "long"\n' + MEM, "metadata.ttl", "expected a number"),
    cfg("allow_other_string", '[fuse]\nallow_other = "yes"\n' + MEM, "fuse.allow_other", "expected true or false"),
    cfg("concurrency_string", MEM + 'concurrency = "16"\n', "mount #1 (/m).concurrency", "expected a whole number"),
    cfg("bucket_int", S3.replace('"data"', "5"), "mount #1 (/s3).bucket", "expected a string"),
    cfg("block_size_bool", "[cache]\nblock_size = true\n" + MEM, "cache.block_size", "not a size"),
    cfg("ram_size_list", "[cache]\nram_size = [1]\n" + MEM, "cache.ram_size", "not a size"),
    cfg("page_size_float", S3 + "page_size = 1.5\n", "mount #1 (/s3).page_size", "expected a whole number"),
    cfg("path_int", '[[mount]]\npath = 5\nbackend = "memory"\n', "mount #1.path", "absolute path"),
    cfg("backend_list", '[[mount]]\npath = "/m"\nbackend = ["s3"]\n', "mount #1 (/m).backend", "is not one of"),
    cfg("export_formats_string", '[[mount]]\npath = "/d"\nbackend = "gdrive"\nexport_formats = "pdf"\n',
        "mount #1 (/d).export_formats", "expected a table"),
    cfg("export_formats_value_int", '[[mount]]\npath = "/d"\nbackend = "gdrive"\nexport_formats = { document = 5 }\n',
        "mount #1 (/d).export_formats.document", "expected an extension"),
    # --- negative, absurd and huge numbers ---
    cfg("ssd_size_negative", "[cache]\nssd_size = -1\n" + MEM, "cache.ssd_size", "negative"),
    cfg("ram_size_negative_text", '[cache]\nram_size = "-5MiB"\n' + MEM, "cache.ram_size", "not a size"),
    cfg("block_size_tiny", '[cache]\nblock_size = "1KiB"\n' + MEM, "cache.block_size", "between 4KiB and 1GiB"),
    cfg("block_size_huge", '[cache]\nblock_size = "1TiB"\n' + MEM, "cache.block_size", "between 4KiB and 1GiB"),
    cfg("ram_size_absurd", '[cache]\nram_size = "100PiB"\n' + MEM, "cache.ram_size", "more than this machine's memory"),
    cfg("ram_size_beyond_int64", "[cache]\nram_size = 99999999999999999999999\n" + MEM, "cache.ram_size", "memory"),
    cfg("size_unknown_unit", '[cache]\nram_size = "12 parsecs"\n' + MEM, "cache.ram_size", "unknown size unit"),
    cfg("size_fraction_of_byte", '[write]\nstaging_size = "1.5B"\n' + MEM, "write.staging_size", "whole number of bytes"),
    cfg("s3_part_size_small", S3 + 'part_size = "1MiB"\n', "mount #1 (/s3)", "part_size", "5 MiB"),
    cfg("gcs_chunk_size_odd", GCS + 'chunk_size = "100KiB"\n', "mount #1 (/g).chunk_size", "multiple of 256KiB"),
    cfg("concurrency_zero", MEM + "concurrency = 0\n", "mount #1 (/m).concurrency", "between 1 and 1024, got 0"),
    cfg("concurrency_negative", MEM + "concurrency = -3\n", "mount #1 (/m).concurrency", "got -3"),
    cfg("concurrency_huge", MEM + "concurrency = 9223372036854775807\n", "mount #1 (/m).concurrency", "between 1 and 1024"),
    cfg("page_size_zero", S3 + "page_size = 0\n", "mount #1 (/s3).page_size", "between 1 and 1000"),
    cfg("page_size_negative", S3 + "page_size = -1\n", "mount #1 (/s3).page_size", "between 1 and 1000"),
    cfg("max_attempts_zero", S3 + "max_attempts = 0\n", "mount #1 (/s3).max_attempts", "between 1 and 100"),
    cfg("ttl_negative", '[metadata]\nttl = -5\n' + MEM, "metadata.ttl", "got -5"),
    cfg("ttl_nan", '[metadata]\nttl = nan\n' + MEM, "metadata.ttl", "finite"),
    cfg("ttl_inf", MEM + "ttl = inf\n", "mount #1 (/m).ttl", "finite"),
    cfg("negative_ttl_huge", "[metadata]\nnegative_ttl = 1e300\n" + MEM, "metadata.negative_ttl", "between 0 and 1e+09"),
    cfg("connect_timeout_zero", S3 + "connect_timeout = 0\n", "mount #1 (/s3).connect_timeout", "between"),
    cfg("read_timeout_negative", S3 + "read_timeout = -1\n", "mount #1 (/s3).read_timeout", "between"),
    cfg("nfs_timeout_overflow", '[[mount]]\npath = "/n"\nbackend = "nfs"\nurl = "nfs://h/e"\ntimeout = 1e12\n',
        "mount #1 (/n).timeout", "between"),
    cfg("read_ahead_negative", "[fuse]\nread_ahead_kb = -1\n" + MEM, "fuse.read_ahead_kb", "between"),
    cfg("rename_limit_negative", "[write]\nrename_limit = -1\n" + MEM, "write.rename_limit", "between"),
    cfg("write_back_delay_nan", "[write]\nwrite_back_delay = nan\n" + MEM, "write.write_back_delay", "finite"),
    # --- missing and empty required options ---
    cfg("s3_no_bucket", '[[mount]]\npath = "/s3"\nbackend = "s3"\n', "mount #1 (/s3).bucket", "required"),
    cfg("nfs_no_url", '[[mount]]\npath = "/n"\nbackend = "nfs"\n', "mount #1 (/n).url", "required"),
    cfg("local_no_root", '[[mount]]\npath = "/l"\nbackend = "local"\n', "mount #1 (/l).root", "required"),
    cfg("mount_no_backend", '[[mount]]\npath = "/x"\n', "mount #1 (/x).backend", "None is not one of"),
    cfg("mount_no_path", '[[mount]]\nbackend = "memory"\n', "mount #1.path", "absolute path"),
    cfg("bucket_empty", S3.replace('"data"', '""'), "mount #1 (/s3).bucket", "required"),
    cfg("local_root_empty", LOCAL.replace("{tmp}", ""), "mount #1 (/l).root", "required"),
    line("nothing_to_mount", "{mnt}", expect=("nothing to mount",)),
    # --- values of the wrong form ---
    cfg("bucket_space", S3.replace('"data"', '"my bucket"'), "mount #1 (/s3).bucket", "not a bucket name"),
    cfg("bucket_newline", S3.replace('"data"', '"da\\nta"'), "mount #1 (/s3).bucket", "not a bucket name"),
    cfg("bucket_nul", S3.replace('"data"', '"da\\u0000ta"'), "mount #1 (/s3).bucket", "NUL"),
    cfg("bucket_huge", S3.replace('"data"', '"' + "b" * 100_000 + '"'), "mount #1 (/s3).bucket", "not a bucket name"),
    cfg("size_huge_text", f'[cache]\nram_size = "{"9" * 100_000}x"\n' + MEM, "cache.ram_size", "..."),
    cfg("endpoint_ftp", S3 + 'endpoint_url = "ftp://127.0.0.1:21"\n', "mount #1 (/s3).endpoint_url", "http://"),
    cfg("endpoint_no_host", GCS + 'endpoint = "http://"\n', "mount #1 (/g).endpoint", "with a host"),
    cfg("addressing_style_weird", S3 + 'addressing_style = "weird"\n', "mount #1 (/s3).addressing_style", "'weird' is not one of"),
    cfg("write_mode_unknown", MEM + 'write_mode = "sometimes"\n', "mount #1 (/m).write_mode", "is not one of"),
    cfg("nfs_url_not_nfs", '[[mount]]\npath = "/n"\nbackend = "nfs"\nurl = "http://h/e"\n', "mount #1 (/n).url", "nfs://host"),
    cfg("nfs_url_version", '[[mount]]\npath = "/n"\nbackend = "nfs"\nurl = "nfs://h/e?version=9"\n', "mount #1 (/n).url", "3 or 4"),
    cfg("policy_unknown", '[cache]\nram_policy = "mru"\n' + MEM, "cache.ram_policy", "unknown eviction policy"),
    cfg("export_format_unknown", '[[mount]]\npath = "/d"\nbackend = "gdrive"\nexport_formats = { document = "exe" }\n',
        "mount #1 (/d).export_formats.document", "unknown extension"),
    cfg("cluster_scheme", '[cache]\ncluster = "http://127.0.0.1:7000"\n' + MEM, "cache.cluster", "redis://HOST:PORT"),
    cfg("cluster_no_port", '[cache]\ncluster = "redis://127.0.0.1"\n' + MEM, "cache.cluster", "HOST:PORT for each seed"),
    cfg("cluster_password_in_url", '[cache]\ncluster = "redis://:hunter2@127.0.0.1:7000"\n' + MEM, "cache.cluster",
        "not in the URL"),
    cfg("cluster_timeout_negative", '[cache]\ncluster_timeout = -1\n' + MEM, "cache.cluster_timeout", "between"),
    cfg("cluster_password_type", '[cache]\ncluster_password = 12345\n' + MEM, "cache.cluster_password", "(value hidden)"),
    cfg("metrics_addr_bad", '[metrics]\naddr = "localhost"\n' + MEM, "metrics.addr", "HOST:PORT"),
    cfg("metrics_port_huge", '[metrics]\naddr = "127.0.0.1:70000"\n' + MEM, "metrics.addr", "HOST:PORT"),
    cfg("offline_unknown", '[metadata]\noffline = "always"\n' + MEM, "metadata.offline", "'always' is not one of auto, never"),
    # --- mount paths ---
    cfg("path_relative", '[[mount]]\npath = "s3"\nbackend = "memory"\n', "mount #1.path", "absolute path"),
    cfg("path_dotdot", '[[mount]]\npath = "/a/../b"\nbackend = "memory"\n', "mount #1.path", "'..' are not allowed"),
    cfg("path_reserved", '[[mount]]\npath = "//.vfs"\nbackend = "memory"\n', "mount #1.path", "reserved"),
    cfg("path_newline", '[[mount]]\npath = "/a\\nb"\nbackend = "memory"\n', "mount #1.path", "control characters"),
    cfg("path_long_name", f'[[mount]]\npath = "/{"n" * 256}"\nbackend = "memory"\n', "mount #1.path", "longer than 255 bytes"),
    cfg("path_duplicate", MEM + MEM, "mount #2.path", "/m is already used by mount #1"),
    cfg("path_duplicate_normalised", MEM + MEM.replace('"/m"', '"//m/"'), "mount #2.path", "already used by mount #1"),
    cfg("path_root_twice", MEM.replace('"/m"', '"/"') * 2, "mount #2.path", "/ is already used"),
    line("path_duplicate_config_and_line", "{mnt}", "--config", "{cfg}", "memory://x=/m", config=MEM,
         expect=("c.toml + command line", "mount #2.path", "/m is already used by mount #1")),
    line("path_duplicate_one_liners", "{mnt}", "s3://bkt", "gs://bkt/other", expect=("command line", "mount #2.path", "/bkt is already used")),
    # --- local paths the config names ---
    cfg("local_root_missing", LOCAL.replace("{tmp}", "{tmp}/gone"), "mount #1 (/l).root", "No such file or directory"),
    Case("local_root_file", ("{mnt}", "--config", "{cfg}"), ("c.toml", "mount #1 (/l).root", "not a directory"),
         LOCAL.replace("{tmp}", "{tmp}/f"), mkfile("f")),
    Case("ssd_dir_file", ("{mnt}", "--config", "{cfg}"), ("c.toml", "cache.ssd_dir", "not a directory"),
         '[cache]\nssd_dir = "{tmp}/f"\nssd_size = "1GiB"\n' + MEM, mkfile("f")),
    Case("ssd_dir_under_file", ("{mnt}", "--config", "{cfg}"), ("c.toml", "cache.ssd_dir", "cannot be created", "not a directory"),
         '[cache]\nssd_dir = "{tmp}/f/ssd"\nssd_size = "1GiB"\n' + MEM, mkfile("f")),
    Case("staging_dir_file", ("{mnt}", "--config", "{cfg}"), ("c.toml", "write.staging_dir", "not a directory"),
         '[write]\nstaging_dir = "{tmp}/f"\n' + MEM, mkfile("f")),
    cfg("trace_file_missing_dir", '[cache]\ntrace_file = "{tmp}/no/such/trace"\n' + MEM, "cache.trace_file", "no such directory"),
    line("trace_option_missing_dir", "{mnt}", "--trace", "{tmp}/no/t", "--config", "{cfg}", config=MEM,
         expect=("cache.trace_file", "no such directory")),
    line("log_file_missing_dir", "{mnt}", "--log-file", "{tmp}/no/x.log", "--config", "{cfg}", config=MEM,
         expect=("--log-file", "no such directory")),
    cfg("gdrive_token_file_missing", '[[mount]]\npath = "/d"\nbackend = "gdrive"\ntoken_file = "{tmp}/token.json"\n',
        "mount #1 (/d).token_file", "token.json: No such file or directory"),
    cfg("gcs_key_file_missing", GCS + 'credentials_file = "{tmp}/key.json"\n', "mount #1 (/g).credentials_file",
        "key.json: No such file or directory"),
    # --- one-liners ---
    line("scheme_unknown", "{mnt}", "ftp://host/x", expect=("command line", "unknown scheme 'ftp'")),
    line("scheme_typo", "{mnt}", "s4://bucket", expect=("command line", "unknown scheme 's4'")),
    line("s3_no_bucket_url", "{mnt}", "s3://", expect=("command line", "mount #1 (/s3).bucket", "required")),
    line("s3_no_bucket_prefix_url", "{mnt}", "s3:///prefix=/x", expect=("command line", "mount #1 (/x).bucket", "required")),
    line("gs_no_bucket_url", "{mnt}", "gs://", expect=("command line", "mount #1 (/gcs).bucket", "required")),
    line("nfs_no_host_url", "{mnt}", "nfs://", expect=("command line", "url", "nfs://host")),
    line("empty_source", "{mnt}", "=/x", expect=("command line", "no source before '='")),
    line("bucket_space_url", "{mnt}", "s3://my bucket=/b", expect=("command line", "mount #1 (/b).bucket", "not a bucket name")),
    line("bucket_newline_url", "{mnt}", "s3://da\nta", expect=("command line", "mount #1 (/s3).bucket", "not a bucket name")),
    line("credentials_in_url", "{mnt}", f"s3://AKIAIOSFODNN7EXAMPLE:{SECRET}@bucket", secret=SECRET,
         expect=("command line", "credentials do not belong in a URL")),
    line("local_missing", "{mnt}", "{tmp}/gone=/x", expect=("command line", "mount #1 (/x).root", "No such file")),
    line("line_path_reserved", "{mnt}", "memory://x=/.vfs", expect=("command line", "mount #1.path", "reserved")),
    line("line_path_dotdot", "{mnt}", "memory://x=/a/../b", expect=("command line", "mount #1.path", "not allowed")),
    line("source_after_options", "{mnt}", "--config", "{cfg}", "=/x", config=MEM, expect=("no source before '='",)),
    line("foreground_backend_check", "{mnt}", "--foreground", "--config", "{cfg}", config=S3 + 'part_size = "1MiB"\n',
         expect=("c.toml", "mount #1 (/s3)", "part_size", "5 MiB")),
    # --- options ---
    line("option_unknown", "{mnt}", "memory://x", "--bogus", expect=("unrecognized arguments: --bogus",)),
    line("option_write_mode", "{mnt}", "memory://x", "--write-mode", "sometimes", expect=("--write-mode", "invalid choice")),
    line("option_metrics_addr", "{mnt}", "memory://x", "--metrics-addr", "nowhere", expect=("--metrics-addr", "HOST:PORT")),
    line("option_missing_value", "{mnt}", "--config", expect=("--config", "expected one argument")),
    # --- mountpoints ---
    line("mountpoint_file", "{tmp}/f", "memory://x", setup=mkfile("f"), expect=("{tmp}/f", "not a directory")),
    line("mountpoint_not_empty", "{mnt}", "memory://x", setup=mkfile("mnt/keep.txt"), expect=("{mnt}", "not empty", "1 entries")),
    line("mountpoint_under_file", "{tmp}/f/mnt", "memory://x", setup=mkfile("f"),
         expect=("{tmp}/f/mnt", "Not a directory")),
    line("mountpoint_uncreatable", "/proc/vfs-bad-input/mnt", "memory://x", expect=("/proc/vfs-bad-input/mnt", "cannot be created")),
    line("mountpoint_relative_file", "f", "memory://x", setup=mkfile("f"), expect=("{tmp}/f:", "not a directory")),
    line("mountpoint_relative_not_empty", "d", "memory://x", setup=mkfile("d/x"), expect=("{tmp}/d:", "not empty")),
    line("mountpoint_long_name", "{tmp}/" + "m" * 300, "memory://x", expect=("File name too long",)),
]


@dataclasses.dataclass
class Outcome:
    tmp: Path
    code: int
    stdout: str
    stderr: str
    log: str
    mounted: list[str]


def _run(case: Case, tmp: Path) -> Outcome:
    tmp.mkdir()
    if case.setup:
        case.setup(tmp)
    subst = {"{tmp}": str(tmp), "{mnt}": str(tmp / "mnt"), "{cfg}": str(tmp / "c.toml")}
    if case.config is not None:
        text = case.config.replace("{tmp}", str(tmp)) if isinstance(case.config, str) else case.config
        (tmp / "c.toml").write_bytes(text.encode() if isinstance(text, str) else text)
    args = []
    for a in case.args:
        for k, v in subst.items():
            a = a.replace(k, v)
        args.append(a)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(XDG_STATE_HOME=str(tmp / "state"), HOME=str(tmp / "home"))
    done = subprocess.run([sys.executable, "-m", "vfs", "mount", *args], cwd=tmp, env={**env, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, errors="replace", timeout=120)
    logs = "".join(p.read_text(errors="replace") for p in (tmp / "state").rglob("*.log")) if (tmp / "state").exists() else ""
    mounted = [ln for ln in Path("/proc/mounts").read_text().splitlines() if str(tmp) in ln.replace("\\040", " ")]
    for ln in mounted:  # accepted by mistake: leave nothing behind (the background process exits with it)
        unmount(ln.split()[1])
    return Outcome(tmp, done.returncode, done.stdout, done.stderr, logs, mounted)


@pytest.fixture(scope="session")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    base = tmp_path_factory.mktemp("bad")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = {c.name: pool.submit(_run, c, base / c.name) for c in CASES}
        return {name: f.result() for name, f in futures.items()}


def test_at_least_sixty_distinct_cases() -> None:
    assert len(CASES) >= 60 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.skipif(fuse_available() is not None, reason=str(fuse_available()))
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_refused_in_one_line(case: Case, outcomes: dict[str, Outcome]) -> None:
    out = outcomes[case.name]
    tmp = out.tmp
    assert out.mounted == [], f"left mounted: {out.mounted}"
    assert out.code != 0, out.stdout + out.stderr
    assert out.stdout == ""
    assert "Traceback" not in out.stderr and "Traceback" not in out.log, out.stderr + out.log[-2000:]
    assert out.stderr.endswith("\n") and out.stderr.count("\n") == 1, f"not one line:\n{out.stderr}"
    assert out.stderr.startswith("vfs") and len(out.stderr) < 1000, out.stderr[:2000]
    for part in case.expect:
        part = part.replace("{mnt}", str(tmp / "mnt")).replace("{tmp}", str(tmp))
        assert part in out.stderr, f"{part!r} not in {out.stderr!r}"
    if case.secret:
        assert case.secret not in out.stderr and case.secret not in out.log
