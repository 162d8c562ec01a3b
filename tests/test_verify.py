"""Master-side verification of pushed wheels and logs, on real files in a tmp dir.

``make_wheel`` builds real wheels with zipfile (and can break them in every
way a hostile or buggy builder might); test_ingest.py reuses it.
"""

from __future__ import annotations

import base64
import csv
import gzip
import hashlib
import io
import os
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from packaging.utils import parse_wheel_filename

from harness.upstream import seed_dir
from pinwheel.verify import Rejected, VerifiedWheel, verify_log, verify_wheel

MAX = 10 << 20
Rows = list[list[str]]


def record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


def metadata_for(name: str, version: str, requires_python: str | None = ">=3.9") -> bytes:
    text = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    if requires_python:
        text += f"Requires-Python: {requires_python}\n"
    return (text + "\nA long description.\n").encode()


def wheel_bytes(name: str = "foo", version: str = "1.0", tag: str = "py3-none-any", *,
                members: dict[str, bytes] | None = None, metadata: bytes | None = None,
                requires_python: str | None = ">=3.9", dist_info: str | None = None,
                tamper_record: Callable[[Rows], None] | None = None,
                unrecorded: list[tuple[str, bytes]] | None = None) -> bytes:
    """A wheel's bytes (the same for the same arguments): ``members`` plus a
    dist-info with METADATA, WHEEL and RECORD.

    ``tamper_record`` may edit RECORD's rows; ``unrecorded`` members are added
    to the zip without a RECORD entry (raw names, duplicates allowed).
    """
    package_dir = name.replace("-", "_").lower()
    members = dict(members if members is not None else
                   {f"{package_dir}/__init__.py": b"VALUE = 1\n"})
    di = dist_info or f"{name.replace('-', '_')}-{version}.dist-info"
    members[f"{di}/METADATA"] = (metadata if metadata is not None
                                 else metadata_for(name, version, requires_python))
    members[f"{di}/WHEEL"] = (f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                              f"Tag: {tag}\n").encode()
    rows = [[path, record_hash(data), str(len(data))] for path, data in members.items()]
    rows.append([f"{di}/RECORD", "", ""])
    if tamper_record:
        tamper_record(rows)
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    members[f"{di}/RECORD"] = out.getvalue().encode()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are one of the tests
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for path, data in [*members.items(), *(unrecorded or [])]:
                info = zipfile.ZipInfo(path, date_time=(2020, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                zf.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def make_wheel(directory: Path, name: str = "foo", version: str = "1.0",
               tag: str = "py3-none-any", filename: str | None = None,
               **kwargs: object) -> tuple[str, int, str]:
    """Write a wheel into ``directory``; return (filename, size, sha256)."""
    data = wheel_bytes(name, version, tag, **kwargs)  # type: ignore[arg-type]
    filename = filename or f"{name.replace('-', '_')}-{version}-{tag}.whl"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / filename).write_bytes(data)
    return filename, len(data), hashlib.sha256(data).hexdigest()


def check(directory: Path, filename: str, size: int, sha256: str, *, package: str = "foo",
          version: str = "1.0", abi: str = "cp311", platform: str = "linux_x86_64",
          max_size: int = MAX) -> VerifiedWheel:
    return verify_wheel(directory, filename, size, sha256, package, version, abi, platform,
                        max_size)


def rejected(directory: Path, filename: str, size: int, sha256: str, **kwargs: object) -> str:
    with pytest.raises(Rejected) as info:
        check(directory, filename, size, sha256, **kwargs)  # type: ignore[arg-type]
    return info.value.reason


# ------------------------------------------------------------------- good


def test_good_binary_wheel_passes_with_its_metadata(tmp_path):
    name, size, sha = make_wheel(tmp_path, tag="cp311-cp311-linux_x86_64",
                                 requires_python=">=3.9, <4")
    wheel = check(tmp_path, name, size, sha)
    assert (wheel.filename, wheel.package, wheel.version) == (name, "foo", "1.0")
    assert (wheel.python_tag, wheel.abi_tag, wheel.platform_tag) == (
        "cp311", "cp311", "linux_x86_64")
    assert wheel.requires_python == ">=3.9, <4"
    assert wheel.metadata_bytes == metadata_for("foo", "1.0", ">=3.9, <4")
    assert wheel.metadata_sha256 == hashlib.sha256(wheel.metadata_bytes).hexdigest()
    assert (wheel.sha256, wheel.size) == (sha, size)


def test_pure_wheel_with_unnormalised_name_and_version_passes(tmp_path):
    name, size, sha = make_wheel(tmp_path, "Foo.Bar", "1.0.0", "py2.py3-none-any",
                                 requires_python=None)
    wheel = check(tmp_path, name, size, sha, package="foo-bar", version="1.0")
    assert wheel.package == "foo-bar" and wheel.requires_python is None
    assert wheel.python_tag == "py2.py3"


@pytest.mark.parametrize("tag", ["cp38-abi3-linux_x86_64", "cp311-none-linux_x86_64",
                                 "py39-none-any", "cp310-none-any"])
def test_older_interpreter_and_stable_abi_tags_fit_a_newer_builder(tmp_path, tag):
    name, size, sha = make_wheel(tmp_path, tag=tag)
    assert check(tmp_path, name, size, sha).platform_tag == tag.split("-")[2]


REAL_WHEELS = sorted([*seed_dir().glob("*.whl"), *Path("/usr/share/python-wheels").glob("*.whl")])


@pytest.mark.skipif(not REAL_WHEELS, reason="no real wheels here: run `make test-deps`")
def test_real_wheels_from_pypi_pass(tmp_path):
    for wheel in REAL_WHEELS:
        name, version, _, _ = parse_wheel_filename(wheel.name)
        data = wheel.read_bytes()
        (tmp_path / wheel.name).write_bytes(data)
        got = check(tmp_path, wheel.name, len(data), hashlib.sha256(data).hexdigest(),
                    package=name, version=str(version), max_size=1 << 30)
        assert got.metadata_bytes.startswith(b"Metadata-Version: ")


def test_record_hash_written_in_hex_is_checked_too(tmp_path):
    def hexify(rows: Rows) -> None:
        rows[0][1] = "sha256=" + hashlib.sha256(b"VALUE = 1\n").hexdigest()

    name, size, sha = make_wheel(tmp_path, tamper_record=hexify)
    assert check(tmp_path, name, size, sha).sha256 == sha

    def wrong_hex(rows: Rows) -> None:
        rows[0][1] = "sha256=" + hashlib.sha256(b"other").hexdigest()

    name, size, sha = make_wheel(tmp_path, tamper_record=wrong_hex)
    assert "does not match its RECORD hash" in rejected(tmp_path, name, size, sha)


# -------------------------------------------------------- the file on disk


@pytest.mark.parametrize("filename", [
    "../foo-1.0-py3-none-any.whl", "sub/foo-1.0-py3-none-any.whl", "/etc/shadow.whl",
    "foo..whl", "foo-1.0-py3-none-any.whl\x00", ".hidden-1.0-py3-none-any.whl",
    "foo-1.0-py3-none-any.zip", "x" * 252 + ".whl", "foo\\1.0-py3-none-any.whl", "",
])
def test_unsafe_file_names_are_refused_without_touching_the_disk(tmp_path, filename):
    missing = tmp_path / "no-such-incoming-dir"
    reason = rejected(missing, filename, 1, "0" * 64)
    assert "incoming directory" not in reason, "the name alone must refuse it"
    assert "file name" in reason
    assert not missing.exists()


def test_symlink_is_refused_even_to_a_valid_wheel(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    name, size, sha = make_wheel(elsewhere)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    (incoming / name).symlink_to(elsewhere / name)
    assert "symlink" in rejected(incoming, name, size, sha)


def test_symlink_to_a_secret_is_refused(tmp_path):
    (tmp_path / "shadow").write_text("root:secret\n")
    (tmp_path / "foo-1.0-py3-none-any.whl").symlink_to(tmp_path / "shadow")
    assert "symlink" in rejected(tmp_path, "foo-1.0-py3-none-any.whl", 12, "0" * 64)


def test_hard_link_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    name, size, sha = make_wheel(elsewhere)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    os.link(elsewhere / name, incoming / name)
    assert "2 hard links" in rejected(incoming, name, size, sha)


def test_directory_and_fifo_are_refused(tmp_path):
    (tmp_path / "foo-1.0-py3-none-any.whl").mkdir()
    assert "a directory" in rejected(tmp_path, "foo-1.0-py3-none-any.whl", 1, "0" * 64)
    os.mkfifo(tmp_path / "foo-2.0-py3-none-any.whl")
    reason = rejected(tmp_path, "foo-2.0-py3-none-any.whl", 1, "0" * 64, version="2.0")
    assert "a FIFO" in reason


def test_missing_file_and_missing_incoming_dir_are_refused(tmp_path):
    assert "not in the builder's incoming directory" in rejected(
        tmp_path, "foo-1.0-py3-none-any.whl", 1, "0" * 64)
    assert "does not exist" in rejected(
        tmp_path / "gone", "foo-1.0-py3-none-any.whl", 1, "0" * 64)


def test_size_other_than_reported_is_refused(tmp_path):
    name, size, sha = make_wheel(tmp_path)
    assert "builder reported" in rejected(tmp_path, name, size + 1, sha)


def test_file_over_the_size_limit_is_refused(tmp_path):
    name, size, sha = make_wheel(tmp_path)
    assert "over the limit" in rejected(tmp_path, name, size, sha, max_size=size - 1)


def test_hash_other_than_reported_is_refused(tmp_path):
    name, size, _ = make_wheel(tmp_path)
    assert "SHA-256" in rejected(tmp_path, name, size, "0" * 64)


# ------------------------------------------------------------- name, tags


def test_wheel_of_another_package_is_refused(tmp_path):
    name, size, sha = make_wheel(tmp_path, "bar")
    assert "wheel of 'bar'" in rejected(tmp_path, name, size, sha)


def test_wheel_of_another_version_is_refused(tmp_path):
    name, size, sha = make_wheel(tmp_path, version="2.0")
    assert "version 2.0" in rejected(tmp_path, name, size, sha)


def test_unparseable_wheel_name_and_version_are_refused(tmp_path):
    name, size, sha = make_wheel(tmp_path, filename="foo-1.0.whl")
    assert "not a valid wheel file name" in rejected(tmp_path, name, size, sha)
    name, size, sha = make_wheel(tmp_path, filename="foo-notaversion-py3-none-any.whl")
    assert "not a valid wheel file name" in rejected(tmp_path, name, size, sha)
    name, size, sha = make_wheel(tmp_path)
    assert "not a valid version" in rejected(tmp_path, name, size, sha, version="banana")


@pytest.mark.parametrize(("tag", "why"), [
    ("cp39-cp39-linux_armv7l", "ABI tag cp39"),
    ("cp311-cp311-linux_armv7l", "platform tag linux_armv7l"),
    ("cp311-cp311-manylinux_2_17_x86_64", "platform tag manylinux_2_17_x86_64"),
    ("cp312-cp312-linux_x86_64", "newer than the builder"),
    ("cp312-abi3-linux_x86_64", "newer than the builder"),
    ("py312-none-any", "newer than the builder"),
    ("py2-none-any", "does not run on Python 3"),
    ("pp39-pypy39_pp73-linux_x86_64", "not py3, pyXY or cpXY"),
    ("py3-abi3-any", "needs a cpXY interpreter tag"),
    ("cp310-cp311-linux_x86_64", "needs interpreter tag cp311"),
])
def test_tags_that_do_not_fit_the_builder_are_refused(tmp_path, tag, why):
    name, size, sha = make_wheel(tmp_path, tag=tag)
    reason = rejected(tmp_path, name, size, sha)
    assert "does not fit builder cp311/linux_x86_64" in reason and why in reason


# ---------------------------------------------------------------- contents


def test_non_zip_wheel_is_refused(tmp_path):
    data = b"#!/bin/sh\necho not a wheel\n"
    (tmp_path / "foo-1.0-py3-none-any.whl").write_bytes(data)
    reason = rejected(tmp_path, "foo-1.0-py3-none-any.whl", len(data),
                      hashlib.sha256(data).hexdigest())
    assert "not a valid zip archive" in reason


@pytest.mark.parametrize(("member", "why"), [
    ("../../etc/cron.d/evil", "'..'"),
    ("foo/../../evil.py", "'..'"),
    ("/etc/passwd", "absolute path"),
    ("foo\\..\\..\\evil.py", "backslash"),
    ("C:/evil.py", "drive letter"),
    ("foo//evil.py", "empty"),
])
def test_member_paths_that_escape_are_refused(tmp_path, member, why):
    name, size, sha = make_wheel(tmp_path, members={"foo/__init__.py": b"", member: b"x"})
    reason = rejected(tmp_path, name, size, sha)
    assert "has a member" in reason and why in reason


def test_duplicate_member_names_are_refused(tmp_path):
    name, size, sha = make_wheel(tmp_path, unrecorded=[("foo/__init__.py", b"evil")])
    assert "two members named 'foo/__init__.py'" in rejected(tmp_path, name, size, sha)


def test_missing_or_extra_dist_info_is_refused(tmp_path):
    name, size, sha = make_wheel(
        tmp_path, unrecorded=[("other-1.0.dist-info/METADATA", b"Name: other\n")])
    assert "exactly one .dist-info" in rejected(tmp_path, name, size, sha)
    name, size, sha = make_wheel(tmp_path, dist_info="bar-1.0.dist-info")
    assert "not the .dist-info of foo" in rejected(tmp_path, name, size, sha)


def test_dist_info_without_record_is_refused(tmp_path):
    data = wheel_bytes()
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            if not info.filename.endswith("RECORD"):
                dst.writestr(info, src.read(info))
    (tmp_path / "foo-1.0-py3-none-any.whl").write_bytes(buf.getvalue())
    reason = rejected(tmp_path, "foo-1.0-py3-none-any.whl", len(buf.getvalue()),
                      hashlib.sha256(buf.getvalue()).hexdigest())
    assert "has no RECORD" in reason


def test_metadata_name_or_version_mismatch_is_refused(tmp_path):
    name, size, sha = make_wheel(tmp_path, metadata=metadata_for("bar", "1.0"))
    assert "METADATA names project 'bar'" in rejected(tmp_path, name, size, sha)
    name, size, sha = make_wheel(tmp_path, metadata=metadata_for("foo", "1.1"))
    assert "METADATA says version 1.1" in rejected(tmp_path, name, size, sha)
    name, size, sha = make_wheel(tmp_path, metadata=b"Name: foo\nName: foo\nVersion: 1.0\n")
    assert "2 Name fields" in rejected(tmp_path, name, size, sha)


def test_record_hash_mismatch_is_refused(tmp_path):
    def lie(rows: Rows) -> None:
        rows[0][1] = record_hash(b"something else")

    name, size, sha = make_wheel(tmp_path, tamper_record=lie)
    assert "does not match its RECORD hash" in rejected(tmp_path, name, size, sha)


def test_record_size_mismatch_and_weak_hash_are_refused(tmp_path):
    def wrong_size(rows: Rows) -> None:
        rows[0][2] = "12345"

    def md5(rows: Rows) -> None:
        rows[0][1] = "md5=" + rows[0][1].split("=", 1)[1]

    name, size, sha = make_wheel(tmp_path, tamper_record=wrong_size)
    assert "12345 bytes" in rejected(tmp_path, name, size, sha)
    name, size, sha = make_wheel(tmp_path, tamper_record=md5)
    assert "hash algorithm 'md5'" in rejected(tmp_path, name, size, sha)


def test_member_missing_from_record_is_refused(tmp_path):
    name, size, sha = make_wheel(tmp_path, unrecorded=[("foo/sneaky.py", b"import os\n")])
    assert "'foo/sneaky.py' is not listed in RECORD" in rejected(tmp_path, name, size, sha)


def test_member_listed_without_a_hash_is_refused(tmp_path):
    def unhash(rows: Rows) -> None:
        rows[0][1] = ""

    name, size, sha = make_wheel(tmp_path, tamper_record=unhash)
    assert "RECORD has no hash for 'foo/__init__.py'" in rejected(tmp_path, name, size, sha)


def test_record_entry_for_a_missing_member_is_refused(tmp_path):
    def ghost(rows: Rows) -> None:
        rows.append(["foo/ghost.py", record_hash(b""), "0"])

    name, size, sha = make_wheel(tmp_path, tamper_record=ghost)
    assert "which is not in the wheel" in rejected(tmp_path, name, size, sha)


def test_zip_bomb_is_refused_by_its_declared_size(tmp_path):
    big = b"\0" * (4 << 20)
    name, size, sha = make_wheel(tmp_path, members={"foo/zeros.bin": big})
    assert size < (1 << 20)
    assert "unpacks to" in rejected(tmp_path, name, size, sha, max_size=size + 10)


# --------------------------------------------------------------------- log


def write_log(directory: Path, name: str, data: bytes) -> tuple[int, str]:
    (directory / name).write_bytes(data)
    return len(data), hashlib.sha256(data).hexdigest()


def test_good_log_passes(tmp_path):
    size, sha = write_log(tmp_path, "job-1.log.gz", gzip.compress(b"building...\n"))
    got = verify_log(tmp_path, "job-1.log.gz", size, sha, MAX)
    assert (got.filename, got.size, got.sha256) == ("job-1.log.gz", size, sha)


def test_bad_logs_are_refused(tmp_path):
    good = gzip.compress(b"log\n")
    size, sha = write_log(tmp_path, "job-1.log.gz", good)
    cases = [
        (("../job-1.log.gz", size, sha, MAX), "contains a path separator"),
        (("job-1.log", size, sha, MAX), "not a safe name"),
        (("job-1.log.gz", size + 1, sha, MAX), "builder reported"),
        (("job-1.log.gz", size, "0" * 64, MAX), "SHA-256"),
        (("job-1.log.gz", size, sha, size - 1), "over the limit"),
    ]
    plain_size, plain_sha = write_log(tmp_path, "job-2.log.gz", b"plain text\n")
    cases.append((("job-2.log.gz", plain_size, plain_sha, MAX), "not gzip-compressed"))
    (tmp_path / "job-3.log.gz").symlink_to(tmp_path / "job-1.log.gz")
    cases.append((("job-3.log.gz", size, sha, MAX), "symlink"))
    for args, why in cases:
        with pytest.raises(Rejected, match=why):
            verify_log(tmp_path, *args)
