"""`pinwheel import`: the initial import of an upstream's whole project list.

The root page is stored exactly as ``pinwheel watch`` stores it (mirror mode),
then every project not yet processed is fetched and recorded by the watcher's
own per-project step (:meth:`watch.Watcher.take`): its releases, jobs, events
and the project's serial are committed in ONE transaction. So the import is
resumable: killed at any moment and run again, it fetches only the projects
whose state was not committed, and a project processed twice changes nothing
the second time (one job per release and target, whatever happens).

Throughput: a few workers (threads) each fetch a project over their own
kept-alive connection and record it on their own database connection, so the
upstream's latency and the database's work overlap; they commit without
waiting for the WAL flush (``synchronous_commit = off``: a crash loses at most
the last few commits, whole projects, which the next run fetches again; nothing
is ever half-recorded). The main connection holds the watch lock meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from . import db, upstream, watch
from .config import MasterConfig

log = logging.getLogger("pinwheel.import")

Progress = Callable[[int, int, str], None]
RETRIES = 4  # per project, on rate limits and unreachable upstream, before the import stops


class ImportRefused(db.PinwheelError):
    """The import cannot run with this configuration."""


@dataclass
class ImportResult:
    listed: int = 0          # projects on the upstream's root page
    before: int = 0          # already processed by an earlier (interrupted) run
    poll: watch.PollResult = field(default_factory=watch.PollResult)
    seconds: float = 0.0

    @property
    def processed(self) -> int:
        return self.poll.due


# Not yet processed. With serials (PyPI): the serial the root gives is newer than the one
# processed, as the watcher decides. Without: no page recorded yet (or its last one failed).
_DUE_SERIALS = """
    SELECT package, etag, last_modified FROM watch_projects
     WHERE (listed AND (last_serial IS NULL OR upstream_serial IS NULL
                        OR upstream_serial > last_serial))
        OR (NOT listed AND removed_at IS NULL)
     ORDER BY package"""
_DUE_PLAIN = """
    SELECT package, etag, last_modified FROM watch_projects
     WHERE (listed AND removed_at IS NULL AND (content_sha256 IS NULL OR last_error IS NOT NULL))
        OR (NOT listed AND removed_at IS NULL AND checked_at IS NULL)
     ORDER BY package"""


class _Worker(threading.Thread):
    """Fetches projects from the shared list and records each on its own connection.

    Several workers run at once: fetching hides the upstream's latency, and the
    database work (one short transaction per project) runs on several backends.
    """

    def __init__(self, run: _Run, number: int) -> None:
        super().__init__(name=f"import-{number}", daemon=True)
        self.run_ = run
        self.result = watch.PollResult()
        self.failure: BaseException | None = None

    def run(self) -> None:
        shared = self.run_
        session = upstream.Session(shared.url, shared.cfg.watch.timeout, shared.cfg.ca_bundle)
        conn = None
        try:
            conn = db.connect(shared.cfg.dsn, application_name="pinwheel-import")
            db.call(conn, "SET synchronous_commit = off")
            watcher = watch.Watcher(conn, shared.cfg, shared.stop)
            while not shared.stop.is_set():
                item = shared.next()
                if item is None:
                    return
                package, etag, modified = item
                page = self._fetch(session, package, etag, modified)
                if isinstance(page, upstream.UpstreamUnavailable):
                    raise page
                watcher.take(package, page, self.result)
                self.result.due += 1
                shared.done(package)
        except BaseException as exc:  # handed to the main thread, which reports it
            self.failure = exc
            shared.stop.set()
        finally:
            session.close()
            if conn is not None:
                conn.close()

    def _fetch(self, session: upstream.Session, package: str, etag: str | None,
               modified: str | None) -> upstream.Page | upstream.UpstreamError:
        shared = self.run_
        url = upstream.project_url(shared.url, package)
        failures = 0
        while True:
            try:
                return session.fetch_page(url, etag, modified)
            except upstream.UpstreamUnavailable as exc:
                failures += 1
                if failures >= RETRIES or shared.stop.is_set():
                    return exc
                wait = exc.retry_after if isinstance(exc, upstream.RateLimited) else None
                delay = watch.backoff_delay(failures, shared.cfg.watch.max_backoff_seconds,
                                            wait)
                log.warning("%s; retrying in %.1f s", exc, delay)
                shared.stop.wait(delay)
            except upstream.UpstreamError as exc:
                return exc


class _Run:
    """What the workers share: the list of due projects, the count, the stop event."""

    def __init__(self, cfg: MasterConfig, url: str, due: list[tuple[str, str | None, str | None]],
                 done: int, total: int, progress: Progress | None,
                 stop: threading.Event) -> None:
        self.cfg = cfg
        self.url = url
        self.stop = stop
        self.total = total
        self.count = done
        self.progress = progress
        self.every = max(1, total // 20)
        self._due = iter(due)
        self._lock = threading.Lock()

    def next(self) -> tuple[str, str | None, str | None] | None:
        with self._lock:
            return next(self._due, None)

    def done(self, package: str) -> None:
        with self._lock:
            self.count += 1
            if self.progress is not None:
                self.progress(self.count, self.total, package)
            elif self.count % self.every == 0:
                log.info("imported %d of %d project(s)", self.count, self.total)


def run(conn: Any, cfg: MasterConfig, workers: int = 8, progress: Progress | None = None,
        stop: threading.Event | None = None) -> ImportResult:
    """Import every project of ``cfg``'s upstream not yet processed; see the module doc."""
    if cfg.watch.mode != "mirror":
        raise ImportRefused(
            "pinwheel import records every project of the upstream, which is mirror mode; "
            "this master is in allowlist mode (set [watch] mode = mirror, i.e. "
            "master_watch_mode: mirror), or let `pinwheel watch --once` record the listed "
            "projects")
    started = time.monotonic()
    stop = stop if stop is not None else threading.Event()
    watcher = watch.Watcher(conn, cfg, stop)
    watcher.lock()  # one of `pinwheel watch` and `pinwheel import` at a time
    watcher.flush_pages()
    serials = watcher._list_due()
    listed = db.call(conn, "SELECT count(*) FROM watch_projects WHERE listed")[0][0]
    due = [(r[0], r[1], r[2]) for r in db.call(conn, _DUE_SERIALS if serials else _DUE_PLAIN)]
    result = ImportResult(listed=int(listed), before=max(0, int(listed) - len(due)))
    total = result.before + len(due)
    log.info("upstream %s lists %d project(s); %d already imported, %d to fetch",
             watcher.url, listed, result.before, len(due))
    shared = _Run(cfg, watcher.url, due, result.before, total, progress, stop)
    threads = [_Worker(shared, n) for n in range(max(1, min(workers, len(due))))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for thread in threads:
        _add(result.poll, thread.result)
    failure = next((t.failure for t in threads if t.failure is not None), None)
    if isinstance(failure, upstream.UpstreamUnavailable):
        raise upstream.UpstreamUnavailable(
            f"{failure}; {shared.count} of {total} project(s) are imported: run `pinwheel "
            "import` again to go on from there")
    if failure is not None:
        raise failure
    if progress is not None and not due:
        progress(total, total, "")
    watcher.flush_pages()
    result.seconds = time.monotonic() - started
    return result


def _add(total: watch.PollResult, part: watch.PollResult) -> None:
    for name in ("due", "fetched", "unchanged", "changed", "removed", "events", "jobs",
                 "cancelled"):
        setattr(total, name, getattr(total, name) + getattr(part, name))
    total.errors.extend(part.errors)
