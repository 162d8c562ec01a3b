"""`pinwheel import`: a whole upstream recorded, resumable after an interruption.

The upstream is static PEP 691 JSON served by nginx (harness.static_upstream);
the catalogue is a real PostgreSQL database. The 100,000-project test kills the
real `pinwheel import` process half-way (SIGKILL) and runs it again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.static_upstream import StaticUpstream
from pinwheel import db, importer
from pinwheel.config import MasterConfig, WatchConfig
from pinwheel.schema import MASTER_GROUP

TARGETS = (("cp311", "linux_x86_64"), ("cp311", "linux_armv7l"))
SRC = Path(__file__).parents[1] / "agent" / "src"


def master_config(dsn: str, url: str, root: Path, mode: str = "mirror") -> MasterConfig:
    (root / "www").mkdir(exist_ok=True)
    return MasterConfig(dsn=dsn, www_root=root / "www", incoming_root=root / "incoming",
                        quarantine_root=root / "quarantine", upstream_url=url,
                        watch=WatchConfig(mode=mode))


def write_config(cfg: MasterConfig, path: Path) -> Path:
    path.write_text(f"""[master]
dsn = {cfg.dsn}
www_root = {cfg.www_root}
incoming_root = {cfg.incoming_root}
quarantine_root = {cfg.quarantine_root}
upstream_url = {cfg.upstream_url}

[watch]
mode = {cfg.watch.mode}
""")
    return path


def run_import(conf: Path, *args: str, log: Path | None = None) -> subprocess.Popen:
    """The real command; with ``log``, its output goes there (a test that does not read the
    pipes while it runs must not let them fill)."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out: Any = subprocess.PIPE if log is None else log.open("a")
    return subprocess.Popen([sys.executable, "-m", "pinwheel", "import", "--config", str(conf),
                             *args], env=env, stdout=out,
                            stderr=subprocess.PIPE if log is None else subprocess.STDOUT,
                            text=True)


@pytest.fixture
def login(pg, database) -> str:
    for abi, platform in TARGETS:
        pg.query(database, "INSERT INTO targets (abi, platform) VALUES (%s, %s)", (abi, platform))
    return pg.create_login(database, "import_master", MASTER_GROUP, "import-pw")


def upstream_of(count: int, serials: bool = True) -> Iterator[StaticUpstream]:
    up = StaticUpstream(count, serials=serials)
    up.start()
    try:
        yield up
    finally:
        up.destroy()


@pytest.fixture
def small() -> Iterator[StaticUpstream]:
    yield from upstream_of(120)


@pytest.fixture
def small_plain() -> Iterator[StaticUpstream]:
    yield from upstream_of(120, serials=False)


def one_job_per_release_and_target(pg, database) -> None:
    """Every release has exactly one job per target, and one new-release event."""
    bad = pg.query(database, """
        SELECT v.package, v.version, count(j.*)
          FROM versions v LEFT JOIN jobs j USING (package, version)
         GROUP BY v.package, v.version HAVING count(j.*) <> %s LIMIT 5""", (len(TARGETS),))
    assert bad == []
    twice = pg.query(database, """SELECT package, count(*) FROM upstream_events
                                   GROUP BY package HAVING count(*) <> 1 LIMIT 5""")
    assert twice == [], "an event was recorded twice"


def imported(pg, database) -> int:
    return pg.query(database, "SELECT count(*) FROM watch_projects "
                              "WHERE content_sha256 IS NOT NULL")[0][0]


@pytest.mark.parametrize("upstream_fixture", ["small", "small_plain"])
def test_an_interrupted_import_goes_on_where_it_stopped(
        pg, database, login, tmp_path, request, upstream_fixture):
    up: StaticUpstream = request.getfixturevalue(upstream_fixture)
    cfg = master_config(login, up.url, tmp_path)
    stop = threading.Event()

    def stop_after_50(done: int, total: int, package: str) -> None:
        if done >= 50:
            stop.set()

    conn = db.connect(cfg.dsn)
    try:
        first = importer.run(conn, cfg, workers=3, progress=stop_after_50, stop=stop)
    finally:
        conn.close()
    # The workers finish the project each has in hand, then stop.
    assert (first.listed, first.before) == (120, 0)
    assert 50 <= first.processed < 50 + 3
    assert imported(pg, database) == first.processed
    before = up.requests()

    conn = db.connect(cfg.dsn)
    try:
        second = importer.run(conn, cfg, workers=3)
    finally:
        conn.close()
    left = 120 - first.processed
    assert (second.before, second.processed, second.poll.jobs) == (first.processed, left,
                                                                   2 * left)
    assert not second.poll.errors
    # Only the projects left were fetched (and the root page once).
    assert up.requests() - before == left + 1
    assert pg.query(database, "SELECT count(*) FROM packages")[0][0] == 120
    one_job_per_release_and_target(pg, database)

    conn = db.connect(cfg.dsn)
    try:
        third = importer.run(conn, cfg)
    finally:
        conn.close()
    assert (third.before, third.processed, third.poll.jobs) == (120, 0, 0)


def test_import_refuses_allowlist_mode_and_says_what_to_do(login, small, tmp_path):
    cfg = master_config(login, small.url, tmp_path, mode="allowlist")
    proc = run_import(write_config(cfg, tmp_path / "master.conf"))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, (out, err)
    assert "allowlist mode" in err and "master_watch_mode: mirror" in err
    assert small.requests() == 0


def test_import_usage_errors_exit_2(login, small, tmp_path):
    cfg = master_config(login, small.url, tmp_path)
    proc = run_import(write_config(cfg, tmp_path / "master.conf"), "--workers", "0")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "--workers" in err


# ------------------------------------------------------------- 100,000


BIG = 100_000


@pytest.mark.big
@pytest.mark.timeout(2400)
def test_an_import_of_100000_projects_killed_half_way_resumes_with_one_job_each(
        pg, database, login, tmp_path):
    up = StaticUpstream(BIG)
    up.start()
    try:
        cfg = master_config(login, up.url, tmp_path)
        conf = write_config(cfg, tmp_path / "master.conf")
        log = tmp_path / "import.log"
        proc = run_import(conf, log=log)
        try:
            deadline = time.monotonic() + 1200
            while imported(pg, database) < BIG // 2:
                assert proc.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "the import made no progress"
                time.sleep(0.5)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        killed_at = imported(pg, database)
        assert BIG // 2 <= killed_at < BIG

        requests = up.requests()
        proc = run_import(conf, log=log)
        assert proc.wait(timeout=1800) == 0, log.read_text()[-3000:]
        assert f"{BIG} project(s) listed, {killed_at} imported before this run" \
            in log.read_text()
        # It went on from where it was: about half the projects fetched again, not all.
        assert up.requests() - requests <= BIG - killed_at + 100
        assert imported(pg, database) == BIG
        assert pg.query(database, "SELECT count(*) FROM packages")[0][0] == BIG
        assert pg.query(database, "SELECT count(*) FROM versions")[0][0] == BIG
        assert pg.query(database, "SELECT count(*) FROM jobs")[0][0] == BIG * len(TARGETS)
        one_job_per_release_and_target(pg, database)
    finally:
        up.destroy()
