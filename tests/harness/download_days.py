"""The daily download summaries (migration 0013) checked against the raw ``downloads``.

``download_days`` and ``download_request_days`` must hold exactly the aggregate of the raw
rows: every row equal, none missing, none extra. Tests call :func:`assert_summaries_match`
after imports (including killed and restarted ones) while the raw rows are all there.
"""

from __future__ import annotations

from typing import Any

# The aggregate computed here from the raw rows, independently of the migration's trigger.
RAW_DAYS = """
    SELECT (accessed_at AT TIME ZONE 'UTC')::date, coalesce(package, ''),
           coalesce(file_id, 0), coalesce(installer_name, ''),
           coalesce(substring(python_version FROM '^[0-9]+[.][0-9]+'), ''), count(*)
      FROM downloads WHERE kind = 'wheel' AND status >= 200 AND status < 300
     GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5"""
SUMMARY_DAYS = """
    SELECT day, package, file_id, installer_name, python_minor, downloads
      FROM download_days ORDER BY 1, 2, 3, 4, 5"""
RAW_REQUESTS = ("SELECT (accessed_at AT TIME ZONE 'UTC')::date, count(*) FROM downloads "
                "GROUP BY 1 ORDER BY 1")
SUMMARY_REQUESTS = "SELECT day, requests FROM download_request_days ORDER BY 1"


def assert_summaries_match(pg: Any, database: str) -> int:
    """Assert both summaries equal the raw rows' aggregate; return the wheel downloads."""
    raw, summary = pg.query(database, RAW_DAYS), pg.query(database, SUMMARY_DAYS)
    assert summary == raw, (f"download_days differs from downloads: only in the summary "
                            f"{sorted(set(summary) - set(raw))[:5]}, only in the raw rows "
                            f"{sorted(set(raw) - set(summary))[:5]}")
    assert pg.query(database, SUMMARY_REQUESTS) == pg.query(database, RAW_REQUESTS)
    return sum(r[-1] for r in raw)
