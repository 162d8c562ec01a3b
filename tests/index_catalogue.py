"""A small published catalogue for the index tests, made through the real pipeline.

Two builders (their own login roles: cp311 on x86-64 and on armv7l) report
synthetic wheels (``test_verify.make_wheel``) through the real SQL functions;
the master's real ingest verifies and publishes them into the www root of an
nginx rendered from the role's template. Then the catalogue is given upload
times, a yanked release and a failed build, and the pages are rebuilt.

``pwidx-demo`` (displayed ``PwIdx_Demo``), pure wheels:
    1.0  published 2024-01-10, Requires-Python >=3.8
    1.1  published 2024-06-10, yanked upstream ("broken on Tuesdays")
    1.2  published 2025-01-10
    2.0  published 2025-06-10, Requires-Python >=3.99 (no client here can use it)
    3.0  failed to build (a log, no wheel)
``pwidx-arm`` 1.0: a cp311 wheel for linux_x86_64 and one for linux_armv7l.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from test_verify import make_wheel

from harness.agents import world_readable_tempdir
from harness.nginx import NginxServer
from pinwheel import db, index, ingest
from pinwheel.config import MasterConfig
from pinwheel.queue import BuilderQueue, Job, ReportedFile
from pinwheel.schema import BUILDER_GROUP, MASTER_GROUP

DEMO, ARM = "pwidx-demo", "pwidx-arm"
DEMO_DISPLAY = "PwIdx_Demo"
YANK_REASON = "broken on Tuesdays"
UPLOADED = {"1.0": "2024-01-10", "1.1": "2024-06-10", "1.2": "2025-01-10", "2.0": "2025-06-10"}
STARTED = datetime(2026, 1, 1, tzinfo=timezone.utc)


@dataclass
class Catalogue:
    pg: Any
    database: str
    cfg: MasterConfig
    master: Any                   # autocommit connection of a pinwheel_master login
    queues: dict[str, BuilderQueue]
    failed_build: int = 0

    def admin(self, query: str, params: tuple = ()) -> list[tuple]:
        return self.pg.query(self.database, query, params)

    def release(self, package: str, display: str, version: str,
                requires_python: str | None = None) -> None:
        self.admin("INSERT INTO packages (package, display_name) VALUES (%s, %s) "
                   "ON CONFLICT DO NOTHING", (package, display))
        self.admin("INSERT INTO versions (package, version, has_sdist, requires_python) "
                   "VALUES (%s, %s, true, %s) ON CONFLICT DO NOTHING",
                   (package, version, requires_python))

    def claim(self, builder: str, package: str, version: str) -> Job:
        self.admin("INSERT INTO jobs (package, version, abi, platform) "
                   "SELECT %s, %s, abi, platform FROM builders WHERE builder = %s",
                   (package, version, builder))
        job = self.queues[builder].claim()
        assert job is not None and (job.package, job.version) == (package, version)
        return job

    def incoming(self, builder: str) -> Path:
        return self.cfg.incoming_root / builder

    def build(self, builder: str, package: str, version: str, tag: str,
              requires_python: str | None = None) -> int:
        job = self.claim(builder, package, version)
        name, size, sha = make_wheel(self.incoming(builder), package, version, tag,
                                     requires_python=requires_python)
        return self.queues[builder].finish(job, "success", STARTED, 42.0, None,
                                           [ReportedFile(name, size, sha)])

    def fail(self, builder: str, package: str, version: str) -> int:
        job = self.claim(builder, package, version)
        data = gzip.compress(b"error: pwidx-demo 3.0 fails on purpose\n")
        log_name = f"job-{job.job_id}.log.gz"
        (self.incoming(builder) / log_name).write_bytes(data)
        log = ReportedFile(log_name, len(data), hashlib.sha256(data).hexdigest())
        return self.queues[builder].finish(job, "failed", STARTED, 3.0, log, [])

    def options(self, armv6l_alias: bool = False) -> index.IndexOptions:
        return index.IndexOptions(armv6l_alias=armv6l_alias, index_url="http://farm.example/simple/")

    def rebuild(self, armv6l_alias: bool = False) -> int:
        return index.rebuild(self.master, self.cfg.www_root, self.options(armv6l_alias))


def make_catalogue(pg: Any, pg_template: str, www_root: Path, place: Path,
                   database: str = "pinwheel_index") -> Catalogue:
    pg.drop_database(database)
    pg.create_database(database, template=pg_template)
    queues = {}
    for builder, platform in (("ix_x86", "linux_x86_64"), ("ix_arm", "linux_armv7l")):
        dsn = pg.create_login(database, builder, BUILDER_GROUP, f"{builder}-pw")
        queues[builder] = BuilderQueue(db.connect(dsn))
        queues[builder].register("cp311", platform, "debian bookworm", "3.11.2")
        (place / "incoming" / builder).mkdir(parents=True)
    master_dsn = pg.create_login(database, "ix_master", MASTER_GROUP, "ix-master-pw")
    cfg = MasterConfig(dsn=master_dsn, www_root=www_root, incoming_root=place / "incoming",
                       quarantine_root=place / "quarantine", max_wheel_size=10 << 20,
                       max_log_size=1 << 20, public_index_url="http://farm.example/simple/")
    cat = Catalogue(pg, database, cfg, db.connect(master_dsn), queues)
    for version, requires in (("1.0", ">=3.8"), ("1.1", None), ("1.2", None),
                              ("2.0", ">=3.99"), ("3.0", None)):
        cat.release(DEMO, DEMO_DISPLAY, version, requires)
    for version in ("1.0", "1.1", "1.2", "2.0"):
        requires = ">=3.8" if version == "1.0" else ">=3.99" if version == "2.0" else None
        cat.build("ix_x86", DEMO, version, "py3-none-any", requires_python=requires)
    cat.failed_build = cat.fail("ix_x86", DEMO, "3.0")
    cat.release(ARM, ARM, "1.0")
    cat.build("ix_x86", ARM, "1.0", "cp311-cp311-linux_x86_64")
    cat.build("ix_arm", ARM, "1.0", "cp311-cp311-linux_armv7l")
    assert ingest.process_pending(cat.master, cfg) == 7
    for version, day in UPLOADED.items():
        cat.admin("UPDATE files SET published_at = %s WHERE package = %s AND version = %s",
                  (f"{day}T12:00:00Z", DEMO, version))
    cat.admin("UPDATE versions SET yanked = true, yanked_reason = %s "
              "WHERE package = %s AND version = '1.1'", (YANK_REASON, DEMO))
    cat.rebuild(armv6l_alias=True)
    return cat


def close_catalogue(cat: Catalogue) -> None:
    cat.master.close()
    for queue in cat.queues.values():
        queue.conn.close()


@contextlib.contextmanager
def served_catalogue(pg: Any, pg_template: str,
                     database: str) -> Iterator[tuple[Catalogue, NginxServer]]:
    """The catalogue, published into the www root of an nginx of its own."""
    server = NginxServer()
    server.start()
    place = world_readable_tempdir("pinwheel-index-")
    cat = None
    try:
        cat = make_catalogue(pg, pg_template, server.www_root, place, database)
        yield cat, server
    finally:
        if cat is not None:
            close_catalogue(cat)
        server.destroy()
        pg.drop_database(database)
        shutil.rmtree(place, ignore_errors=True)
