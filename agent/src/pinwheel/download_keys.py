"""The secret keys that turn client networks into ``downloads.client`` (docs/downloads.md).

One key per calendar month (UTC), 32 random bytes in ``<key_dir>/<YYYY-MM>.key`` (mode 0600,
the directory 0700, owned by the service user): made when the importer first meets a hit of
that month, written and synced before any row hashed with it is committed (so a re-import
after a crash hashes the same way). Keys older than ``keep_months`` before the current month
are deleted: from then on nobody, not even the operator, can tell which network a client
value of those months was, and a late line of such a month gets no client value (its key is
never made again).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
from datetime import datetime, timezone
from pathlib import Path

from .fsutil import fsync_dir

log = logging.getLogger(__name__)
KEY_BYTES = 32
_KEY_NAME_RE = re.compile(r"^(\d{4})-(\d{2})\.key$")
_MONTH_RE = re.compile(r"^\d{4}-\d{2}$")


class MonthlyKeys:
    """``keys("2026-11")``: that month's key, made on first use."""

    def __init__(self, key_dir: Path, keep_months: int = 1) -> None:
        self.key_dir = key_dir
        self.keep_months = keep_months

    def __call__(self, month: str) -> bytes | None:
        """The month's key; None for a month whose key is past keeping (never remade)."""
        if not _MONTH_RE.match(month):
            raise ValueError(f"not a month: {month!r}")
        path = self.key_dir / f"{month}.key"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            if self._expired(month):
                return None
            data = self._make(path)
        if len(data) != KEY_BYTES:
            raise ValueError(f"{path} is not a {KEY_BYTES}-byte key: remove it (the month's "
                             "client values will change) or restore it from a backup")
        return data

    def _make(self, path: Path) -> bytes:
        key = secrets.token_bytes(KEY_BYTES)
        self.key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # never replaces a key another process made meanwhile
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise
        finally:
            tmp.unlink()
        fsync_dir(self.key_dir)
        log.info("made the client key of %s in %s", path.stem, self.key_dir)
        return path.read_bytes()

    def _expired(self, month: str, now: datetime | None = None) -> bool:
        now = now or datetime.now(timezone.utc)
        year, mon = (int(part) for part in month.split("-"))
        return year * 12 + mon < now.year * 12 + now.month - self.keep_months

    def prune(self, now: datetime | None = None) -> list[str]:
        """Delete the keys of months before the last ``keep_months``; return those months."""
        removed = []
        for entry in sorted(self.key_dir.iterdir()):
            m = _KEY_NAME_RE.match(entry.name)
            if m and self._expired(entry.stem, now):
                entry.unlink()
                removed.append(entry.stem)
        if removed:
            fsync_dir(self.key_dir)
            log.info("deleted the client keys of %s", ", ".join(removed))
        return removed
