"""Project pages for people: ``/project/<name>/`` (HTML) and ``/project/<name>/json/``.

One static page per project: its description (from the newest release's
METADATA), how to install it (pip, and ``sudo apt install`` for the Debian
packages its compiled code needs, see :func:`apt_groups`), a grid of
versions by ABIs of build states (each linking to its build log), and every
file with its size, SHA-256 and Debian packages. Self
contained (inline CSS, no scripts, no external assets) and readable on a
phone. The JSON document carries the same data for machines. Everything from
upstream or from a wheel is escaped. Pure rendering: ``index`` writes the files.
"""

from __future__ import annotations

import email.parser
import email.policy
import html
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from .aptdeps import apt_install_line
from .index_db import FileLibraries, ProjectData, PublishedFile
from .simple_index import upload_time, version_key

MAX_DESCRIPTION = 64 << 10  # characters of the long description shown

# Build states shown in the grid (and in the JSON), with their labels.
STATES = {
    "built": "built",
    "failed": "failed",
    "building": "building",
    "pending": "pending",
    "skipped": "skipped",
    "none": "not queued",
}

_CSS = """
body{font:16px/1.5 system-ui,sans-serif;margin:0 auto;max-width:60rem;padding:0 1rem;
color:#1b1b1b;background:#fff}
h1{font-size:1.6rem;margin:1rem 0 .25rem}h2{font-size:1.2rem;margin-top:2rem}
code,pre{font-family:ui-monospace,monospace;font-size:.9rem}
pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#f4f4f4;padding:.75rem;
border-radius:4px}
.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}
td.hash{overflow-wrap:anywhere;min-width:12rem}
.built{background:#d9f2d9}.failed{background:#f8d7d7}.building,.pending{background:#fff3c4}
.skipped,.none{background:#eee;color:#555}.yanked,.removed{color:#a00;font-weight:bold}
.status{border-left:4px solid #a00;padding-left:.5rem}
.base,.note{color:#555}
"""


@dataclass(frozen=True)
class Cell:
    """One version on one ABI."""

    state: str                 # a key of STATES
    build_id: int | None = None
    log_path: str | None = None  # the log served as text, relative to the www root
    note: str | None = None
    covered_by: str | None = None  # built by this wheel of another target's build


def _log_path(path: str | None) -> str | None:
    if not path or not path.endswith(".log.gz"):
        return None
    # logs/<id>.log.gz is also served decompressed, as text/plain, at logs/<id>.log.
    return path[:-len(".gz")]


def cell(data: ProjectData, version: str, target: str, release_skip: str | None,
         has_sdist: bool) -> Cell:
    """The state of ``version`` for ``target``: a live job first, then its own published
    build, then a pure or abi3 wheel of another target's build that serves it, then its
    latest build's failure, then why it is not built."""
    job = data.jobs.get((version, target))
    build = data.builds.get((version, target))
    if job is not None:
        return Cell("building" if job == "leased" else "pending",
                    note="building now" if job == "leased" else "queued")
    if build is not None and build.status == "success":
        log = _log_path(build.log_path)
        secs = f"{build.seconds:.0f} s" if build.seconds is not None else None
        if build.ingest_state == "pending":
            return Cell("pending", build.build_id, log, "built, being published")
        if build.published:
            return Cell("built", build.build_id, log, secs)
    covered = data.covered.get((version, target))
    if covered is not None:
        return Cell("built", covered.build_id, _log_path(covered.log_path),
                    f"{covered.filename}, built on {covered.built_on}", covered.filename)
    if build is not None:
        log = _log_path(build.log_path)
        if build.status == "success":
            return Cell("failed", build.build_id, log, "refused by the master's checks")
        if build.status == "cancelled":
            return Cell("skipped", build.build_id, None, "build cancelled")
        return Cell("failed", build.build_id, log, build.status)
    reason = data.skip_reason or release_skip or data.targets.get(target)
    if reason:
        return Cell("skipped", note=reason)
    if not has_sdist:
        return Cell("skipped", note="no source distribution upstream")
    return Cell("none")


def grid_targets(data: ProjectData) -> list[str]:
    """Columns: the active targets, plus any other this project has builds or jobs for."""
    used = {t for _, t in data.builds} | {t for _, t in data.jobs}
    return sorted(t for t, skip in data.targets.items() if skip is None or t in used)


def releases_newest_first(data: ProjectData) -> list[Any]:
    return sorted(data.releases, key=lambda r: version_key(r.version), reverse=True)


