"""``pinwheel logs``: import nginx's JSON access log into ``downloads``, exactly once.

Each batch of whole lines (pinwheel.log_follow) is parsed (pinwheel.access_log), copied with
``COPY`` into a temporary staging table, and moved into ``downloads`` by one
``INSERT ... SELECT`` that also finds each wheel's ``file_id`` among the published files;
that statement's trigger (migration 0013) adds the rows to the daily summaries
``download_days`` and ``download_request_days`` the stats read. In the same transaction: the
month partitions the rows need, a sample of the malformed lines, and the new file position in
``download_log_position``. A crash or a restart at any moment resumes from the last committed
position: nothing counted twice (in the rows or the summaries), nothing lost. A row the
database refuses is retried alone under a savepoint, its summary with it.
A session advisory lock keeps a second importer off the same log. See docs/downloads.md.
"""

from __future__ import annotations

import configparser
import contextlib
import logging
import re
import signal
import time
import zlib
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

import psycopg2

from . import db
from .access_log import ClientHasher, Hit, MalformedLine, parse_line
from .config import ConfigError, _read
from .download_keys import MonthlyKeys
from .log_follow import Batch, Follower, Position

log = logging.getLogger(__name__)

SAMPLES_PER_BATCH = 10      # malformed lines kept per batch
SAMPLES_KEPT = 500          # malformed lines kept in all
COLUMNS = ("accessed_at", "kind", "path", "status", "bytes", "package", "filename",
           "installer_name", "installer_version", "python_version", "implementation_name",
           "distro_name", "distro_version", "system_name", "cpu", "client")
_STAGE = ("CREATE TEMP TABLE IF NOT EXISTS download_stage (accessed_at timestamptz, "
          "kind text, path text, status smallint, bytes bigint, package text, filename text, "
          "installer_name text, installer_version text, python_version text, "
          "implementation_name text, distro_name text, distro_version text, system_name text, "
          "cpu text, client text) ON COMMIT DELETE ROWS")
_COPY = f"COPY download_stage ({', '.join(COLUMNS)}) FROM STDIN"
_MOVE = (f"INSERT INTO downloads ({', '.join(COLUMNS)}, file_id) "
         f"SELECT {', '.join('s.' + c for c in COLUMNS)}, f.file_id FROM download_stage s "
         "LEFT JOIN files f ON f.filename = s.filename AND f.state = 'published'")
_SAVE_POSITION = """
    INSERT INTO download_log_position AS p (log_path, device, inode, byte_offset, fingerprint,
           lines_imported, lines_malformed, files_done, truncations, updated_at)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, now())
    ON CONFLICT (log_path) DO UPDATE SET device = EXCLUDED.device, inode = EXCLUDED.inode,
           byte_offset = EXCLUDED.byte_offset, fingerprint = EXCLUDED.fingerprint,
           lines_imported = p.lines_imported + EXCLUDED.lines_imported,
           lines_malformed = p.lines_malformed + EXCLUDED.lines_malformed,
           files_done = p.files_done + EXCLUDED.files_done,
           truncations = p.truncations + EXCLUDED.truncations, updated_at = now()"""
_ESCAPE_RE = re.compile(r"[\\\t\n\r\x00]")
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\x00": ""})


@dataclass
class LogsConfig:
    """The ``[logs]`` section of master.conf (the role's master_logs_* variables)."""

    access_log: Path = Path("/var/log/pinwheel/access.json")
    key_dir: Path = Path("/var/lib/pinwheel/download-keys")
    key_keep_months: int = 1        # months of keys kept before the current one
    batch_lines: int = 10000        # lines per transaction at most
    poll_seconds: float = 1.0       # wait at the end of the log
    rotate_grace_seconds: float = 2.0   # quiet time of a rotated file before it is left
    rotated_suffixes: tuple[str, ...] = field(default=(".1",))

    @classmethod
    def load(cls, path: str | Path) -> LogsConfig:
        p = _read(path)
        s = "logs"
        if not p.has_section(s):
            return cls()

        def number(key: str, default: float, low: float) -> float:
            raw = p.get(s, key, fallback=str(default))
            try:
                value = float(raw)
            except ValueError:
                raise ConfigError(f"{path}: [logs] {key} must be a number, not {raw!r}") from None
            if value < low:
                raise ConfigError(f"{path}: [logs] {key} must be at least {low}, not {raw!r}")
            return value

        try:
            return cls(access_log=Path(p.get(s, "access_log", fallback=str(cls.access_log))),
                       key_dir=Path(p.get(s, "key_dir", fallback=str(cls.key_dir))),
                       key_keep_months=int(number("key_keep_months", 1, 0)),
                       batch_lines=int(number("batch_lines", 10000, 1)),
                       poll_seconds=number("poll_seconds", 1.0, 0.01),
                       rotate_grace_seconds=number("rotate_grace_seconds", 2.0, 0.0))
        except configparser.Error as exc:
            raise ConfigError(f"{path}: [logs]: {exc}") from exc


