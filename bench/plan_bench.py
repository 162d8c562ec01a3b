"""Planning one release as the catalogue grows: ``plan_release`` at 1k, 10k and 100k releases.

A throwaway PostgreSQL (tests/harness/postgres.py) with the current schema and two build
targets; the catalogue is filled by SQL (one release with an sdist per project, its jobs
queued), then ``--calls`` new releases are planned one call at a time, as the watcher and
``pinwheel import`` do. Measured beside the same calls to migration 8's plan_due (a SQL
function whose statement ran with its arguments as parameters, so it read every release),
created for the comparison under another name in a transaction that is rolled back.

Writes its section of docs/benchmarks.md (between the bench:plan markers).
Run: ``.venv/bin/python bench/plan_bench.py`` (after ``make test-deps``).
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

DOCS = REPO / "docs" / "benchmarks.md"
MARK_START, MARK_END = "<!-- bench:plan:start -->", "<!-- bench:plan:end -->"
DB = "plan_bench"
MIGRATION_8 = (REPO / "agent" / "src" / "pinwheel" / "migrations" / "0008_planning.sql")


def old_plan_due() -> str:
    """Migration 8's plan_due, verbatim, as plan_due_m8 (and a plan_jobs_m8 using it)."""
    text = MIGRATION_8.read_text(encoding="utf-8")
    start = text.index("CREATE FUNCTION plan_due(")
    end = text.index("$$;", text.index("$$", start) + 2) + 3
    return (text[start:end].replace("CREATE FUNCTION plan_due(", "CREATE FUNCTION plan_due_m8(")
            + """
CREATE FUNCTION plan_jobs_m8(p_package text, p_version text) RETURNS integer
LANGUAGE sql SET search_path = pinwheel, pg_temp AS $$
    WITH queued AS (
        INSERT INTO jobs (package, version, abi, platform, priority)
        SELECT d.package, d.version, d.abi, d.platform, 0
          FROM plan_due_m8(p_package, p_version, NULL, NULL, false) AS d
        ON CONFLICT (package, version, abi, platform) DO NOTHING
        RETURNING 1)
    SELECT count(*)::integer FROM queued;
$$;""")


def fill(cur, size: int) -> None:  # type: ignore[no-untyped-def]
    cur.execute("SELECT count(*) FROM packages")
    have = cur.fetchone()[0]
    cur.execute("""INSERT INTO packages (package, display_name)
                   SELECT 'bench-' || i, 'bench-' || i FROM generate_series(%s, %s - 1) i""",
                (have, size))
    cur.execute("""INSERT INTO versions (package, version, has_sdist)
                   SELECT 'bench-' || i, '1.0', true FROM generate_series(%s, %s - 1) i""",
                (have, size))
    cur.execute("""INSERT INTO jobs (package, version, abi, platform)
                   SELECT 'bench-' || i, '1.0', t.abi, t.platform
                     FROM generate_series(%s, %s - 1) i CROSS JOIN targets t""", (have, size))
    cur.execute("ANALYZE")


def timed_calls(cur, size: int, calls: int, function: str) -> list[float]:  # type: ignore[no-untyped-def]
    lat = []
    for i in range(calls):
        package = f"bench-{i * (size // calls)}"
        version = f"2.0.{i}"
        cur.execute("INSERT INTO versions (package, version, has_sdist) VALUES (%s, %s, true)",
                    (package, version))
        start = time.perf_counter()
        cur.execute(f"SELECT {function}(%s, %s)", (package, version))
        queued = cur.fetchone()[0]
        lat.append(time.perf_counter() - start)
        assert queued == 2, (function, queued)
    return lat


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--no-write", action="store_true", help="print, do not write the docs")
    args = p.parse_args()
    pg = PostgresCluster()
    pg.start()
    rows = []
    try:
        pg.create_database(DB)
        conn = pg.admin(DB)
        conn.autocommit = False
        cur = conn.cursor()
        cur.execute("SET search_path = pinwheel, pg_temp")
        cur.execute("INSERT INTO targets (abi, platform) VALUES ('cp311', 'linux_x86_64'), "
                    "('cp311', 'linux_armv7l')")
        conn.commit()
        for size in sorted(args.sizes):
            fill(cur, size)
            conn.commit()
            now = timed_calls(cur, size, args.calls, "plan_release")
            conn.rollback()
            cur.execute("SET search_path = pinwheel, pg_temp")
            cur.execute(old_plan_due())
            before = timed_calls(cur, size, args.calls, "plan_jobs_m8")
            conn.rollback()
            cur.execute("SET search_path = pinwheel, pg_temp")
            rows.append((size, statistics.median(before) * 1000, statistics.median(now) * 1000))
            print(f"{size:,} releases: migration 8 {rows[-1][1]:.2f} ms, now {rows[-1][2]:.2f} ms",
                  flush=True)
        conn.close()
    finally:
        pg.destroy()

    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        MARK_START, "## Planning one release as the catalogue grows", "",
        f"Written by `bench/plan_bench.py` on {when}: {os.cpu_count()} cores "
        f"({cpu_model()}), {ram_gib()}, Python {platform.python_version()}, the throwaway "
        "PostgreSQL cluster of tests/harness/postgres.py; the machine was shared with other "
        "work. Re-run: `.venv/bin/python bench/plan_bench.py` after `make test-deps`.", "",
        f"Median of {args.calls} calls, each planning a new release of an existing project on "
        "two targets (two jobs queued), with one release per project already in the catalogue "
        "and its jobs queued.", "",
        "| releases in the catalogue | migration 8's plan_due (SQL, parameters) | plan_due now "
        "(PL/pgSQL, planned per call) |", "| ---: | ---: | ---: |"]
    lines += [f"| {size:,} | {old:.2f} ms | {new:.2f} ms |" for size, old, new in rows]
    lines += ["", "The old function read every release on each call (its `p_package IS NULL OR "
              "v.package = p_package` could not use the key with the arguments as parameters); "
              "migration 15 plans the same statement for each call's arguments, so a call "
              "finds its release by the key whatever the catalogue's size. This is the cost "
              "`pinwheel import` and the watcher pay per release.", MARK_END, ""]
    section = "\n".join(lines)
    print(section)
    if not args.no_write:
        write_section(DOCS, MARK_START, MARK_END, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
