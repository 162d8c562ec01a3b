"""What the index's pages are made of, read from the database (no rendering, no files).

``project_files`` is all the Simple API needs; ``load_project`` adds what a
project page shows: the project's status, its releases, the latest build of
every release on every target, the targets a pure or abi3 wheel built, and
the live jobs. Every reader runs in one
read-only snapshot, so a page never mixes two states of the catalogue.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .aptdeps import Library
from .simple_index import IndexFile, ProjectStatus

_FILES = """
    SELECT f.filename, f.sha256, f.version,
           coalesce(f.requires_python, v.requires_python),
           f.metadata_sha256, coalesce(v.yanked, false), v.yanked_reason,
           f.size, f.published_at,
           f.python_tag, f.abi_tag, f.platform_tag, f.build_id
      FROM files f
      LEFT JOIN versions v ON v.package = f.package AND v.version = f.version
     WHERE f.state = 'published' AND f.package = %s
"""
_PACKAGES = "SELECT DISTINCT package FROM files WHERE state = 'published' ORDER BY package"
_PROJECT = """
    SELECT display_name, status, status_reason, skip_reason FROM packages WHERE package = %s
"""
_RELEASES = """
    SELECT version, released, yanked, yanked_reason, skip_reason, has_sdist, requires_python,
           removed_upstream_at
      FROM versions WHERE package = %s
"""
_LATEST_BUILDS = """
    SELECT DISTINCT ON (b.version, b.abi, b.platform)
           b.version, b.abi || '-' || b.platform, b.build_id, b.status, b.log_path, b.ingest_state,
           extract(epoch FROM b.duration)::float8, b.finished_at, b.builder,
           EXISTS (SELECT 1 FROM files f WHERE f.build_id = b.build_id
                                           AND f.state = 'published')
      FROM builds b
     WHERE b.package = %s
     ORDER BY b.version, b.abi, b.platform, b.build_id DESC
"""
# Build targets by name, as names.target() spells them: cp311-linux_armv7l.
_JOBS = "SELECT version, abi || '-' || platform, state FROM jobs WHERE package = %s"
# The apt dependencies of published files (migration 5).
_FILE_LIBRARIES = """
    SELECT f.filename, f.libraries_checked, f.libraries_refused,
           coalesce(array_agg(l.library ORDER BY l.library) FILTER (WHERE l.library IS NOT NULL),
                    '{}'),
           coalesce(array_agg(l.kind ORDER BY l.library) FILTER (WHERE l.library IS NOT NULL),
                    '{}'),
           coalesce(array_agg(l.package ORDER BY l.library) FILTER (WHERE l.library IS NOT NULL),
                    '{}'),
           coalesce(array_agg(l.base ORDER BY l.library) FILTER (WHERE l.library IS NOT NULL),
                    '{}')
      FROM files f LEFT JOIN file_libraries l USING (file_id)
     WHERE f.state = 'published' AND f.package = %s
     GROUP BY f.file_id
"""
_TARGETS = "SELECT abi || '-' || platform, skip_reason FROM targets ORDER BY abi, platform"
# Targets built by a verified pure or abi3 wheel of another target's build (migration 8);
# the first such wheel of each release and target.
_COVERED = """
    SELECT DISTINCT ON (f.version, t.abi, t.platform)
           f.version, t.abi || '-' || t.platform, f.filename, b.build_id, b.log_path,
           b.abi || '-' || b.platform
      FROM files f
      JOIN builds b ON b.build_id = f.build_id AND b.status = 'success'
      JOIN targets t ON wheel_covers(f.python_tag, f.abi_tag, f.platform_tag, t.abi, t.platform)
     WHERE f.package = %s AND f.state = 'published' AND f.covers
     ORDER BY f.version, t.abi, t.platform, f.file_id
