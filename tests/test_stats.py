"""The farm at a glance: /stats/ and /builders/, `pinwheel status`, `pinwheel metrics`.

One database is filled as the farm would leave it (three builders through
their own logins, builds over several days, a queue, downloads inserted into
the partitioned ``downloads`` table as the log importer writes them); then

* the pages are written by ``pinwheel stats render``, served by an nginx
  rendered from the master role's template, and read in Debian's headless
  Chromium: charts drawn, and every number in their tables equal to what this
  test computes with its own SQL (screenshots in test-artifacts/);
* ``pinwheel status --json`` and the text tables say the same;
* ``pinwheel metrics --textfile`` writes a file Prometheus' own parser reads,
  with the same values;
* the alert rules (docs/prometheus-alerts.yml) are well formed and use only
  metrics that exist (and pass ``promtool check rules`` where it is installed).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.download_days import assert_summaries_match
from harness.nginx import NginxServer
from pinwheel import cli, db
from pinwheel.queue import BuilderQueue
from pinwheel.schema import BUILDER_GROUP, MASTER_GROUP

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "docs" / "prometheus-alerts.yml"
CHROMIUM = "/usr/bin/chromium"
DATABASE = "pinwheel_stats"
X86, ARM, OLD = "stat_x86", "stat_arm", "stat_old"
TARGETS = {X86: ("cp311", "linux_x86_64"), ARM: ("cp311", "linux_armv7l"),
           OLD: ("cp39", "linux_x86_64")}
# A time on the UTC day ``k`` days ago, in the past (today: a few minutes ago, or midnight).
AT = ("CASE WHEN %(k)s = 0 THEN greatest(date_trunc('day', now() AT TIME ZONE 'UTC') "
      "AT TIME ZONE 'UTC', now() - interval '5 minutes') "
      "ELSE ((now() AT TIME ZONE 'UTC')::date - %(k)s + time '12:00') AT TIME ZONE 'UTC' END")


@dataclass
class Farm:
    pg: Any
    conf: Path
    queues: dict[str, BuilderQueue]
    files: dict[str, int]
    failed_with_log: int

    def sql(self, query: str, params: Any = ()) -> list[tuple]:
        return self.pg.query(DATABASE, query, params)


def _build(farm_sql: Any, builder: str, package: str, version: str, status: str, days_ago: int,
           seconds: float, job_id: int) -> int:
    abi, platform = TARGETS[builder]
    return farm_sql(
        f"INSERT INTO builds (job_id, package, version, abi, platform, builder, status, "
        f"attempts, started_at, finished_at, duration, ingest_state) "
        f"VALUES (%(job)s, %(p)s, %(v)s, %(abi)s, %(plat)s, %(b)s, %(s)s, 1, {AT}, {AT}, "
        f"make_interval(secs => %(sec)s), 'done') RETURNING build_id",
        {"job": job_id, "p": package, "v": version, "abi": abi, "plat": platform, "b": builder,
         "s": status, "k": days_ago, "sec": seconds})[0][0]


def _file(farm_sql: Any, build_id: int, filename: str, state: str = "published") -> int:
    package, version, py, abi, plat = filename[:-len(".whl")].split("-")
    return farm_sql(
        "INSERT INTO files (build_id, filename, size, sha256, state, reason, package, version, "
        "python_tag, abi_tag, platform_tag, published_at, metadata_sha256) VALUES (%s, %s, 1000, "
        "%s, %s, %s, %s, %s, %s, %s, %s, now(), %s) RETURNING file_id",
        (build_id, filename, "0" * 64, state, "not a zip file" if state == "quarantined" else None,
         package.replace("_", "-"), version, py, abi, plat, "1" * 64))[0][0]


def _downloads(farm_sql: Any, n: int, days_ago: int, path: str, kind: str = "wheel",
               status: int = 200, file_id: int | None = None, package: str | None = None,
               installer: str | None = None, python: str | None = None) -> None:
    at = farm_sql(f"SELECT {AT}", {"k": days_ago})[0][0]
    farm_sql("SELECT downloads_partition(%s)", (at,))
    for _ in range(n):
        farm_sql("INSERT INTO downloads (accessed_at, kind, path, status, bytes, package, "
                 "filename, file_id, installer_name, installer_version, python_version) "
                 "VALUES (%s, %s, %s, %s, 1000, %s, %s, %s, %s, '1.0', %s)",
                 (at, kind, path, status, package, path.rsplit("/", 1)[-1], file_id, installer,
                  python))


def seed(pg: Any, tmp: Path) -> Farm:
    def q(query: str, params: Any = ()) -> list[tuple]:
        return pg.query(DATABASE, query, params)
    queues = {}
    for builder, (abi, platform) in TARGETS.items():
        dsn = pg.create_login(DATABASE, builder, BUILDER_GROUP, f"{builder}-pw")
        queues[builder] = BuilderQueue(db.connect(dsn))
        queues[builder].register(abi, platform, "debian bookworm", "3.11.2")
    master_dsn = pg.create_login(DATABASE, "stat_master", MASTER_GROUP, "stat-master-pw")
    conf = tmp / "master.conf"
    conf.write_text(f"[master]\ndsn = {master_dsn}\nwww_root = {tmp / 'www'}\n"
                    "public_index_url = http://farm.example/simple/\n")
    q("INSERT INTO packages (package, display_name) VALUES ('stat-c', 'Stat_C'), "
      "('stat-pure', 'stat-pure')")
    for v in ("0.9", "1.0", "1.1", "1.2", "1.3", "1.4", "1.5", "1.6", "1.7"):
        q("INSERT INTO versions (package, version, has_sdist) VALUES ('stat-c', %s, true)", (v,))
    q("INSERT INTO versions (package, version, has_sdist) VALUES ('stat-pure', '1.0', true)")

    job = iter(range(1000, 2000))
    builds = {
        "x86-1.0": _build(q, X86, "stat-c", "1.0", "success", 0, 120, next(job)),
        "x86-1.1": _build(q, X86, "stat-c", "1.1", "failed", 0, 30, next(job)),
        "arm-1.0": _build(q, ARM, "stat-c", "1.0", "success", 1, 600, next(job)),
        "arm-1.1": _build(q, ARM, "stat-c", "1.1", "timeout", 1, 3600, next(job)),
        "pure": _build(q, X86, "stat-pure", "1.0", "success", 3, 10, next(job)),
        "old": _build(q, OLD, "stat-c", "1.0", "abandoned", 2, 0, next(job)),
        "x86-0.9": _build(q, X86, "stat-c", "0.9", "success", 40, 300, next(job)),
    }
    q("UPDATE builds SET log_path = 'logs/' || build_id || '.log.gz' WHERE build_id = %s",
      (builds["x86-1.1"],))
    files = {
        "x86": _file(q, builds["x86-1.0"], "stat_c-1.0-cp311-cp311-linux_x86_64.whl"),
        "arm": _file(q, builds["arm-1.0"], "stat_c-1.0-cp311-cp311-linux_armv7l.whl"),
        "pure": _file(q, builds["pure"], "stat_pure-1.0-py3-none-any.whl"),
        "old": _file(q, builds["x86-0.9"], "stat_c-0.9-cp311-cp311-linux_x86_64.whl"),
    }
    _file(q, builds["x86-1.1"], "stat_c-1.1-cp311-cp311-linux_x86_64.whl", "quarantined")

    # The queue: x86 has 5 queued and 1 building; arm 2 queued; cp39 1 queued, not draining.
    for v in ("1.2", "1.3", "1.4", "1.5", "1.6"):
        q("INSERT INTO jobs (package, version, abi, platform) VALUES ('stat-c', %s, 'cp311', "
          "'linux_x86_64')", (v,))
    q("INSERT INTO jobs (package, version, abi, platform, priority) VALUES "
      "('stat-c', '1.7', 'cp311', 'linux_x86_64', 10)")
    claimed = queues[X86].claim()
    assert claimed is not None and claimed.version == "1.7"
    for v in ("1.2", "1.3"):
        q("INSERT INTO jobs (package, version, abi, platform) VALUES ('stat-c', %s, 'cp311', "
          "'linux_armv7l')", (v,))
    q("INSERT INTO jobs (package, version, abi, platform) VALUES ('stat-c', '1.2', 'cp39', "
      "'linux_x86_64')")

    # Disk reports; the old builder never reports and was last heard from an hour ago.
    assert queues[X86].ping(20480) is False
    assert queues[ARM].ping(512) is False
    q("UPDATE builders SET last_seen = now() - interval '1 hour' WHERE builder = %s", (OLD,))

    wheel = "/packages/stat-c/"
    _downloads(q, 3, 0, wheel + "stat_c-1.0-cp311-cp311-linux_x86_64.whl", file_id=files["x86"],
               package="stat-c", installer="pip", python="3.11.2")
    _downloads(q, 1, 0, "/packages/stat-pure/stat_pure-1.0-py3-none-any.whl",
               file_id=files["pure"], package="stat-pure", installer="uv", python="3.12.1")
    _downloads(q, 1, 0, "/simple/stat-c/", kind="simple", package="stat-c", installer="pip")
    _downloads(q, 1, 0, wheel + "missing.whl", status=404, package="stat-c", installer="pip")
    _downloads(q, 2, 1, wheel + "stat_c-1.0-cp311-cp311-linux_armv7l.whl", file_id=files["arm"],
               package="stat-c", installer="pip", python="3.11.4")
    _downloads(q, 1, 5, wheel + "gone.whl", package="stat-c")
    _downloads(q, 4, 35, wheel + "stat_c-0.9-cp311-cp311-linux_x86_64.whl",
               file_id=files["old"], package="stat-c", installer="pip", python="3.9.2")
    return Farm(pg, conf, queues, files, builds["x86-1.1"])


@pytest.fixture(scope="module")
def farm(pg, pg_template, tmp_path_factory) -> Iterator[Farm]:
    pg.drop_database(DATABASE)
    pg.create_database(DATABASE, template=pg_template)
    tmp = tmp_path_factory.mktemp("stats")
    f = seed(pg, tmp)
    try:
        yield f
    finally:
        for queue in f.queues.values():
            queue.conn.close()
        pg.drop_database(DATABASE)


def run(farm: Farm, capsys: Any, *args: str) -> tuple[int, str, str]:
    code = cli.main([*args, "--config", str(farm.conf)])
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------- the expected numbers

def hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f}"


def expected_downloads_per_day(farm: Farm) -> dict[str, int]:
    return {d.isoformat(): n for d, n in farm.sql(
        "SELECT (accessed_at AT TIME ZONE 'UTC')::date, count(*) FROM downloads "
        "WHERE kind = 'wheel' AND status >= 200 AND status < 300 GROUP BY 1")}


def saved_seconds(farm: Farm) -> dict[str, float]:
    """Seconds saved per UTC day: each 2xx download of a non-pure wheel times its build's time."""
    rows = farm.sql("""
        SELECT (d.accessed_at AT TIME ZONE 'UTC')::date, sum(extract(epoch FROM b.duration))
          FROM downloads d, files f, builds b
         WHERE f.file_id = d.file_id AND b.build_id = f.build_id AND d.kind = 'wheel'
           AND d.status >= 200 AND d.status < 300 AND f.platform_tag <> 'any'
         GROUP BY 1""")
    return {d.isoformat(): float(s) for d, s in rows}