def removed_mark(removed_at: datetime | None) -> str | None:
    """``removed upstream on <date>`` for a release deleted upstream, else None."""
    if removed_at is None:
        return None
    return f"removed upstream on {removed_at.astimezone(timezone.utc).date().isoformat()}"


def description(metadata: bytes | None) -> tuple[str | None, str | None]:
    """The Summary and long description of a METADATA file (either may be None)."""
    if not metadata:
        return None, None
    text = metadata.decode("utf-8", errors="replace")
    msg = email.parser.Parser(policy=email.policy.compat32).parsestr(text)
    summary = " ".join(str(msg.get("Summary", "")).split()) or None
    body = msg.get_payload()
    long = body if isinstance(body, str) and body.strip() else str(msg.get("Description", ""))
    long = long.strip()
    if len(long) > MAX_DESCRIPTION:
        long = long[:MAX_DESCRIPTION] + "\n…"
    return summary, long or None


def newest_file(data: ProjectData) -> PublishedFile | None:
    if not data.files:
        return None
    return max(data.files, key=lambda p: (version_key(p.file.version), p.file.filename))


def _size(n: int | None) -> str:
    if n is None:
        return ""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


def _quote(filename: str) -> str:
    return quote(filename, safe="")


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def install_line(data: ProjectData, index_url: str) -> str:
    name = data.display_name or data.package
    if index_url:
        return f"pip install --extra-index-url {index_url} {name}"
    return f"pip install {name}"


@dataclass(frozen=True)
class AptGroup:
    """Targets whose newest wheels need the same shared libraries from the same places."""

    targets: tuple[str, ...]      # <abi>-<platform>, as in the grid
    versions: tuple[str, ...]     # the version looked at, per target
    packages: tuple[str, ...]     # Debian packages for the apt line (not base)
    base: tuple[str, ...]         # Debian packages every Debian system has
    unpackaged: tuple[str, ...]   # libraries found on the builder in no package
    missing: tuple[str, ...]      # libraries not found on the builder

    @property
    def install(self) -> str | None:
        return apt_install_line(self.packages)


def _shown(data: ProjectData) -> list[PublishedFile]:
    return [] if data.status.status == "quarantined" else data.files


def apt_groups(data: ProjectData) -> list[AptGroup]:
    """What to ``apt install`` per target, from each target's newest version.

    For each target (the ABI and platform tags of the wheels) the newest version
    with a wheel for it is looked at; the shared libraries of that version's
    wheels are put together. Targets that need nothing (pure Python) or whose
    newest wheels were never checked (built before migration 5) are left out;
    targets needing the same are shown as one group.
    """
    newest: dict[str, str] = {}
    for p in _shown(data):
        target = f"{p.abi_tag}-{p.platform_tag}"
        if target not in newest or version_key(p.file.version) > version_key(newest[target]):
            newest[target] = p.file.version
    groups: dict[tuple[tuple[str, ...], ...], list[tuple[str, str]]] = {}
    for target, version in sorted(newest.items()):
        infos = [data.libraries.get(p.file.filename) for p in _shown(data)
                 if f"{p.abi_tag}-{p.platform_tag}" == target and p.file.version == version]
        checked = [i for i in infos if i is not None and i.checked]
        libs = [lib for i in checked for lib in i.libraries]
        if not libs:
            continue
        key = (
            tuple(sorted({lib.package for lib in libs if lib.package and not lib.base})),
            tuple(sorted({lib.package for lib in libs if lib.package and lib.base})),
            tuple(sorted({lib.library for lib in libs if lib.kind == "unpackaged"})),
            tuple(sorted({lib.library for lib in libs if lib.kind == "missing"})),
        )
        groups.setdefault(key, []).append((target, version))
    return [AptGroup(tuple(t for t, _ in members), tuple(v for _, v in members), *key)
            for key, members in groups.items()]


def file_apt(info: FileLibraries | None) -> dict[str, Any] | None:
    """One file's apt dependencies, for the JSON (None: never checked)."""
    if info is None or (not info.checked and not info.refused):
        return None
    packages = sorted({lib.package for lib in info.libraries if lib.package and not lib.base})
    return {"checked": info.checked, "refused": info.refused,
            "libraries": [lib.as_json() for lib in info.libraries],
            "packages": packages, "install": apt_install_line(packages)}


# ------------------------------------------------------------------- HTML


