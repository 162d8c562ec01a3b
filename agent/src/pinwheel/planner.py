"""Turning upstream releases into jobs: record what the upstream has, queue what to build.

One job per (release, active target) for every release with an sdist; a release
with only wheels upstream is recorded with the skip reason "binary only".
The SQL function ``plan_release`` does the queuing through ``plan_due``, so
the rule (which targets, nothing twice, nothing already built or covered by a
verified pure or abi3 wheel) lives in one place, shared with ``pinwheel
unskip`` and the planning of new targets.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from . import db, names, upstream


class PlanError(Exception):
    """The request cannot be planned (unknown version, invalid name ...)."""


@dataclass
class ReleasePlan:
    version: str
    has_sdist: bool
    yanked: bool
    jobs: int = 0
    note: str = ""


@dataclass
class AddResult:
    package: str
    display_name: str
    releases: list[ReleasePlan] = field(default_factory=list)
    active_targets: list[str] = field(default_factory=list)

    @property
    def jobs(self) -> int:
        return sum(r.jobs for r in self.releases)


def releases_of(proj: upstream.UpstreamProject) -> dict[str, list[upstream.UpstreamFile]]:
    """Upstream files grouped by version (sdists by their names, wheels by theirs)."""
    by_version: dict[str, list[upstream.UpstreamFile]] = defaultdict(list)
    for f in proj.files:
        version = names.sdist_version(f.filename, proj.name)
        if version is None and f.filename.endswith(".whl"):
            parts = f.filename[:-4].split("-")
            if len(parts) >= 5 and names.normalise(parts[0]) == names.normalise(proj.name):
                version = parts[1]
        if version is not None:
            by_version[version].append(f)
    return dict(by_version)


def add(conn: Any, index_url: str, name: str, version: str | None = None,
        priority: int = 0, ca_bundle: str = "") -> AddResult:
    """Record ``name`` (one ``version`` or all of them) and queue its builds."""
    proj = upstream.project(index_url, name, ca_bundle=ca_bundle)
    package = names.normalise(proj.name)
    releases = releases_of(proj)
    if version is not None:
        if version not in releases:
            known = ", ".join(sorted(releases)[-10:]) or "none"
            raise PlanError(f"{proj.name} has no version {version} upstream "
                            f"(latest known: {known})")
        releases = {version: releases[version]}
    result = AddResult(package, proj.name)
    with db.transaction(conn) as cur:
        cur.execute("SELECT abi, platform FROM targets WHERE skip_reason IS NULL "
                    "ORDER BY abi, platform")
        result.active_targets = [names.target(*r) for r in cur.fetchall()]
        cur.execute("INSERT INTO packages (package, display_name) VALUES (%s, %s) "
                    "ON CONFLICT (package) DO UPDATE SET display_name = EXCLUDED.display_name",
                    (package, proj.name))
        for ver, files in sorted(releases.items()):
            result.releases.append(record_release(cur, package, ver, files,
                                                   explicit=version is not None,
                                                   priority=priority))
    return result


def record_release(cur: Any, package: str, version: str, files: list[upstream.UpstreamFile],
                   explicit: bool, priority: int, plan: bool = True) -> ReleasePlan:
    """Record one release in ``versions`` and queue its jobs (in the caller's transaction).

    Used by ``pinwheel add`` and by ``pinwheel watch``; ``plan=False`` only records it.
    """
    sdists = [f for f in files if f.is_sdist]
    yanked_files = [f for f in files if f.yanked]
    yanked = bool(files) and len(yanked_files) == len(files)
    reason = next((f.yanked for f in yanked_files if isinstance(f.yanked, str)), None)
    requires_python = next((f.requires_python for f in sdists if f.requires_python), None)
    cur.execute(
        """INSERT INTO versions (package, version, has_sdist, yanked, yanked_reason,
                                 requires_python, skip_reason)
           VALUES (%s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT (package, version) DO UPDATE
              SET has_sdist = EXCLUDED.has_sdist, yanked = EXCLUDED.yanked,
                  yanked_reason = EXCLUDED.yanked_reason,
                  requires_python = EXCLUDED.requires_python,
                  skip_reason = CASE WHEN versions.skip_reason = 'binary only'
                                     THEN EXCLUDED.skip_reason ELSE versions.skip_reason END""",
        (package, version, bool(sdists), yanked, reason, requires_python,
         None if sdists else "binary only"))
    result = ReleasePlan(version, bool(sdists), yanked)
    if not sdists:
        result.note = "skipped: binary only (no sdist upstream)"
    elif yanked and not explicit:
        result.note = "skipped: yanked upstream (add it by version to build it)"
    elif not plan:
        result.note = "recorded, not queued"
    else:
        # A yanked release reaches here only when an operator named it: build it anyway.
        cur.execute("SELECT plan_release(%s, %s, %s, %s)", (package, version, priority, yanked))
        result.jobs = cur.fetchone()[0]
        if result.jobs == 0:
            result.note = "nothing to do: built or queued already"
    return result
