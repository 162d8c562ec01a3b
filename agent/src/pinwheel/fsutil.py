"""Atomic file writes for everything nginx serves.

A reader (nginx, rsync mirrors) must never see a half-written file: each
write goes to a temporary name in the destination's own directory, is
fsynced, given mode 0644 and renamed over the destination. The directory is
fsynced afterwards so the rename survives a crash.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Union

FILE_MODE = 0o644
DIR_MODE = 0o755
_CHUNK = 1 << 20

Source = Union[int, str, Path]


class DigestMismatch(Exception):
    """The bytes copied do not have the expected SHA-256 (the source changed)."""


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (after a rename into it) to disk."""
    _fsync(path, os.O_DIRECTORY)


def fsync_file(path: Path) -> None:
    """Flush a regular file's contents to disk (never through a symlink)."""
    _fsync(path, os.O_NOFOLLOW)


def _temp_beside(dest: Path) -> tuple[int, str]:
    return tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)


def _discard(tmp: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)


def _install(fd: int, tmp: str, dest: Path, mode: int) -> None:
    """chmod, fsync and close the temporary file ``fd``, then rename it to ``dest``.

    Closes ``fd`` in every case; on failure the temporary file is removed.
    """
    try:
        try:
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dest)
    except BaseException:
        _discard(tmp)
        raise
    fsync_dir(dest.parent)


def atomic_write_bytes(path: str | Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Replace ``path`` with ``data`` atomically (readers see old or new, never half)."""
    dest = Path(path)
    fd, tmp = _temp_beside(dest)
    try:
        _write_all(fd, data)
    except BaseException:
        os.close(fd)
        _discard(tmp)
        raise
    _install(fd, tmp, dest, mode)


def atomic_write_text(path: str | Path, text: str, mode: int = FILE_MODE,
                      encoding: str = "utf-8") -> None:
    """Replace ``path`` with ``text`` atomically."""
    atomic_write_bytes(path, text.encode(encoding), mode)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _copy_fd(src_fd: int, dst_fd: int) -> str:
    """Copy everything from ``src_fd`` (from its start) to ``dst_fd``; return the SHA-256."""
    digest = hashlib.sha256()
    os.lseek(src_fd, 0, os.SEEK_SET)
    while True:
        chunk = os.read(src_fd, _CHUNK)
        if not chunk:
            return digest.hexdigest()
        digest.update(chunk)
        _write_all(dst_fd, chunk)


def atomic_copy(src: Source, dest: str | Path, *, sha256: str | None = None,
                mode: int = FILE_MODE) -> str:
    """Copy ``src`` (an open file descriptor or a path) to ``dest`` atomically.

    A descriptor is read from its start and left open; a path is opened (and
    followed, if it is a symlink: pass a descriptor opened with O_NOFOLLOW for
    untrusted sources). With ``sha256``, the copy is only renamed into place
    when its bytes have that digest, otherwise ``DigestMismatch`` is raised and
    ``dest`` is left untouched. Returns the SHA-256 of the bytes copied.
    """
    dest = Path(dest)
    own_fd = not isinstance(src, int)
    src_fd = os.open(src, os.O_RDONLY) if own_fd else int(src)  # type: ignore[arg-type]
    try:
        fd, tmp = _temp_beside(dest)
        try:
            got = _copy_fd(src_fd, fd)
            if sha256 is not None and got != sha256:
                raise DigestMismatch(f"{dest.name}: copied bytes have SHA-256 {got}, "
                                     f"expected {sha256} (did the source change?)")
        except BaseException:
            os.close(fd)
            _discard(tmp)
            raise
        _install(fd, tmp, dest, mode)
    finally:
        if own_fd:
            os.close(src_fd)
    return got


def make_dirs(path: Path, mode: int = DIR_MODE) -> None:
    """``mkdir -p`` with a mode that does not depend on the process umask."""
    missing = []
    p = path
    while not p.is_dir():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d)
        except FileExistsError:
            if not d.is_dir():
                raise NotADirectoryError(f"{d} exists and is not a directory") from None
            continue
        os.chmod(d, mode)