def _apt(data: ProjectData) -> str:
    groups = apt_groups(data)
    if not groups:
        return ""
    parts = ['<section class="apt">\n<p>Shared libraries the compiled code needs, as found on '
             "the builders; the line leaves out packages every Debian system has.</p>\n"]
    for g in groups:
        on = ", ".join(f"{t} ({v})" for t, v in zip(g.targets, g.versions))
        parts.append(f'<p class="apt-for">For {_e(on)}:</p>\n')
        if g.install:
            parts.append(f'<pre class="apt-install">{_e(g.install)}</pre>\n')
        else:
            parts.append("<p>No Debian package to install beyond a base system.</p>\n")
        if g.base:
            parts.append(f'<p class="note">Also needs, on every Debian system: '
                         f"{_e(', '.join(g.base))}.</p>\n")
        if g.unpackaged:
            parts.append(f'<p class="note">Not from a Debian package: '
                         f"{_e(', '.join(g.unpackaged))}.</p>\n")
        if g.missing:
            parts.append(f'<p class="note">Not found on the builder: '
                         f"{_e(', '.join(g.missing))}.</p>\n")
    parts.append("</section>\n")
    return "".join(parts)


def _file_apt_cell(info: FileLibraries | None) -> str:
    if info is None or (not info.checked and not info.refused):
        return ""
    if info.refused:
        return f'<span class="note">{_e(info.refused)}</span>'
    items = []
    for lib in info.libraries:
        if lib.kind == "debian" and lib.base:
            items.append(f'<span class="base" title="{_e(lib.library)}; on every Debian '
                         f'system">{_e(lib.package)}</span>')
        elif lib.kind == "debian":
            items.append(f'<span title="{_e(lib.library)}">{_e(lib.package)}</span>')
        elif lib.kind == "unpackaged":
            items.append(f"not from a Debian package: {_e(lib.library)}")
        elif lib.kind == "missing":
            items.append(f"not found on the builder: {_e(lib.library)}")
        else:
            items.append(f'<span class="note">bundled: {_e(lib.library)}</span>')
    return ", ".join(dict.fromkeys(items)) or '<span class="note">none</span>'


def _grid(data: ProjectData) -> str:
    targets = grid_targets(data)
    releases = releases_newest_first(data)
    if not releases or not targets:
        return "<p>No builds yet.</p>\n"
    head = "".join(f'<th scope="col">{_e(t)}</th>' for t in targets)
    rows = []
    for rel in releases:
        label = _e(rel.version)
        if rel.yanked:
            reason = f": {_e(rel.yanked_reason)}" if rel.yanked_reason else ""
            label += f' <span class="yanked">yanked{reason}</span>'
        removed = removed_mark(rel.removed_upstream_at)
        if removed:
            label += f' <span class="removed">{_e(removed)}</span>'
        cells = []
        for target in targets:
            c = cell(data, rel.version, target, rel.skip_reason, rel.has_sdist)
            text = _e(STATES[c.state])
            if c.log_path:
                text = f'<a href="../../{_e(c.log_path)}">{text}</a>'
            if c.covered_by:  # built once for several targets: say by which wheel's tag
                tag = "-".join(c.covered_by[:-len(".whl")].split("-")[-3:])
                text += f' <span class="note">by {_e(tag)}</span>'
            title = f' title="{_e(c.note)}"' if c.note else ""
            cells.append(f'<td class="{c.state}"{title}>{text}</td>')
        rows.append(f'<tr><th scope="row">{label}</th>{"".join(cells)}</tr>\n')
    return ('<div class="scroll"><table>\n'
            f'<thead><tr><th scope="col">version</th>{head}</tr></thead>\n'
            f'<tbody>\n{"".join(rows)}</tbody>\n</table></div>\n')


def _files(data: ProjectData) -> str:
    if data.status.status == "quarantined":
        return "<p>The files of a quarantined project are not offered.</p>\n"
    if not data.files:
        return "<p>No files yet.</p>\n"
    rows = []
    yanked = {r.version for r in data.releases if r.yanked}
    removed = {r.version: removed_mark(r.removed_upstream_at) for r in data.releases
               if r.removed_upstream_at is not None}
    ordered = sorted(data.files, key=lambda p: (version_key(p.file.version), p.file.filename),
                     reverse=True)
    for p in ordered:
        f = p.file
        mark = ' <span class="yanked">yanked</span>' if f.version in yanked else ""
        if f.version in removed:
            mark += f' <span class="removed">{_e(removed[f.version])}</span>'
        when = upload_time(f.upload_time)[:10] if f.upload_time else ""
        rows.append(
            f'<tr><td><a href="../../packages/{_e(data.package)}/{_e(_quote(f.filename))}">'
            f"{_e(f.filename)}</a>{mark}</td><td>{_e(f.version)}</td>"
            f"<td>{_e(_size(f.size))}</td><td>{_e(when)}</td>"
            f'<td class="hash"><code>{_e(f.sha256)}</code></td>'
            f'<td class="apt">{_file_apt_cell(data.libraries.get(f.filename))}</td></tr>\n')
    return ('<div class="scroll"><table>\n<thead><tr><th scope="col">file</th>'
            '<th scope="col">version</th><th scope="col">size</th>'
            '<th scope="col">published</th><th scope="col">SHA-256</th>'
            '<th scope="col">Debian packages</th></tr></thead>\n'
            f'<tbody>\n{"".join(rows)}</tbody>\n</table></div>\n')


