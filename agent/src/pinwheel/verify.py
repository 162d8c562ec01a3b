"""The master's verification of what a builder reports: wheels and build logs.

Everything a builder pushes is untrusted: a compromised builder may upload a
symlink to /etc/shadow, a zip whose members escape the install directory, a
wheel for another project, or a wheel whose RECORD lies. ``verify_wheel``
checks one reported wheel in the builder's incoming directory and either
returns what the index needs to publish it or raises ``Rejected`` with a
reason meant for the operator reading the quarantine.
"""

from __future__ import annotations

import base64
import csv
import email.message
import email.parser
import email.policy
import errno
import hashlib
import io
import os
import re
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from packaging.tags import Tag
from packaging.utils import (
    InvalidWheelFilename,
    canonicalize_name,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from . import aptdeps

WHEEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*\.whl$")
LOG_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*\.log\.gz$")
MAX_NAME_LENGTH = 255
MAX_MEMBERS = 100_000
UNPACKED_FACTOR = 20              # a wheel may unpack to at most this many times its size
MAX_METADATA_SIZE = 32 << 20      # METADATA and WHEEL are read into memory
MAX_RECORD_SIZE = 64 << 20
GZIP_MAGIC = b"\x1f\x8b"
RECORD_HASHES = frozenset({"sha256", "sha384", "sha512"})
_CHUNK = 1 << 20
_CPYTHON_ABI_RE = re.compile(r"^cp(\d)(\d+)$")
_INTERPRETER_RE = re.compile(r"^(py|cp)(\d)(\d*)$")
_SIGNATURES = ("RECORD.jws", "RECORD.p7s")
_NATIVE_NAME_RE = re.compile(r"\.(so|pyd|dll|dylib)$|\.so\.[0-9.]+$")


class Rejected(Exception):
    """A reported file failed verification; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class VerifiedWheel:
    """A wheel that passed every check. ``package``/``version`` are the job's."""

    filename: str
    package: str
    version: str
    python_tag: str
    abi_tag: str
    platform_tag: str
    requires_python: str | None
    metadata_bytes: bytes
    metadata_sha256: str
    sha256: str
    size: int
    # What its ELF files need, and its members' base names (pinwheel.aptdeps.needed_in).
    needed: frozenset[str] = frozenset()
    members: frozenset[str] = frozenset()
    # Members that are compiled code (ELF files, or named like a shared library): a wheel
    # tagged pure must have none (pinwheel.coverage).
    native: tuple[str, ...] = ()


@dataclass(frozen=True)
class VerifiedLog:
    filename: str
    size: int
    sha256: str


# ------------------------------------------------------------------ the file


def check_name(filename: str, pattern: re.Pattern[str], kind: str) -> None:
    """Refuse a file name that could escape the incoming directory (never touches disk)."""
    if not isinstance(filename, str) or not filename:
        raise Rejected(f"empty {kind} file name")
    shown = repr(filename[:300])
    if len(filename) > MAX_NAME_LENGTH:
        raise Rejected(f"{kind} file name {shown} is longer than {MAX_NAME_LENGTH} characters")
    if "/" in filename or "\\" in filename:
        raise Rejected(f"{kind} file name {shown} contains a path separator")
    if ".." in filename:
        raise Rejected(f"{kind} file name {shown} contains '..'")
    if not pattern.match(filename):
        raise Rejected(f"{kind} file name {shown} is not a safe name "
                       f"(expected to match {pattern.pattern})")


def open_regular(path_dir: Path, filename: str) -> tuple[int, os.stat_result]:
    """Open ``path_dir/filename`` read-only without following symlinks.

    Returns the descriptor and its fstat; refuses anything but a regular file
    with a single link.
    ``filename`` must already have passed ``check_name``. O_NONBLOCK keeps a
    FIFO planted by a builder from blocking the open.
    """
    try:
        dir_fd = os.open(path_dir, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        raise Rejected(f"the builder's incoming directory {path_dir} does not exist") from None
    except OSError as exc:
        raise Rejected(f"cannot open the incoming directory {path_dir}: {exc.strerror}") from None
    try:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
        fd = os.open(filename, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        raise Rejected(f"{filename} is not in the builder's incoming directory "
                       "(was it pushed?)") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP or _is_symlink(dir_fd, filename):
            raise Rejected(f"{filename} is a symlink, not a regular file") from None
        raise Rejected(f"cannot open {filename}: {exc.strerror}") from None
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Rejected(f"{filename} is not a regular file ({_file_kind(st.st_mode)})")
        if st.st_nlink != 1:
            # rsync never hard-links what it receives; a link may point at a file
            # outside the incoming directory that the master can read.
            raise Rejected(f"{filename} has {st.st_nlink} hard links (expected 1)")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _is_symlink(dir_fd: int, filename: str) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(filename, dir_fd=dir_fd).st_mode)
    except OSError:
        return False


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return kind
    return f"mode {mode:o}"


def _check_size(filename: str, actual: int, reported: int, limit: int) -> None:
    if actual > limit:
        raise Rejected(f"{filename} is {actual} bytes, over the limit of {limit}")
    if actual != reported:
        raise Rejected(f"{filename} is {actual} bytes but the builder reported {reported}")


def _sha256_fd(fd: int) -> str:
    digest = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    while True:
        chunk = os.read(fd, _CHUNK)
        if not chunk:
            return digest.hexdigest()
        digest.update(chunk)


def _check_sha256(filename: str, fd: int, reported: str) -> str:
    try:
        actual = _sha256_fd(fd)
    except OSError as exc:
        raise Rejected(f"I/O error reading {filename}: {exc.strerror}") from None
    if actual != reported.lower():
        raise Rejected(f"{filename} has SHA-256 {actual} but the builder reported {reported}")
    return actual


# ------------------------------------------------------------ name and tags


def _parse_version(value: str, what: str) -> Version:
    try:
        return Version(value)
    except InvalidVersion:
        raise Rejected(f"{what} {value!r} is not a valid version") from None


def _parse_filename(filename: str, package: str,
                    version: str) -> tuple[frozenset[Tag], tuple[str, str, str]]:
    try:
        name, wheel_version, _build, tags = parse_wheel_filename(filename)
    except (InvalidWheelFilename, InvalidVersion, ValueError) as exc:
        raise Rejected(f"{filename} is not a valid wheel file name: {exc}") from None
    if canonicalize_name(name) != canonicalize_name(package):
        raise Rejected(f"{filename} is a wheel of {canonicalize_name(name)!r}, "
                       f"but the job was {package!r}")
    if wheel_version != _parse_version(version, "the job's version"):
        raise Rejected(f"{filename} is version {wheel_version}, but the job was {version}")
    py, abi, plat = filename[: -len(".whl")].split("-")[-3:]
    return tags, (py, abi, plat)


def _builder_version(builder_abi: str) -> tuple[int, int] | None:
    m = _CPYTHON_ABI_RE.match(builder_abi)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _interpreter_problem(interp: str, builder: tuple[int, int] | None,
                         has_py3: bool) -> str | None:
    m = _INTERPRETER_RE.match(interp)
    if not m:
        return f"interpreter tag {interp} is not py3, pyXY or cpXY"
    kind, major, minor = m.group(1), int(m.group(2)), m.group(3)
    if kind == "py" and not minor:
        if major == 3 or (major == 2 and has_py3):
            return None
        return f"interpreter tag {interp} does not run on Python 3"
    if not minor:
        return f"interpreter tag {interp} names no Python version"
    if builder is None:
        return f"interpreter tag {interp} needs a CPython builder"
    if (major, int(minor)) > builder:
        return f"interpreter tag {interp} is newer than the builder's Python"
    if major != builder[0]:
        return f"interpreter tag {interp} is not for Python {builder[0]}"
    return None


def _tag_problem(tag: Tag, builder_abi: str, builder_platform: str,
                 has_py3: bool) -> str | None:
    builder = _builder_version(builder_abi)
    problem = _interpreter_problem(tag.interpreter, builder, has_py3)
    if problem:
        return problem
    own_abis = {builder_abi}
    if builder and builder < (3, 8):
        own_abis.add(builder_abi + "m")  # pymalloc ABI of CPython 3.7 and older
    if tag.abi in own_abis:
        if tag.interpreter != builder_abi:
            return f"ABI tag {tag.abi} needs interpreter tag {builder_abi}, not {tag.interpreter}"
    elif tag.abi == "abi3":
        if not tag.interpreter.startswith("cp"):
            return "the stable ABI (abi3) needs a cpXY interpreter tag"
    elif tag.abi != "none":
        return f"ABI tag {tag.abi} is not the builder's ({builder_abi}), abi3 or none"
    if tag.platform not in (builder_platform, "any"):
        return f"platform tag {tag.platform} is not the builder's ({builder_platform}) or any"
    return None


def check_tags(filename: str, tags: frozenset[Tag], builder_abi: str,
               builder_platform: str) -> None:
    """Refuse a wheel with a tag this builder could not have produced."""
    has_py3 = any(t.interpreter == "py3" for t in tags)
    for tag in sorted(tags, key=str):
        problem = _tag_problem(tag, builder_abi, builder_platform, has_py3)
        if problem:
            raise Rejected(f"{filename} has tag {tag} that does not fit builder "
                           f"{builder_abi}/{builder_platform}: {problem}")


# ---------------------------------------------------------------- contents


def _member_problem(name: str) -> str | None:
    if not name:
        return "an empty name"
    if "\\" in name:
        return "a backslash"
    if "\x00" in name:
        return "a NUL character"
    if name.startswith("/"):
        return "an absolute path"
    parts = name[:-1].split("/") if name.endswith("/") else name.split("/")
    if re.match(r"^[A-Za-z]:", parts[0]):
        return "a drive letter"
    if any(p in ("", ".", "..") for p in parts):
        return "an empty, '.' or '..' path component"
    return None


def _check_members(filename: str, infos: list[zipfile.ZipInfo], max_unpacked: int) -> None:
    if len(infos) > MAX_MEMBERS:
        raise Rejected(f"{filename} has {len(infos)} members, over the limit of {MAX_MEMBERS}")
    seen: set[str] = set()
    unpacked = 0
    for info in infos:
        problem = _member_problem(info.filename)
        if problem:
            raise Rejected(f"{filename} has a member {info.filename[:300]!r} with {problem}")
        if info.filename in seen:
            raise Rejected(f"{filename} has two members named {info.filename[:300]!r}")
        seen.add(info.filename)
        if info.flag_bits & 0x1:
            raise Rejected(f"{filename} has an encrypted member {info.filename[:300]!r}")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise Rejected(f"{filename} has a symlink member {info.filename[:300]!r}")
        unpacked += info.file_size
    if unpacked > max_unpacked:
        raise Rejected(f"{filename} unpacks to {unpacked} bytes, over the limit of "
                       f"{max_unpacked}")


def _dist_info(filename: str, names: set[str], package: str, version: str) -> str:
    tops = {n.split("/", 1)[0] for n in names if "/" in n}
    found = sorted(t for t in tops if t.endswith(".dist-info"))
    if len(found) != 1:
        listed = ", ".join(found[:5]) or "none"
        raise Rejected(f"{filename} must have exactly one .dist-info directory, has "
                       f"{len(found)} ({listed})")
    dist_info = found[0]
    name, sep, dver = dist_info[: -len(".dist-info")].rpartition("-")
    if not sep or canonicalize_name(name) != canonicalize_name(package):
        raise Rejected(f"{filename}: {dist_info} is not the .dist-info of {package}")
    try:
        matches = Version(dver) == Version(version)
    except InvalidVersion:
        matches = False
    if not matches:
        raise Rejected(f"{filename}: {dist_info} is not the .dist-info of version {version}")
    for required in ("METADATA", "WHEEL", "RECORD"):
        if f"{dist_info}/{required}" not in names:
            raise Rejected(f"{filename}: {dist_info} has no {required}")
    return dist_info


def _read_small(zf: zipfile.ZipFile, name: str, limit: int) -> bytes:
    info = zf.getinfo(name)
    if info.file_size > limit:
        raise Rejected(f"{name} is {info.file_size} bytes, over the limit of {limit}")
    return zf.read(info)


def _headers(filename: str, member: str, data: bytes) -> email.message.Message:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected(f"{filename}: {member} is not UTF-8") from None
    return email.parser.Parser(policy=email.policy.compat32).parsestr(text, headersonly=True)


def _one_header(filename: str, member: str, msg: email.message.Message, field: str,
                required: bool = True) -> str | None:
    values = msg.get_all(field) or []
    if len(values) > 1:
        raise Rejected(f"{filename}: {member} has {len(values)} {field} fields")
    if not values:
        if required:
            raise Rejected(f"{filename}: {member} has no {field} field")
        return None
    return " ".join(str(values[0]).split())


def _check_metadata(filename: str, data: bytes, package: str,
                    version: str) -> str | None:
    """Check METADATA's Name and Version; return its Requires-Python (or None)."""
    member = "METADATA"
    msg = _headers(filename, member, data)
    name = _one_header(filename, member, msg, "Name") or ""
    if canonicalize_name(name) != canonicalize_name(package):
        raise Rejected(f"{filename}: METADATA names project {name[:200]!r}, "
                       f"but the job was {package!r}")
    meta_version = _one_header(filename, member, msg, "Version") or ""
    if _parse_version(meta_version, "METADATA's Version") != Version(version):
        raise Rejected(f"{filename}: METADATA says version {meta_version[:200]}, "
                       f"but the job was {version}")
    requires = _one_header(filename, member, msg, "Requires-Python", required=False)
    return requires or None


def _check_wheel_file(filename: str, data: bytes) -> None:
    msg = _headers(filename, "WHEEL", data)
    wheel_version = _one_header(filename, "WHEEL", msg, "Wheel-Version") or ""
    if wheel_version.split(".")[0] != "1":
        raise Rejected(f"{filename}: unsupported Wheel-Version {wheel_version[:50]!r} "
                       "(expected 1.x)")


def _parse_record(filename: str, data: bytes, record: str) -> dict[str, tuple[str, str]]:
    try:
        rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise Rejected(f"{filename}: {record} is not a valid CSV file: {exc}") from None
    entries: dict[str, tuple[str, str]] = {}
    for row in rows:
        if not row or row == [""]:
            continue
        if len(row) != 3:
            raise Rejected(f"{filename}: {record} has a row with {len(row)} fields, not 3: "
                           f"{row[:3]!r}"[:400])
        path, hash_, size = row
        if path in entries:
            raise Rejected(f"{filename}: {record} lists {path[:300]!r} twice")
        entries[path] = (hash_, size)
    return entries


def _member_digests(zf: zipfile.ZipFile, info: zipfile.ZipInfo, algorithm: str) -> set[str]:
    """The member's digest, urlsafe-base64 (as the spec says) and hex (as some tools write)."""
    digest = hashlib.new(algorithm)
    with zf.open(info) as fh:
        while True:
            chunk = fh.read(_CHUNK)
            if not chunk:
                break
            digest.update(chunk)
    b64 = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode("ascii")
    return {b64, digest.hexdigest()}


def _check_record_entry(filename: str, zf: zipfile.ZipFile, info: zipfile.ZipInfo,
                        hash_: str, size: str) -> None:
    member = info.filename[:300]
    algorithm, sep, expected = hash_.partition("=")
    if not sep or not expected:
        raise Rejected(f"{filename}: RECORD has no hash for {member!r}")
    if algorithm not in RECORD_HASHES:
        raise Rejected(f"{filename}: RECORD uses hash algorithm {algorithm[:20]!r} for "
                       f"{member!r} (expected one of {', '.join(sorted(RECORD_HASHES))})")
    if size and size != str(info.file_size):
        raise Rejected(f"{filename}: RECORD says {member!r} is {size[:30]} bytes, "
                       f"it is {info.file_size}")
    if expected.rstrip("=") not in _member_digests(zf, info, algorithm):
        raise Rejected(f"{filename}: {member!r} does not match its RECORD hash")


def _check_record(filename: str, zf: zipfile.ZipFile, dist_info: str) -> None:
    record = f"{dist_info}/RECORD"
    entries = _parse_record(filename, _read_small(zf, record, MAX_RECORD_SIZE), record)
    files = {i.filename: i for i in zf.infolist() if not i.is_dir()}
    unsigned = {record} | {f"{dist_info}/{s}" for s in _SIGNATURES}
    for path in entries:
        if path not in files and path not in unsigned:
            raise Rejected(f"{filename}: RECORD lists {path[:300]!r}, which is not in the wheel")
    for path, info in files.items():
        if path in unsigned:
            continue
        if path not in entries:
            raise Rejected(f"{filename}: {path[:300]!r} is not listed in RECORD")
        _check_record_entry(filename, zf, info, *entries[path])


def _native_members(zf: zipfile.ZipFile) -> tuple[str, ...]:
    """Members that are compiled code: named like a shared library, or starting like an ELF
    file (whether or not the rest of it parses)."""
    found: list[str] = []
    for info in zf.infolist():
        if info.is_dir():
            continue
        if _NATIVE_NAME_RE.search(info.filename):
            found.append(info.filename)
            continue
        if info.file_size >= 4:
            with zf.open(info) as member:
                if member.read(4) == b"\x7fELF":
                    found.append(info.filename)
    return tuple(found)


def _check_contents(filename: str, fh: IO[bytes], package: str, version: str,
                    max_unpacked: int) -> tuple[bytes, str | None, tuple[frozenset[str],
                                                                        frozenset[str]],
                                                tuple[str, ...]]:
    """Check the archive; return METADATA's bytes, its Requires-Python, the libraries
    its ELF files need with its members' base names, and its compiled members."""
    try:
        with zipfile.ZipFile(fh) as zf:
            infos = zf.infolist()
            _check_members(filename, infos, max_unpacked)
            dist_info = _dist_info(filename, {i.filename for i in infos}, package, version)
            metadata = _read_small(zf, f"{dist_info}/METADATA", MAX_METADATA_SIZE)
            requires_python = _check_metadata(filename, metadata, package, version)
            _check_wheel_file(filename, _read_small(zf, f"{dist_info}/WHEEL", MAX_METADATA_SIZE))
            _check_record(filename, zf, dist_info)
            libraries = aptdeps.needed_in(zf)
            native = _native_members(zf)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError,
            NotImplementedError, RuntimeError, ValueError) as exc:
        raise Rejected(f"{filename} is not a valid zip archive: {exc}") from None
    except OSError as exc:
        raise Rejected(f"I/O error reading {filename}: {exc}") from None
    return metadata, requires_python, libraries, native


# ------------------------------------------------------------------ public


def verify_wheel(path_dir: Path, filename: str, size: int, sha256: str, package: str,
                 version: str, builder_abi: str, builder_platform: str,
                 max_size: int, max_unpacked: int | None = None) -> VerifiedWheel:
    """Verify the wheel ``filename`` a builder pushed to ``path_dir``.

    ``size`` and ``sha256`` are what the builder reported; ``package`` (PEP 503
    normalised) and ``version`` are the job's; ``builder_abi`` and
    ``builder_platform`` are the builder's registration. ``max_unpacked``
    bounds the sum of member sizes (default ``UNPACKED_FACTOR * max_size``).
    Raises ``Rejected`` with the reason on the first failed check.
    """
    check_name(filename, WHEEL_NAME_RE, "wheel")
    fd, st = open_regular(path_dir, filename)
    with os.fdopen(fd, "rb") as fh:
        _check_size(filename, st.st_size, size, max_size)
        digest = _check_sha256(filename, fd, sha256)
        tags, (py, abi, plat) = _parse_filename(filename, package, version)
        fh.seek(0)
        limit = max_unpacked if max_unpacked is not None else UNPACKED_FACTOR * max_size
        metadata, requires_python, (needed, members), native = _check_contents(
            filename, fh, package, version, limit)
    check_tags(filename, tags, builder_abi, builder_platform)
    return VerifiedWheel(
        filename=filename, package=canonicalize_name(package), version=version,
        python_tag=py, abi_tag=abi, platform_tag=plat, requires_python=requires_python,
        metadata_bytes=metadata, metadata_sha256=hashlib.sha256(metadata).hexdigest(),
        sha256=digest, size=st.st_size, needed=needed, members=members, native=native,
    )


def verify_log(path_dir: Path, filename: str, size: int, sha256: str,
               max_log_size: int) -> VerifiedLog:
    """Verify the gzipped build log ``filename`` a builder pushed to ``path_dir``."""
    check_name(filename, LOG_NAME_RE, "log")
    fd, st = open_regular(path_dir, filename)
    try:
        _check_size(filename, st.st_size, size, max_log_size)
        digest = _check_sha256(filename, fd, sha256)
        os.lseek(fd, 0, os.SEEK_SET)
        if os.read(fd, len(GZIP_MAGIC)) != GZIP_MAGIC:
            raise Rejected(f"{filename} is not gzip-compressed")
    except OSError as exc:
        raise Rejected(f"I/O error reading {filename}: {exc.strerror}") from None
    finally:
        os.close(fd)
    return VerifiedLog(filename=filename, size=st.st_size, sha256=digest)
