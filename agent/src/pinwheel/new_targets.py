"""Planning the catalogue for a build target that appears after its releases were seen.

A builder of a new ABI or platform registers (``builder_register`` adds the
target with ``planned_at`` NULL); the master's ingest janitor then queues the
releases already in the catalogue for it, at backlog priority (one below the
watcher's, so new releases go first), following ``[watch] history``:

* ``latest``: each project's newest final release that has an sdist and is not
  yanked, deleted upstream or skipped (the release ``history = latest`` would
  have built), if it is due on the new target;
* ``all``: every due release.

"Due" is ``plan_due``'s rule, so nothing already covered by a verified pure or
abi3 wheel is queued. Each target is planned once, in one transaction that
sets ``planned_at`` and records a ``target-planned`` row in ``plan_events``;
running it again (or in two processes at once) queues nothing more.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from packaging.version import InvalidVersion, Version

from . import db, names
from .config import WatchConfig

log = logging.getLogger("pinwheel.planning")

# Candidates for history = latest: releases that could be built, per project.
_CANDIDATES = """
    SELECT v.package, array_agg(v.version)
      FROM versions v JOIN packages p ON p.package = v.package
     WHERE v.has_sdist AND NOT v.yanked AND v.removed_upstream_at IS NULL
       AND v.skip_reason IS NULL AND p.skip_reason IS NULL
     GROUP BY v.package
"""
_PLAN_CHOSEN = """
    SELECT coalesce(sum(plan_jobs(c.package, c.version, %s, %s, %s)), 0)::integer
      FROM unnest(%s::text[], %s::text[]) AS c(package, version)
"""


@dataclass(frozen=True)
class TargetPlan:
    target: str       # <abi>-<platform>
    history: str      # all or latest
    releases: int     # releases looked at (latest: one per project)
    jobs: int         # jobs queued
    priority: int


def newest_final(versions: Iterable[str]) -> str | None:
    """The newest final release (PEP 440; not a pre- or dev-release) of ``versions``."""
    best: tuple[Version, str] | None = None
    for version in versions:
        try:
            parsed = Version(version)
        except InvalidVersion:
            continue
        if parsed.is_prerelease or parsed.is_devrelease:
            continue
        if best is None or parsed > best[0]:
            best = (parsed, version)
    return best[1] if best else None


def backlog_priority(watch: WatchConfig) -> int:
    """Below the watcher's priority: new releases are claimed before the backlog."""
    return watch.priority - 1


def _latest_releases(conn: Any) -> tuple[list[str], list[str]]:
    packages: list[str] = []
    versions: list[str] = []
    with conn.cursor(name="pinwheel_latest_releases") as cur:
        cur.itersize = 5000
        cur.execute(_CANDIDATES)
        for package, candidates in cur:
            newest = newest_final(candidates)
            if newest is not None:
                packages.append(package)
                versions.append(newest)
    return packages, versions


def _plan_one(conn: Any, watch: WatchConfig) -> TargetPlan | None:
    """Plan the next unplanned target in one transaction; None when there is none."""
    priority = backlog_priority(watch)
    with db.transaction(conn) as cur:
        cur.execute("SELECT abi, platform FROM targets "
                    "WHERE planned_at IS NULL AND skip_reason IS NULL "
                    "ORDER BY added_at, abi, platform LIMIT 1 FOR UPDATE SKIP LOCKED")
        row = cur.fetchone()
        if row is None:
            return None
        abi, platform = row
        if watch.history == "latest":
            packages, versions = _latest_releases(conn)
            cur.execute(_PLAN_CHOSEN, (abi, platform, priority, packages, versions))
            releases = len(packages)
        else:
            cur.execute("SELECT count(*) FROM versions")
            releases = int(cur.fetchone()[0])
            cur.execute("SELECT plan_jobs(NULL, NULL, %s, %s, %s)", (abi, platform, priority))
        jobs = int(cur.fetchone()[0])
        plan = TargetPlan(names.target(abi, platform), watch.history, releases, jobs, priority)
        detail = (f"new target: {jobs} job(s) queued at priority {priority} "
                  f"(history {watch.history}, {releases} release(s) looked at)")
        cur.execute("UPDATE targets SET planned_at = now() WHERE abi = %s AND platform = %s",
                    (abi, platform))
        cur.execute("INSERT INTO plan_events (kind, abi, platform, jobs, detail) "
                    "VALUES ('target-planned', %s, %s, %s, %s)", (abi, platform, jobs, detail))
    log.info("target %s: %s", plan.target, detail)
    return plan


def plan_new_targets(conn: Any, watch: WatchConfig) -> list[TargetPlan]:
    """Queue the catalogue for every target not planned yet (an autocommit connection)."""
    done: list[TargetPlan] = []
    while True:
        plan = _plan_one(conn, watch)
        if plan is None:
            return done
        done.append(plan)
