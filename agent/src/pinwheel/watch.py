"""`pinwheel watch`: follow the upstream index and turn its changes into work.

A poll has two steps, each committed before the next, so a restart at any
moment resumes from the database:

1. **What may have changed.** In ``mirror`` mode the root page is fetched
   (conditionally). Against PyPI every project there carries ``_last-serial``:
   the serials are stored in ``watch_projects.upstream_serial`` in one
   transaction, and a project is due when that is newer than the serial last
   processed (``last_serial``). Against an index without serials every listed
   project is due. A project missing from the root is due too (a fetch
   confirms the deletion). In ``allowlist`` mode the listed projects are due.
2. **Each due project**, oldest serial first: its page is fetched with
   If-None-Match / If-Modified-Since, diffed against the catalogue, and the
   new releases, yanks, deletions, the jobs they cause, the events recording
   them and the project's new serial are committed in ONE transaction. The
   diff is against the catalogue, not against the last page, so processing a
   page twice changes nothing the second time.

Pages: a change the index shows (a yank, a deletion) sets
``watch_projects.pages_dirty`` in that transaction; the pages are rewritten
right after it commits (``index.write_project``), and again at the next start
if the watcher died in between.
"""

from __future__ import annotations

import contextlib
import logging
import random
import shutil
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import psycopg2
import psycopg2.extras

from . import db, dependencies, index, names, new_targets, planner, upstream
from .config import ConfigError, MasterConfig
from .ingest import index_options
from .simple_index import armv6l_alias

log = logging.getLogger("pinwheel.watch")

WATCH_LOCK = 0x70777763  # "pwwc": one watcher per database (session advisory lock)
REMOVED_REASON = "removed from the upstream index on {date}"
_REMOVED_PREFIX = "removed from the upstream index"


class WatchBusy(db.PinwheelError):
    """Another `pinwheel watch` holds the database's watch lock."""


@dataclass
class PollResult:
    """What one poll did."""

    due: int = 0             # projects that were due
    fetched: int = 0         # project pages fetched (200)
    unchanged: int = 0       # 304, or the same page again
    changed: int = 0         # projects whose catalogue changed
    removed: int = 0         # projects found deleted upstream
    events: int = 0
    jobs: int = 0
    cancelled: int = 0       # queued jobs and running builds cancelled by deletions
    errors: list[str] = field(default_factory=list)


@dataclass
class _Change:
    events: list[tuple[str | None, str, str]] = field(default_factory=list)  # version, kind, detail
    jobs: int = 0
    cancelled: int = 0
    dirty: bool = False

    def add(self, version: str | None, kind: str, detail: str = "") -> None:
        self.events.append((version, kind, detail))


