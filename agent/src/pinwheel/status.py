"""``pinwheel status``: the farm right now, as aligned text tables or as JSON.

The JSON document (``--json``) is a stable interface for scripts
(docs/monitoring.md); keys are only ever added, and ``format`` is bumped if one
ever changes meaning::

    {"format": 1, "generated_at": ISO-8601,
     "downloads_today": int,              # successful wheel downloads since 00:00 UTC
     "queue": [{"target", "abi", "platform", "queued", "building", "skip_reason",
                "finished_last_hour", "mean_build_seconds", "draining",
                "drain_seconds"}],          # drain_seconds: null when not draining
     "builders": [{"builder", "abi", "platform", "target", "os_release", "python_version",
                   "state", "paused", "last_seen", "seconds_since_seen", "last_seen_ago",
                   "current_job", "job_seconds", "builds_today", "disk_free_mb"}],
     "recent_failures": [{"build_id", "package", "version", "target", "builder", "status",
                          "finished_at", "log_url"}],
     "recent_builds": [{"build_id", "package", "version", "abi", "platform", "builder",
                        "status", "seconds", "ingest"}]}
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from . import db, farm_stats
from .farm_stats import builder_state, duration

FORMAT = 1


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
          numeric: Sequence[int] = ()) -> str:
    """A plain text table, columns aligned (numbers to the right)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                         for i, (c, w) in enumerate(zip(r, widths))).rstrip()
    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def _hms(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    s = int(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(timezone.utc).isoformat() if value else None


def collect(conn: Any, recent: int = 10, failures: int = 10) -> dict[str, Any]:
    """The status document (the shape above)."""
    now = db.call(conn, "SELECT now()")[0][0]
    queue = farm_stats.queue(conn)
    builders = farm_stats.builders(conn)
    fails = farm_stats.recent_failures(conn, failures)
    builds = db.call(conn, """
        SELECT b.build_id, b.package, b.version, b.abi, b.platform, b.builder, b.status,
               round(extract(epoch FROM b.duration)::numeric, 1), b.ingest_state
        FROM builds b ORDER BY b.build_id DESC LIMIT %s""", (recent,))
    return {
        "format": FORMAT,
        "generated_at": _iso(now),
        "downloads_today": farm_stats.downloads_today(conn),
        "queue": [{
            "target": q.target, "abi": q.abi, "platform": q.platform, "queued": q.queued,
            "building": q.building, "skip_reason": q.skip_reason,
            "finished_last_hour": q.finished_recently,
            "mean_build_seconds": q.mean_duration, "draining": q.draining,
            "drain_seconds": q.drain_seconds,
        } for q in queue],
        "builders": [{
            "builder": b.builder, "abi": b.abi, "platform": b.platform,
            "target": f"{b.abi}-{b.platform}" if b.abi else None,
            "os_release": b.os_release, "python_version": b.python_version,
            "state": builder_state(b, now), "paused": b.paused,
            "last_seen": _iso(b.last_seen),
            "seconds_since_seen": (now - b.last_seen).total_seconds() if b.last_seen else None,
            "last_seen_ago": _hms((now - b.last_seen).total_seconds()) if b.last_seen else None,
            "current_job": b.job, "job_seconds": b.job_seconds,
            "builds_today": b.builds_today, "disk_free_mb": b.disk_free_mb,
        } for b in builders],
        "recent_failures": [{
            "build_id": f.build_id, "package": f.package, "version": f.version,
            "target": f.target, "builder": f.builder, "status": f.status,
            "finished_at": _iso(f.finished_at),
            "log_url": f"/{f.log_path}" if f.log_path else None,
        } for f in fails],
        "recent_builds": [{
            "build_id": r[0], "package": r[1], "version": r[2], "abi": r[3], "platform": r[4],
            "builder": r[5], "status": r[6], "seconds": float(r[7] or 0), "ingest": r[8],
        } for r in builds],
    }


def _drain(q: dict[str, Any]) -> str:
    if q["skip_reason"]:
        return "skipped"
    if q["drain_seconds"] is None:
        return "not draining"
    return "empty" if q["queued"] == 0 else duration(q["drain_seconds"])


def render_text(doc: dict[str, Any], base_url: str = "") -> str:
    """The document as text tables for a terminal; log links under ``base_url``."""
    out = [f"Pinwheel at {doc['generated_at']}: {doc['downloads_today']} wheel download(s) "
           "today (UTC)", "", "Queue"]
    if doc["queue"]:
        out.append(table(("target", "queued", "building", "done/h", "mean build", "drains in"),
                         [(q["target"], q["queued"], q["building"], q["finished_last_hour"],
                           duration(q["mean_build_seconds"]), _drain(q))
                          for q in doc["queue"]], numeric=(1, 2, 3, 4)))
        out.append("  (drains in: at the rate of the last hour; \"not draining\": nothing "
                   "finished in the last hour)")
    else:
        out.append("  (no targets yet: no builder has registered)")
    out += ["", "Builders"]
    if doc["builders"]:
        out.append(table(("builder", "target", "state", "last seen", "building", "for",
                          "today", "disk free"),
                         [(b["builder"], b["target"], b["state"],
                           f"{duration(b['seconds_since_seen'])} ago"
                           if b["seconds_since_seen"] is not None else "never",
                           b["current_job"], duration(b["job_seconds"]), b["builds_today"],
                           "" if b["disk_free_mb"] is None
                           else f"{b['disk_free_mb'] / 1024:.1f} GiB")
                          for b in doc["builders"]], numeric=(5, 6, 7)))
    else:
        out.append("  (none registered)")
    out += ["", "Recent failures"]
    if doc["recent_failures"]:
        out.append(table(("build", "package", "version", "target", "builder", "status", "log"),
                         [(f["build_id"], f["package"], f["version"], f["target"], f["builder"],
                           f["status"], f"{base_url}{f['log_url']}" if f["log_url"] else "")
                          for f in doc["recent_failures"]], numeric=(0,)))
    else:
        out.append("  (none)")
    out += ["", "Recent builds"]
    if doc["recent_builds"]:
        out.append(table(("build", "package", "version", "target", "builder", "status",
                          "seconds", "ingest"),
                         [(b["build_id"], b["package"], b["version"],
                           f"{b['abi']}-{b['platform']}", b["builder"], b["status"],
                           f"{b['seconds']:.1f}", b["ingest"]) for b in doc["recent_builds"]],
                         numeric=(0, 6)))
    else:
        out.append("  (none yet)")
    return "\n".join(out)
