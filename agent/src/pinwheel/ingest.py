"""The master's ingest: verify what builders pushed, then publish or quarantine it.

A builder pushes its wheels and build log to ``incoming_root/<builder>/`` over
rsync, then reports them with ``finish_job``, which records a build with
``ingest_state = 'pending'`` and notifies ``pinwheel_ingest``. For each
pending build, in one transaction holding the build row
(``FOR UPDATE SKIP LOCKED``, so concurrent ingest processes never collide):

* every reported wheel is verified (``verify.verify_wheel``); a good one is
  copied to ``www_root/packages/<package>/`` with its METADATA beside it
  (PEP 658) and its files row marked published; a refused one is marked
  quarantined with the reason;
* a published wheel that fits other build targets (pure, or abi3), and whose
  content the master checked fits its tags (``coverage``), cancels the
  release's queued jobs on those targets (``cover_jobs``): only a verified
  wheel does, never the builder's report;
* the log is verified and published as ``www_root/logs/<build_id>.log.gz``,
  or refused with ``builds.log_reason``;
* the build is marked ``ingest_state = 'done'``.

Only after the commit are incoming files removed (or moved to
``quarantine_root/<builder>/``) and the project's index page rewritten, so a
crash or a lost database leaves the build pending with its files still in
incoming: the next run verifies it again from scratch.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import re
import select
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2

from . import aptdeps, coverage, db, fsutil, index, new_targets
from .config import MasterConfig
from .operator_release import REMOVED_PREFIX
from .schema import ROLE_NAME_RE
from .verify import (
    LOG_NAME_RE,
    WHEEL_NAME_RE,
    Rejected,
    VerifiedWheel,
    check_name,
    open_regular,
    verify_log,
    verify_wheel,
)

log = logging.getLogger("pinwheel.ingest")

INGEST_CHANNEL = "pinwheel_ingest"
MAX_REASON = 2000

_NEXT_BUILD = """
    SELECT b.build_id, b.package, b.version, b.abi, b.builder, b.status,
           b.log_name, b.log_size, b.log_sha256, r.abi, r.platform
      FROM builds b
      LEFT JOIN builders r ON r.builder = b.builder
     WHERE b.ingest_state = 'pending' AND NOT b.build_id = ANY(%s)
     ORDER BY b.build_id
     LIMIT 1
       FOR UPDATE OF b SKIP LOCKED
"""


@dataclass(frozen=True)
class PendingBuild:
    build_id: int
    package: str
    version: str
    abi: str
    builder: str | None
    status: str
    log_name: str | None
    log_size: int | None
    log_sha256: str | None
    builder_abi: str | None
    builder_platform: str | None


@dataclass
class IngestState:
    """What one ingest process remembers between runs of ``process_pending``."""

    failed_builds: set[int] = field(default_factory=set)   # skipped until restart
    dirty_projects: set[str] = field(default_factory=set)  # index pages still to write
    root_dirty: bool = True                                # check the root page once
    cycles: int = 0                                        # rounds of work done by serve


@dataclass
class _Outcome:
    """What one build's transaction decided; acted on after the commit."""

    published: list[str] = field(default_factory=list)
    after_commit: list[Callable[[], None]] = field(default_factory=list)
    new_project: bool = False
    has_pages: bool = False


