"""Build time saved by downloads, from the daily summary (docs/downloads.md).

Each download (2xx) of a wheel that is not pure Python saved its user the duration of the
build that made that file (the ``download_time_saved`` view over the raw rows). These queries
add it up in total, per month (UTC) and per project from ``download_days_saved``, the same
over the per-day summary ``download_days`` (migration 0013), so they do not scan the raw
``downloads``; ``pinwheel logs --summary`` prints them, with downloads per day and the
importer's counters, so the numbers are at hand before the stats pages exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any


@dataclass
class Saved:
    key: Any            # None (total), a month's first day, or a project name
    downloads: int
    saved: timedelta


def _rows(conn: Any, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        rows = cur.fetchall()
    if not conn.autocommit:
        conn.rollback()
    return rows


def total(conn: Any) -> Saved:
    (downloads, saved), = _rows(conn, "SELECT coalesce(sum(downloads), 0), "
                                      "coalesce(sum(saved), interval '0') "
                                      "FROM download_days_saved")
    return Saved(None, int(downloads), saved)


def per_month(conn: Any, months: int = 12) -> list[Saved]:
    """The last ``months`` months that had downloads, oldest first."""
    rows = _rows(conn, """
        SELECT * FROM (
            SELECT date_trunc('month', day::timestamp)::date AS month, sum(downloads), sum(saved)
              FROM download_days_saved GROUP BY 1 ORDER BY 1 DESC LIMIT %s) m
         ORDER BY month""", (months,))
    return [Saved(m, int(n), s) for m, n, s in rows]


def per_project(conn: Any, limit: int = 20) -> list[Saved]:
    """The projects that saved the most time, most first."""
    rows = _rows(conn, """
        SELECT package, sum(downloads), sum(saved) FROM download_days_saved
         GROUP BY package ORDER BY sum(saved) DESC, package LIMIT %s""", (limit,))
    return [Saved(p, int(n), s) for p, n, s in rows]


def downloads_per_day(conn: Any, days: int = 30) -> list[tuple[date, int, int]]:
    """(day, wheel downloads, all requests) for the last ``days`` days (UTC), oldest first."""
    return [(d, int(w), int(r)) for d, w, r in _rows(conn, """
        SELECT r.day, coalesce((SELECT sum(s.downloads) FROM download_days s
                                 WHERE s.day = r.day), 0), r.requests
          FROM download_request_days r
         WHERE r.day > (now() AT TIME ZONE 'UTC')::date - %s
         ORDER BY r.day""", (days,))]


def importer_state(conn: Any) -> list[tuple[Any, ...]]:
    """(log, lines imported, malformed, files finished, truncations, last commit) per log."""
    return [tuple(r) for r in _rows(conn, """
        SELECT log_path, lines_imported, lines_malformed, files_done, truncations,
               to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')
          FROM download_log_position ORDER BY log_path""")]


def human(saved: timedelta) -> str:
    """A duration as years, days, hours and minutes (``3d 4h 05m``)."""
    minutes = int(saved.total_seconds() // 60)
    days, minutes = divmod(minutes, 1440)
    hours, minutes = divmod(minutes, 60)
    years, days = divmod(days, 365)
    parts = ([f"{years}y"] if years else []) + ([f"{days}d"] if days or years else [])
    return " ".join([*parts, f"{hours}h {minutes:02d}m"])