def expected_builds_per_day(farm: Farm) -> dict[str, tuple[int, int]]:
    return {d.isoformat(): (int(s), int(f)) for d, s, f in farm.sql(
        "SELECT (finished_at AT TIME ZONE 'UTC')::date, sum((status = 'success')::int), "
        "sum((status <> 'success')::int) FROM builds GROUP BY 1")}


def expected_queue(farm: Farm) -> dict[str, tuple[int, int]]:
    rows = farm.sql("SELECT abi || '-' || platform, sum((state = 'queued')::int), "
                    "sum((state = 'leased')::int) FROM jobs GROUP BY 1")
    return {t: (int(a), int(b)) for t, a, b in rows}


def expected_finished_last_hour(farm: Farm) -> dict[str, int]:
    rows = farm.sql("SELECT abi || '-' || platform, count(*) FROM builds "
                    "WHERE finished_at > now() - interval '1 hour' AND status <> 'abandoned' "
                    "GROUP BY 1")
    return dict(rows)


def expected_top(farm: Farm, column: str, days: int = 30) -> dict[str, int]:
    """Wheel downloads by ``column`` over the last ``days`` UTC days, today included."""
    rows = farm.sql(f"SELECT {column}, count(*) FROM downloads WHERE kind = 'wheel' "
                    "AND status >= 200 AND status < 300 AND accessed_at >= "
                    "((now() AT TIME ZONE 'UTC')::date - %s + 1)::timestamp AT TIME ZONE 'UTC' "
                    "GROUP BY 1", (days,))
    return {str(k) if k is not None else "(unknown)": int(n) for k, n in rows}