class _Unpublishable(Exception):
    """A file that verified but cannot be published (a clash with a published file)."""

    def __init__(self, reason: str, keep: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.keep = keep  # move the incoming copy to quarantine (else just delete it)


# ------------------------------------------------------------ file actions


def _incoming_dir(cfg: MasterConfig, build: PendingBuild) -> Path | None:
    """The builder's incoming directory, or None when no safe one can be named."""
    if build.builder is None or not ROLE_NAME_RE.match(build.builder):
        return None
    return cfg.incoming_root / build.builder


def _builder_problem(build: PendingBuild) -> str | None:
    if build.builder is None:
        return "the build has no builder, so its files cannot be located"
    if not ROLE_NAME_RE.match(build.builder):
        return f"builder name {build.builder[:100]!r} is not a valid role name"
    if build.builder_abi is None or build.builder_platform is None:
        return f"builder {build.builder} is unknown (not registered with an ABI and platform)"
    return None


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


def _remove_if_same(path: Path, st: os.stat_result | None) -> None:
    """Delete ``path`` if it is still the file ``st`` describes (not a newer push)."""
    now = _lstat(path)
    if now is None or st is None:
        return
    if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
        os.unlink(path)
    else:
        log.info("not removing %s: it was replaced since it was ingested", path)


def _move_to_quarantine(src_dir: Path, filename: str, dest: Path) -> None:
    """Move a regular file out of incoming into quarantine.

    Anything else (a planted symlink, FIFO or directory) is left where it is
    for the operator: the files row already says why it was refused.
    """
    src = src_dir / filename
    try:
        st = os.lstat(src)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        return
    fsutil.make_dirs(dest.parent, 0o750)
    try:
        os.rename(src, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        fd, _ = open_regular(src_dir, filename)
        try:
            fsutil.atomic_copy(fd, dest, mode=0o640)
        finally:
            os.close(fd)
        os.unlink(src)


def _safe_name(filename: str, pattern: re.Pattern[str], kind: str) -> bool:
    try:
        check_name(filename, pattern, kind)
    except Rejected:
        return False
    return True


def _after(outcome: _Outcome, what: str, action: Callable[[], None]) -> None:
    """Queue a filesystem action for after the commit; its failure is only logged."""
    def run() -> None:
        try:
            action()
        except (OSError, Rejected) as exc:
            log.warning("after ingest, could not %s: %s", what, exc)
    outcome.after_commit.append(run)


# ------------------------------------------------------------------ wheels


def _clash(cur: Any, wheel: VerifiedWheel, rebuild_of: PendingBuild | None = None) -> None:
    cur.execute("SELECT file_id, sha256, build_id FROM files WHERE filename = %s "
                "AND state = 'published'", (wheel.filename,))
    row = cur.fetchone()
    if row is None:
        return
    if row[1] == wheel.sha256:
        raise _Unpublishable("duplicate of an already published file", keep=False)
    if rebuild_of is not None and _same_target(cur, row[2], rebuild_of):
        # `pinwheel rebuild`: the new build replaces the file the earlier one published.
        cur.execute("UPDATE files SET state = 'removed', reason = %s WHERE file_id = %s",
                    (f"replaced by build {rebuild_of.build_id} (pinwheel rebuild)", row[0]))
        return
    raise _Unpublishable(f"a different file named {wheel.filename} is already published "
                         f"(file {row[0]}, SHA-256 {row[1]})", keep=True)


def _same_target(cur: Any, build_id: int, build: PendingBuild) -> bool:
    cur.execute("SELECT 1 FROM builds b, builds n WHERE b.build_id = %s AND n.build_id = %s "
                "AND (b.package, b.version, b.abi, b.platform) = "
                "    (n.package, n.version, n.abi, n.platform)", (build_id, build.build_id))
    return cur.fetchone() is not None


def _rebuild_requested(cur: Any, build: PendingBuild) -> bool:
    """Whether an operator asked to rebuild this build's release and target (and clear it)."""
    cur.execute("""DELETE FROM rebuilds r USING builds b
                    WHERE b.build_id = %s AND (r.package, r.version, r.abi, r.platform) =
                          (b.package, b.version, b.abi, b.platform)""", (build.build_id,))
    return cur.rowcount > 0


def _supersede(cur: Any, build: PendingBuild, published: list[str]) -> None:
    """After a rebuild published its wheels: the earlier builds' files of the same target
    that it did not replace by name leave the index too."""
    cur.execute("""UPDATE files f SET state = 'removed', reason = %s
                     FROM builds b, builds n
                    WHERE f.state = 'published' AND f.build_id = b.build_id
                      AND n.build_id = %s AND b.build_id <> n.build_id
                      AND (b.package, b.version, b.abi, b.platform) =
                          (n.package, n.version, n.abi, n.platform)
                      AND NOT f.filename = ANY(%s)""",
                (f"replaced by build {build.build_id} (pinwheel rebuild)", build.build_id,
                 published))


def _publish_wheel(cfg: MasterConfig, src_dir: Path, wheel: VerifiedWheel) -> os.stat_result:
    """Copy a verified wheel and its METADATA into packages/; return the source's stat."""
    dest_dir = cfg.www_root / "packages" / wheel.package
    fsutil.make_dirs(dest_dir)
    fd, st = open_regular(src_dir, wheel.filename)
    try:
        fsutil.atomic_copy(fd, dest_dir / wheel.filename, sha256=wheel.sha256)
    except fsutil.DigestMismatch:
        raise Rejected(f"{wheel.filename} changed while it was being verified") from None
    finally:
        os.close(fd)
    fsutil.atomic_write_bytes(dest_dir / f"{wheel.filename}.metadata", wheel.metadata_bytes)
    return st


def _mark_published(cur: Any, file_id: int, build: PendingBuild, wheel: VerifiedWheel) -> None:
    cur.execute(
        """UPDATE files SET state = 'published', reason = NULL, package = %s, version = %s,
                  python_tag = %s, abi_tag = %s, platform_tag = %s, requires_python = %s,
                  metadata_sha256 = %s, published_at = now()
            WHERE file_id = %s""",
        (wheel.package, build.version, wheel.python_tag, wheel.abi_tag, wheel.platform_tag,
         wheel.requires_python, wheel.metadata_sha256, file_id))


def _check_libraries(cur: Any, file_id: int, build: PendingBuild, wheel: VerifiedWheel) -> None:
    """Drop the builder's list of shared libraries if it does not fit the wheel's ELF files.

    The master cannot tell which Debian package owns a library (that is the
    builder's system), but it can read which libraries the wheel needs.
    """
    cur.execute("SELECT library, kind, package, base FROM file_libraries WHERE file_id = %s",
                (file_id,))
    reported = [aptdeps.Library(*row) for row in cur.fetchall()]
    cur.execute("SELECT libraries_checked FROM files WHERE file_id = %s", (file_id,))
    if not cur.fetchone()[0]:
        return
    problem = aptdeps.report_problem(reported, wheel.needed, wheel.members)
    if problem is None:
        return
    reason = _clean(f"the master refused the builder's list of shared libraries: {problem}")
    cur.execute("DELETE FROM file_libraries WHERE file_id = %s", (file_id,))
    cur.execute("UPDATE files SET libraries_checked = false, libraries_refused = %s "
                "WHERE file_id = %s", (reason, file_id))
    log.warning("builder %s, build %s, file %s: %s", build.builder, build.build_id,
                wheel.filename, reason)


def _clean(reason: str) -> str:
    """A reason PostgreSQL can store (no NUL) and a log can show, of bounded length."""
    return reason.replace("\x00", "\\x00")[:MAX_REASON]


def _quarantine_file(cur: Any, cfg: MasterConfig, build: PendingBuild, file_id: int,
                     filename: str, reason: str, outcome: _Outcome, keep: bool = True) -> None:
    reason = _clean(reason)
    cur.execute("UPDATE files SET state = 'quarantined', reason = %s WHERE file_id = %s",
                (reason, file_id))
    log.warning("quarantined: builder %s, build %s, file %r: %s",
                build.builder, build.build_id, filename[:300], reason)
    src_dir = _incoming_dir(cfg, build)
    if src_dir is None or not _safe_name(filename, WHEEL_NAME_RE, "wheel"):
        return
    if keep:
        dest = cfg.quarantine_root / str(build.builder) / f"{file_id}-{filename}"
        _after(outcome, f"quarantine {src_dir / filename}",
               lambda: _move_to_quarantine(src_dir, filename, dest))
    else:
        st = _lstat(src_dir / filename)
        _after(outcome, f"remove {src_dir / filename}",
               lambda: _remove_if_same(src_dir / filename, st))


def _verify(cfg: MasterConfig, build: PendingBuild, filename: str, size: int,
            sha256: str) -> tuple[Path, VerifiedWheel]:
    """Verify one reported wheel; return the incoming directory and the result."""
    src_dir = _incoming_dir(cfg, build)
    problem = _builder_problem(build)
    if problem or src_dir is None or not build.builder_abi or not build.builder_platform:
        raise Rejected(problem or "the builder is unknown")
    if build.status != "success":
        raise Rejected(f"reported by a build that did not succeed (status {build.status})")
    wheel = verify_wheel(src_dir, filename, size, sha256, build.package, build.version,
                         build.builder_abi, build.builder_platform, cfg.max_wheel_size)
    return src_dir, wheel


def _withdrawn(cur: Any, cfg: MasterConfig, build: PendingBuild) -> str | None:
    """Why this build's release may no longer be published, or None: an operator removed
    it or its project (`pinwheel remove`) after the build finished, or it was deleted
    upstream while the watcher's on_removal is remove. (A plain skip stops building;
    what is built is still published.)"""
    cur.execute("""SELECT CASE WHEN starts_with(p.skip_reason, %(removed)s) THEN p.skip_reason
                               WHEN starts_with(v.skip_reason, %(removed)s) THEN v.skip_reason
                               WHEN %(on_removal)s = 'remove' AND p.removed_upstream_at
                                    IS NOT NULL THEN 'the project was removed upstream'
                               WHEN %(on_removal)s = 'remove' AND v.removed_upstream_at
                                    IS NOT NULL THEN 'the release was removed upstream'
                          END
                     FROM packages p
                     LEFT JOIN versions v ON v.package = p.package AND v.version = %(version)s
                    WHERE p.package = %(package)s""",
                {"removed": REMOVED_PREFIX,
                 "on_removal": cfg.watch.on_removal, "package": build.package,
                 "version": build.version})
    row = cur.fetchone()
    return row[0] if row else None


def _drop_withdrawn(cur: Any, cfg: MasterConfig, build: PendingBuild, file_id: int,
                    filename: str, why: str, outcome: _Outcome) -> None:
    """A file of a withdrawn release: recorded as removed, never published; the builder's
    incoming copy is deleted."""
    reason = _clean(f"not published: {why}")
    cur.execute("UPDATE files SET state = 'removed', reason = %s WHERE file_id = %s",
                (reason, file_id))
    log.info("not publishing %r (builder %s, build %s): %s",
             filename[:300], build.builder, build.build_id, why)
    src_dir = _incoming_dir(cfg, build)
    if src_dir is not None and _safe_name(filename, WHEEL_NAME_RE, "wheel"):
        st = _lstat(src_dir / filename)
        _after(outcome, f"remove {src_dir / filename}",
               lambda: _remove_if_same(src_dir / filename, st))


def _ingest_wheel(cur: Any, cfg: MasterConfig, build: PendingBuild,
                  row: tuple[int, str, int, str], outcome: _Outcome,
                  rebuild: bool = False) -> None:
    file_id, filename, size, sha256 = row
    try:
        src_dir, wheel = _verify(cfg, build, filename, size, sha256)
        _clash(cur, wheel, build if rebuild else None)
        st = _publish_wheel(cfg, src_dir, wheel)
    except Rejected as exc:
        _quarantine_file(cur, cfg, build, file_id, filename, exc.reason, outcome)
        return
    except _Unpublishable as exc:
        _quarantine_file(cur, cfg, build, file_id, filename, exc.reason, outcome, exc.keep)
        return
    _mark_published(cur, file_id, build, wheel)
    _check_libraries(cur, file_id, build, wheel)
    # Only now, verified and published, may a pure or abi3 wheel cover other targets.
    coverage.record(cur, file_id, wheel, f"builder {build.builder}, build {build.build_id}")
    outcome.published.append(filename)
    log.info("published %s (builder %s, build %s)", filename, build.builder, build.build_id)
    _after(outcome, f"remove {src_dir / filename}",
           lambda: _remove_if_same(src_dir / filename, st))


# --------------------------------------------------------------------- log


def _publish_log(cfg: MasterConfig, src_dir: Path, build: PendingBuild,
                 name: str) -> os.stat_result:
    if build.log_size is None or build.log_sha256 is None:
        raise Rejected(f"the builder reported {name} without a size or SHA-256")
    checked = verify_log(src_dir, name, build.log_size, build.log_sha256, cfg.max_log_size)
    dest_dir = cfg.www_root / "logs"
    fsutil.make_dirs(dest_dir)
    fd, st = open_regular(src_dir, name)
    try:
        fsutil.atomic_copy(fd, dest_dir / f"{build.build_id}.log.gz", sha256=checked.sha256)
    except fsutil.DigestMismatch:
        raise Rejected(f"{name} changed while it was being verified") from None
    finally:
        os.close(fd)
    return st


def _ingest_log(cur: Any, cfg: MasterConfig, build: PendingBuild, outcome: _Outcome) -> None:
    if build.log_name is None:
        return
    name = build.log_name
    src_dir = _incoming_dir(cfg, build)
    try:
        if src_dir is None:
            raise Rejected(_builder_problem(build) or "no incoming directory")
        st = _publish_log(cfg, src_dir, build, name)
    except Rejected as exc:
        reason = _clean(exc.reason)
        cur.execute("UPDATE builds SET log_reason = %s WHERE build_id = %s",
                    (reason, build.build_id))
        log.warning("refused log: builder %s, build %s, file %r: %s",
                    build.builder, build.build_id, name[:300], reason)
        if src_dir is not None and _safe_name(name, LOG_NAME_RE, "log"):
            dest = cfg.quarantine_root / str(build.builder) / f"build{build.build_id}-{name}"
            _after(outcome, f"quarantine {src_dir / name}",
                   lambda: _move_to_quarantine(src_dir, name, dest))
        return
    cur.execute("UPDATE builds SET log_path = %s, log_reason = NULL WHERE build_id = %s",
                (f"logs/{build.build_id}.log.gz", build.build_id))
    _after(outcome, f"remove {src_dir / name}", lambda: _remove_if_same(src_dir / name, st))


# ------------------------------------------------------------------- build


def _ingest_build(cur: Any, cfg: MasterConfig, build: PendingBuild) -> _Outcome:
    outcome = _Outcome()
    # One publisher per project at a time (and no index page rendered meanwhile):
    # the check for an already published file name and the publish are atomic.
    cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                (index.PROJECT_LOCK, build.package))
    cur.execute("SELECT NOT EXISTS (SELECT 1 FROM files WHERE package = %s "
                "AND state = 'published')", (build.package,))
    first_files = cur.fetchone()[0]
    rebuild = _rebuild_requested(cur, build)
    # Under the project lock, which `pinwheel remove` takes too: a release removed after
    # its build finished is not published by the ingest that follows.
    withdrawn = _withdrawn(cur, cfg, build)
    cur.execute("SELECT file_id, filename, size, sha256 FROM files "
                "WHERE build_id = %s AND state = 'pending' ORDER BY file_id", (build.build_id,))
    for row in cur.fetchall():
        if withdrawn:
            _drop_withdrawn(cur, cfg, build, row[0], row[1], withdrawn, outcome)
        else:
            _ingest_wheel(cur, cfg, build, row, outcome, rebuild)
    if rebuild and outcome.published:
        _supersede(cur, build, outcome.published)
    _ingest_log(cur, cfg, build, outcome)
    cur.execute("UPDATE builds SET ingest_state = 'done', ingested_at = now() "
                "WHERE build_id = %s", (build.build_id,))
    outcome.new_project = first_files and bool(outcome.published)
    # The project's page shows every build's state: rewrite it for a refused or failed
    # build too, once the project has pages (one with no published file has none).
    outcome.has_pages = bool(outcome.published) or not first_files
    return outcome


def _connection_lost(conn: Any, exc: BaseException) -> bool:
    return bool(conn.closed) or isinstance(exc, (psycopg2.InterfaceError,
                                                 db.DatabaseUnavailable))


def _next_build(cur: Any, skip: set[int]) -> PendingBuild | None:
    cur.execute(_NEXT_BUILD, (sorted(skip) or [0],))
    row = cur.fetchone()
    return PendingBuild(*row) if row else None


def _one_build(conn: Any, cfg: MasterConfig, state: IngestState) -> PendingBuild | None:
    """Ingest the next pending build in one transaction; None when there is none."""
    build: PendingBuild | None = None
    try:
        with conn.cursor() as cur:
            build = _next_build(cur, state.failed_builds)
            if build is None:
                conn.rollback()
                return None
            outcome = _ingest_build(cur, cfg, build)
        conn.commit()
    except Exception as exc:
        with contextlib.suppress(psycopg2.Error):
            conn.rollback()
        if _connection_lost(conn, exc):
            raise db.DatabaseUnavailable(f"lost the database connection: {exc}") from exc
        if build is None:
            raise
        log.exception("ingest of build %s failed; skipping it until ingest restarts",
                      build.build_id)
        state.failed_builds.add(build.build_id)
        return build
    for action in outcome.after_commit:
        action()
    if outcome.has_pages:
        state.dirty_projects.add(build.package)
    state.root_dirty = state.root_dirty or outcome.new_project
    return build


def index_options(cfg: MasterConfig) -> index.IndexOptions:
    """The index writer's settings from ``master.conf``."""
    return index.IndexOptions(armv6l_alias=cfg.armv6l_alias, index_url=cfg.public_index_url)


def _write_indexes(conn: Any, cfg: MasterConfig, state: IngestState) -> None:
    """Write the pages of projects that changed (and the root page if needed).

    A page that could not be written stays in ``state`` and is retried after
    the next build (or the next run).
    """
    for package in sorted(state.dirty_projects):
        try:
            index.write_project(conn, cfg.www_root, package, index_options(cfg))
        except ValueError:
            log.exception("cannot write an index page for %r", package)
        except OSError:
            log.exception("could not write the index page of %s; will retry", package)
            continue
        state.dirty_projects.discard(package)
    if state.root_dirty:
        try:
            if index.write_root(conn, cfg.www_root):
                log.info("rewrote the root index page")
        except OSError:
            log.exception("could not write the root index page; will retry")
            return
        state.root_dirty = False


def _in_autocommit(conn: Any, action: Callable[[], None]) -> None:
    """Run ``action`` with the connection in autocommit mode, then restore the mode."""
    was = conn.autocommit
    conn.autocommit = True
    try:
        action()
    finally:
        if not conn.closed:
            conn.autocommit = was


def process_pending(conn: Any, cfg: MasterConfig, state: IngestState | None = None) -> int:
    """Ingest every pending build; return how many were ingested.

    Each build is one transaction; after it commits, its project's index
    page (and the root page, for a new project) is rewritten. A build that
    fails unexpectedly is logged, rolled back and skipped for the rest of
    this process's life (``state.failed_builds``). Raises
    ``db.DatabaseUnavailable`` when the connection is lost. The connection's
    autocommit setting is restored on return.
    """
    state = state if state is not None else IngestState()
    was_autocommit = conn.autocommit
    done = 0
    try:
        while True:
            _in_autocommit(conn, lambda: _write_indexes(conn, cfg, state))
            conn.autocommit = False
            build = _one_build(conn, cfg, state)
            if build is None:
                break
            if build.build_id not in state.failed_builds:
                done += 1
    finally:
        if not conn.closed:
            with contextlib.suppress(psycopg2.Error):
                conn.rollback()
                conn.autocommit = was_autocommit
    return done


# ------------------------------------------------------------------- serve


def requeue_expired(conn: Any) -> int:
    """Return expired leases to the queue (the master is the janitor for idle ABIs)."""
    n = int(db.call(conn, "SELECT requeue_expired()")[0][0])
    if n:
        log.info("requeued or abandoned %d expired job(s)", n)
    return n


def refresh_popularity(conn: Any) -> int | None:
    """Recount the projects' wheel downloads for the queue's order, at most once an hour
    (the database decides); returns how many projects' boost changed, None when not due."""
    n = db.call(conn, "SELECT refresh_popularity()")[0][0]
    if n:
        log.info("download counts refreshed: %d project(s) moved in the queue", n)
    return None if n is None else int(n)


def _wait_for_notify(conn: Any, stop: threading.Event, timeout: float) -> None:
    """Return when a NOTIFY arrives, ``stop`` is set, or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while not stop.is_set():
        if conn.notifies:
            conn.notifies.clear()
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        try:
            ready, _, _ = select.select([conn], [], [], min(remaining, 0.5))
            if ready:
                conn.poll()
        except (OSError, ValueError, psycopg2.Error) as exc:
            raise db.DatabaseUnavailable(f"lost the database connection: {exc}") from exc


def _run(conn: Any, cfg: MasterConfig, stop: threading.Event, poll_seconds: float,
         janitor_seconds: float, state: IngestState) -> None:
    db.call(conn, f"LISTEN {INGEST_CHANNEL}")
    next_janitor = 0.0
    while not stop.is_set():
        if time.monotonic() >= next_janitor:
            requeue_expired(conn)
            new_targets.plan_new_targets(conn, cfg.watch)
            state.dirty_projects |= coverage.assess_published(conn, cfg)
            refresh_popularity(conn)
            next_janitor = time.monotonic() + janitor_seconds
        conn.notifies.clear()
        n = process_pending(conn, cfg, state)
        state.cycles += 1
        if n:
            log.info("ingested %d build(s)", n)
        _wait_for_notify(conn, stop, poll_seconds)


def _session(cfg: MasterConfig, stop: threading.Event, poll_seconds: float,
             janitor_seconds: float, state: IngestState) -> None:
    """Connect and ingest until ``stop`` is set or the connection fails."""
    try:
        conn = db.connect(cfg.dsn, application_name="pinwheel-ingest")
    except db.DatabaseUnavailable as exc:
        log.warning("%s", exc)
        return
    log.info("connected; listening on %s", INGEST_CHANNEL)
    try:
        if not index.is_current(cfg.www_root):
            log.info("the index is missing or was written by an older pinwheel: rebuilding "
                     "every page (format %s)", index.INDEX_FORMAT)
            count = index.rebuild(conn, cfg.www_root, index_options(cfg))
            log.info("index rebuilt: %d project(s)", count)
        _run(conn, cfg, stop, poll_seconds, janitor_seconds, state)
    except (db.DatabaseUnavailable, psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
        log.warning("lost the database: %s", str(exc).strip())
    except Exception:
        log.exception("unexpected error in the ingest loop")
    finally:
        with contextlib.suppress(psycopg2.Error):
            conn.close()


def serve(cfg: MasterConfig, stop: threading.Event | None = None, poll_seconds: float = 30,
          janitor_seconds: float = 60, max_backoff: float = 60) -> None:
    """Run the ingest service until ``stop`` is set (forever without one).

    Ingests at start, on every ``pinwheel_ingest`` NOTIFY and at least every
    ``poll_seconds``; every ``janitor_seconds`` it returns expired leases to
    the queue, plans the catalogue for new build targets (``new_targets``),
    looks at wheels published before migration 8 (``coverage``) and lets the
    database recount downloads for the queue's order (hourly). When the
    database goes away it reconnects, waiting an exponential backoff (with
    jitter, at most ``max_backoff`` seconds) that resets once a connection has
    completed a round of work.
    """
    stop = stop if stop is not None else threading.Event()
    state = IngestState()
    backoff = 1.0
    while not stop.is_set():
        cycles = state.cycles
        _session(cfg, stop, poll_seconds, janitor_seconds, state)
        if stop.is_set():
            break
        backoff = 1.0 if state.cycles > cycles else min(backoff * 2, max_backoff)
        delay = backoff * random.uniform(0.5, 1.5)  # noqa: S311 - jitter, not crypto
        log.info("reconnecting in %.1f s", delay)
        stop.wait(delay)
    log.info("ingest stopped")


__all__ = ["IngestState", "PendingBuild", "index_options", "process_pending",
           "refresh_popularity", "requeue_expired", "serve"]
