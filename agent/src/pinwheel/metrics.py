"""``pinwheel metrics``: the farm's numbers in Prometheus' text format.

Written for node_exporter's textfile collector (``--textfile PATH``, atomically:
a temporary file in the same directory, renamed over PATH) or printed. The
metrics (docs/monitoring.md has the alert rules that use them):

    pinwheel_queue_jobs{abi,platform,state="queued"|"building"}     gauge
    pinwheel_queue_finished_last_hour{abi,platform}                 gauge
    pinwheel_builds_total{abi,platform,status}                      counter
    pinwheel_build_duration_seconds{abi,platform[,quantile]}        summary: quantiles of
        the successful builds of the last 24 hours; _sum and _count of every successful build
    pinwheel_builds_pending_ingest                                  gauge
    pinwheel_downloads_total                                        counter (wheel downloads)
    pinwheel_time_saved_seconds_total                               counter
    pinwheel_ingest_rejected_files_total                            counter (quarantined files)
    pinwheel_builder_last_seen_timestamp_seconds{builder,abi,platform}  gauge
    pinwheel_builder_paused{builder}                                gauge (0/1)
    pinwheel_builder_disk_free_bytes{builder}                       gauge
    pinwheel_metrics_generated_timestamp_seconds                    gauge
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from . import db, farm_stats, fsutil

QUANTILES = (0.5, 0.9, 0.99)


def _escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: object) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, **labels: object) -> None:
        self.lines.append(f"{name}{_labels(**labels)} {_number(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _durations(conn: Any) -> Iterable[tuple[Any, ...]]:
    return db.call(conn, """
        SELECT t.abi, t.platform, d.q,
               (SELECT count(*) FROM builds b WHERE (b.abi, b.platform) = (t.abi, t.platform)
                   AND b.status = 'success' AND b.duration IS NOT NULL),
               (SELECT coalesce(extract(epoch FROM sum(b.duration)), 0)::float8 FROM builds b
                 WHERE (b.abi, b.platform) = (t.abi, t.platform)
                   AND b.status = 'success' AND b.duration IS NOT NULL)
          FROM targets t
          LEFT JOIN LATERAL (
              SELECT percentile_cont(%s::float8[]) WITHIN GROUP
                         (ORDER BY extract(epoch FROM b.duration)) AS q
                FROM builds b
               WHERE (b.abi, b.platform) = (t.abi, t.platform) AND b.status = 'success'
                 AND b.duration IS NOT NULL AND b.finished_at > now() - interval '24 hours'
          ) d ON true
         ORDER BY t.abi, t.platform""", (list(QUANTILES),))


def collect(conn: Any) -> str:
    """The metrics, as the text exposition format."""
    w = _Writer()
    now = db.call(conn, "SELECT extract(epoch FROM now())::float8")[0][0]
    queue = farm_stats.queue(conn)
    w.family("pinwheel_queue_jobs", "gauge", "Jobs in the queue per build target, by state")
    for q in queue:
        w.sample("pinwheel_queue_jobs", q.queued, abi=q.abi, platform=q.platform, state="queued")
        w.sample("pinwheel_queue_jobs", q.building, abi=q.abi, platform=q.platform,
                 state="building")
    w.family("pinwheel_queue_finished_last_hour", "gauge",
             "Builds of the target finished in the last hour (0 with jobs queued: not draining)")
    for q in queue:
        w.sample("pinwheel_queue_finished_last_hour", q.finished_recently, abi=q.abi,
                 platform=q.platform)

    w.family("pinwheel_builds_total", "counter", "Builds finished, by target and result")
    for abi, platform, status, n in db.call(conn, """
            SELECT abi, platform, status, count(*) FROM builds
             GROUP BY abi, platform, status ORDER BY abi, platform, status"""):
        w.sample("pinwheel_builds_total", n, abi=abi, platform=platform, status=status)

    w.family("pinwheel_build_duration_seconds", "summary",
             "Duration of successful builds (quantiles over the last 24 hours)")
    for abi, platform, quantiles, count, total in _durations(conn):
        for q, value in zip(QUANTILES, quantiles or ()):
            w.sample("pinwheel_build_duration_seconds", value, abi=abi, platform=platform,
                     quantile=q)
        w.sample("pinwheel_build_duration_seconds_sum", total, abi=abi, platform=platform)
        w.sample("pinwheel_build_duration_seconds_count", count, abi=abi, platform=platform)

    totals = farm_stats.totals(conn)
    for name, kind, help_text, value in (
            ("pinwheel_builds_pending_ingest", "gauge",
             "Builds waiting for the master's ingest", totals.pending_ingest),
            ("pinwheel_downloads_total", "counter",
             "Successful wheel downloads from the index", totals.downloads),
            ("pinwheel_time_saved_seconds_total", "counter",
             "Build time saved by downloads of non-pure wheels", totals.time_saved),
            ("pinwheel_ingest_rejected_files_total", "counter",
             "Files the master's ingest refused (quarantined)", totals.quarantined)):
        w.family(name, kind, help_text)
        w.sample(name, value)

    builders = farm_stats.builders(conn)
    w.family("pinwheel_builder_last_seen_timestamp_seconds", "gauge",
             "When the builder was last heard from (Unix time)")
    for b in builders:
        if b.last_seen is not None:
            w.sample("pinwheel_builder_last_seen_timestamp_seconds", b.last_seen.timestamp(),
                     builder=b.builder, abi=b.abi or "", platform=b.platform or "")
    w.family("pinwheel_builder_paused", "gauge", "1 when an operator paused the builder")
    for b in builders:
        w.sample("pinwheel_builder_paused", int(b.paused), builder=b.builder)
    w.family("pinwheel_builder_disk_free_bytes", "gauge",
             "Free space on the builder's work directory's file system, as it last reported")
    for b in builders:
        if b.disk_free_mb is not None:
            w.sample("pinwheel_builder_disk_free_bytes", b.disk_free_mb * 1048576,
                     builder=b.builder)
    w.family("pinwheel_metrics_generated_timestamp_seconds", "gauge",
             "When this file was written (Unix time)")
    w.sample("pinwheel_metrics_generated_timestamp_seconds", now)
    return w.text()


def write_textfile(conn: Any, path: Path) -> None:
    """Write the metrics to ``path`` atomically (node_exporter reads old or new, never half)."""
    fsutil.atomic_write_text(path, collect(conn))
