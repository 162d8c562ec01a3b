"""Operators skipping and unskipping work (``pinwheel skip`` / ``pinwheel unskip``).

A skip has a reason and applies to a project, one release, or a build target
(``<abi>-<platform>``): the ``skip_reason`` columns ``plan_release`` already
respects, so nothing new is queued for it, whether by ``pinwheel add`` or by
``pinwheel watch``. Skipping also cancels the queued jobs it covers; a build
already running for a skipped project or release is cancelled too (its builder
is told on its next heartbeat and stops it, migration 9), while one running for
a skipped target finishes. Unskipping clears the reason and queues again
what is then due, by the rule ``plan_release`` follows too (``plan_due``):
every release with an sdist that is not yanked, not deleted upstream, and not
already built, queued or covered by a verified pure or abi3 wheel.

The project pages show skip reasons; the watcher rewrites the pages of the
projects it follows at its next poll (``watch_projects.pages_dirty``), other
pages change with the next build or ``pinwheel index rebuild``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import db, names

BINARY_ONLY = "binary only"  # the planner's own reason: set and cleared by the upstream


class SkipError(Exception):
    """Nothing matched what the operator named, or the request makes no sense."""


@dataclass(frozen=True)
class SkipResult:
    what: str            # e.g. "numpy", "numpy 1.0", "target cp311-linux_armv7l"
    changed: bool        # False: it was already in that state
    cancelled: int = 0   # queued jobs cancelled (skip)
    queued: int = 0      # jobs queued again (unskip)


# Queue what is due (the SQL function plan_due decides, as for plan_release):
# NULL package, version or target means any.
_REPLAN = "SELECT plan_jobs(%s, %s, %s, %s)"


def _check_reason(reason: str) -> str:
    reason = " ".join(reason.split())
    if not reason:
        raise SkipError("give a reason (--reason TEXT): it is shown on the project page")
    if len(reason) > 500:
        raise SkipError("the reason is longer than 500 characters")
    if reason == BINARY_ONLY:
        raise SkipError(f"{BINARY_ONLY!r} is the planner's own reason; choose another")
    return reason


def _target(cur: Any, target: str) -> tuple[str, str, str | None]:
    cur.execute("SELECT abi, platform, skip_reason FROM targets "
                "WHERE abi || '-' || platform = %s FOR UPDATE", (target,))
    row = cur.fetchone()
    if row is None:
        cur.execute("SELECT string_agg(abi || '-' || platform, ', ' ORDER BY abi, platform) "
                    "FROM targets")
        known = cur.fetchone()[0] or "(none: no builder has registered)"
        raise SkipError(f"no build target {target}; targets: {known}")
    return row[0], row[1], row[2]


def _release(cur: Any, name: str, version: str | None) -> tuple[str, str | None]:
    if not names.is_valid_name(name):
        raise SkipError(f"{name!r} is not a valid project name")
    package = names.normalise(name)
    cur.execute("SELECT skip_reason FROM packages WHERE package = %s FOR UPDATE", (package,))
    row = cur.fetchone()
    if row is None:
        raise SkipError(f"no project {package} in the catalogue (`pinwheel add {name}` "
                        "records it)")
    if version is None:
        return package, row[0]
    cur.execute("SELECT skip_reason FROM versions WHERE package = %s AND version = %s "
                "FOR UPDATE", (package, version))
    vrow = cur.fetchone()
    if vrow is None:
        cur.execute("SELECT string_agg(version, ', ' ORDER BY added_at DESC) FROM "
                    "(SELECT version, added_at FROM versions WHERE package = %s "
                    " ORDER BY added_at DESC LIMIT 10) AS v", (package,))
        known = cur.fetchone()[0] or "none"
        raise SkipError(f"{package} has no version {version} in the catalogue "
                        f"(latest known: {known})")
    return package, vrow[0]


def _dirty(cur: Any, package: str) -> None:
    cur.execute("UPDATE watch_projects SET pages_dirty = true WHERE package = %s", (package,))


def skip(conn: Any, reason: str, name: str | None = None, version: str | None = None,
         target: str | None = None) -> SkipResult:
    """Skip a project, a release of it, or a target; cancel the queued jobs it covers."""
    reason = _check_reason(reason)
    with db.transaction(conn) as cur:
        if target is not None:
            abi, platform, old = _target(cur, target)
            cur.execute("UPDATE targets SET skip_reason = %s WHERE abi = %s AND platform = %s",
                        (reason, abi, platform))
            cur.execute("DELETE FROM jobs WHERE abi = %s AND platform = %s "
                        "AND state = 'queued'", (abi, platform))
            return SkipResult(f"target {target}", old != reason, int(cur.rowcount))
        if name is None:
            raise SkipError("name a project (and optionally a version), or give --target")
        package, old = _release(cur, name, version)
        if version is None:
            cur.execute("UPDATE packages SET skip_reason = %s WHERE package = %s",
                        (reason, package))
            cur.execute("DELETE FROM jobs WHERE package = %s AND state = 'queued'", (package,))
        else:
            if old == BINARY_ONLY:
                raise SkipError(f"{package} {version} is already skipped: no sdist upstream")
            cur.execute("UPDATE versions SET skip_reason = %s WHERE package = %s "
                        "AND version = %s", (reason, package, version))
            cur.execute("DELETE FROM jobs WHERE package = %s AND version = %s "
                        "AND state = 'queued'", (package, version))
        cancelled = int(cur.rowcount)
        _dirty(cur, package)
        return SkipResult(f"{package} {version}" if version else package, old != reason,
                          cancelled)


def unskip(conn: Any, name: str | None = None, version: str | None = None,
           target: str | None = None) -> SkipResult:
    """Clear a skip and queue again what is then due."""
    with db.transaction(conn) as cur:
        if target is not None:
            abi, platform, old = _target(cur, target)
            cur.execute("UPDATE targets SET skip_reason = NULL WHERE abi = %s AND platform = %s",
                        (abi, platform))
            cur.execute(_REPLAN, (None, None, abi, platform))
            queued = int(cur.fetchone()[0])
            return SkipResult(f"target {target}", old is not None, queued=queued)
        if name is None:
            raise SkipError("name a project (and optionally a version), or give --target")
        package, old = _release(cur, name, version)
        if version is None:
            cur.execute("UPDATE packages SET skip_reason = NULL WHERE package = %s", (package,))
            cur.execute(_REPLAN, (package, None, None, None))
        else:
            if old == BINARY_ONLY:
                raise SkipError(f"{package} {version} has no sdist upstream: there is nothing "
                                "to build (it is planned when one is uploaded)")
            cur.execute("UPDATE versions SET skip_reason = NULL WHERE package = %s "
                        "AND version = %s", (package, version))
            cur.execute(_REPLAN, (package, version, None, None))
        queued = int(cur.fetchone()[0])
        _dirty(cur, package)
        return SkipResult(f"{package} {version}" if version else package, old is not None,
                          queued=queued)