def expected_builds_today(farm: Farm) -> dict[str, int]:
    rows = farm.sql("SELECT builder, count(*) FROM builds WHERE finished_at >= "
                    "date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' GROUP BY 1")
    return dict(rows)


def test_the_seed_is_what_the_numbers_below_are_about(farm):
    # Hand-checked: the SQL of this test agrees with the story the seed tells.
    assert sum(expected_downloads_per_day(farm).values()) == 3 + 1 + 2 + 1 + 4
    assert sum(saved_seconds(farm).values()) == 3 * 120 + 2 * 600 + 4 * 300
    # The rows went in as the importer writes them: the daily summaries the stats read
    # (migration 0013) hold exactly their aggregate.
    assert assert_summaries_match(farm.pg, DATABASE) == 3 + 1 + 2 + 1 + 4


def test_the_stats_from_the_daily_summary_equal_the_raw_rows(farm):
    from pinwheel import farm_stats, time_saved
    conn = db.connect(farm.pg.tcp_dsn("stat_master", "stat-master-pw", DATABASE))
    try:
        per_day = expected_downloads_per_day(farm)
        assert {d.day.isoformat(): d.value for d in farm_stats.downloads_per_day(conn, 60)
                if d.value} == per_day
        saved = saved_seconds(farm)
        rows = farm_stats.time_saved_per_day(conn, 7)
        assert {d.isoformat(): s for d, s, _ in rows if s} == {
            d: s for d, s in saved.items() if d >= rows[0][0].isoformat()}
        assert rows[-1][2] == pytest.approx(sum(saved.values()))
        today = farm.sql("SELECT (now() AT TIME ZONE 'UTC')::date")[0][0].isoformat()
        assert farm_stats.downloads_today(conn) == per_day[today]
        for fn, column in ((farm_stats.top_projects, "package"),
                           (farm_stats.top_installers, "installer_name"),
                           (farm_stats.top_pythons,
                            "substring(python_version FROM '^[0-9]+[.][0-9]+')")):
            for days in (1, 2, 36, 60):
                assert dict(fn(conn, days)) == expected_top(farm, column, days), (column, days)
        totals = farm_stats.totals(conn)
        assert (totals.downloads, totals.time_saved) == (sum(per_day.values()),
                                                         pytest.approx(sum(saved.values())))
        # pinwheel logs --summary: the same numbers as the raw view download_time_saved.
        total = time_saved.total(conn)
        assert farm.sql("SELECT count(*), sum(saved) FROM download_time_saved") == [
            (total.downloads, total.saved)]
        assert [(m.key, m.downloads, m.saved) for m in time_saved.per_month(conn)] == farm.sql(
            "SELECT date_trunc('month', accessed_at AT TIME ZONE 'UTC')::date, count(*), "
            "sum(saved) FROM download_time_saved GROUP BY 1 ORDER BY 1")
        assert [(p.key, p.downloads, p.saved) for p in time_saved.per_project(conn)] == farm.sql(
            "SELECT package, count(*), sum(saved) FROM download_time_saved GROUP BY 1 "
            "ORDER BY 3 DESC, 1")
        assert time_saved.downloads_per_day(conn, 60) == farm.sql(
            "SELECT (accessed_at AT TIME ZONE 'UTC')::date, count(*) FILTER (WHERE kind = "
            "'wheel' AND status BETWEEN 200 AND 299), count(*) FROM downloads GROUP BY 1 "
            "ORDER BY 1")
    finally:
        conn.close()
    assert expected_queue(farm) == {"cp311-linux_x86_64": (5, 1), "cp311-linux_armv7l": (2, 0),
                                    "cp39-linux_x86_64": (1, 0)}


