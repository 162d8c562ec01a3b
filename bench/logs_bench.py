"""How fast `pinwheel logs` imports nginx's JSON access log, beside a raw COPY.

1. A synthetic access log of ``--lines`` lines (default 5,000,000) in the master role's
   ``pinwheel_json`` format, spread over the last 50 days (so it crosses a month boundary):
   wheel downloads of 2,000 published files (pip and uv JSON user agents), Simple API pages
   in JSON and HTML, project pages, JSON pages and other requests, from 50,000 networks.
2. End to end: ``pinwheel.log_import.import_available`` (what ``pinwheel logs --once`` runs):
   read, parse, classify, hash the clients, COPY into the staging table, INSERT ... SELECT
   into ``downloads`` with each wheel's file_id (its trigger adding the rows to the daily
   summaries, migration 0013), the position committed per batch.
3. Beside it, in the same run: the same rows, pre-parsed (untimed) into COPY's text format,
   loaded with one raw ``COPY downloads FROM STDIN`` into another database of the cluster
   (the trigger summing them too).
4. At that size: the queries the stats read, from the daily summaries (pinwheel.time_saved:
   total, per month, per project, downloads per day; pinwheel.farm_stats: totals, top 10
   projects), beside the raw scan the total used to be (``download_time_saved``).

Writes its section of docs/benchmarks.md (between the bench:logs markers).
Run: ``nice -n 10 .venv/bin/python bench/logs_bench.py`` (after ``make test-deps``), or
``make bench-logs``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "agent" / "src"), str(REPO / "bench")]

from machine import cpu_model, ram_gib  # noqa: E402

from harness.postgres import PostgresCluster  # noqa: E402
from pinwheel import db, farm_stats, time_saved  # noqa: E402
from pinwheel.access_log import ClientHasher, parse_agent  # noqa: E402
from pinwheel.download_keys import MonthlyKeys  # noqa: E402
from pinwheel.log_import import LogsConfig, import_available  # noqa: E402
from pinwheel.schema import MASTER_GROUP  # noqa: E402

DOCS = REPO / "docs" / "benchmarks.md"
MARK_START, MARK_END = "<!-- bench:logs:start -->", "<!-- bench:logs:end -->"
FILES = 2000
PROJECTS = 500

AGENTS = [
    'pip/{v} {{"ci":null,"cpu":"{cpu}","distro":{{"id":"bookworm","libc":{{"lib":"glibc",'
    '"version":"2.36"}},"name":"Debian GNU/Linux","version":"12"}},"implementation":{{"name":'
    '"CPython","version":"{py}"}},"installer":{{"name":"pip","version":"{v}"}},'
    '"openssl_version":"OpenSSL 3.0.15 3 Sep 2024","python":"{py}","setuptools_version":'
    '"66.1.1","system":{{"name":"Linux","release":"6.6.51+rpt-rpi-v8"}}}}',
    'uv/{v} {{"installer":{{"name":"uv","version":"{v}"}},"python":"{py}","implementation":'
    '{{"name":"CPython","version":"{py}"}},"distro":{{"name":"Debian GNU/Linux","version":'
    '"12","id":"bookworm","libc":null}},"system":{{"name":"Linux","release":null}},"cpu":'
    '"{cpu}","openssl_version":null,"setuptools_version":null,"rustc_version":null,"ci":null}}',
]


def seed(pg: PostgresCluster, database: str) -> None:
    """2,000 published non-pure wheels of 500 projects, each from a build of 30 s - 10 min."""
    conn = pg.admin(database)
    with conn.cursor() as cur:
        cur.execute("SET search_path = pinwheel; SET session_replication_role = replica")
        cur.execute(f"""
            INSERT INTO builds (job_id, package, version, abi, platform, status, attempts,
                                duration, ingest_state)
            SELECT i, 'proj-' || (i % {PROJECTS}), '1.' || i, 'cp311', 'linux_armv7l',
                   'success', 1, make_interval(secs => 30 + i % 570), 'done'
              FROM generate_series(1, {FILES}) i""")
        cur.execute("""
            INSERT INTO files (build_id, filename, size, sha256, state, package, version,
                               python_tag, abi_tag, platform_tag, metadata_sha256, published_at)
            SELECT build_id, replace(package, '-', '_') || '-' || version
                             || '-cp311-cp311-linux_armv7l.whl', 1000, repeat('0', 64),
                   'published', package, version, 'cp311', 'cp311', 'linux_armv7l',
                   repeat('0', 64), now()
              FROM builds""")
    conn.commit()
    conn.close()


def write_log(path: Path, copy_path: Path, lines: int, rng: random.Random, keys: Path,
              file_ids: dict[str, int]) -> None:
    """The access log, and beside it the same rows as COPY text (the pre-parsed rows the raw
    COPY loads: the same classification, agent fields and client hash as the importer's)."""
    end = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    start = end - dt.timedelta(days=50)
    step_ms = (end - start).total_seconds() * 1000 / lines
    agents = [a.format(v=v, py=py, cpu=cpu)
              for a, v in ((AGENTS[0], "24.0"), (AGENTS[0], "23.0.1"), (AGENTS[1], "0.4.18"))
              for py in ("3.11.2", "3.12.3") for cpu in ("aarch64", "armv7l", "x86_64")]
    agent_fields = {a: "\t".join(f or "\\N" for f in parse_agent(a)) for a in agents}
    agents_json = {a: json.dumps(a) for a in agents}
    wheels = [(f"proj-{i % PROJECTS}", f"proj_{i % PROJECTS}-1.{i}-cp311-cp311-linux_armv7l.whl")
              for i in range(1, FILES + 1)]
    template = ('{{"time":"{t}","request":"GET {p} HTTP/1.1","status":{s},"bytes":{b},'
                '"user_agent":{ua},"accept":"{a}","content_type":"{c}",'
                '"remote_addr":"{ip}"}}\n')
    json_type = "application/vnd.pypi.simple.v1+json"
    hasher = ClientHasher(MonthlyKeys(keys))
    base_ms = int(start.timestamp() * 1000)
    second, second_text, month = -1, "", ""
    with open(path, "w", buffering=1 << 20) as fh, open(copy_path, "w", buffering=1 << 20) as cp:
        for i in range(lines):
            ms = base_ms + int(i * step_ms)
            if ms // 1000 != second:
                second = ms // 1000
                at = dt.datetime.fromtimestamp(second, dt.timezone.utc)
                second_text = at.strftime("%Y-%m-%dT%H:%M:%S")
                month = at.strftime("%Y-%m")
            t = f"{second_text}.{ms % 1000:03d}+00:00"
            r = rng.random()
            status, ctype, accept, kind = 200, "text/html", "", "project"
            project, name = "", None
            if r < 0.4:
                project, name = rng.choice(wheels)
                p, ctype, kind = f"/packages/{project}/{name}", "application/octet-stream", "wheel"
            elif r < 0.8:
                project = f"proj-{rng.randrange(PROJECTS)}"
                p, kind = f"/simple/{project}/", "json"
                ctype, accept = json_type, json_type + ", text/html;q=0.01"
            elif r < 0.9:
                project = f"proj-{rng.randrange(PROJECTS)}"
                p = f"/project/{project}/"
            elif r < 0.95:
                project = f"proj-{rng.randrange(PROJECTS)}"
                p, ctype, kind = f"/project/{project}/json/", "application/json", "json"
            else:
                p, status, kind = f"/no/such/{i}", 404, "other"
            net = rng.randrange(50_000)
            ip = f"10.{net >> 8}.{net & 255}.{rng.randrange(1, 255)}"
            size = rng.randrange(100, 10 ** 6)
            agent = rng.choice(agents)
            fh.write(template.format(t=t, p=p, s=status, b=size, ua=agents_json[agent],
                                     a=accept, c=ctype, ip=ip))
            file_id = file_ids.get(name or "")
            cp.write(f"{t}\t{kind}\t{p}\t{status}\t{size}\t{project or chr(92) + 'N'}\t"
                     f"{name or chr(92) + 'N'}\t{agent_fields[agent]}\t"
                     f"{hasher(month, ip)}\t{file_id or chr(92) + 'N'}\n")


def timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=5_000_000)
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args()
    rng = random.Random(7)
    work = Path(tempfile.mkdtemp(prefix="pinwheel-logs-bench-"))
    pg = PostgresCluster()
    pg.start()
    rows: list[tuple[str, str]] = []
    try:
        for name in ("logs_bench", "logs_bench_raw"):
            pg.create_database(name)
            seed(pg, name)
        dsn = pg.create_login("logs_bench", "logs_bench", MASTER_GROUP, "bench-pw")
        log, copy_text = work / "access.json", work / "rows.copy"
        file_ids = dict(pg.query("logs_bench_raw", "SELECT filename, file_id FROM files"))
        secs, _ = timed(lambda: write_log(log, copy_text, args.lines, rng, work / "keys",
                                          file_ids))
        size = log.stat().st_size
        print(f"wrote {args.lines:,} lines ({size / 2**20:,.0f} MiB) in {secs:.0f} s", flush=True)

        # The raw COPY first (the database's share), then the importer end to end.
        end = dt.datetime.now(dt.timezone.utc)
        for days in (0, 25, 50):
            pg.query("logs_bench_raw", "SELECT downloads_partition(%s)",
                     (end - dt.timedelta(days=days),))
        raw = pg.admin("logs_bench_raw")
        columns = ("accessed_at, kind, path, status, bytes, package, filename, installer_name, "
                   "installer_version, python_version, implementation_name, distro_name, "
                   "distro_version, system_name, cpu, client, file_id")

        def raw_copy() -> None:
            with raw.cursor() as cur, open(copy_text) as fh:
                cur.copy_expert(f"COPY pinwheel.downloads ({columns}) FROM STDIN", fh,
                                size=1 << 20)
            raw.commit()
        secs, _ = timed(raw_copy)
        raw.close()
        copied = pg.query("logs_bench_raw", "SELECT count(*) FROM downloads")[0][0]
        assert copied == args.lines, copied
        raw_row = (f"raw `COPY downloads FROM STDIN` of the same {args.lines:,} rows, "
                   "pre-parsed", f"{secs:.1f} s ({args.lines / secs:,.0f} rows/s)")
        print(raw_row, flush=True)
        pg.drop_database("logs_bench_raw")

        cfg = LogsConfig(access_log=log, key_dir=work / "keys")
        secs, (imported, malformed) = timed(lambda: import_available(dsn, cfg))
        assert imported == args.lines and malformed == 0, (imported, malformed)
        rows.append((f"`pinwheel logs --once`: {args.lines:,} lines ({size / 2**20:,.0f} MiB) "
                     "read, parsed, COPY + INSERT ... SELECT, position per batch",
                     f"{secs:.1f} s ({args.lines / secs:,.0f} lines/s)"))
        rows.append(raw_row)
        print(rows[0], flush=True)
        same = pg.query("logs_bench", "SELECT count(*) FROM downloads WHERE client IS NULL")
        assert same == [(0,)], same

        pg.query("logs_bench", "VACUUM ANALYZE downloads, download_days, download_request_days")
        conn = db.connect(dsn)
        wheels = pg.query("logs_bench", "SELECT count(*) FROM download_time_saved")[0][0]
        summary = pg.query("logs_bench", "SELECT count(*) FROM download_days")[0][0]

        def raw_total() -> Any:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*), sum(saved) FROM download_time_saved")
                return cur.fetchall()
        assert raw_total() == [(time_saved.total(conn).downloads, time_saved.total(conn).saved)]
        for label, fn in (
                (f"raw scan, for comparison: time saved in total over `download_time_saved` "
                 f"({wheels:,} non-pure wheel downloads)", raw_total),
                (f"time saved in total (the summary: {summary:,} rows of `download_days`)",
                 lambda: time_saved.total(conn)),
                ("time saved per month", lambda: time_saved.per_month(conn)),
                ("time saved per project, top 20", lambda: time_saved.per_project(conn)),
                ("downloads per day, last 30 days", lambda: time_saved.downloads_per_day(conn)),
                ("/stats/ totals (downloads and time saved ever, builds, files)",
                 lambda: farm_stats.totals(conn)),
                ("/stats/ top 10 projects, last 30 days", lambda: farm_stats.top_projects(conn))):
            best = min(timed(fn)[0] for _ in range(3))
            rows.append((f"query: {label}", f"{best * 1000:,.0f} ms"))
            print(rows[-1], flush=True)
        total = time_saved.total(conn)
        conn.close()
        print(f"time saved: {time_saved.human(total.saved)}")
    finally:
        pg.destroy()
        shutil.rmtree(work, ignore_errors=True)

    if not args.no_write:
        write_docs(rows, args.lines)
    return 0