def backoff_delay(failures: int, max_backoff: float, retry_after: float | None = None,
                  jitter: Callable[[float, float], float] = random.uniform) -> float:
    """Seconds to wait after ``failures`` consecutive failed polls.

    Exponential (2, 4, 8 ... seconds, at most ``max_backoff``) with jitter
    (50 to 100 %), so many farms do not retry in step; never shorter than the
    upstream's Retry-After.
    """
    base = min(float(max_backoff), 2.0 ** min(max(failures, 1), 30))
    delay = base * jitter(0.5, 1.0)
    if retry_after is not None:
        delay = max(delay, min(retry_after, 86400.0))
    return delay


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Watcher:
    """Polls the upstream of ``cfg`` into the catalogue reachable through ``conn``."""

    def __init__(self, conn: Any, cfg: MasterConfig,
                 stop: threading.Event | None = None) -> None:
        self.conn = conn
        self.cfg = cfg
        self.wcfg = cfg.watch
        self.url = cfg.upstream_url.rstrip("/") + "/"
        self.stop = stop if stop is not None else threading.Event()

    # ---------------------------------------------------------------- lock

    def lock(self) -> None:
        """Take the database's watch lock (released on disconnect), or raise WatchBusy."""
        if not db.call(self.conn, "SELECT pg_try_advisory_lock(%s, 0)", (WATCH_LOCK,))[0][0]:
            raise WatchBusy("another `pinwheel watch` is running against this database "
                            "(stop it first, or let it do the polling)")

    # ---------------------------------------------------------------- poll

    def poll(self) -> PollResult:
        """One poll: find what is due, process it, rewrite the pages it changed."""
        result = PollResult()
        self.flush_pages()
        serials = self._list_due()
        due = self._due(serials)
        result.due = len(due)
        for package in due:
            if self.stop.is_set():
                break
            self._one(package, result)
        if self.wcfg.mode == "allowlist":
            # Dependencies found during this poll are recorded in it too (transitively).
            seen = set(due)
            while not self.stop.is_set():
                more = [p for p in self._due(False) if p not in seen]
                if not more:
                    break
                seen.update(more)
                result.due += len(more)
                for package in more:
                    if self.stop.is_set():
                        break
                    self._one(package, result)
        self.flush_pages()
        return result

    def _state(self, cur: Any) -> tuple[str | None, str | None, bool]:
        """The root's validators, and whether this upstream was listed before."""
        cur.execute("SELECT upstream_url, root_etag, root_last_modified, polled_at "
                    "FROM watch_state FOR UPDATE")
        row = cur.fetchone()
        if row is None:
            cur.execute("INSERT INTO watch_state (upstream_url) VALUES (%s)", (self.url,))
            return None, None, False
        if row[0] != self.url:
            log.warning("the upstream changed from %s to %s: forgetting the serials and "
                        "validators of the old one", row[0], self.url)
            cur.execute("UPDATE watch_state SET upstream_url = %s, root_etag = NULL, "
                        "root_last_modified = NULL, root_serial = NULL", (self.url,))
            cur.execute("UPDATE watch_projects SET upstream_serial = NULL, last_serial = NULL, "
                        "etag = NULL, last_modified = NULL, content_sha256 = NULL")
            return None, None, False
        return row[1], row[2], row[3] is not None

    def _list_due(self) -> bool:
        """Step 1: store what may have changed. True when the upstream has serials."""
        if self.wcfg.mode == "allowlist":
            return self._list_allowlist()
        with db.transaction(self.conn) as cur:
            etag, modified, listed_before = self._state(cur)
        page = upstream.fetch_page(self.url, etag, modified, self.wcfg.timeout,
                                   self.cfg.ca_bundle)
        with db.transaction(self.conn) as cur:
            self._state(cur)
            if page.body is None:
                cur.execute("UPDATE watch_state SET polled_at = now()")
                cur.execute("SELECT root_serial IS NOT NULL OR EXISTS (SELECT 1 FROM "
                            "watch_projects WHERE upstream_serial IS NOT NULL) FROM watch_state")
                return bool(cur.fetchone()[0])
            listing = upstream.parse_root(page)
            cur.execute("UPDATE watch_state SET root_etag = %s, root_last_modified = %s, "
                        "root_serial = %s, polled_at = now()",
                        (page.etag, page.last_modified, listing.serial))
            # Diff in Python, write only what moved: PyPI's root changes every few seconds
            # and lists ~600,000 projects, of which a poll sees a few dozen change.
            cur.execute("SELECT package, upstream_serial, listed FROM watch_projects")
            stored = {pkg: (serial, listed) for pkg, serial, listed in cur.fetchall()}
            # A project the listing shows for the first time, when the upstream was
            # listed before, is new upstream: its releases go to the new lane (_diff).
            appeared = _now() if listed_before and stored else None
            moved = [(pkg, serial, True, None if pkg in stored else appeared)
                     for pkg, (_, serial) in listing.projects.items()
                     if stored.get(pkg) != (serial, True)]
            gone = [pkg for pkg, (_, listed) in stored.items()
                    if listed and pkg not in listing.projects]
            psycopg2.extras.execute_values(cur, """
                INSERT INTO watch_projects (package, upstream_serial, listed, appeared_at)
                VALUES %s
                ON CONFLICT (package) DO UPDATE
                   SET upstream_serial = EXCLUDED.upstream_serial, listed = true""",
                moved, page_size=5000)
            if gone:
                cur.execute("UPDATE watch_projects SET listed = false WHERE package = ANY(%s)",
                            (gone,))
            log.info("upstream lists %d project(s)%s", len(listing.projects),
                     " with serials" if listing.has_serials else "")
            return listing.has_serials

    def _list_allowlist(self) -> bool:
        wanted = []
        for name in self.wcfg.allowlist():
            if names.is_valid_name(name):
                wanted.append(names.normalise(name))
            else:
                log.warning("ignoring %r in the watch allowlist: not a valid project name", name)
        wanted = sorted(set(wanted))
        with db.transaction(self.conn) as cur:
            self._state(cur)
            cur.execute("UPDATE watch_state SET polled_at = now()")
            for package in wanted:
                cur.execute("INSERT INTO watch_projects (package, listed) VALUES (%s, true) "
                            "ON CONFLICT (package) DO UPDATE SET dependency_of = NULL",
                            (package,))
            # Listed: the allowlist, and the dependencies of what is listed (transitively).
            cur.execute("""WITH RECURSIVE keep(package) AS (
                               SELECT unnest(%s::text[])
                               UNION
                               SELECT w.package FROM watch_projects w
                                 JOIN keep k ON w.dependency_of = k.package)
                           UPDATE watch_projects w SET listed = (w.package IN (SELECT package
                                                                                 FROM keep))
                            WHERE w.listed <> (w.package IN (SELECT package FROM keep))""",
                        (wanted,))
        return False

    def _due(self, serials: bool) -> list[str]:
        if self.wcfg.mode == "allowlist":
            query = "SELECT package FROM watch_projects WHERE listed ORDER BY package"
        elif serials:
            query = """SELECT package FROM watch_projects
                        WHERE (listed AND (last_serial IS NULL OR upstream_serial IS NULL
                                           OR upstream_serial > last_serial))
                           OR (NOT listed AND removed_at IS NULL)
                        ORDER BY upstream_serial NULLS LAST, package"""
        else:
            query = ("SELECT package FROM watch_projects WHERE listed OR removed_at IS NULL "
                     "ORDER BY package")
        return [row[0] for row in db.call(self.conn, query)]

    # ------------------------------------------------------------ a project

    def _one(self, package: str, result: PollResult) -> None:
        row = db.call(self.conn, "SELECT etag, last_modified FROM watch_projects "
                                 "WHERE package = %s", (package,))
        etag, modified = row[0] if row else (None, None)
        url = upstream.project_url(self.url, package)
        try:
            page: upstream.Page | upstream.UpstreamError = upstream.fetch_page(
                url, etag, modified, self.wcfg.timeout, self.cfg.ca_bundle)
        except upstream.UpstreamUnavailable:
            raise  # the whole upstream is unwell: the poll stops and backs off
        except upstream.UpstreamError as exc:
            page = exc
        self.take(package, page, result)

    def take(self, package: str, page: upstream.Page | upstream.UpstreamError,
             result: PollResult) -> None:
        """Process one project's fetched page (or the error fetching it), in one transaction.

        The watcher fetches then calls this; ``pinwheel import`` fetches many pages
        concurrently and calls it for each, so both record a project the same way.
        """
        url = upstream.project_url(self.url, package)
        if isinstance(page, upstream.ProjectNotFound):
            change = self._removed(package)
            if change.events:
                result.removed += 1
            self._count(change, result)
            return
        if isinstance(page, upstream.UpstreamUnavailable):
            raise page
        if isinstance(page, upstream.UpstreamError):
            self._error(package, str(page), result)
            return
        if page.body is None:
            result.unchanged += 1
            db.call(self.conn, """UPDATE watch_projects
                                     SET checked_at = now(), last_error = NULL,
                                         etag = %s, last_modified = %s,
                                         last_serial = greatest(last_serial, upstream_serial)
                                   WHERE package = %s""",
                    (page.etag, page.last_modified, package))
            return
        result.fetched += 1
        try:
            proj = upstream.parse_project_page(page, package)
        except upstream.UpstreamError as exc:
            self._error(package, str(exc), result)
            return
        if names.normalise(proj.name) != package:
            self._error(package, f"{url}: the page is about {proj.name!r}, not {package}",
                        result)
            return
        try:
            change = self._apply(package, proj, page)
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            raise
        except psycopg2.Error as exc:
            # Something on the page the catalogue refuses (a 300-character version ...):
            # the project is recorded as failing and retried; the others go on.
            detail = (exc.diag.message_primary or str(exc)).strip()
            self._error(package, f"{url}: cannot record this page: {detail}", result)
            return
        if change is None:
            result.unchanged += 1
            return
        if change.events:
            result.changed += 1
        self._count(change, result)
        if self.wcfg.mode == "allowlist":
            self._add_dependencies(package, proj)

    def _add_dependencies(self, package: str, proj: upstream.UpstreamProject) -> None:
        """Allowlist mode: follow the runtime dependencies of the newest release too."""
        releases = planner.releases_of(proj)
        version = newest_release(releases)
        if version is None:
            return
        source = dependencies.metadata_file(releases[version])
        if source is None:
            log.info("%s %s: the upstream offers no core metadata (PEP 658); its dependencies "
                     "are not followed", package, version)
            return
        try:
            requires = dependencies.read_requires(source, self.wcfg.timeout, self.cfg.ca_bundle)
        except upstream.UpstreamError as exc:
            log.warning("%s %s: dependencies not followed: %s", package, version, exc)
            return
        targets = db.call(self.conn, "SELECT abi, platform FROM targets "
                                     "WHERE skip_reason IS NULL ORDER BY abi, platform")
        needed = dependencies.runtime_dependencies(
            requires, dependencies.environments([(r[0], r[1]) for r in targets])) - {package}
        with db.transaction(self.conn) as cur:
            for dep in sorted(needed):
                cur.execute("""INSERT INTO watch_projects (package, listed, dependency_of)
                               VALUES (%s, true, %s)
                               ON CONFLICT (package) DO UPDATE
                                  SET listed = true, dependency_of = EXCLUDED.dependency_of
                                WHERE NOT watch_projects.listed
                               RETURNING package""", (dep, package))
                if cur.fetchone() is not None:
                    log.info("%s: added as a dependency of %s %s", dep, package, version)

    def _count(self, change: _Change, result: PollResult) -> None:
        result.events += len(change.events)
        result.jobs += change.jobs
        result.cancelled += change.cancelled
        if change.dirty:
            self.flush_pages()

    def _error(self, package: str, message: str, result: PollResult) -> None:
        log.warning("%s: %s", package, message)
        result.errors.append(message)
        db.call(self.conn, "UPDATE watch_projects SET checked_at = now(), last_error = left(%s, "
                           "2000) WHERE package = %s", (message, package))

    def _lock_row(self, cur: Any, package: str) -> tuple[Any, ...]:
        cur.execute("INSERT INTO watch_projects (package, listed) VALUES (%s, true) "
                    "ON CONFLICT (package) DO NOTHING", (package,))
        cur.execute("SELECT upstream_serial, last_serial, content_sha256, removed_at "
                    "FROM watch_projects WHERE package = %s FOR UPDATE", (package,))
        return tuple(cur.fetchone())

    def _record(self, cur: Any, package: str, serial: int | None, change: _Change) -> None:
        for version, kind, detail in change.events:
            cur.execute("INSERT INTO upstream_events (package, version, kind, detail, serial) "
                        "VALUES (%s, %s, %s, left(%s, 2000), %s)",
                        (package, version, kind, detail or None, serial))
            log.info("%s %s: %s%s", package, version or "", kind,
                     f" ({detail})" if detail else "")

    def _apply(self, package: str, proj: upstream.UpstreamProject,
               page: upstream.Page) -> _Change | None:
        """Diff the page against the catalogue and commit the change with the new serial."""
        page_serial = upstream.project_serial(page)
        with db.transaction(self.conn) as cur:
            upstream_serial, last_serial, content, removed_at = self._lock_row(cur, package)
            serial = page_serial if page_serial is not None else upstream_serial
            if (content == page.sha256 and removed_at is None) or (
                    serial is not None and last_serial is not None and serial < last_serial):
                # The same page again, or an older one (a stale cache): nothing to do.
                cur.execute("""UPDATE watch_projects
                                  SET checked_at = now(), last_error = NULL, etag = %s,
                                      last_modified = %s,
                                      last_serial = greatest(last_serial, %s)
                                WHERE package = %s""",
                            (page.etag, page.last_modified, serial, package))
                return None
            change = self._diff(cur, package, proj)
            self._record(cur, package, serial, change)
            cur.execute("""UPDATE watch_projects
                              SET last_serial = coalesce(%s, last_serial), etag = %s,
                                  last_modified = %s, content_sha256 = %s, checked_at = now(),
                                  changed_at = CASE WHEN %s THEN now() ELSE changed_at END,
                                  removed_at = NULL, last_error = NULL,
                                  pages_dirty = pages_dirty OR %s
                            WHERE package = %s""",
                        (serial, page.etag, page.last_modified, page.sha256,
                         bool(change.events), change.dirty, package))
        return change

    def _diff(self, cur: Any, package: str, proj: upstream.UpstreamProject) -> _Change:
        change = _Change()
        cur.execute("SELECT removed_upstream_at, status, status_reason FROM packages "
                    "WHERE package = %s", (package,))
        known = cur.fetchone()
        # Releases go to the new lane when the project is known already, or is new upstream
        # (listed only after the watcher's first listing); a project's history otherwise.
        cur.execute("SELECT appeared_at IS NOT NULL FROM watch_projects WHERE package = %s",
                    (package,))
        appeared = cur.fetchone()
        new_lane = known is not None or bool(appeared and appeared[0])
        cur.execute("INSERT INTO packages (package, display_name) VALUES (%s, %s) "
                    "ON CONFLICT (package) DO UPDATE SET display_name = EXCLUDED.display_name",
                    (package, proj.name))
        if known is not None and known[0] is not None:
            cur.execute("UPDATE packages SET removed_upstream_at = NULL WHERE package = %s",
                        (package,))
            if known[1] == "archived" and (known[2] or "").startswith(_REMOVED_PREFIX):
                cur.execute("SELECT project_set_status(%s, 'active')", (package,))
            change.add(None, "project-returned")
            change.dirty = True
        cur.execute("SELECT version, has_sdist, yanked, yanked_reason, removed_upstream_at "
                    "FROM versions WHERE package = %s", (package,))
        old = {r[0]: r[1:] for r in cur.fetchall()}
        releases = planner.releases_of(proj)
        only = None
        if known is None and self.wcfg.history == "latest":
            only = newest_release(releases)
        for version, files in sorted(releases.items()):
            prev = old.get(version)
            if prev is None:
                plan = self._plan(cur, package, version, files, change,
                                  queue=only is None or version == only)
                if new_lane:
                    _mark_new(cur, package, version)
                if plan.has_sdist:
                    change.add(version, "new-release", f"{plan.jobs} job(s) queued"
                               + (f"; {plan.note}" if plan.note else ""))
                else:
                    change.add(version, "binary-only", "no sdist upstream: not built")
                if plan.yanked:
                    change.add(version, "yanked", _yank_reason(files))
                continue
            had_sdist, was_yanked, old_reason, was_removed = prev
            sdists = any(f.is_sdist for f in files)
            yanked = all(f.yanked for f in files)
            reason = _yank_reason(files) if yanked else None
            if not (was_removed or (sdists and not had_sdist) or yanked != was_yanked
                    or (yanked and reason != (old_reason or ""))):
                continue
            if was_removed:  # before planning: a release deleted upstream is never due
                cur.execute("UPDATE versions SET removed_upstream_at = NULL "
                            "WHERE package = %s AND version = %s", (package, version))
            plan = self._plan(cur, package, version, files, change)
            if was_removed:
                change.add(version, "release-returned")
                change.dirty = True
            if sdists and not had_sdist:
                _mark_new(cur, package, version)
                change.add(version, "sdist-added", f"{plan.jobs} job(s) queued")
            if yanked != was_yanked or (yanked and reason != (old_reason or "")):
                change.add(version, "yanked" if yanked else "unyanked", reason or "")
                change.dirty = True
        for version, (_, _, _, was_removed) in sorted(old.items()):
            if version not in releases and was_removed is None:
                self._remove_release(cur, package, version, change)
        return change

    def _plan(self, cur: Any, package: str, version: str,
              files: list[upstream.UpstreamFile], change: _Change,
              queue: bool = True) -> planner.ReleasePlan:
        plan = planner.record_release(cur, package, version, files, explicit=False,
                                      priority=self.wcfg.priority, plan=queue)
        change.jobs += plan.jobs
        return plan

    def _cancel(self, cur: Any, package: str, version: str | None) -> int:
        cur.execute("DELETE FROM jobs WHERE package = %s AND (%s::text IS NULL OR version = %s) "
                    "AND state = 'queued'", (package, version, version))
        return int(cur.rowcount)

    def _unpublish(self, cur: Any, package: str, version: str | None) -> int:
        if self.wcfg.on_removal != "remove":
            return 0
        cur.execute("UPDATE files SET state = 'removed' WHERE package = %s AND state = "
                    "'published' AND (%s::text IS NULL OR version = %s)",
                    (package, version, version))
        return int(cur.rowcount)

    def _remove_release(self, cur: Any, package: str, version: str, change: _Change) -> None:
        running = _running(cur, package, version)
        # A trigger (migration 9) cancels the builds running for it: their builders stop.
        cur.execute("UPDATE versions SET removed_upstream_at = now() "
                    "WHERE package = %s AND version = %s", (package, version))
        cancelled = self._cancel(cur, package, version)
        unpublished = self._unpublish(cur, package, version)
        change.cancelled += cancelled + running
        change.dirty = True
        change.add(version, "release-removed", _removal_detail(cancelled, unpublished,
                                                               self.wcfg.on_removal, running))

    def _removed(self, package: str) -> _Change:
        """The project is gone upstream (404/410)."""
        change = _Change()
        with db.transaction(self.conn) as cur:
            upstream_serial, _, _, removed_at = self._lock_row(cur, package)
            if removed_at is None:
                cur.execute("SELECT status FROM packages WHERE package = %s FOR UPDATE",
                            (package,))
                row = cur.fetchone()
                if row is not None:
                    running = _running(cur, package, None)
                    cur.execute("UPDATE versions SET removed_upstream_at = now() "
                                "WHERE package = %s AND removed_upstream_at IS NULL", (package,))
                    cur.execute("UPDATE packages SET removed_upstream_at = now() "
                                "WHERE package = %s", (package,))
                    queued = self._cancel(cur, package, None)
                    change.cancelled = queued + running
                    unpublished = self._unpublish(cur, package, None)
                    if self.wcfg.on_removal == "keep" and row[0] == "active":
                        cur.execute("SELECT project_set_status(%s, 'archived', %s)",
                                    (package, REMOVED_REASON.format(date=_now().date())))
                    change.dirty = True
                    change.add(None, "project-removed", _removal_detail(
                        queued, unpublished, self.wcfg.on_removal, running))
                    self._record(cur, package, upstream_serial, change)
                else:
                    log.warning("%s is not on the upstream index %s (check the allowlist)",
                                package, self.url)
            cur.execute("""UPDATE watch_projects
                              SET removed_at = coalesce(removed_at, now()), checked_at = now(),
                                  etag = NULL, last_modified = NULL, content_sha256 = NULL,
                                  last_serial = coalesce(upstream_serial, last_serial),
                                  last_error = NULL, pages_dirty = pages_dirty OR %s
                            WHERE package = %s""", (change.dirty, package))
        return change

    # --------------------------------------------------------------- pages

    def flush_pages(self) -> int:
        """Rewrite the pages of every project marked dirty; return how many."""
        done = 0
        www = Path(self.cfg.www_root)
        for (package,) in db.call(self.conn, "SELECT package FROM watch_projects "
                                             "WHERE pages_dirty ORDER BY package"):
            try:
                self._write_pages(www, package)
            except OSError:
                log.exception("could not rewrite the pages of %s; will retry", package)
                continue
            db.call(self.conn, "UPDATE watch_projects SET pages_dirty = false "
                               "WHERE package = %s", (package,))
            done += 1
        if done:
            index.write_root(self.conn, www)
        return done

    def _write_pages(self, www: Path, package: str) -> None:
        index.check_package(package)
        removed = db.call(self.conn, "SELECT filename FROM files WHERE package = %s "
                                     "AND state = 'removed'", (package,))
        directory = www / "packages" / package
        for (filename,) in removed:
            if "/" in filename or filename.startswith("."):
                continue
            for name in (filename, armv6l_alias(filename)):
                if name:
                    for path in (directory / name, directory / f"{name}.metadata"):
                        with contextlib.suppress(FileNotFoundError):
                            path.unlink()
        published = db.call(self.conn, "SELECT count(*) FROM files WHERE package = %s "
                                        "AND state = 'published'", (package,))[0][0]
        gone = db.call(self.conn, "SELECT removed_upstream_at IS NOT NULL FROM packages "
                                  "WHERE package = %s", (package,))
        if not published and gone and gone[0][0] and self.wcfg.on_removal == "remove":
            for part in ("simple", "project"):
                shutil.rmtree(www / part / package, ignore_errors=True)
            return
        if published or (www / "simple" / package).is_dir():
            index.write_project(self.conn, www, package, index_options(self.cfg))