# ------------------------------------------------------------------ disk reports

def test_a_builder_reports_its_free_disk_and_nonsense_is_refused(farm):
    queue = farm.queues[ARM]
    for bad in (-1, 1 << 41):
        with pytest.raises(db.InvalidReport, match="free disk space"):
            queue.ping(bad)
    assert farm.sql("SELECT disk_free_mb FROM builders WHERE builder = %s", (ARM,)) == [(512,)]
    # Only its own row: the function takes no builder name, the login is the builder.
    assert farm.sql("SELECT builder, disk_free_mb FROM builders ORDER BY 1") == [
        (ARM, 512), (OLD, None), (X86, 20480)]


# ------------------------------------------------------------------- status

def test_status_json_matches_the_database(farm, capsys):
    code, out, err = run(farm, capsys, "status", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["format"] == 1
    assert doc["downloads_today"] == expected_downloads_per_day(farm)[
        farm.sql("SELECT (now() AT TIME ZONE 'UTC')::date")[0][0].isoformat()]
    queue = {q["target"]: q for q in doc["queue"]}
    assert {t: (q["queued"], q["building"]) for t, q in queue.items()} == expected_queue(farm)
    finished = expected_finished_last_hour(farm)
    for target, q in queue.items():
        assert q["finished_last_hour"] == finished.get(target, 0)
        if finished.get(target):
            assert q["draining"] and q["drain_seconds"] == pytest.approx(
                q["queued"] * 3600 / finished[target])
        else:
            assert not q["draining"] and q["drain_seconds"] is None
    assert queue["cp39-linux_x86_64"]["drain_seconds"] is None
    assert queue["cp311-linux_x86_64"]["mean_build_seconds"] == pytest.approx(75.0)

    builders = {b["builder"]: b for b in doc["builders"]}
    assert builders[X86]["current_job"] == "stat-c 1.7"
    assert builders[X86]["state"] == "building"
    assert builders[ARM]["state"] == "idle" and builders[ARM]["current_job"] is None
    assert builders[OLD]["state"] == "silent"
    today = expected_builds_today(farm)
    disk = dict(farm.sql("SELECT builder, disk_free_mb FROM builders"))
    for name, b in builders.items():
        assert b["builds_today"] == today.get(name, 0)
        assert b["disk_free_mb"] == disk[name]
        assert b["target"] == "-".join(TARGETS[name])

    failures = farm.sql("SELECT build_id, status, log_path FROM builds "
                        "WHERE status <> 'success' ORDER BY finished_at DESC, build_id DESC")
    assert [(f["build_id"], f["status"]) for f in doc["recent_failures"]] == [
        (i, s) for i, s, _ in failures]
    logs = {f["build_id"]: f["log_url"] for f in doc["recent_failures"]}
    assert logs[farm.failed_with_log] == f"/logs/{farm.failed_with_log}.log"
    assert len(doc["recent_builds"]) == 7


def test_status_text_is_aligned_tables(farm, capsys):
    code, out, err = run(farm, capsys, "status")
    assert code == 0, err
    for heading in ("Queue", "Builders", "Recent failures", "Recent builds"):
        assert f"\n{heading}\n" in out
    assert "not draining" in out
    assert f"http://farm.example/logs/{farm.failed_with_log}.log" in out
    # Each table's rows are as wide as its rule line, or narrower (right-trimmed).
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("---"):
            header = lines[i - 1]
            assert len(header.rstrip()) <= len(line)


# ------------------------------------------------------------------ metrics

def test_metrics_textfile_parses_and_matches_the_database(farm, capsys, tmp_path):
    from prometheus_client.parser import text_string_to_metric_families
    path = tmp_path / "pinwheel.prom"
    code, _, err = run(farm, capsys, "metrics", "--textfile", str(path))
    assert code == 0, err
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert not [p for p in tmp_path.iterdir() if p.name != "pinwheel.prom"]  # no temp file left
    samples: dict[tuple[str, tuple], float] = {}
    for family in text_string_to_metric_families(path.read_text()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    for target, (queued, building) in expected_queue(farm).items():
        abi, platform = target.split("-", 1)
        assert value("pinwheel_queue_jobs", abi=abi, platform=platform, state="queued") == queued
        assert value("pinwheel_queue_jobs", abi=abi, platform=platform,
                     state="building") == building
    for abi, platform, status, n in farm.sql(
            "SELECT abi, platform, status, count(*) FROM builds GROUP BY 1, 2, 3"):
        assert value("pinwheel_builds_total", abi=abi, platform=platform, status=status) == n
    ok = farm.sql("SELECT count(*), sum(extract(epoch FROM duration)) FROM builds "
                  "WHERE status = 'success' AND abi = 'cp311' AND platform = 'linux_x86_64'")[0]
    x86 = {"abi": "cp311", "platform": "linux_x86_64"}
    assert value("pinwheel_build_duration_seconds_count", **x86) == ok[0]
    assert value("pinwheel_build_duration_seconds_sum", **x86) == pytest.approx(float(ok[1]))
    # The last 24 hours hold one successful x86 build, of 120 s.
    assert value("pinwheel_build_duration_seconds", quantile="0.5", **x86) == pytest.approx(120)
    assert value("pinwheel_downloads_total") == sum(expected_downloads_per_day(farm).values())
    assert value("pinwheel_time_saved_seconds_total") == pytest.approx(
        sum(saved_seconds(farm).values()))
    assert value("pinwheel_ingest_rejected_files_total") == farm.sql(
        "SELECT count(*) FROM files WHERE state = 'quarantined'")[0][0] == 1
    for builder, seen, disk in farm.sql("SELECT builder, extract(epoch FROM last_seen), "
                                        "disk_free_mb FROM builders"):
        abi, platform = TARGETS[builder]
        assert value("pinwheel_builder_last_seen_timestamp_seconds", builder=builder, abi=abi,
                     platform=platform) == pytest.approx(float(seen))
        if disk is not None:
            assert value("pinwheel_builder_disk_free_bytes", builder=builder) == disk * 1048576
    finished = expected_finished_last_hour(farm)
    assert value("pinwheel_queue_finished_last_hour", abi="cp39", platform="linux_x86_64") == 0
    assert value("pinwheel_queue_finished_last_hour", abi="cp311",
                 platform="linux_x86_64") == finished["cp311-linux_x86_64"]


def test_metrics_to_a_missing_directory_says_what_to_do(farm, capsys, tmp_path):
    code, _, err = run(farm, capsys, "metrics", "--textfile", str(tmp_path / "no" / "x.prom"))
    assert code == 1
    assert "is not a directory" in err and "textfile" in err


# -------------------------------------------------------------- alert rules

def metric_names(farm: Farm, capsys: Any) -> set[str]:
    code, out, err = run(farm, capsys, "metrics")
    assert code == 0, err
    names = set()
    for line in out.splitlines():
        if line and not line.startswith("#"):
            names.add(line.split("{")[0].split(" ")[0])
    return names


def test_alert_rules_are_well_formed_and_use_real_metrics(farm, capsys):
    doc = yaml.safe_load(ALERTS.read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]
    assert {g["name"] for g in doc["groups"]} and all(g["rules"] for g in doc["groups"])
    alerts = {r["alert"]: r for r in rules}
    assert {"PinwheelBuilderSilent", "PinwheelQueueNotDraining",
            "PinwheelIngestRejectingFiles"} <= set(alerts)
    known = metric_names(farm, capsys)
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
        assert isinstance(rule["expr"], str) and rule["expr"].strip()
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        used = {w for w in _words(rule["expr"]) if w.startswith("pinwheel_")}
        assert used and used <= known, used - known
    assert "600" in alerts["PinwheelBuilderSilent"]["expr"]
    promtool = shutil.which("promtool")
    if promtool:
        done = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True,
                              text=True, check=False)
        assert done.returncode == 0, done.stdout + done.stderr


def _words(expr: str) -> set[str]:
    word, out = "", set()
    for ch in expr + " ":
        if ch.isalnum() or ch == "_":
            word += ch
        else:
            if word:
                out.add(word)
            word = ""
    return out


# ------------------------------------------------------------- the pages

@pytest.fixture(scope="module")
def served(farm) -> Iterator[NginxServer]:
    server = NginxServer()
    server.start()
    try:
        conf = farm.conf.read_text().replace(
            f"www_root = {farm.conf.parent / 'www'}", f"www_root = {server.www_root}")
        farm.conf.write_text(conf)
        code = cli.main(["stats", "render", "--config", str(farm.conf)])
        assert code == 0
        yield server
    finally:
        server.destroy()


def table_rows(page: Any, table_id: str) -> list[list[str]]:
    table = page.locator(f"table#{table_id}")
    assert table.count() == 1, table_id
    return [[c.strip() for c in row.locator("td").all_inner_texts()]
            for row in table.locator("tbody tr").all()]


def open_page(context: Any, server: NginxServer, path: str) -> Any:
    page = context.pages[0] if context.pages else context.new_page()
    response = page.goto(f"{server.url}{path}")
    assert response is not None and response.status == 200, path
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    return page


needs_chromium = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason=f"{CHROMIUM} is missing: install Debian's chromium package (make test-deps does)")


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        yield pw


