"""The farm in numbers: the queries behind /stats/, /builders/, `pinwheel status` and the metrics.

Every function takes an autocommit connection of the master (``pinwheel_master``)
and returns plain dataclasses. Days are UTC days; "recent" windows are given in
seconds. Downloads count only successful wheel downloads (``kind = 'wheel'``,
status 2xx); they are read from the daily summary ``download_days`` (kept with the
imported rows, migration 0013), never from the raw ``downloads``, and time saved from
``download_days_saved`` (``download_time_saved`` summed per day).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from . import db

FAILED = ("failed", "timeout", "abandoned")
# A target drains when builds of it finished within this window (seconds).
DRAIN_WINDOW = 3600


@dataclass(frozen=True)
class DayCount:
    day: date
    value: float


@dataclass(frozen=True)
class BuildDay:
    day: date
    succeeded: int
    failed: int


@dataclass(frozen=True)
class TargetQueue:
    abi: str
    platform: str
    queued: int
    building: int
    skip_reason: str | None
    finished_recently: int            # builds of the target finished within DRAIN_WINDOW
    mean_duration: float | None       # seconds, of the builds finished within DRAIN_WINDOW

    @property
    def target(self) -> str:
        return f"{self.abi}-{self.platform}"

    @property
    def draining(self) -> bool:
        return self.finished_recently > 0

    @property
    def drain_seconds(self) -> float | None:
        """Estimated seconds until the queue is empty at the recent rate; None if not draining.

        The rate is the builds finished within the last DRAIN_WINDOW seconds; the
        queue drains in queued / rate. 0 when nothing is queued.
        """
        if self.queued == 0:
            return 0.0
        if not self.finished_recently:
            return None
        return self.queued * DRAIN_WINDOW / self.finished_recently


@dataclass(frozen=True)
class BuilderRow:
    builder: str
    abi: str | None
    platform: str | None
    os_release: str | None
    python_version: str | None
    paused: bool
    last_seen: datetime | None
    job: str | None                  # "package version" being built
    job_seconds: float | None        # for how long
    builds_today: int
    disk_free_mb: int | None
    disk_reported_at: datetime | None


@dataclass(frozen=True)
class Failure:
    build_id: int
    package: str
    version: str
    target: str
    builder: str | None
    status: str
    finished_at: datetime
    log_path: str | None             # the log as text, relative to the www root


def duration(seconds: float | None) -> str:
    """A short human duration: 45 s, 12 min, 3.5 h, 4.2 d, 2.3 y."""
    if seconds is None:
        return ""
    s = float(seconds)
    for unit, size in (("y", 365.25 * 86400), ("d", 86400), ("h", 3600)):
        if s >= size:
            return f"{s / size:.1f} {unit}"
    if s >= 60:
        return f"{s / 60:.0f} min"
    return f"{s:.0f} s"


def builder_state(b: BuilderRow, now: datetime, silent_after: float = 600) -> str:
    """paused, silent (not heard from for ``silent_after`` s), building or idle."""
    if b.paused:
        return "paused"
    if b.last_seen is None or (now - b.last_seen).total_seconds() > silent_after:
        return "silent"
    return "building" if b.job else "idle"


def _days(conn: Any, sql: str, days: int) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` (which selects over ``d``, each UTC day of the last ``days``)."""
    return db.call(conn, f"""
        WITH span AS (
            SELECT d::date AS d
              FROM generate_series(((now() AT TIME ZONE 'UTC')::date - (%s - 1))::timestamp,
                                   (now() AT TIME ZONE 'UTC')::date::timestamp,
                                   interval '1 day') AS d)
        {sql}""", (days,))


def downloads_per_day(conn: Any, days: int = 30) -> list[DayCount]:
    rows = _days(conn, """
        SELECT span.d, coalesce(sum(s.downloads), 0)
          FROM span LEFT JOIN download_days s ON s.day = span.d
         GROUP BY span.d ORDER BY span.d""", days)
    return [DayCount(d, int(n)) for d, n in rows]


def time_saved_per_day(conn: Any, days: int = 30) -> list[tuple[date, float, float]]:
    """(day, seconds saved that day, seconds saved in total up to the end of that day)."""
    rows = _days(conn, """
        , per_day AS (
            SELECT span.d, coalesce(extract(epoch FROM sum(t.saved)), 0)::float8 AS saved
              FROM span LEFT JOIN download_days_saved t ON t.day = span.d
             GROUP BY span.d)
        SELECT d, saved,
               (SELECT coalesce(extract(epoch FROM sum(saved)), 0)::float8
                  FROM download_days_saved
                 WHERE day < (SELECT min(d) FROM span))
               + sum(saved) OVER (ORDER BY d)
          FROM per_day ORDER BY d""", days)
    return [(d, float(s), float(c)) for d, s, c in rows]


def builds_per_day(conn: Any, days: int = 30) -> list[BuildDay]:
    rows = _days(conn, """
        SELECT span.d, count(b.*) FILTER (WHERE b.status = 'success'),
               count(b.*) FILTER (WHERE b.status <> 'success')
          FROM span LEFT JOIN builds b
            ON b.finished_at >= span.d::timestamp AT TIME ZONE 'UTC'
           AND b.finished_at < (span.d + 1)::timestamp AT TIME ZONE 'UTC'
         GROUP BY span.d ORDER BY span.d""", days)
    return [BuildDay(d, int(s), int(f)) for d, s, f in rows]


