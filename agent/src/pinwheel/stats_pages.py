"""The /stats/ and /builders/ pages: static HTML with inline SVG charts, written atomically.

``render`` reads the numbers (``farm_stats``) and writes
``<www_root>/stats/index.html`` and ``<www_root>/builders/index.html``; it is
run by ``pinwheel stats render`` on a timer (pinwheel-stats.timer). Every chart
has its numbers in a table beside it (ids below, stable for scripts and tests):

/stats/    #totals, #downloads-per-day, #time-saved, #builds-per-day, #queue,
           #top-projects, #installers, #pythons
/builders/ #builders
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import farm_stats, fsutil, svgchart
from .farm_stats import builder_state, duration

STATS_DIR, BUILDERS_DIR = "stats", "builders"
PAGE_FILE = "index.html"

_CSS = """
body{font:16px/1.5 system-ui,sans-serif;margin:0 auto;max-width:60rem;padding:0 1rem;
color:#1b1b1b;background:#fff}
h1{font-size:1.6rem;margin:1rem 0 .25rem}h2{font-size:1.2rem;margin-top:2rem}
.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:.9rem;margin:.5rem 0}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums}
details{margin:.25rem 0}.note{color:#555}.stale{background:#f8d7d7}.paused{background:#eee}
nav a{margin-right:1rem}
.pair{display:flex;flex-wrap:wrap;gap:0 1.5rem;align-items:flex-start}
.pair>*{min-width:0;max-width:100%}.pair>svg{flex:1 1 20rem}.pair>details{flex:0 1 auto}
.pair .scroll{max-height:20rem;overflow:auto}
""" + svgchart.CSS


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def hours(seconds: float) -> str:
    """Seconds as hours with two decimals (the unit of the time-saved table)."""
    return f"{seconds / 3600:.2f}"


def _table(table_id: str, headers: Sequence[str], rows: Sequence[Sequence[Any]],
           numeric: Sequence[int] = ()) -> str:
    head = "".join(f"<th scope=\"col\">{_e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(f'<td class="n">{_e(c)}</td>' if i in numeric else f"<td>{_e(c)}</td>"
                        for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    if not rows:
        body.append(f'<tr><td colspan="{len(headers)}" class="note">none</td></tr>')
    return (f'<div class="scroll"><table id="{_e(table_id)}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _pair(chart: str, table: str) -> str:
    """A chart with the table of its numbers beside it (below it on a narrow screen)."""
    return (f'<div class="pair">{chart}<details open><summary>The numbers</summary>{table}'
            "</details></div>\n")


def _page(title: str, generated: datetime, body: str) -> str:
    stamp = generated.strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)} · Pinwheel</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        '<nav><a href="/stats/">Statistics</a><a href="/builders/">Builders</a>'
        '<a href="/simple/">Index</a></nav>\n'
        f"<h1>{_e(title)}</h1>\n"
        f'<p class="note">Generated <time datetime="{generated.isoformat()}">{stamp}</time>; '
        "days are UTC days, the newest first in the tables.</p>\n"
        f"{body}</body>\n</html>\n"
    )


@dataclass(frozen=True)
class StatsData:
    generated: datetime
    days: int
    totals: farm_stats.Totals
    downloads: list[farm_stats.DayCount]
    time_saved: list[tuple[Any, float, float]]
    builds: list[farm_stats.BuildDay]
    queue: list[farm_stats.TargetQueue]
    top_projects: list[tuple[str, int]]
    installers: list[tuple[str, int]]
    pythons: list[tuple[str, int]]


def stats_data(conn: Any, days: int = 30, now: datetime | None = None) -> StatsData:
    return StatsData(
        generated=now or datetime.now(timezone.utc), days=days,
        totals=farm_stats.totals(conn),
        downloads=farm_stats.downloads_per_day(conn, days),
        time_saved=farm_stats.time_saved_per_day(conn, days),
        builds=farm_stats.builds_per_day(conn, days),
        queue=farm_stats.queue(conn),
        top_projects=farm_stats.top_projects(conn, days),
        installers=farm_stats.top_installers(conn, days),
        pythons=farm_stats.top_pythons(conn, days),
    )


def _day(d: Any) -> str:
    return d.isoformat()


def _short(d: Any) -> str:
    return d.strftime("%m-%d")


def render_stats(data: StatsData) -> str:
    t = data.totals
    parts = [
        "<h2>Totals</h2>\n",
        _table("totals", ("what", "count"), [
            ("wheel downloads", t.downloads),
            ("build time saved (hours)", hours(t.time_saved)),
            ("builds succeeded", t.builds_succeeded),
            ("builds failed", t.builds_failed),
            ("jobs queued", sum(q.queued for q in data.queue)),
            ("files refused by ingest", t.quarantined),
        ], numeric=(1,)),
        f'<p>Pinwheel has saved its users <strong>{_e(duration(t.time_saved) or "0 s")}</strong> '
        "of build time: for each download of a wheel that is not pure Python, the time its "
        "build took.</p>\n",
    ]
    parts.append("<h2>Downloads per day</h2>\n")
    parts.append(_pair(
        svgchart.bar_chart(f"Wheel downloads per day, last {data.days} days",
                           [_short(d.day) for d in data.downloads],
                           [svgchart.Series("downloads", [d.value for d in data.downloads])],
                           unit="downloads"),
        _table("downloads-per-day", ("day", "downloads"),
               [(_day(d.day), int(d.value)) for d in reversed(data.downloads)], numeric=(1,))))
    parts.append("<h2>Build time saved</h2>\n")
    parts.append(_pair(
        svgchart.line_chart("Build time saved in total (hours), by day",
                            [_short(d) for d, _, _ in data.time_saved],
                            [svgchart.Series("hours saved",
                                             [c / 3600 for _, _, c in data.time_saved])],
                            unit="hours"),
        _table("time-saved", ("day", "saved that day (h)", "in total (h)"),
               [(_day(d), hours(s), hours(c)) for d, s, c in reversed(data.time_saved)],
               numeric=(1, 2))))
    parts.append("<h2>Builds per day</h2>\n")
    parts.append(_pair(
        svgchart.bar_chart(f"Builds finished per day, last {data.days} days",
                           [_short(b.day) for b in data.builds],
                           [svgchart.Series("succeeded", [b.succeeded for b in data.builds], "s3"),
                            svgchart.Series("failed", [b.failed for b in data.builds], "s2")],
                           unit="builds"),
        _table("builds-per-day", ("day", "succeeded", "failed"),
               [(_day(b.day), b.succeeded, b.failed) for b in reversed(data.builds)],
               numeric=(1, 2))))
    parts.append("<h2>Queue by target</h2>\n")
    parts.append(_pair(
        svgchart.hbar_chart("Jobs queued per build target",
                            [(q.target, q.queued) for q in data.queue], unit="jobs"),
        _table("queue", ("target", "queued", "building", "drains in"), [
            (q.target, q.queued, q.building,
             "skipped" if q.skip_reason else
             "not draining" if q.drain_seconds is None else duration(q.drain_seconds))
            for q in data.queue], numeric=(1, 2))))
    parts.append('<p class="note">Drains in: at the rate of the last hour; not draining: no '
                 "build of the target finished in the last hour.</p>\n")
    for table_id, title, items in (
            ("top-projects", f"Top projects, last {data.days} days", data.top_projects),
            ("installers", f"Installers, last {data.days} days", data.installers),
            ("pythons", f"Python versions, last {data.days} days", data.pythons)):
        parts.append(f"<h2>{_e(title)}</h2>\n")
        parts.append(_pair(
            svgchart.hbar_chart(f"{title}: wheel downloads", items, unit="downloads"),
            _table(table_id, ("name", "downloads"), items, numeric=(1,))))
    return _page("Pinwheel statistics", data.generated, "".join(parts))


def render_builders(rows: Sequence[farm_stats.BuilderRow], now: datetime,
                    silent_after: float = 600) -> str:
    out = []
    for b in rows:
        seen = (now - b.last_seen).total_seconds() if b.last_seen else None
        out.append((
            b.builder, f"{b.abi}-{b.platform}" if b.abi else "", b.os_release or "",
            builder_state(b, now, silent_after),
            f"{b.job} for {duration(b.job_seconds)}" if b.job else "",
            "never" if seen is None else f"{duration(seen)} ago",
            b.builds_today,
            "" if b.disk_free_mb is None else f"{b.disk_free_mb / 1024:.1f}",
        ))
    body = (f"<p>{len(rows)} builder(s). A builder is <em>silent</em> when it has not been "
            f"heard from for {duration(silent_after)}.</p>\n"
            + _table("builders", ("builder", "target", "os", "state", "current job",
                                  "last heartbeat", "builds today", "disk free (GiB)"),
                     out, numeric=(6, 7)))
    return _page("Pinwheel builders", now, body)


def render(conn: Any, www_root: Path, days: int = 30) -> list[Path]:
    """Write both pages under ``www_root``; returns their paths."""
    now = datetime.now(timezone.utc)
    pages = {
        STATS_DIR: render_stats(stats_data(conn, days, now)),
        BUILDERS_DIR: render_builders(farm_stats.builders(conn), now),
    }
    written = []
    for sub, text in pages.items():
        dest = Path(www_root) / sub / PAGE_FILE
        fsutil.make_dirs(dest.parent)
        fsutil.atomic_write_text(dest, text)
        written.append(dest)
    return written
