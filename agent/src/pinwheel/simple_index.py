"""The Simple Repository API pages (version 1.4), as HTML and JSON: pure rendering.

One project's page and the root page, each in both serialisations nginx picks
from by the request's ``Accept`` header (PEP 691):

* HTML (PEP 503): ``<a href="…#sha256=…">`` per file, with
  ``data-requires-python`` (PEP 503), ``data-yanked`` (PEP 592),
  ``data-core-metadata`` and the older ``data-dist-info-metadata`` (PEP 658/714),
  ``data-size`` / ``data-upload-time`` (PEP 700's data, which some clients read
  from HTML), and ``<meta name="pypi:repository-version">`` (PEP 629) plus the
  project status metas (PEP 792).
* JSON (PEP 691 + PEP 700 + PEP 792): ``meta.api-version``, ``name``,
  ``versions``, ``files`` with ``hashes``, ``requires-python``, ``yanked``,
  ``core-metadata`` (never the old ``dist-info-metadata`` key), ``size`` and
  ``upload-time``, and ``project-status``.

Project names, file names, Requires-Python and yank reasons come from untrusted
upstreams and wheels: everything is escaped (HTML) or encoded (JSON). Nothing
here touches the disk or the database; ``index`` does.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Union
from urllib.parse import quote

from packaging.version import InvalidVersion, Version

# 1.1: PEP 700 (versions, size, upload-time); 1.4: PEP 792 (project status).
API_VERSION = "1.4"
JSON_CONTENT_TYPE = "application/vnd.pypi.simple.v1+json"
HTML_CONTENT_TYPE = "application/vnd.pypi.simple.v1+html"
STATUSES = ("active", "archived", "quarantined", "deprecated")
ARMV7L, ARMV6L = "linux_armv7l", "linux_armv6l"


@dataclass(frozen=True)
class IndexFile:
    """One file of a project, as the index lists it."""

    filename: str
    sha256: str
    version: str
    requires_python: str | None = None
    metadata_sha256: str | None = None
    yanked: bool = False
    yanked_reason: str | None = None
    size: int | None = None
    upload_time: datetime | None = None


@dataclass(frozen=True)
class ProjectStatus:
    """PEP 792: ``active`` (the default), ``archived``, ``quarantined`` or ``deprecated``."""

    status: str = "active"
    reason: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown project status {self.status!r}")


ACTIVE = ProjectStatus()

_SortKey = tuple[int, Union[Version, str], str]


def version_key(version: str) -> tuple[int, Union[Version, str]]:
    """Sort key of a version string: valid versions by PEP 440, after invalid ones."""
    try:
        return (1, Version(version))
    except InvalidVersion:
        return (0, version)


def _sort_key(f: IndexFile) -> _SortKey:
    return (*version_key(f.version), f.filename)


def sorted_files(files: Iterable[IndexFile]) -> list[IndexFile]:
    """Files by version (PEP 440 order), then by file name."""
    return sorted(files, key=_sort_key)


def armv6l_alias(filename: str) -> str | None:
    """The ``linux_armv6l`` name of a ``linux_armv7l`` wheel (None for any other wheel)."""
    stem, dot, ext = filename.rpartition(".")
    if dot != "." or ext != "whl":
        return None
    parts = stem.split("-")
    platforms = parts[-1].split(".")
    if len(parts) < 5 or ARMV7L not in platforms or ARMV6L in platforms:
        return None
    parts[-1] = ".".join(ARMV6L if p == ARMV7L else p for p in platforms)
    return "-".join(parts) + ".whl"


def with_armv6l_aliases(files: Iterable[IndexFile]) -> list[IndexFile]:
    """``files`` plus, for every armv7l wheel, the same bytes listed under its armv6l name."""
    out = list(files)
    names = {f.filename for f in out}
    for f in list(out):
        alias = armv6l_alias(f.filename)
        if alias and alias not in names:
            out.append(IndexFile(alias, f.sha256, f.version, f.requires_python,
                                 f.metadata_sha256, f.yanked, f.yanked_reason, f.size,
                                 f.upload_time))
    return out


def upload_time(value: datetime) -> str:
    """PEP 700's format: ISO 8601 in UTC with a ``Z`` suffix."""
    if value.tzinfo is None:
        raise ValueError("upload times must be timezone-aware")
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def file_url(package: str, filename: str) -> str:
    """The URL of a file, relative to ``/simple/<package>/`` (without the fragment)."""
    return f"../../packages/{package}/{quote(filename, safe='')}"