def queue(conn: Any) -> list[TargetQueue]:
    rows = db.call(conn, """
        SELECT t.abi, t.platform,
               (SELECT count(*) FROM jobs j WHERE (j.abi, j.platform) = (t.abi, t.platform)
                   AND j.state = 'queued'),
               (SELECT count(*) FROM jobs j WHERE (j.abi, j.platform) = (t.abi, t.platform)
                   AND j.state = 'leased'),
               t.skip_reason, r.n, r.mean
          FROM targets t
          LEFT JOIN LATERAL (
              SELECT count(*) AS n, extract(epoch FROM avg(b.duration))::float8 AS mean
                FROM builds b
               WHERE (b.abi, b.platform) = (t.abi, t.platform) AND b.status <> 'abandoned'
                 AND b.finished_at > now() - make_interval(secs => %s)) r ON true
         ORDER BY t.abi, t.platform""", (DRAIN_WINDOW,))
    return [TargetQueue(a, p, int(q), int(b), s, int(n or 0), m) for a, p, q, b, s, n, m in rows]


def builders(conn: Any) -> list[BuilderRow]:
    rows = db.call(conn, """
        SELECT b.builder, b.abi, b.platform, b.os_release, b.python_version, b.paused,
               b.last_seen, j.package || ' ' || j.version,
               extract(epoch FROM now() - j.claimed_at)::float8,
               coalesce(today.n, 0), b.disk_free_mb, b.disk_reported_at
          FROM builders b
          LEFT JOIN (SELECT x.builder, count(*) AS n FROM builds x
                      WHERE x.finished_at >= (now() AT TIME ZONE 'UTC')::date::timestamp
                                             AT TIME ZONE 'UTC'
                      GROUP BY x.builder) today ON today.builder = b.builder
          LEFT JOIN LATERAL (SELECT * FROM jobs j WHERE j.builder = b.builder
                                AND j.state = 'leased' ORDER BY j.claimed_at LIMIT 1) j ON true
         ORDER BY b.builder""")
    return [BuilderRow(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6], r[7], r[8], int(r[9]),
                       None if r[10] is None else int(r[10]), r[11]) for r in rows]


def recent_failures(conn: Any, limit: int = 10) -> list[Failure]:
    rows = db.call(conn, """
        SELECT build_id, package, version, abi || '-' || platform, builder, status,
               finished_at, log_path
          FROM builds WHERE status <> 'success'
         ORDER BY finished_at DESC, build_id DESC LIMIT %s""", (limit,))
    return [Failure(i, p, v, t, b, s, f,
                    lp[:-len(".gz")] if lp and lp.endswith(".log.gz") else None)
            for i, p, v, t, b, s, f, lp in rows]


def downloads_today(conn: Any) -> int:
    rows = db.call(conn, """
        SELECT coalesce(sum(downloads), 0) FROM download_days
         WHERE day = (now() AT TIME ZONE 'UTC')::date""")
    return int(rows[0][0])


def _top(conn: Any, column: str, days: int, limit: int) -> list[tuple[str, int]]:
    """The most downloaded values of a column of download_days ('' is unknown) over the last
    ``days`` UTC days, today included."""
    rows = db.call(conn, f"""
        SELECT CASE WHEN {column} = '' THEN '(unknown)' ELSE {column} END AS k,
               sum(downloads) AS n
          FROM download_days
         WHERE day > (now() AT TIME ZONE 'UTC')::date - %s
         GROUP BY k ORDER BY n DESC, k LIMIT %s""", (days, limit))
    return [(str(k), int(n)) for k, n in rows]


def top_projects(conn: Any, days: int = 30, limit: int = 10) -> list[tuple[str, int]]:
    """The most downloaded projects over the last ``days`` days."""
    return _top(conn, "package", days, limit)


def top_installers(conn: Any, days: int = 30, limit: int = 10) -> list[tuple[str, int]]:
    return _top(conn, "installer_name", days, limit)


def top_pythons(conn: Any, days: int = 30, limit: int = 10) -> list[tuple[str, int]]:
    """Downloads by Python version (major.minor) over the last ``days`` days."""
    return _top(conn, "python_minor", days, limit)


@dataclass(frozen=True)
class Totals:
    downloads: int                 # successful wheel downloads, ever
    time_saved: float              # seconds, ever
    builds_succeeded: int
    builds_failed: int
    quarantined: int               # files ingest refused
    pending_ingest: int            # builds waiting for ingest


def totals(conn: Any) -> Totals:
    row = db.call(conn, """
        SELECT (SELECT coalesce(sum(downloads), 0) FROM download_days),
               (SELECT coalesce(extract(epoch FROM sum(saved)), 0)::float8
                  FROM download_days_saved),
               (SELECT count(*) FROM builds WHERE status = 'success'),
               (SELECT count(*) FROM builds WHERE status <> 'success'),
               (SELECT count(*) FROM files WHERE state = 'quarantined'),
               (SELECT count(*) FROM builds WHERE ingest_state = 'pending')""")[0]
    return Totals(int(row[0]), float(row[1]), int(row[2]), int(row[3]), int(row[4]), int(row[5]))
