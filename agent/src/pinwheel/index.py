"""The static PEP 503 index nginx serves: ``simple/`` pages from the files table.

``write_project`` renders one project's page from its published files;
``write_root`` renders ``simple/index.html`` listing every project with at
least one published file. Every write is atomic (see ``fsutil``), and a new
project's directory appears complete or not at all. Names, file names and
Requires-Python come from untrusted upstreams: everything is HTML-escaped.

Layout under ``www_root``::

    simple/index.html                      the root page
    simple/<package>/index.html            one project's page
    packages/<package>/<wheel>             the wheel (written by ingest)
    packages/<package>/<wheel>.metadata    its METADATA (PEP 658)
    logs/<build_id>.log.gz                 build logs
"""

from __future__ import annotations

import contextlib
import html
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union
from urllib.parse import quote

from packaging.version import InvalidVersion, Version

from . import fsutil

PACKAGE_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
# Advisory lock classes (the second key is hashtext(package), or 0 for the root).
# Ingest holds PROJECT_LOCK while it publishes a project's files, and the
# writers below hold it while they read the table and write the page, so a
# page rendered from an older snapshot can never overwrite a newer one.
PROJECT_LOCK = 0x70776970  # "pwip"
ROOT_LOCK = 0x70777274     # "pwrt"
REPOSITORY_VERSION = "1.0"
INDEX_FILE = "index.html"

_PROJECT_QUERY = """
    SELECT f.filename, f.sha256, f.version,
           coalesce(f.requires_python, v.requires_python),
           f.metadata_sha256, coalesce(v.yanked, false), v.yanked_reason
      FROM files f
      JOIN builds b ON b.build_id = f.build_id
      LEFT JOIN versions v ON v.package = b.package AND v.version = b.version
     WHERE f.state = 'published' AND f.package = %s
"""
_ROOT_QUERY = "SELECT DISTINCT package FROM files WHERE state = 'published' ORDER BY package"


@dataclass(frozen=True)
class IndexFile:
    """One link on a project page."""

    filename: str
    sha256: str
    version: str
    requires_python: str | None = None
    metadata_sha256: str | None = None
    yanked: bool = False
    yanked_reason: str | None = None


def check_package(package: str) -> None:
    """Refuse anything but a PEP 503 normalised name (it becomes a directory name)."""
    if not PACKAGE_RE.match(package):
        raise ValueError(f"{package!r} is not a normalised project name")


_SortKey = tuple[int, Union[Version, str], str]


def _sort_key(f: IndexFile) -> _SortKey:
    try:
        return (1, Version(f.version), f.filename)
    except InvalidVersion:
        return (0, f.version, f.filename)


def _attr(name: str, value: str) -> str:
    return f' {name}="{html.escape(value, quote=True)}"'


def _link(package: str, f: IndexFile) -> str:
    href = f"../../packages/{package}/{quote(f.filename, safe='')}#sha256={f.sha256}"
    attrs = _attr("href", href)
    if f.requires_python:
        attrs += _attr("data-requires-python", f.requires_python)
    if f.metadata_sha256:
        # PEP 714 spells it data-core-metadata; older pips read the PEP 658 name.
        attrs += _attr("data-dist-info-metadata", f"sha256={f.metadata_sha256}")
        attrs += _attr("data-core-metadata", f"sha256={f.metadata_sha256}")
    if f.yanked:
        attrs += _attr("data-yanked", f.yanked_reason or "")
    return f"    <a{attrs}>{html.escape(f.filename)}</a><br>\n"


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n"
        "<html>\n"
        "  <head>\n"
        f'    <meta name="pypi:repository-version" content="{REPOSITORY_VERSION}">\n'
        f"    <title>{html.escape(title)}</title>\n"
        "  </head>\n"
        "  <body>\n"
        f"    <h1>{html.escape(title)}</h1>\n"
        f"{body}"
        "  </body>\n"
        "</html>\n"
    )


def render_project(package: str, files: list[IndexFile]) -> str:
    """The PEP 503 page of one project: its files by version, then file name."""
    links = "".join(_link(package, f) for f in sorted(files, key=_sort_key))
    return _page(f"Links for {package}", links)


def render_root(packages: list[str]) -> str:
    """The PEP 503 root page listing ``packages``."""
    links = "".join(
        f'    <a href="{html.escape(quote(p, safe=""), quote=True)}/">{html.escape(p)}</a><br>\n'
        for p in sorted(packages))
    return _page("Simple index", links)


def published_files(conn: Any, package: str) -> list[IndexFile]:
    with conn.cursor() as cur:
        cur.execute(_PROJECT_QUERY, (package,))
        return [IndexFile(*row) for row in cur.fetchall()]


def published_packages(conn: Any) -> list[str]:
    with conn.cursor() as cur:
        cur.execute(_ROOT_QUERY)
        return [row[0] for row in cur.fetchall()]


def _write_new_dir(parent: Path, name: str, filename: str, data: bytes) -> bool:
    """Create ``parent/name/filename`` by renaming a complete temporary directory.

    Returns False (and leaves nothing behind) when ``parent/name`` appeared
    meanwhile, so the caller can replace the file inside it instead.
    """
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=parent))
    try:
        os.chmod(tmp, fsutil.DIR_MODE)
        fsutil.atomic_write_bytes(tmp / filename, data)
        try:
            os.rename(tmp, parent / name)
        except OSError:
            if (parent / name).is_dir():
                return False  # another writer created it first
            raise
        fsutil.fsync_dir(parent)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(tmp)


@contextlib.contextmanager
def _locked(conn: Any, lock_class: int, key: str | None) -> Iterator[None]:
    """Hold a session-level advisory lock (released on disconnect too)."""
    args = "%s, hashtext(%s)" if key is not None else "%s, 0"
    params = (lock_class, key) if key is not None else (lock_class,)
    with conn.cursor() as cur:
        cur.execute(f"SELECT pg_advisory_lock({args})", params)
    try:
        yield
    finally:
        if not conn.closed:
            with conn.cursor() as cur:
                cur.execute(f"SELECT pg_advisory_unlock({args})", params)


def write_project(conn: Any, www_root: Path, package: str) -> None:
    """(Re)write ``simple/<package>/index.html`` from the project's published files.

    Run it after the transaction that changed the project's files committed.
    """
    check_package(package)
    simple = Path(www_root) / "simple"
    fsutil.make_dirs(simple)
    project_dir = simple / package
    with _locked(conn, PROJECT_LOCK, package):
        data = render_project(package, published_files(conn, package)).encode("utf-8")
        if not project_dir.is_dir() and _write_new_dir(simple, package, INDEX_FILE, data):
            return
        fsutil.atomic_write_bytes(project_dir / INDEX_FILE, data)


def write_root(conn: Any, www_root: Path) -> bool:
    """Rewrite ``simple/index.html`` if the set of projects changed; True if rewritten."""
    simple = Path(www_root) / "simple"
    path = simple / INDEX_FILE
    with _locked(conn, ROOT_LOCK, None):
        data = render_root(published_packages(conn)).encode("utf-8")
        try:
            if path.read_bytes() == data:
                return False
        except FileNotFoundError:
            pass
        fsutil.make_dirs(simple)
        fsutil.atomic_write_bytes(path, data)
    return True
