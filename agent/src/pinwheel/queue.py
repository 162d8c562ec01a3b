"""The builder's side of the Postgres queue.

Every call is one short transaction on a SECURITY DEFINER function (see
``migrations/0001_initial.sql``): register, claim, heartbeat, ping, release and
finish. Nothing stays open while a build runs. Idle agents LISTEN on
``pinwheel_jobs`` and wake when work for their ABI is queued; a slow poll
covers a missed notification.
"""

from __future__ import annotations

import json
import select
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from . import db
from .aptdeps import Library

JOBS_CHANNEL = "pinwheel_jobs"


@dataclass(frozen=True)
class Job:
    job_id: int
    package: str
    version: str
    abi: str
    lease_token: str
    lease_expires: datetime
    attempts: int


@dataclass(frozen=True)
class Registration:
    builder: str
    abi: str
    platform: str
    paused: bool


@dataclass(frozen=True)
class ReportedFile:
    """A file the builder pushed, as it reports it (the master verifies it)."""

    filename: str
    size: int
    sha256: str
    # The shared libraries its ELF files need (pinwheel.aptdeps); None: not looked at.
    libraries: tuple[Library, ...] | None = None

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"filename": self.filename, "size": self.size,
                               "sha256": self.sha256}
        if self.libraries is not None:
            doc["libraries"] = [lib.as_json() for lib in self.libraries]
        return doc


class BuilderQueue:
    """One builder's connection to the queue."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self._listening = False

    def register(self, abi: str, platform: str, os_release: str,
                 python_version: str) -> Registration:
        rows = db.call(self.conn, "SELECT * FROM builder_register(%s, %s, %s, %s)",
                       (abi, platform, os_release, python_version))
        return Registration(*rows[0])

    def claim(self, lease_seconds: int = 300) -> Job | None:
        rows = db.call(self.conn, "SELECT * FROM claim_job(%s)", (lease_seconds,))
        if not rows:
            return None
        job_id, package, version, abi, token, expires, attempts = rows[0]
        return Job(job_id, package, version, abi, str(token), expires, attempts)

    def heartbeat(self, job: Job, lease_seconds: int = 300) -> datetime:
        rows = db.call(self.conn, "SELECT heartbeat(%s, %s, %s)",
                       (job.job_id, job.lease_token, lease_seconds))
        return rows[0][0]

    def ping(self, disk_free_mb: int | None = None) -> bool:
        """Say this builder is alive (and how many MiB its work directory has free).

        Returns True when an operator paused it.
        """
        if disk_free_mb is None:
            return bool(db.call(self.conn, "SELECT builder_ping()")[0][0])
        return bool(db.call(self.conn, "SELECT builder_ping(%s::bigint)", (disk_free_mb,))[0][0])

    def release(self, job: Job) -> None:
        db.call(self.conn, "SELECT release_job(%s, %s)", (job.job_id, job.lease_token))

    def finish(self, job: Job, status: str, started: datetime, duration: float,
               log: ReportedFile | None, files: list[ReportedFile]) -> int:
        rows = db.call(
            self.conn,
            "SELECT finish_job(%s, %s, %s, %s, %s, %s::jsonb, %s::jsonb)",
            (job.job_id, job.lease_token, status, started, duration,
             json.dumps(log.as_json()) if log else None,
             json.dumps([f.as_json() for f in files])),
        )
        return int(rows[0][0])

    def wait_for_work(self, target: str, timeout: float, wake_fds: tuple[int, ...] = ()) -> bool:
        """Block up to ``timeout`` seconds for a NOTIFY about queued work for ``target``.

        ``target`` is :func:`names.target` of the builder's ABI and platform.

        Readable ``wake_fds`` (e.g. a signal wake-up pipe) end the wait early.
        """
        if not self._listening:
            db.call(self.conn, f"LISTEN {JOBS_CHANNEL}")
            self._listening = True
        try:
            ready, _, _ = select.select([self.conn, *wake_fds], [], [], timeout)
            if self.conn not in ready:
                return False
            self.conn.poll()
        except (OSError, ValueError) as exc:
            raise db.DatabaseUnavailable(f"lost the database connection: {exc}") from exc
        except Exception as exc:
            if type(exc).__module__.startswith("psycopg2"):
                raise db.DatabaseUnavailable(f"lost the database connection: {exc}") from exc
            raise
        woken = any(n.payload == target for n in self.conn.notifies)
        self.conn.notifies.clear()
        return woken