def newest_release(releases: dict[str, list[upstream.UpstreamFile]]) -> str | None:
    """The newest final, unyanked release with an sdist (PEP 440 order), or None."""
    return new_targets.newest_final(
        version for version, files in releases.items()
        if any(f.is_sdist for f in files) and not all(f.yanked for f in files))


def _yank_reason(files: list[upstream.UpstreamFile]) -> str:
    return next((f.yanked for f in files if isinstance(f.yanked, str) and f.yanked), "")


def _removal_detail(cancelled: int, unpublished: int, policy: str, running: int = 0) -> str:
    files = (f"{unpublished} file(s) removed from the index" if policy == "remove"
             else "files kept (on_removal = keep)")
    builds = f", {running} running build(s) cancelled" if running else ""
    return f"{cancelled} queued job(s){builds} cancelled; {files}"


def _running(cur: Any, package: str, version: str | None) -> int:
    """How many builds of a project (or of one release) are running now."""
    cur.execute("SELECT count(*) FROM jobs WHERE package = %s AND state = 'leased' "
                "AND (%s::text IS NULL OR version = %s)", (package, version, version))
    return int(cur.fetchone()[0])


def _mark_new(cur: Any, package: str, version: str) -> None:
    """Put a release that just appeared upstream in the queue's new lane (ahead of the
    backlog, docs/upstream.md "Priority"), unless an operator bumped it already."""
    cur.execute("UPDATE jobs SET lane = 'new' WHERE package = %s AND version = %s "
                "AND state = 'queued' AND lane = 'backlog'", (package, version))