def versions_of(files: Iterable[IndexFile]) -> list[str]:
    """Every version that has a file, in PEP 440 order."""
    return sorted({f.version for f in files}, key=version_key)


def visible_files(files: Iterable[IndexFile], status: ProjectStatus) -> list[IndexFile]:
    """The files a page lists: none for a quarantined project (PEP 792)."""
    return [] if status.status == "quarantined" else sorted_files(files)


# ------------------------------------------------------------------ HTML


def _attr(name: str, value: str) -> str:
    return f' {name}="{html.escape(value, quote=True)}"'


def _link(package: str, f: IndexFile) -> str:
    attrs = _attr("href", f"{file_url(package, f.filename)}#sha256={f.sha256}")
    if f.requires_python:
        attrs += _attr("data-requires-python", f.requires_python)
    if f.metadata_sha256:
        # PEP 714 spells it data-core-metadata; older pips read the PEP 658 name.
        attrs += _attr("data-dist-info-metadata", f"sha256={f.metadata_sha256}")
        attrs += _attr("data-core-metadata", f"sha256={f.metadata_sha256}")
    if f.yanked:
        attrs += _attr("data-yanked", f.yanked_reason or "")
    if f.size is not None:
        attrs += _attr("data-size", str(f.size))
    if f.upload_time is not None:
        attrs += _attr("data-upload-time", upload_time(f.upload_time))
    return f"    <a{attrs}>{html.escape(f.filename)}</a><br>\n"


def _page(title: str, body: str, status: ProjectStatus | None = None) -> str:
    metas = f'    <meta name="pypi:repository-version" content="{API_VERSION}">\n'
    if status is not None:
        metas += (f"    <meta{_attr('name', 'pypi:project-status')}"
                  f"{_attr('content', status.status)}>\n")
        if status.reason:
            metas += (f"    <meta{_attr('name', 'pypi:project-status-reason')}"
                      f"{_attr('content', status.reason)}>\n")
    return (
        "<!DOCTYPE html>\n"
        "<html>\n"
        "  <head>\n"
        '    <meta charset="utf-8">\n'
        f"{metas}"
        f"    <title>{html.escape(title)}</title>\n"
        "  </head>\n"
        "  <body>\n"
        f"    <h1>{html.escape(title)}</h1>\n"
        f"{body}"
        "  </body>\n"
        "</html>\n"
    )


def render_project(package: str, files: list[IndexFile],
                   status: ProjectStatus = ACTIVE) -> str:
    """The PEP 503 HTML page of one project: its files by version, then file name."""
    links = "".join(_link(package, f) for f in visible_files(files, status))
    return _page(f"Links for {package}", links, status)


def render_root(packages: Iterable[str]) -> str:
    """The PEP 503 HTML root page listing ``packages`` (normalised names)."""
    links = "".join(
        f'    <a href="{html.escape(quote(p, safe=""), quote=True)}/">{html.escape(p)}</a><br>\n'
        for p in sorted(packages))
    return _page("Simple index", links)


# ------------------------------------------------------------------ JSON


def _dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), sort_keys=False) + "\n"


def _json_file(package: str, f: IndexFile) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "filename": f.filename,
        "url": file_url(package, f.filename),
        "hashes": {"sha256": f.sha256},
    }
    if f.requires_python:
        entry["requires-python"] = f.requires_python
    if f.metadata_sha256:
        entry["core-metadata"] = {"sha256": f.metadata_sha256}
    if f.yanked:
        entry["yanked"] = f.yanked_reason or True
    if f.size is not None:
        entry["size"] = f.size
    if f.upload_time is not None:
        entry["upload-time"] = upload_time(f.upload_time)
    return entry


def project_json(package: str, files: list[IndexFile],
                 status: ProjectStatus = ACTIVE) -> dict[str, Any]:
    """The PEP 691 JSON document of one project (as a dict)."""
    shown = visible_files(files, status)
    project_status: dict[str, Any] = {"status": status.status}
    if status.reason:
        project_status["reason"] = status.reason
    return {
        "meta": {"api-version": API_VERSION},
        "name": package,
        "project-status": project_status,
        "versions": versions_of(shown),
        "files": [_json_file(package, f) for f in shown],
    }


def render_project_json(package: str, files: list[IndexFile],
                        status: ProjectStatus = ACTIVE) -> str:
    return _dumps(project_json(package, files, status))


def render_root_json(packages: Iterable[str]) -> str:
    """The PEP 691 JSON root document."""
    return _dumps({"meta": {"api-version": API_VERSION},
                   "projects": [{"name": p} for p in sorted(packages)]})
