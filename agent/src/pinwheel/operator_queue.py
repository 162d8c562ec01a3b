"""Operators reordering the queue: ``pinwheel bump`` and ``pinwheel retry``.

``bump`` moves the queued jobs of a project (one release, one target) to the
front of the queue: the ``bumped`` lane, claimed before new releases and the
backlog (docs/upstream.md, "Priority"). ``retry`` queues again, at the front,
the releases whose latest build failed, timed out or was abandoned. Both go
through SQL functions of migration 9 (``bump_jobs``, ``retry_builds``); this
module checks the names first, so a typo gets a message saying what exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from . import db, names


class NothingMatched(Exception):
    """The project, release or target named is unknown, or has nothing to act on."""


@dataclass(frozen=True)
class Scope:
    package: str
    version: str | None
    abi: str | None
    platform: str | None

    @property
    def what(self) -> str:
        text = f"{self.package} {self.version}" if self.version else self.package
        if self.abi:
            text += f" for {names.target(self.abi, self.platform or '')}"
        return text


@dataclass(frozen=True)
class Bumped:
    job_id: int
    version: str
    target: str
    state: str       # queued or leased
    outcome: str     # moved to the front, already at the front, building now


@dataclass(frozen=True)
class Retried:
    version: str
    target: str
    last_status: str
    finished_at: datetime
    job_id: int | None
    outcome: str     # queued at the front, or why not

    @property
    def queued(self) -> bool:
        return self.outcome == "queued at the front"


def split_target(target: str) -> tuple[str, str]:
    """``cp311-linux_armv7l`` -> (``cp311``, ``linux_armv7l``); ValueError if malformed."""
    abi, sep, platform = target.partition("-")
    if not sep or not abi or not platform or "-" in platform:
        raise ValueError(f"{target!r} is not a build target: write ABI-PLATFORM, e.g. "
                         "cp311-linux_armv7l (`pinwheel status` lists them)")
    return abi, platform


def resolve(conn: Any, name: str, version: str | None = None,
            target: str | None = None) -> Scope:
    """Check that the project, release and target exist; raise NothingMatched if not."""
    if not names.is_valid_name(name):
        raise NothingMatched(f"{name!r} is not a valid project name")
    package = names.normalise(name)
    if not db.call(conn, "SELECT 1 FROM packages WHERE package = %s", (package,)):
        raise NothingMatched(f"no project {package} in the catalogue (`pinwheel add {name}` "
                             "records it and queues its builds)")
    if version is not None and not db.call(
            conn, "SELECT 1 FROM versions WHERE package = %s AND version = %s",
            (package, version)):
        known = db.call(conn, "SELECT string_agg(version, ', ' ORDER BY added_at DESC) FROM "
                              "(SELECT version, added_at FROM versions WHERE package = %s "
                              " ORDER BY added_at DESC LIMIT 10) AS v", (package,))[0][0]
        raise NothingMatched(f"{package} has no version {version} in the catalogue "
                             f"(latest known: {known or 'none'})")
    abi = platform = None
    if target is not None:
        abi, platform = split_target(target)
        if not db.call(conn, "SELECT 1 FROM targets WHERE abi = %s AND platform = %s",
                       (abi, platform)):
            known = db.call(conn, "SELECT string_agg(abi || '-' || platform, ', ' "
                                  "ORDER BY abi, platform) FROM targets")[0][0]
            raise NothingMatched(f"no build target {target}; targets: "
                                 f"{known or '(none: no builder has registered)'}")
    return Scope(package, version, abi, platform)


def bump(conn: Any, scope: Scope) -> list[Bumped]:
    """Move the scope's queued jobs to the front; NothingMatched when it has no job."""
    rows = db.call(conn, "SELECT * FROM bump_jobs(%s, %s, %s, %s)",
                   (scope.package, scope.version, scope.abi, scope.platform))
    if not rows:
        raise NothingMatched(
            f"nothing of {scope.what} is queued: `pinwheel add {scope.package}"
            f"{' ' + scope.version if scope.version else ''}` queues what is not built yet, "
            f"`pinwheel retry {scope.package}` what failed")
    return [Bumped(job_id, version, names.target(abi, platform), state, outcome)
            for job_id, version, abi, platform, state, outcome in rows]


def retry(conn: Any, scope: Scope) -> list[Retried]:
    """Queue again, at the front, the scope's failed, timed-out or abandoned builds;
    NothingMatched when none has."""
    rows = db.call(conn, "SELECT * FROM retry_builds(%s, %s, %s, %s)",
                   (scope.package, scope.version, scope.abi, scope.platform))
    if not rows:
        raise NothingMatched(
            f"no build of {scope.what} has failed, timed out or been abandoned as its latest "
            f"build: nothing to retry (`pinwheel status` shows recent builds; `pinwheel add "
            f"{scope.package}` queues what was never built)")
    return [Retried(version, names.target(abi, platform), status, finished, job_id, outcome)
            for version, abi, platform, status, finished, job_id, outcome in rows]