"""


@dataclass(frozen=True)
class PublishedFile:
    """A published file with the tags and build a project page shows."""

    file: IndexFile
    python_tag: str | None
    abi_tag: str | None
    platform_tag: str | None
    build_id: int


@dataclass(frozen=True)
class Release:
    version: str
    released: datetime | None
    yanked: bool
    yanked_reason: str | None
    skip_reason: str | None
    has_sdist: bool
    requires_python: str | None
    removed_upstream_at: datetime | None = None  # pinwheel watch found it deleted upstream


@dataclass(frozen=True)
class Build:
    """The latest build of one release for one target (an ABI on a platform)."""

    version: str
    target: str
    build_id: int
    status: str              # success, failed, timeout, abandoned, cancelled
    log_path: str | None     # relative to www_root, e.g. logs/12.log.gz
    ingest_state: str        # pending, done
    seconds: float | None
    finished_at: datetime
    builder: str | None
    published: bool          # at least one of its files is on the index


@dataclass(frozen=True)
class Covered:
    """A release's target built by a wheel that serves several targets."""

    filename: str            # the covering wheel
    build_id: int
    log_path: str | None     # of that build
    built_on: str            # the target that built it


@dataclass(frozen=True)
class FileLibraries:
    """The apt dependencies recorded for one file."""

    checked: bool                     # the builder's list was stored (it may be empty)
    refused: str | None               # why the builder's list was not stored
    libraries: tuple[Library, ...] = ()


@dataclass
class ProjectData:
    package: str
    display_name: str
    status: ProjectStatus
    skip_reason: str | None
    files: list[PublishedFile] = field(default_factory=list)
    releases: list[Release] = field(default_factory=list)
    builds: dict[tuple[str, str], Build] = field(default_factory=dict)
    jobs: dict[tuple[str, str], str] = field(default_factory=dict)  # (version, target) -> state
    targets: dict[str, str | None] = field(default_factory=dict)    # target -> skip reason
    libraries: dict[str, FileLibraries] = field(default_factory=dict)  # by file name
    covered: dict[tuple[str, str], Covered] = field(default_factory=dict)  # (version, target)

    @property
    def index_files(self) -> list[IndexFile]:
        return [p.file for p in self.files]


@contextlib.contextmanager
def snapshot(conn: Any) -> Iterator[Any]:
    """A cursor in one read-only REPEATABLE READ transaction (an autocommit connection),
    or in the caller's transaction (otherwise)."""
    own = bool(conn.autocommit)
    with conn.cursor() as cur:
        if own:
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            yield cur
        finally:
            if own and not conn.closed:
                cur.execute("COMMIT")


def _published(rows: list[tuple[Any, ...]]) -> list[PublishedFile]:
    return [PublishedFile(IndexFile(*row[:9]), row[9], row[10], row[11], row[12])
            for row in rows]


def project_files(conn: Any, package: str) -> list[PublishedFile]:
    """The published files of ``package`` (normalised name)."""
    with snapshot(conn) as cur:
        cur.execute(_FILES, (package,))
        return _published(cur.fetchall())


def published_packages(conn: Any) -> list[str]:
    """Every project with at least one published file: the projects the index serves."""
    with snapshot(conn) as cur:
        cur.execute(_PACKAGES)
        return [row[0] for row in cur.fetchall()]


def load_project(conn: Any, package: str) -> ProjectData:
    """Everything the pages of ``package`` show, from one snapshot."""
    with snapshot(conn) as cur:
        cur.execute(_PROJECT, (package,))
        row = cur.fetchone()
        if row is None:
            data = ProjectData(package, package, ProjectStatus(), None)
        else:
            display, status, reason, skip = row
            data = ProjectData(package, display, ProjectStatus(status, reason), skip)
        cur.execute(_FILES, (package,))
        data.files = _published(cur.fetchall())
        cur.execute(_RELEASES, (package,))
        data.releases = [Release(*r) for r in cur.fetchall()]
        cur.execute(_LATEST_BUILDS, (package,))
        for r in cur.fetchall():
            build = Build(*r)
            data.builds[(build.version, build.target)] = build
        cur.execute(_JOBS, (package,))
        data.jobs = {(v, a): s for v, a, s in cur.fetchall()}
        cur.execute(_TARGETS)
        data.targets = dict(cur.fetchall())
        cur.execute(_COVERED, (package,))
        data.covered = {(r[0], r[1]): Covered(*r[2:]) for r in cur.fetchall()}
        cur.execute(_FILE_LIBRARIES, (package,))
        for name, checked, refused, libs, kinds, packages, bases in cur.fetchall():
            data.libraries[name] = FileLibraries(
                checked, refused,
                tuple(Library(*row) for row in zip(libs, kinds, packages, bases)))
    return data
