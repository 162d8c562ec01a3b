"""`pinwheel import`: the initial import of an upstream's whole project list.

The root page is stored exactly as ``pinwheel watch`` stores it (mirror mode),
then every project not yet processed is fetched and recorded by the watcher's
own per-project step (:meth:`watch.Watcher.take`): its releases, jobs, events
and the project's serial are committed in ONE transaction. So the import is
resumable: killed at any moment and run again, it fetches only the projects
whose state was not committed, and a project processed twice changes nothing
the second time (one job per release and target, whatever happens).

Throughput: a few threads fetch pages ahead over kept-alive connections while
this thread records them; the session commits without waiting for the WAL flush
(``synchronous_commit = off``: a crash loses at most the last few commits, whole
projects, which the next run fetches again; nothing is ever half-recorded).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
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


class _Fetcher:
    """Threads fetching project pages ahead of the recorder, each on its own connection."""

    def __init__(self, cfg: MasterConfig, url: str, workers: int,
                 stop: threading.Event) -> None:
        self.cfg = cfg
        self.url = url
        self.stop = stop
        self.local = threading.local()
        self.sessions: list[upstream.Session] = []
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="import-fetch")

    def _session(self) -> upstream.Session:
        session = getattr(self.local, "session", None)
        if session is None:
            session = upstream.Session(self.url, self.cfg.watch.timeout, self.cfg.ca_bundle)
            self.local.session = session
            with self.lock:
                self.sessions.append(session)
        return session

    def fetch(self, package: str, etag: str | None,
              modified: str | None) -> upstream.Page | upstream.UpstreamError:
        url = upstream.project_url(self.url, package)
        failures = 0
        while True:
            try:
                return self._session().fetch_page(url, etag, modified)
            except upstream.UpstreamUnavailable as exc:
                failures += 1
                if failures >= RETRIES or self.stop.is_set():
                    return exc  # the recorder stops the import with this error
                wait = exc.retry_after if isinstance(exc, upstream.RateLimited) else None
                delay = watch.backoff_delay(failures, self.cfg.watch.max_backoff_seconds, wait)
                log.warning("%s; retrying in %.1f s", exc, delay)
                self.stop.wait(delay)
            except upstream.UpstreamError as exc:
                return exc

    def pages(self, due: list[tuple[str, str | None, str | None]],
              ahead: int) -> Iterator[tuple[str, upstream.Page | upstream.UpstreamError]]:
        """The pages of ``due`` in order, fetched at most ``ahead`` projects in advance."""
        window: collections.deque[tuple[str, Future[Any]]] = collections.deque()
        todo = iter(due)
        try:
            for package, etag, modified in todo:
                window.append((package, self.pool.submit(self.fetch, package, etag, modified)))
                if len(window) >= ahead:
                    name, future = window.popleft()
                    yield name, future.result()
            while window:
                name, future = window.popleft()
                yield name, future.result()
        finally:
            self.stop.set()
            for _, future in window:
                future.cancel()
            self.pool.shutdown(wait=True)
            for session in self.sessions:
                session.close()


def run(conn: Any, cfg: MasterConfig, workers: int = 4, progress: Progress | None = None,
        stop: threading.Event | None = None) -> ImportResult:
    """Import every project of ``cfg``'s upstream not yet processed; see the module doc."""
    if cfg.watch.mode != "mirror":
        raise ImportRefused(
            "pinwheel import records every project of the upstream, which is mirror mode; "
            "this master is in allowlist mode (set [watch] mode = mirror, i.e. "
            "master_watch_mode: mirror), or let `pinwheel watch --once` record the listed "
            "projects")
    started = time.monotonic()
    mirror = replace(cfg, watch=replace(cfg.watch, mode="mirror"))
    stop = stop if stop is not None else threading.Event()
    watcher = watch.Watcher(conn, mirror, stop)
    watcher.lock()  # one of `pinwheel watch` and `pinwheel import` at a time
    db.call(conn, "SET synchronous_commit = off")
    watcher.flush_pages()
    serials = watcher._list_due()
    listed = db.call(conn, "SELECT count(*) FROM watch_projects WHERE listed")[0][0]
    due = [(r[0], r[1], r[2]) for r in db.call(conn, _DUE_SERIALS if serials else _DUE_PLAIN)]
    result = ImportResult(listed=int(listed), before=max(0, int(listed) - len(due)))
    total = result.before + len(due)
    log.info("upstream %s lists %d project(s); %d already imported, %d to fetch",
             watcher.url, listed, result.before, len(due))
    fetcher = _Fetcher(mirror, watcher.url, max(1, workers), threading.Event())
    done = result.before
    every = max(1, total // 20)
    for package, page in fetcher.pages(due, ahead=max(8, workers * 8)):
        if stop.is_set():
            break
        if isinstance(page, upstream.UpstreamUnavailable):
            raise upstream.UpstreamUnavailable(
                f"{page}; {done} of {total} project(s) are imported: run `pinwheel import` "
                "again to go on from there")
        watcher.take(package, page, result.poll)
        result.poll.due += 1
        done += 1
        if progress is not None:
            progress(done, total, package)
        elif done % every == 0:
            log.info("imported %d of %d project(s)", done, total)
    if progress is not None and done == result.before:
        progress(done, total, "")
    watcher.flush_pages()
    result.seconds = time.monotonic() - started
    return result