@dataclass
class BatchResult:
    imported: int = 0
    malformed: int = 0
    position_changed: bool = False


def _field(value: Any) -> str:
    if value is None:
        return "\\N"
    text = value if isinstance(value, str) else str(value)
    if _ESCAPE_RE.search(text):
        text = text.translate(_ESCAPES)
    return text


def copy_line(hit: Hit) -> str:
    """The row of a hit as one line of COPY's text format."""
    fields = [hit.accessed_at.isoformat(), hit.kind, hit.path, str(hit.status), str(hit.bytes),
              hit.package, hit.filename, *hit.agent, hit.client]
    # Fast path: no field holds a character to escape (nor the two stand-ins used here).
    nones = fields.count(None)
    joined = "\x1f".join("\x1e" if f is None else f for f in fields)
    if (not _ESCAPE_RE.search(joined) and joined.count("\x1f") == len(fields) - 1
            and joined.count("\x1e") == nones):
        return joined.replace("\x1e", "\\N").replace("\x1f", "\t") + "\n"
    return "\t".join(_field(f) for f in fields) + "\n"


def _lock_key(log_path: str) -> int:
    return zlib.crc32(f"pinwheel logs {log_path}".encode()) - (1 << 31)


class Importer:
    """One database connection importing one log (use :meth:`follower` then :meth:`step`)."""

    def __init__(self, dsn: str, cfg: LogsConfig, keys: MonthlyKeys | None = None) -> None:
        self.cfg = cfg
        self.log_path = str(cfg.access_log)
        self.keys = keys or MonthlyKeys(cfg.key_dir, cfg.key_keep_months)
        self.hasher = ClientHasher(self.keys)
        self.conn = db.connect(dsn, application_name="pinwheel-logs")
        self._partitions: set[tuple[int, int]] = set()
        self._committed: Position | None = None
        try:
            self._take_lock()
            with self.conn.cursor() as cur:
                cur.execute(_STAGE)
            self.conn.autocommit = False
        except BaseException:
            self.conn.close()
            raise

    def _take_lock(self, wait: float = 30.0) -> None:
        # A killed importer's session may take a moment to end: wait for its lock a while.
        deadline = time.monotonic() + wait
        with self.conn.cursor() as cur:
            while True:
                cur.execute("SELECT pg_try_advisory_lock(%s)", (_lock_key(self.log_path),))
                if cur.fetchone()[0]:
                    return
                if time.monotonic() > deadline:
                    raise db.PinwheelError(
                        f"another pinwheel logs is importing {self.log_path}: stop it first "
                        "(systemctl stop pinwheel-logs)")
                time.sleep(0.2)

    def close(self) -> None:
        self.conn.close()

    def saved_position(self) -> Position | None:
        with self.conn.cursor() as cur:
            cur.execute("SELECT device, inode, byte_offset, fingerprint FROM "
                        "download_log_position WHERE log_path = %s", (self.log_path,))
            row = cur.fetchone()
        self.conn.commit()
        self._committed = Position(*row) if row else None
        return self._committed

    def follower(self) -> Follower:
        """A follower from the committed position."""
        follower = Follower(self.cfg.access_log, self.saved_position(),
                            self.cfg.rotated_suffixes, self.cfg.rotate_grace_seconds)
        for note in follower.notes:
            log.info("%s", note)
        return follower

    def step(self, follower: Follower, final: bool = False) -> BatchResult:
        """Read and import one batch; nothing when there is nothing new."""
        batch = follower.read(self.cfg.batch_lines, final=final)
        changed = batch.position != self._committed and batch.position.inode != 0
        if not batch.lines and not changed:
            return BatchResult()
        result = self.commit_batch(batch)
        self._committed = batch.position
        return result

    def _parse(self, batch: Batch) -> tuple[list[Hit], list[tuple[int, bytes, str]], int]:
        hits, samples, malformed = [], [], 0
        for line, offset in zip(batch.lines, batch.offsets):
            try:
                hits.append(parse_line(line, self.hasher))
            except MalformedLine as exc:
                malformed += 1
                if len(samples) < SAMPLES_PER_BATCH:
                    samples.append((offset, line, str(exc)))
        return hits, samples, malformed

    def commit_batch(self, batch: Batch) -> BatchResult:
        """Import a batch and commit it with its position, in one transaction."""
        hits, samples, malformed = self._parse(batch)
        months = {(h.accessed_at.year, h.accessed_at.month) for h in hits} - self._partitions
        cur = self.conn.cursor()
        try:
            for month in sorted(months):
                cur.execute("SELECT downloads_partition(%s)",
                            (f"{month[0]:04d}-{month[1]:02d}-01T00:00:00Z",))
            rejected = self._load(cur, hits)
            for hit, error in rejected:
                malformed += 1
                if len(samples) < SAMPLES_PER_BATCH:
                    samples.append((-1, repr(hit).encode(), error))
            self._keep_samples(cur, samples)
            pos = batch.position
            cur.execute(_SAVE_POSITION, (self.log_path, pos.device, pos.inode, pos.offset,
                                         pos.fingerprint, len(hits) - len(rejected), malformed,
                                         batch.files_done, batch.truncations))
            self.conn.commit()
        except BaseException:
            self._rollback()
            raise
        finally:
            cur.close()
        self._partitions |= months
        return BatchResult(len(hits) - len(rejected), malformed, True)

    def _rollback(self) -> None:
        with contextlib.suppress(psycopg2.Error):
            self.conn.rollback()

    def _load(self, cur: Any, hits: list[Hit]) -> list[tuple[Hit, str]]:
        """COPY the rows into the stage and move them; rows the database refuses (a value
        the parser let through by mistake) are left out one by one: returned with why."""
        if not hits:
            return []
        cur.execute("SAVEPOINT whole_batch")
        try:
            cur.copy_expert(_COPY, StringIO("".join(copy_line(h) for h in hits)))
            cur.execute(_MOVE)
            cur.execute("RELEASE SAVEPOINT whole_batch")
            return []
        except (psycopg2.DataError, psycopg2.IntegrityError) as exc:
            log.warning("the database refused a row of this batch (%s): importing the batch "
                        "row by row", str(exc).strip().splitlines()[0])
            cur.execute("ROLLBACK TO SAVEPOINT whole_batch")
        rejected = []
        for hit in hits:
            cur.execute("SAVEPOINT one_row")
            try:
                cur.copy_expert(_COPY, StringIO(copy_line(hit)))
                cur.execute(_MOVE)
                cur.execute("TRUNCATE download_stage")
                cur.execute("RELEASE SAVEPOINT one_row")
            except (psycopg2.DataError, psycopg2.IntegrityError) as exc:
                cur.execute("ROLLBACK TO SAVEPOINT one_row")
                rejected.append((hit, f"refused by the database: {str(exc).strip()[:300]}"))
        return rejected

    def _keep_samples(self, cur: Any, samples: list[tuple[int, bytes, str]]) -> None:
        if not samples:
            return
        for offset, line, error in samples:
            text = line.decode("utf-8", "replace").replace("\x00", "\ufffd")[:2000]
            cur.execute("INSERT INTO download_log_malformed (log_path, byte_offset, error, line) "
                        "VALUES (%s, %s, %s, %s)", (self.log_path, offset, error[:500], text))
        cur.execute("DELETE FROM download_log_malformed WHERE malformed_id <= "
                    "(SELECT max(malformed_id) - %s FROM download_log_malformed)",
                    (SAMPLES_KEPT,))