def write_docs(rows: list[tuple[str, str]], lines: int) -> None:
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    table = "\n".join(f"| {a} | {b} |" for a, b in rows)
    section = f"""{MARK_START}
## Logs: the access log into PostgreSQL

Written by `bench/logs_bench.py` on {now} UTC ({cpu_model()}, {os.cpu_count()} cores, {ram_gib()},
{platform.machine()}, Python {platform.python_version()}, the throwaway PostgreSQL cluster of
tests/harness/postgres.py; the machine was shared with other work, load average
{os.getloadavg()[0]:.0f} when the run ended, the run niced).
Re-run: `make bench-logs` (or `nice -n 10 .venv/bin/python bench/logs_bench.py` after
`make test-deps`). A synthetic log of {lines:,} lines over 50 days: 40% wheel downloads
(pip and uv JSON user agents), 40% Simple API pages, 15% project pages and JSON, 5% 404s.

| what | time |
| --- | --- |
{table}

The end-to-end figure is what one `pinwheel logs` process sustains (one core: reading,
`json.loads`, classification, the user agent parse cached per agent string, the keyed hash
cached per /24 or /48); the raw COPY is what the database takes for the same rows loaded
directly (both add the rows to the daily summaries in the same statement, by the
trigger of migration 0013). The difference is the importer's parsing in Python and its second
pass (the staging table, then INSERT ... SELECT with the file_id join). The queries are those
of `pinwheel logs --summary` and the stats pages: they read the daily summary
(`download_days`: one row per day, project, file, installer and Python version), whose size
grows with the days and the variety of downloads, not their number; the raw scan line is what
the total cost when it read every download.
{MARK_END}"""
    text = DOCS.read_text()
    if MARK_START in text:
        head, rest = text.split(MARK_START, 1)
        text = head + section + rest.split(MARK_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n" + section + "\n"
    DOCS.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