# --------------------------------------------------------------- service


def poll_once(cfg: MasterConfig) -> PollResult:
    """Connect, take the watch lock, poll once (``pinwheel watch --once``)."""
    conn = db.connect(cfg.dsn, application_name="pinwheel-watch")
    try:
        watcher = Watcher(conn, cfg)
        watcher.lock()
        return watcher.poll()
    finally:
        with contextlib.suppress(psycopg2.Error):
            conn.close()


def serve(cfg: MasterConfig, stop: threading.Event | None = None) -> None:
    """Poll every ``poll_seconds`` until ``stop`` is set; back off (with jitter) on errors,
    honouring Retry-After; reconnect to the database when it goes away."""
    stop = stop if stop is not None else threading.Event()
    failures = 0
    conn: Any = None
    watcher = Watcher(None, cfg, stop)
    log.info("watching %s (%s mode)", cfg.upstream_url, cfg.watch.mode)
    while not stop.is_set():
        retry_after = None
        try:
            if conn is None or conn.closed:
                conn = db.connect(cfg.dsn, application_name="pinwheel-watch")
                watcher = Watcher(conn, cfg, stop)
                watcher.lock()
            result = watcher.poll()
            level = logging.INFO if result.events or result.errors else logging.DEBUG
            log.log(level, "poll: %d due, %d fetched, %d unchanged, %d changed, %d removed, "
                     "%d event(s), %d job(s) queued, %d cancelled, %d error(s)",
                     result.due, result.fetched, result.unchanged, result.changed,
                     result.removed, result.events, result.jobs, result.cancelled,
                     len(result.errors))
            failures = 0
        except upstream.RateLimited as exc:
            failures += 1
            retry_after = exc.retry_after
            log.warning("rate limited: %s", exc)
        except WatchBusy as exc:
            failures += 1
            log.warning("%s", exc)
            with contextlib.suppress(psycopg2.Error):
                conn.close()  # connect (and try the lock) again after the pause
            conn = None
        except (upstream.UpstreamError, ConfigError) as exc:
            failures += 1
            log.warning("%s", exc)
        except (db.DatabaseUnavailable, psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            failures += 1
            log.warning("lost the database: %s", str(exc).strip())
            if conn is not None:
                with contextlib.suppress(psycopg2.Error):
                    conn.close()
            conn = None
        except Exception:
            # A bug or an unexpected answer: logged, and retried after a pause rather than
            # letting systemd restart the service in a tight loop.
            failures += 1
            log.exception("unexpected error while polling the upstream")
            if conn is not None:
                with contextlib.suppress(psycopg2.Error):
                    conn.close()
            conn = None
        if failures:
            delay = backoff_delay(failures, cfg.watch.max_backoff_seconds, retry_after)
            log.info("retrying in %.1f s", delay)
        else:
            delay = float(cfg.watch.poll_seconds)
        stop.wait(delay)
    if conn is not None:
        with contextlib.suppress(psycopg2.Error):
            conn.close()
    log.info("watch stopped")
