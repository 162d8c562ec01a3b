"""Operators rebuilding and removing releases (``pinwheel rebuild``, ``pinwheel remove``).

**Rebuild** queues a new build of releases already built (after a builder or
toolchain fix), whatever the earlier build's outcome, for every active target
or one. The published wheels stay on the index until the new build replaces
them: a ``rebuilds`` row lets the ingest supersede that target's earlier files
when the new build is ingested (see the ingest's ``_supersede``). A rebuild
that fails leaves the old files published.

**Remove** unpublishes a project or one release: its files rows become
``removed``, its jobs are cancelled (a build running for it loses its lease and
its result is dropped; one finished but not yet ingested is dropped by the ingest,
which sees the removal under the same project lock), and it is skipped with the
reason so neither ``pinwheel watch`` nor ``pinwheel add`` queues it again
(``pinwheel unskip`` undoes the skip, and queues it again). The pages are
rewritten by the index writer (atomically, like every page), which also deletes
the wheels from disk.

Both record the operator's reason in ``operator_actions``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import db, index, names

REMOVED_PREFIX = "removed by an operator: "


class NothingMatched(db.PinwheelError):
    """The command named nothing it could act on; the message says what to do next."""


@dataclass(frozen=True)
class RebuildRow:
    version: str
    target: str
    last_build: str        # the latest build's status, or "never built"
    published: int         # files of the target's builds on the index now
    queued: bool           # False: a job was queued or running already


@dataclass
class RebuildResult:
    package: str
    rows: list[RebuildRow] = field(default_factory=list)

    @property
    def queued(self) -> int:
        return sum(1 for r in self.rows if r.queued)


@dataclass
class RemoveResult:
    package: str
    version: str | None
    files: list[str] = field(default_factory=list)
    cancelled: int = 0
    already: bool = False   # it was removed before (files unpublished then)


def check_reason(reason: str) -> str:
    reason = " ".join(reason.split())
    if not reason:
        raise NothingMatched("give a reason (--reason TEXT): it is recorded with the action")
    if len(reason) > 400:
        raise NothingMatched("the reason is longer than 400 characters")
    return reason


def _package(cur: Any, name: str) -> str:
    if not names.is_valid_name(name):
        raise NothingMatched(f"{name!r} is not a valid project name")
    package = names.normalise(name)
    cur.execute("SELECT 1 FROM packages WHERE package = %s FOR UPDATE", (package,))
    if cur.fetchone() is None:
        raise NothingMatched(f"no project {package} in the catalogue (`pinwheel add {name}` "
                             "records it and queues its builds)")
    return package


def _version(cur: Any, package: str, version: str) -> None:
    cur.execute("SELECT 1 FROM versions WHERE package = %s AND version = %s FOR UPDATE",
                (package, version))
    if cur.fetchone() is None:
        cur.execute("SELECT string_agg(version, ', ' ORDER BY added_at DESC) FROM "
                    "(SELECT version, added_at FROM versions WHERE package = %s "
                    " ORDER BY added_at DESC LIMIT 10) AS v", (package,))
        known = cur.fetchone()[0] or "none"
        raise NothingMatched(f"{package} has no version {version} in the catalogue "
                             f"(latest known: {known})")


def _record(cur: Any, action: str, package: str, version: str | None, target: str | None,
            reason: str, detail: str) -> int:
    cur.execute("INSERT INTO operator_actions (action, package, version, target, reason, "
                "detail) VALUES (%s, %s, %s, %s, %s, left(%s, 2000)) RETURNING action_id",
                (action, package, version, target, reason, detail))
    return int(cur.fetchone()[0])


# ------------------------------------------------------------------ rebuild

_CANDIDATES = """
    SELECT v.version, t.abi, t.platform,
           (SELECT b.status FROM builds b
             WHERE (b.package, b.version, b.abi, b.platform) = (v.package, v.version, t.abi,
                                                                t.platform)
             ORDER BY b.build_id DESC LIMIT 1),
           (SELECT count(*) FROM files f JOIN builds b USING (build_id)
             WHERE f.state = 'published'
               AND (b.package, b.version, b.abi, b.platform) = (v.package, v.version, t.abi,
                                                                t.platform)),
           EXISTS (SELECT 1 FROM jobs j
                    WHERE (j.package, j.version, j.abi, j.platform) = (v.package, v.version,
                                                                       t.abi, t.platform))
      FROM versions v CROSS JOIN targets t
     WHERE v.package = %(package)s AND (%(version)s::text IS NULL OR v.version = %(version)s)
       AND (%(target)s::text IS NULL OR t.abi || '-' || t.platform = %(target)s)
       AND t.skip_reason IS NULL AND v.has_sdist AND v.skip_reason IS NULL
       AND v.removed_upstream_at IS NULL
       AND EXISTS (SELECT 1 FROM builds b
                    WHERE (b.package, b.version, b.abi, b.platform) = (v.package, v.version,
                                                                       t.abi, t.platform))
     ORDER BY v.added_at, v.version, t.abi, t.platform"""


def rebuild(conn: Any, name: str, version: str | None = None, target: str | None = None,
            priority: int = 0, reason: str = "rebuild requested") -> RebuildResult:
    """Queue new builds of the built (release, target)s named; see the module doc."""
    reason = check_reason(reason)
    with db.transaction(conn) as cur:
        package = _package(cur, name)
        if version is not None:
            _version(cur, package, version)
        if target is not None:
            cur.execute("SELECT skip_reason FROM targets WHERE abi || '-' || platform = %s",
                        (target,))
            row = cur.fetchone()
            if row is None or row[0] is not None:
                cur.execute("SELECT string_agg(abi || '-' || platform, ', ' ORDER BY abi, "
                            "platform) FROM targets WHERE skip_reason IS NULL")
                known = cur.fetchone()[0] or "none"
                state = "is skipped (`pinwheel unskip --target`)" if row else "does not exist"
                raise NothingMatched(f"target {target} {state}; active targets: {known}")
        cur.execute("SELECT skip_reason FROM packages WHERE package = %s", (package,))
        skipped = cur.fetchone()[0]
        if skipped is not None:
            raise NothingMatched(f"{package} is skipped ({skipped}): `pinwheel unskip "
                                 f"{package}` first")
        cur.execute(_CANDIDATES, {"package": package, "version": version, "target": target})
        found = cur.fetchall()
        if not found:
            what = f"{package} {version}" if version else package
            raise NothingMatched(
                f"nothing of {what} has been built{' for ' + target if target else ''} yet, "
                "so there is nothing to rebuild (a release not built yet is built when its "
                f"job's turn comes; a skipped release needs `pinwheel unskip {package} "
                "VERSION`)")
        action = _record(cur, "rebuild", package, version, target, reason,
                         f"{sum(1 for r in found if not r[5])} job(s) queued")
        result = RebuildResult(package)
        for ver, abi, platform, status, published, busy in found:
            if not busy:
                cur.execute("INSERT INTO jobs (package, version, abi, platform, priority) "
                            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                            (package, ver, abi, platform, priority))
                busy = cur.rowcount == 0
            cur.execute("""INSERT INTO rebuilds (package, version, abi, platform, action_id)
                           VALUES (%s, %s, %s, %s, %s)
                           ON CONFLICT (package, version, abi, platform)
                           DO UPDATE SET requested_at = now(), action_id = EXCLUDED.action_id""",
                        (package, ver, abi, platform, action))
            result.rows.append(RebuildRow(ver, names.target(abi, platform), status,
                                          int(published), not busy))
        return result


# ------------------------------------------------------------------- remove


def remove(conn: Any, www_root: Path, options: index.IndexOptions, name: str,
           version: str | None, reason: str) -> RemoveResult:
    """Unpublish a project or a release, cancel its jobs, skip it; see the module doc."""
    reason = check_reason(reason)
    skip = REMOVED_PREFIX + reason
    with db.transaction(conn) as cur:
        package = _package(cur, name)
        # The ingest's project lock: a build being published now finishes first (and is
        # unpublished below); one published after this commits sees the removal.
        cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                    (index.PROJECT_LOCK, package))
        result = RemoveResult(package, version)
        if version is not None:
            _version(cur, package, version)
            cur.execute("SELECT skip_reason FROM versions WHERE package = %s AND version = %s",
                        (package, version))
        else:
            cur.execute("SELECT skip_reason FROM packages WHERE package = %s", (package,))
        old = cur.fetchone()[0]
        result.already = bool(old) and old.startswith(REMOVED_PREFIX)
        where = "package = %s AND (%s::text IS NULL OR version = %s)"
        args = (package, version, version)
        # Queued and running jobs: a builder holding one loses its lease (its result is
        # refused), so nothing of it is published after this commits.
        cur.execute(f"DELETE FROM jobs WHERE {where}", args)
        result.cancelled = int(cur.rowcount)
        cur.execute(f"DELETE FROM rebuilds WHERE {where}", args)
        cur.execute(f"UPDATE files SET state = 'removed', reason = %s WHERE state = 'published' "
                    f"AND {where} RETURNING filename", (skip, *args))
        result.files = sorted(r[0] for r in cur.fetchall())
        if version is None:
            cur.execute("UPDATE packages SET skip_reason = %s WHERE package = %s",
                        (skip, package))
        else:
            cur.execute("UPDATE versions SET skip_reason = %s WHERE package = %s "
                        "AND version = %s", (skip, package, version))
        _record(cur, "remove", package, version, None, reason,
                f"{len(result.files)} file(s) unpublished, {result.cancelled} job(s) "
                "cancelled")
    # After the commit: the index writer rewrites the project's pages from the catalogue
    # (or removes them when nothing of it is published), deleting the unpublished wheels.
    index.write_project(conn, www_root, package, options)
    index.write_root(conn, www_root)
    return result