def import_available(dsn: str, cfg: LogsConfig) -> tuple[int, int]:
    """Import everything the log holds now (rotated files first), then return
    (lines imported, lines malformed). For ``pinwheel logs --once``."""
    importer = Importer(dsn, cfg)
    follower = importer.follower()
    imported = malformed = 0
    try:
        while True:
            result = importer.step(follower, final=True)
            imported += result.imported
            malformed += result.malformed
            if not result.position_changed:
                return imported, malformed
    finally:
        follower.close()
        importer.close()


def serve(dsn: str, cfg: LogsConfig) -> None:
    """Follow the log for ever (pinwheel-logs.service); SIGTERM ends after the current batch."""
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    backoff = 1.0
    log.info("importing %s into downloads", cfg.access_log)
    while not stopping:
        try:
            importer = Importer(dsn, cfg)
        except (db.DatabaseUnavailable, psycopg2.OperationalError) as exc:
            log.warning("%s; retrying in %.0f s", exc, backoff)
            time.sleep(backoff)
            backoff = min(backoff * 2, 60.0)
            continue
        follower = None
        try:
            follower = importer.follower()
            backoff = 1.0
            _follow(importer, follower, stopping)
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            log.warning("lost the database (%s); resuming from the committed position in "
                        "%.0f s", str(exc).strip(), backoff)
            time.sleep(backoff)
            backoff = min(backoff * 2, 60.0)
        finally:
            if follower is not None:
                follower.close()
            importer.close()


def _follow(importer: Importer, follower: Follower, stopping: list[bool]) -> None:
    next_prune = 0.0
    totals = [0, 0]
    next_report = time.monotonic() + 60
    while not stopping:
        now = time.monotonic()
        if now >= next_prune:
            if importer.keys.key_dir.is_dir():
                importer.keys.prune()
            importer.hasher.forget()
            next_prune = now + 3600
        result = importer.step(follower)
        totals[0] += result.imported
        totals[1] += result.malformed
        if now >= next_report and any(totals):
            log.info("imported %d line(s), %d malformed, in the last minute", *totals)
            totals = [0, 0]
            next_report = now + 60
        if not result.position_changed:
            time.sleep(importer.cfg.poll_seconds)

