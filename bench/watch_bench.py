"""How long `pinwheel watch` takes to poll: project pages, and a PyPI-sized root.

1. Project pages: a local upstream (tests/harness/upstream.py) with ``--projects``
   projects, each one release with an sdist, PyPI serials on. Timed: the first
   poll (every project fetched and planned, two build targets), a poll with no
   change (the root answers 304), and a poll after ``--changed`` projects got a
   new release.
2. The root step alone at PyPI's size: a PEP 691 JSON root of ``--root``
   projects with ``_last-serial`` served over HTTP, stored into
   ``watch_projects`` (first time), then again after ``--changed`` serials
   moved (only those become due).

Writes its section of docs/benchmarks.md (between the bench:watch markers).
Run: ``.venv/bin/python bench/watch_bench.py`` (after ``make test-deps``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "agent" / "src"), str(REPO / "bench")]
from benchdocs import write_section  # noqa: E402
from machine import cpu_model, ram_gib  # noqa: E402

from harness.postgres import PostgresCluster  # noqa: E402
from harness.upstream import UpstreamIndex  # noqa: E402
from pinwheel import db, watch  # noqa: E402
from pinwheel.config import MasterConfig, WatchConfig  # noqa: E402
from pinwheel.schema import MASTER_GROUP  # noqa: E402

DOCS = REPO / "docs" / "benchmarks.md"
MARK_START, MARK_END = "<!-- bench:watch:start -->", "<!-- bench:watch:end -->"


class _Root(BaseHTTPRequestHandler):
    body = b""
    etag = ""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.headers.get("If-None-Match") == self.etag:
            self.send_response(304)
            self.send_header("ETag", self.etag)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.pypi.simple.v1+json")
        self.send_header("Content-Length", str(len(self.body)))
        self.send_header("ETag", self.etag)
        self.end_headers()
        self.wfile.write(self.body)


def root_doc(count: int, bumped: int) -> bytes:
    projects = [{"name": f"Project_{i}", "_last-serial": i + (10 ** 9 if i < bumped else 0)}
                for i in range(count)]
    return json.dumps({"meta": {"api-version": "1.1", "_last-serial": 2 * 10 ** 9},
                       "projects": projects}).encode()


def timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--projects", type=int, default=1000)
    ap.add_argument("--root", type=int, default=600_000)
    ap.add_argument("--changed", type=int, default=50)
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args()

    pg = PostgresCluster()
    pg.start()
    up = UpstreamIndex(build=False, serials=True)
    up.start()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Root)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    rows: list[tuple[str, str]] = []
    try:
        pg.create_database("watch_bench")
        for plat in ("linux_x86_64", "linux_armv7l"):
            pg.query("watch_bench", "INSERT INTO targets VALUES ('cp311', %s)", (plat,))
        dsn = pg.create_login("watch_bench", "watch_bench", MASTER_GROUP, "bench-pw")
        www = Path(up.root) / "www"
        www.mkdir()
        cfg = MasterConfig(dsn=dsn, www_root=www, incoming_root=www, quarantine_root=www,
                           upstream_url=up.url, watch=WatchConfig(mode="mirror"))
        for i in range(args.projects):
            up.add_release(f"bench-{i}", "1.0")
        secs, res = timed(lambda: watch.poll_once(cfg))
        rows.append((f"first poll, {args.projects} new projects ({res.jobs} jobs queued)",
                     f"{secs:.1f} s ({args.projects / secs:.0f} projects/s)"))
        secs, res = timed(lambda: watch.poll_once(cfg))
        rows.append((f"poll with no change ({res.due} due; root 304)", f"{secs * 1000:.0f} ms"))
        for i in range(args.changed):
            up.add_release(f"bench-{i}", "1.1")
        secs, res = timed(lambda: watch.poll_once(cfg))
        rows.append((f"poll after {args.changed} new releases ({res.due} due, {res.jobs} jobs)",
                     f"{secs:.2f} s"))

        pg.create_database("watch_bench_root")
        dsn = pg.create_login("watch_bench_root", "watch_bench_r", MASTER_GROUP, "bench-pw")
        url = f"http://127.0.0.1:{server.server_address[1]}/simple/"
        cfg = MasterConfig(dsn=dsn, www_root=www, incoming_root=www, quarantine_root=www,
                           upstream_url=url, watch=WatchConfig(mode="mirror"))
        conn = db.connect(dsn)
        watcher = watch.Watcher(conn, cfg)
        for bumped, label in ((0, "first"), (args.changed, "serials moved")):
            _Root.body = root_doc(args.root, bumped)
            _Root.etag = '"' + hashlib.sha256(_Root.body).hexdigest()[:16] + '"'
            if bumped:
                conn.autocommit = True
                db.call(conn, "UPDATE watch_projects SET last_serial = upstream_serial")
            secs, _ = timed(watcher._list_due)
            due = len(watcher._due(True))
            rows.append((f"root of {args.root:,} projects ({len(_Root.body) >> 20} MiB), "
                         f"{label}: stored, {due:,} due", f"{secs:.1f} s"))
        secs, _ = timed(watcher._list_due)
        rows.append(("the same root again (304)", f"{secs * 1000:.0f} ms"))
        conn.close()
    finally:
        server.shutdown()
        up.destroy()
        pg.destroy()

    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [MARK_START, "## Watch: polling the upstream", "",
             f"Written by `bench/watch_bench.py` on {now} ({os.cpu_count()} cores, {cpu_model()}, "
             f"{ram_gib()}, Python {platform.python_version()}, the throwaway PostgreSQL "
             "cluster of "
             "tests/harness/postgres.py; the machine was shared with other work). Re-run: "
             "`.venv/bin/python bench/watch_bench.py` after `make test-deps`.", "",
             "| what | time |", "| --- | --- |"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    lines += ["", "Project pages are fetched one after another: the first poll of a mirror is "
              "bound by the upstream's latency (here a local server), which is why an initial "
              "import of PyPI is a separate command (issue 6, later).", MARK_END, ""]
    section = "\n".join(lines)
    print(section)
    if not args.no_write:
        write_section(DOCS, MARK_START, MARK_END, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
