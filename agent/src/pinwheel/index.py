"""The index writer: the static files nginx serves, from the database, written atomically.

``write_project`` (re)writes one project's pages: its Simple API page in HTML
and JSON (``simple_index``) and its page for people (``project_page``);
``write_root`` rewrites the root page, in both serialisations and
pre-compressed, when the set of projects changed; ``rebuild`` writes
everything. Rendering lives in ``simple_index`` and ``project_page``, the
queries in ``index_db``.

Layout under ``www_root``::

    simple/index.html, index.json (+ .gz)  the root page (PEP 503 / PEP 691)
    simple/<package>/index.html, index.json one project's Simple API page
    project/<package>/index.html           the project page for people
    project/<package>/json/index.json      the same data for machines
    packages/<package>/<wheel>             the wheel (written by ingest)
    packages/<package>/<wheel>.metadata    its METADATA (PEP 658, written by ingest)
    logs/<build_id>.log.gz                 build logs (written by ingest)

Every file is written to a temporary name and renamed into place; a new
project directory is assembled complete (every variant) under a temporary
name and renamed in, so nginx never finds it half-written or empty.

Nothing unpublished lingers: a project left with no published file loses its
three directories (renamed out of the served tree, then deleted), and a wheel
(or ``.metadata``, or armv6l alias) in ``packages/<package>/`` that the
database no longer publishes is deleted when the project's pages are written.
``rebuild`` also removes the directories of every name that is not a
published project.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import fsutil, index_db, project_page
from .simple_index import (
    IndexFile,
    armv6l_alias,
    render_project,
    render_project_json,
    render_root,
    render_root_json,
    with_armv6l_aliases,
)

log = logging.getLogger("pinwheel.index")

PACKAGE_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
# Advisory lock classes (the second key is hashtext(package), or 0 for the root).
# Ingest holds PROJECT_LOCK while it publishes a project's files, and the
# writers below hold it while they read the table and write the pages, so a
# page rendered from an older snapshot can never overwrite a newer one.
PROJECT_LOCK = 0x70776970  # "pwip"
ROOT_LOCK = 0x70777274     # "pwrt"
INDEX_FILE = "index.html"
JSON_FILE = "index.json"
# What the pages this writer produces look like. Bump it whenever a change
# needs every existing page rewritten: the ingest service then rebuilds the
# whole index once when it starts on the new code (an upgrade of a running
# farm), instead of serving old pages beside new ones.
#   1  PEP 503 HTML only
#   2  Simple API 1.4 (HTML and JSON), project pages with a column per build target
#   3  project pages mark releases removed upstream, and cancelled builds
INDEX_FORMAT = "3"
FORMAT_STAMP = ".pinwheel-index-format"  # in www_root, written last by rebuild()

PROJECT_DIRS = ("simple", "project", "packages")  # under www_root, one <package>/ in each
# What the writer and ingest put in packages/<package>/ (anything else there is left alone).
_PACKAGE_FILE_RE = re.compile(r"^[^.].*\.whl(\.metadata)?$")

__all__ = ["FORMAT_STAMP", "INDEX_FILE", "INDEX_FORMAT", "JSON_FILE", "PROJECT_DIRS",
           "PROJECT_LOCK", "ROOT_LOCK", "IndexFile", "IndexOptions", "check_package",
           "is_current", "prune", "rebuild", "remove_project", "render_project", "render_root",
           "write_project", "write_root"]


@dataclass(frozen=True)
class IndexOptions:
    """Settings of the index (``master.conf``)."""

    # Also list linux_armv7l wheels as linux_armv6l (hard links), for Pi Zero / Pi 1 users.
    armv6l_alias: bool = False
    # The index URL shown in the install line of project pages ("" = a plain pip install).
    index_url: str = ""


DEFAULT_OPTIONS = IndexOptions()


def check_package(package: str) -> None:
    """Refuse anything but a PEP 503 normalised name (it becomes a directory name)."""
    if not PACKAGE_RE.match(package):
        raise ValueError(f"{package!r} is not a normalised project name")


# ------------------------------------------------------------ the files


def _write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        dest = root / rel
        fsutil.make_dirs(dest.parent)
        fsutil.atomic_write_bytes(dest, data)


def _write_new_dir(parent: Path, name: str, files: dict[str, bytes]) -> bool:
    """Create ``parent/name`` holding ``files`` by renaming a complete temporary directory.

    Returns False (and leaves nothing behind) when ``parent/name`` appeared
    meanwhile, so the caller can replace the files inside it instead.
    """
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=parent))
    try:
        os.chmod(tmp, fsutil.DIR_MODE)
        _write_tree(tmp, files)
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


def write_dir(parent: Path, name: str, files: dict[str, bytes]) -> None:
    """Make ``parent/name`` hold ``files`` (relative paths): a new directory appears
    complete; in an existing one each file is replaced atomically."""
    fsutil.make_dirs(parent)
    target = parent / name
    if not target.is_dir() and _write_new_dir(parent, name, files):
        return
    _write_tree(target, files)


def _link_alias(directory: Path, source: str, alias: str) -> None:
    """Make ``directory/alias`` a hard link to ``directory/source`` (atomically)."""
    src, dest = directory / source, directory / alias
    st = os.stat(src)
    with contextlib.suppress(FileNotFoundError):
        now = os.lstat(dest)
        if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
            return
    tmp = directory / f".{alias}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.link(src, tmp)
    try:
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _armv6l_files(www_root: Path, package: str, files: list[IndexFile]) -> list[IndexFile]:
    """Hard-link every armv7l wheel (and its .metadata) under its armv6l name."""
    directory = www_root / "packages" / package
    for f in files:
        alias = armv6l_alias(f.filename)
        if alias:
            _link_alias(directory, f.filename, alias)
            if f.metadata_sha256:
                _link_alias(directory, f"{f.filename}.metadata", f"{alias}.metadata")
    return with_armv6l_aliases(files)


def _remove_dir(parent: Path, name: str) -> bool:
    """Take ``parent/name`` out of the served tree in one rename, then delete it."""
    try:
        gone = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".gone", dir=parent))
    except FileNotFoundError:
        return False
    try:
        os.rename(parent / name, gone / name)
    except FileNotFoundError:
        return False
    finally:
        fsutil.fsync_dir(parent)
        shutil.rmtree(gone, ignore_errors=True)
    return True


def _remove_project_dirs(www_root: Path, package: str) -> bool:
    removed = False
    for sub in PROJECT_DIRS:
        removed = _remove_dir(www_root / sub, package) or removed
    if removed:
        log.info("removed %s from the index: it has no published file", package)
    return removed


def _prune_package_files(www_root: Path, package: str, files: list[IndexFile]) -> None:
    """Delete the wheels and .metadata files in packages/<package>/ that are not listed."""
    keep = {f.filename for f in files} | {f"{f.filename}.metadata" for f in files}
    directory = www_root / "packages" / package
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    for name in names:
        if name not in keep and _PACKAGE_FILE_RE.match(name):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(directory / name)
            log.info("removed %s/%s: not published", directory, name)


def _newest_metadata(www_root: Path, data: index_db.ProjectData) -> bytes | None:
    newest = project_page.newest_file(data)
    if newest is None:
        return None
    path = www_root / "packages" / data.package / f"{newest.file.filename}.metadata"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        log.warning("%s is missing: the project page has no description", path)
        return None


# ---------------------------------------------------------------- locks


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


# --------------------------------------------------------------- writers


def published_files(conn: Any, package: str) -> list[IndexFile]:
    return [p.file for p in index_db.project_files(conn, package)]


def published_packages(conn: Any) -> list[str]:
    return index_db.published_packages(conn)


def write_project(conn: Any, www_root: Path, package: str,
                  options: IndexOptions = DEFAULT_OPTIONS) -> bool:
    """(Re)write the pages of ``package``: ``simple/<package>/`` and ``project/<package>/``.

    Run it after the transaction that changed the project's files committed.
    Returns True when the project is on the index; False when it has no
    published file, and then its directories are removed (rewrite the root
    page after that, with ``write_root``).
    """
    check_package(package)
    www_root = Path(www_root)
    with _locked(conn, PROJECT_LOCK, package):
        data = index_db.load_project(conn, package)
        files = data.index_files
        if not files:
            _remove_project_dirs(www_root, package)
            return False
        if options.armv6l_alias:
            files = _armv6l_files(www_root, package, files)
        _prune_package_files(www_root, package, files)
        write_dir(www_root / "simple", package, {
            JSON_FILE: render_project_json(package, files, data.status).encode("utf-8"),
            INDEX_FILE: render_project(package, files, data.status).encode("utf-8"),
        })
        metadata = _newest_metadata(www_root, data)
        write_dir(www_root / "project", package, {
            "json/" + JSON_FILE: project_page.render_json(
                data, metadata, options.index_url).encode("utf-8"),
            INDEX_FILE: project_page.render_html(
                data, metadata, options.index_url).encode("utf-8"),
        })
    return True


def remove_project(conn: Any, www_root: Path, package: str) -> bool:
    """Remove the directories of ``package`` if it has no published file; True if removed."""
    check_package(package)
    with _locked(conn, PROJECT_LOCK, package):
        if index_db.project_files(conn, package):
            return False
        return _remove_project_dirs(Path(www_root), package)


def prune(conn: Any, www_root: Path, published: set[str] | None = None) -> list[str]:
    """Remove the directories of every name under www_root that is not a published project.

    Returns the names removed. Each is checked again under its project's lock,
    so a project published meanwhile is left alone.
    """
    www_root = Path(www_root)
    if published is None:
        published = set(published_packages(conn))
    stale: set[str] = set()
    for sub in PROJECT_DIRS:
        with contextlib.suppress(FileNotFoundError):
            stale.update(n for n in os.listdir(www_root / sub)
                         if n not in published and PACKAGE_RE.match(n))
    return [n for n in sorted(stale) if remove_project(conn, www_root, n)]


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9, mtime=0)


def write_root(conn: Any, www_root: Path, force: bool = False) -> bool:
    """Rewrite the root page if the set of projects changed (or ``force``); True if rewritten.

    Writes ``simple/index.json`` and ``simple/index.html``, each with a
    pre-compressed ``.gz`` beside it for nginx's gzip_static. The HTML page is
    written last: it is what the next call compares against.
    """
    simple = Path(www_root) / "simple"
    path = simple / INDEX_FILE
    with _locked(conn, ROOT_LOCK, None):
        packages = published_packages(conn)
        page = render_root(packages).encode("utf-8")
        if not force:
            try:
                if path.read_bytes() == page and (simple / JSON_FILE).is_file():
                    return False
            except FileNotFoundError:
                pass
        fsutil.make_dirs(simple)
        doc = render_root_json(packages).encode("utf-8")
        for name, data in ((JSON_FILE, doc), (INDEX_FILE, page)):
            fsutil.atomic_write_bytes(simple / f"{name}.gz", _gzip(data))
            fsutil.atomic_write_bytes(simple / name, data)
    return True


def rebuild(conn: Any, www_root: Path, options: IndexOptions = DEFAULT_OPTIONS,
            progress: Callable[[int, int, str], None] | None = None) -> int:
    """Write every project's pages and the root page, then remove what is no longer
    published (``prune``); return the number of projects.

    ``progress(done, total, package)`` is called after each project.
    """
    www_root = Path(www_root)
    packages = published_packages(conn)
    for n, package in enumerate(packages, 1):
        write_project(conn, www_root, package, options)
        if progress:
            progress(n, len(packages), package)
    write_root(conn, www_root, force=True)
    prune(conn, www_root, set(packages))
    fsutil.atomic_write_bytes(www_root / FORMAT_STAMP, f"{INDEX_FORMAT}\n".encode())
    return len(packages)


def is_current(www_root: Path) -> bool:
    """Whether the index under ``www_root`` was rebuilt by this version's writer."""
    try:
        return (www_root / FORMAT_STAMP).read_text(encoding="utf-8").strip() == INDEX_FORMAT
    except (FileNotFoundError, UnicodeDecodeError):
        return False