@needs_chromium
def test_stats_page_draws_its_charts_and_its_numbers_match_the_database(farm, served,
                                                                        playwright):
    from test_index_browser import PHONE, browser, screenshot
    with browser(playwright, java_script_enabled=False) as context:
        page = open_page(context, served, "/stats/")
        assert page.title() == "Pinwheel statistics · Pinwheel"
        charts = page.locator("svg.chart[role=img]")
        assert charts.count() == 7
        for i in range(charts.count()):
            chart = charts.nth(i)
            assert chart.locator("title").first.text_content()
            box = chart.bounding_box()
            assert box is not None and box["width"] > 200 and box["height"] > 60
        assert page.locator("svg.chart rect.bar").count() > 10
        assert page.locator("svg.chart polyline").count() == 1
        assert page.locator("script").count() == 0
        assert not [s for s in page.locator("[src]").all()]

        rows = table_rows(page, "downloads-per-day")
        assert len(rows) == 30
        per_day = expected_downloads_per_day(farm)
        assert {d: int(n) for d, n in rows} == {d: per_day.get(d, 0) for d, _ in rows}

        saved = saved_seconds(farm)
        rows = sorted(table_rows(page, "time-saved"))  # the page lists the newest day first
        total = sum(saved.values())
        assert rows[-1][2] == hours(total)
        before = sum(s for d, s in saved.items() if d < rows[0][0])
        running = before
        for day, that_day, in_total in rows:
            running += saved.get(day, 0.0)
            assert (that_day, in_total) == (hours(saved.get(day, 0.0)), hours(running)), day

        builds = expected_builds_per_day(farm)
        for day, ok, failed in table_rows(page, "builds-per-day"):
            assert (int(ok), int(failed)) == builds.get(day, (0, 0)), day

        queue = expected_queue(farm)
        rows = table_rows(page, "queue")
        assert {t: (int(q), int(b)) for t, q, b, _ in rows} == queue
        drains = {t: d for t, _, _, d in rows}
        assert drains["cp39-linux_x86_64"] == "not draining"
        assert drains["cp311-linux_x86_64"] == "2.5 h"   # 5 queued, 2 done in the last hour

        for table_id, column in (("top-projects", "package"), ("installers", "installer_name"),
                                 ("pythons", "substring(python_version FROM '^[0-9]+[.][0-9]+')")):
            assert {k: int(n) for k, n in table_rows(page, table_id)} == expected_top(
                farm, column), table_id

        totals = dict(table_rows(page, "totals"))
        assert int(totals["wheel downloads"]) == sum(per_day.values())
        assert totals["build time saved (hours)"] == hours(total)
        assert int(totals["files refused by ingest"]) == 1
        assert int(totals["jobs queued"]) == sum(q for q, _ in queue.values())
        screenshot(page, "stats-page-desktop.png")

    with browser(playwright, **PHONE) as context:
        page = open_page(context, served, "/stats/")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 360 + 1, "the page scrolls sideways on a phone"
        screenshot(page, "stats-page-phone.png")


