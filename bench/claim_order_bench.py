"""The claim's cost with a big backlog in three lanes, and the hourly popularity refresh.

A throwaway PostgreSQL (tests/harness/postgres.py) with ``--backlog`` queued jobs of one
build target spread over the lanes (1 % bumped, 5 % new releases, the rest backlog), with
random priorities and queue times over 30 days, and ``--downloads`` wheel downloads of
``--popular`` projects. Measured: ``EXPLAIN (ANALYZE, BUFFERS)`` of the claim's lookup in
each lane, the latency of ``claim_job`` + ``finish_job`` cycles, and ``refresh_popularity``.

Writes its section of docs/benchmarks.md (between the bench:order markers).
Run: ``.venv/bin/python bench/claim_order_bench.py`` (after ``make test-deps``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "agent" / "src"), str(REPO / "bench")]

from benchdocs import write_section  # noqa: E402
from machine import cpu_model, ram_gib  # noqa: E402

from harness.postgres import PostgresCluster  # noqa: E402
from pinwheel import db  # noqa: E402
from pinwheel.queue import BuilderQueue  # noqa: E402
from pinwheel.schema import BUILDER_GROUP  # noqa: E402

DOCS = REPO / "docs" / "benchmarks.md"
MARK_START, MARK_END = "<!-- bench:order:start -->", "<!-- bench:order:end -->"
DB = "order_bench"
LANE_QUERY = """
    SELECT j.job_id FROM pinwheel.jobs j
     WHERE j.state = 'queued' AND j.abi = 'cp311' AND j.platform = 'linux_x86_64'
       AND j.lane = %s
     ORDER BY j.rank, j.job_id
     LIMIT 1
       FOR UPDATE SKIP LOCKED"""


def fill(pg: PostgresCluster, backlog: int, popular: int, downloads: int) -> None:
    projects = max(backlog // 10, 1)
    pg.query(DB, "INSERT INTO packages (package, display_name) "
                 "SELECT 'p' || i, 'p' || i FROM generate_series(1, %s) i", (projects,))
    pg.query(DB, "INSERT INTO versions (package, version, has_sdist) "
                 "SELECT 'p' || (i %% %s + 1), 'v' || i, true FROM generate_series(1, %s) i",
             (projects, backlog))
    # The rank trigger runs for every row, as it does when plan_release queues.
    pg.query(DB, """
        INSERT INTO jobs (package, version, abi, platform, priority, queued_at, lane)
        SELECT 'p' || (i %% %s + 1), 'v' || i, 'cp311', 'linux_x86_64',
               (random() * 3)::int, now() - random() * interval '30 days',
               CASE WHEN i %% 100 = 0 THEN 'bumped' WHEN i %% 20 = 1 THEN 'new'
                    ELSE 'backlog' END
          FROM generate_series(1, %s) i""", (projects, backlog))
    pg.query(DB, "SELECT downloads_partition(now()), "
                 "downloads_partition(now() - interval '30 days')")
    pg.query(DB, """
        INSERT INTO downloads (accessed_at, kind, path, status, package, filename)
        SELECT now() - random() * interval '29 days', 'wheel', '/packages/x', 200,
               'p' || ((random() ^ 3) * %s + 1)::int, 'x.whl'
          FROM generate_series(1, %s)""", (popular, downloads))
    pg.query(DB, "VACUUM ANALYZE pinwheel.jobs")
    pg.query(DB, "ANALYZE pinwheel.downloads")


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backlog", type=int, default=200_000)
    ap.add_argument("--claims", type=int, default=2000)
    ap.add_argument("--popular", type=int, default=5000, help="projects with downloads")
    ap.add_argument("--downloads", type=int, default=1_000_000)
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args()

    pg = PostgresCluster()
    pg.start()
    try:
        pg.create_database(DB)
        dsn = pg.create_login(DB, "order_bench", BUILDER_GROUP, "bench-pw")
        q = BuilderQueue(db.connect(dsn, application_name="order-bench"))
        q.register("cp311", "linux_x86_64", "bench", platform.python_version())
        t_fill = timed(lambda: fill(pg, args.backlog, args.popular, args.downloads))
        t_refresh = timed(lambda: pg.query(DB, "SELECT refresh_popularity()"))
        (boosted,), = pg.query(DB, "SELECT count(*) FROM package_popularity")
        pg.query(DB, "VACUUM ANALYZE pinwheel.jobs")
        t_refresh2 = timed(lambda: pg.query(DB, "SELECT refresh_popularity('0 seconds')"))
        plans = {}
        conn = pg.admin(DB)
        for lane in ("bumped", "new", "backlog"):
            with conn.cursor() as cur:
                cur.execute("BEGIN")
                cur.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + LANE_QUERY, (lane,))
                plans[lane] = "\n".join(r[0] for r in cur.fetchall())
                cur.execute("ROLLBACK")
        conn.close()
        # The bumped lane first (1 % of the backlog), then claims that find it empty and
        # go on to the new lane or the backlog.
        (bumped,), = pg.query(DB, "SELECT count(*) FROM jobs WHERE lane = 'bumped'")
        phases: dict[str, list[float]] = {"bumped": [], "new/backlog": []}
        now = dt.datetime.now(dt.timezone.utc)
        for i in range(bumped + args.claims):
            t0 = time.perf_counter()
            job = q.claim(300)
            phases["bumped" if i < bumped else "new/backlog"].append(time.perf_counter() - t0)
            assert job is not None
            q.finish(job, "failed", now, 1.0, None, [])
        q.conn.close()
        (left,), = pg.query(DB, "SELECT count(*) FROM jobs WHERE state = 'queued'")
        (from_backlog,), = pg.query(
            DB, "SELECT count(*) FROM builds WHERE substr(version, 2)::int %% 100 <> 0 "
                "AND substr(version, 2)::int %% 20 <> 1")
        (lanes,), = pg.query(DB, "SELECT string_agg(lane || ' ' || n, ', ' ORDER BY lane) FROM "
                                 "(SELECT lane, count(*) n FROM jobs GROUP BY lane) l")
    finally:
        pg.destroy()

    def pct(lat: list[float]) -> str:
        ms = sorted(x * 1000 for x in lat)
        return (f"{statistics.median(ms):.2f} / {ms[max(int(len(ms) * 0.99) - 1, 0)]:.2f} / "
                f"{ms[-1]:.2f} ms")

    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        MARK_START, "## Queue order: claiming by lane and rank", "",
        f"Written by `bench/claim_order_bench.py` on {when}: {os.cpu_count()} cores "
        f"({cpu_model()}), {ram_gib()}, Python {platform.python_version()}, the throwaway "
        "PostgreSQL cluster of tests/harness/postgres.py; the machine was shared with other "
        "work (other helpers' tests and a fleet run), so times are upper bounds. Re-run: "
        "`.venv/bin/python bench/claim_order_bench.py` after `make test-deps`.", "",
        f"{args.backlog:,} queued jobs of one target (1 % bumped, 5 % new, the rest backlog; "
        f"priorities 0-3, queued over 30 days), {args.downloads:,} wheel downloads of "
        f"{args.popular:,} projects.", "",
        "| what | time |", "| --- | --- |",
        f"| queueing {args.backlog:,} jobs (rank trigger on every row) and the downloads | "
        f"{t_fill:.1f} s |",
        f"| `refresh_popularity()`: count 30 days of downloads, boost {boosted:,} projects, "
        f"re-rank their queued jobs | {t_refresh:.2f} s |",
        f"| `refresh_popularity()` again, nothing changed | {t_refresh2:.2f} s |",
        f"| `claim_job` from the bumped lane (then `finish_job`), {len(phases['bumped']):,} "
        f"cycles: p50 / p99 / max | {pct(phases['bumped'])} |",
        f"| `claim_job` with the bumped lane empty (new, or the backlog's share), "
        f"{len(phases['new/backlog']):,} cycles: p50 / p99 / max | {pct(phases['new/backlog'])} |",
        "", f"Of the {args.claims:,} claims after the bumped lane, {from_backlog:,} "
        f"({100 * from_backlog / max(args.claims, 1):.0f} %) took the backlog "
        "(`backlog_share` 20), the others new releases.", "",
        f"Left queued: {left:,} ({lanes}). The claim's lookup in each lane "
        "(`EXPLAIN (ANALYZE, BUFFERS)`, inside `claim_job` it is the same statement):", ""]
    for lane, plan in plans.items():
        lines += [f"{lane}:", "", "```", plan, "```", ""]
    lines += ["Each lane is one descent of the partial index `jobs_queued (abi, platform, lane, "
              "rank, job_id) WHERE state = 'queued'`: a claim reads a handful of pages whatever "
              "the backlog, and tries at most three lanes. The popularity boost is written into "
              "`rank` by `refresh_popularity()` (hourly, from the ingest service), never counted "
              "in the claim.", MARK_END, ""]
    section = "\n".join(lines)
    print(section)
    if not args.no_write:
        write_section(DOCS, MARK_START, MARK_END, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