def render_html(data: ProjectData, metadata: bytes | None, index_url: str = "") -> str:
    """The project page. ``metadata`` is the newest file's METADATA (or None)."""
    summary, long = description(metadata)
    name = data.display_name or data.package
    parts = [f"<h1>{_e(name)}</h1>\n"]
    if summary:
        parts.append(f"<p>{_e(summary)}</p>\n")
    if data.status.status != "active":
        reason = f": {_e(data.status.reason)}" if data.status.reason else ""
        parts.append(f'<p class="status">This project is {_e(data.status.status)}{reason}.</p>\n')
    if data.skip_reason:
        parts.append(f'<p class="status">Not built here: {_e(data.skip_reason)}.</p>\n')
    parts.append("<h2>Install</h2>\n")
    parts.append(f"<pre>{_e(install_line(data, index_url))}</pre>\n")
    parts.append(_apt(data))
    parts.append("<h2>Builds</h2>\n")
    parts.append(_grid(data))
    parts.append("<h2>Files</h2>\n")
    parts.append(_files(data))
    if long:
        parts.append("<h2>Description</h2>\n")
        parts.append(f"<pre>{_e(long)}</pre>\n")
    parts.append('<p><a href="json/">This page as JSON</a> · '
                 f'<a href="../../simple/{_e(data.package)}/">Simple index</a></p>\n')
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(name)} · Pinwheel</title>\n<style>{_CSS}</style>\n</head>\n"
        f"<body>\n{''.join(parts)}</body>\n</html>\n"
    )


# ------------------------------------------------------------------- JSON


def project_json(data: ProjectData, metadata: bytes | None, index_url: str = "") -> dict[str, Any]:
    summary, long = description(metadata)
    targets = grid_targets(data)
    releases = []
    for rel in releases_newest_first(data):
        builds = {}
        for target in targets:
            c = cell(data, rel.version, target, rel.skip_reason, rel.has_sdist)
            builds[target] = {"state": c.state, "build_id": c.build_id,
                              "log_url": f"/{c.log_path}" if c.log_path else None,
                              "note": c.note, "covered_by": c.covered_by}
        releases.append({
            "version": rel.version,
            "released": rel.released.isoformat() if rel.released else None,
            "yanked": rel.yanked,
            "yanked_reason": rel.yanked_reason,
            "removed_upstream_at": (rel.removed_upstream_at.isoformat()
                                    if rel.removed_upstream_at else None),
            "removed_upstream": removed_mark(rel.removed_upstream_at),
            "skip_reason": rel.skip_reason,
            "requires_python": rel.requires_python,
            "builds": builds,
        })
    shown = [] if data.status.status == "quarantined" else data.files
    files = [{
        "filename": p.file.filename,
        "version": p.file.version,
        "url": f"/packages/{data.package}/{_quote(p.file.filename)}",
        "size": p.file.size,
        "sha256": p.file.sha256,
        "python_tag": p.python_tag,
        "abi_tag": p.abi_tag,
        "platform_tag": p.platform_tag,
        "upload_time": upload_time(p.file.upload_time) if p.file.upload_time else None,
        "build_id": p.build_id,
        "apt_dependencies": file_apt(data.libraries.get(p.file.filename)),
    } for p in sorted(shown, key=lambda p: (version_key(p.file.version), p.file.filename),
                      reverse=True)]
    return {
        "name": data.package,
        "display_name": data.display_name,
        "status": {"status": data.status.status, "reason": data.status.reason},
        "skip_reason": data.skip_reason,
        "summary": summary,
        "description": long,
        "install": install_line(data, index_url),
        "apt": [{"targets": list(g.targets), "versions": list(g.versions),
                 "install": g.install, "packages": list(g.packages),
                 "base_packages": list(g.base), "not_from_debian": list(g.unpackaged),
                 "not_found": list(g.missing)} for g in apt_groups(data)],
        "targets": targets,
        "releases": releases,
        "files": files,
    }


def render_json(data: ProjectData, metadata: bytes | None, index_url: str = "") -> str:
    return json.dumps(project_json(data, metadata, index_url), ensure_ascii=False,
                      indent=1) + "\n"