@needs_chromium
def test_builders_page_lists_every_builder_as_the_database_has_it(farm, served, playwright):
    from test_index_browser import browser, screenshot
    with browser(playwright) as context:
        page = open_page(context, served, "/builders/")
        rows = {r[0]: r for r in table_rows(page, "builders")}
        assert set(rows) == set(TARGETS)
        today = expected_builds_today(farm)
        for name, disk in farm.sql("SELECT builder, disk_free_mb FROM builders"):
            _, target, os_release, _, _, last, builds_today, free = rows[name]
            assert target == "-".join(TARGETS[name])
            assert os_release == "debian bookworm"
            assert int(builds_today) == today.get(name, 0)
            assert free == ("" if disk is None else f"{disk / 1024:.1f}")
            assert last.endswith(" ago")
        assert rows[X86][3] == "building" and rows[X86][4].startswith("stat-c 1.7 for ")
        assert rows[ARM][3] == "idle" and rows[ARM][4] == ""
        assert rows[OLD][3] == "silent" and rows[OLD][5] == "1.0 h ago"
        screenshot(page, "builders-page-desktop.png")
        page.locator("nav a", has_text="Statistics").click()
        assert page.url == f"{served.url}/stats/"


def test_pages_are_rewritten_in_place_and_other_paths_stay_404(farm, served):
    import urllib.error
    import urllib.request
    before = (served.www_root / "stats" / "index.html").stat().st_ino
    assert cli.main(["stats", "render", "--config", str(farm.conf)]) == 0
    assert (served.www_root / "stats" / "index.html").stat().st_ino != before  # renamed in
    assert not [p for p in (served.www_root / "stats").iterdir() if p.name != "index.html"]
    for path, status in (("/stats", 301), ("/stats/index.html", 404), ("/builders/x", 404)):
        try:
            with urllib.request.urlopen(f"{served.url}{path}") as r:
                got = r.status
        except urllib.error.HTTPError as exc:
            got = exc.code
        if status == 301:
            assert got == 200  # followed to /stats/
        else:
            assert got == status, path


def test_stats_window_covers_every_day_even_without_data(farm):
    conn = db.connect(farm.pg.tcp_dsn("stat_master", "stat-master-pw", DATABASE))
    try:
        from pinwheel import farm_stats
        days = farm_stats.downloads_per_day(conn, 7)
        assert len(days) == 7
        assert days[-1].day - days[0].day == timedelta(days=6)
    finally:
        conn.close()


# ------------------------------------------------------------- the timer's units

def test_the_stats_units_render_with_and_without_metrics():
    from harness.templates import render_role_template
    common = {"master_user": "pinwheel", "pinwheel_group": "pinwheel",
              "master_pinwheel_command": "/opt/pinwheel/bin/pinwheel",
              "__master_conf_file": "/etc/pinwheel/master.conf",
              "master_www_root": "/var/www/pinwheel", "master_stats_interval": "5min",
              "master_stats_days": 30}
    textfile = "/var/lib/prometheus/node-exporter/pinwheel.prom"
    with_metrics = render_role_template(
        "master", "pinwheel-stats.service.j2", master_stats_metrics_textfile=textfile,
        __master_stats_metrics_dir="/var/lib/prometheus/node-exporter", **common)
    execs = [line for line in with_metrics.splitlines() if line.startswith("ExecStart=")]
    assert execs == [
        "ExecStart=/opt/pinwheel/bin/pinwheel stats render --config /etc/pinwheel/master.conf "
        "--days 30",
        f"ExecStart=/opt/pinwheel/bin/pinwheel metrics --config /etc/pinwheel/master.conf "
        f"--textfile {textfile}"]
    assert ("ReadWritePaths=/var/www/pinwheel/stats /var/www/pinwheel/builders "
            "/var/lib/prometheus/node-exporter\n") in with_metrics
    assert "Type=oneshot" in with_metrics and "UMask=0022" in with_metrics
    without = render_role_template("master", "pinwheel-stats.service.j2",
                                   master_stats_metrics_textfile="",
                                   __master_stats_metrics_dir=".", **common)
    assert "metrics" not in "".join(line for line in without.splitlines()
                                    if line.startswith("ExecStart="))
    assert "ReadWritePaths=/var/www/pinwheel/stats /var/www/pinwheel/builders\n" in without
    # The same sandbox as the master's long-running services.
    watch = render_role_template(
        "master", "pinwheel-watch.service.j2", master_upstream_url="https://pypi.org/simple/",
        master_watch_mode="allowlist", **common)

    def sandbox(text: str) -> set[str]:
        return {line for line in text.splitlines() if line.startswith((
            "Protect", "Private", "NoNew", "Capab", "Restrict", "Lock", "SystemCall"))}
    assert sandbox(with_metrics) == sandbox(watch)
    timer = render_role_template("master", "pinwheel-stats.timer.j2", **common)
    assert "OnUnitActiveSec=5min\n" in timer and "Unit=pinwheel-stats.service\n" in timer
    assert "WantedBy=timers.target" in timer
