"""The order jobs are claimed in (lanes, ageing, popularity, the backlog's share), operators
bumping and retrying, and builds cancelled while they run: on a real PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from harness.upstream import UpstreamIndex
from pinwheel import cli, db, project_page, watch
from pinwheel.config import MasterConfig, WatchConfig
from pinwheel.index_db import ProjectData, Release
from pinwheel.queue import BuilderQueue, ReportedFile
from pinwheel.schema import BUILDER_GROUP, MASTER_GROUP
from pinwheel.simple_index import ProjectStatus

X86, ARM = "cp311-linux_x86_64", "cp311-linux_armv7l"
SHA = "0" * 64


def builder(pg, database, name: str, platform: str = "linux_x86_64") -> BuilderQueue:
    dsn = pg.create_login(database, name, BUILDER_GROUP, f"pw-{name}")
    q = BuilderQueue(db.connect(dsn))
    q.register("cp311", platform, "debian bookworm", "3.11.2")
    return q


def release(pg, database, package: str, version: str, priority: int = 0,
            lane: str = "backlog", hours_ago: float = 0) -> None:
    """Record a release and queue it (plan_release) in ``lane``, queued ``hours_ago``."""
    pg.query(database, "INSERT INTO packages (package, display_name) VALUES (%s, %s) "
                       "ON CONFLICT DO NOTHING", (package, package))
    pg.query(database, "INSERT INTO versions (package, version, has_sdist) VALUES (%s, %s, true)",
             (package, version))
    pg.query(database, "SELECT plan_release(%s, %s, %s)", (package, version, priority))
    pg.query(database, "UPDATE jobs SET lane = %s, queued_at = now() - make_interval("
                       "secs => %s) WHERE package = %s AND version = %s",
             (lane, hours_ago * 3600, package, version))


def share(pg, database, percent: int) -> None:
    pg.query(database, "UPDATE queue_policy SET backlog_share = %s", (percent,))


def claims(q: BuilderQueue, n: int) -> list[str]:
    out = []
    for _ in range(n):
        job = q.claim()
        out.append(f"{job.package} {job.version}" if job else "-")
    return out


# ----------------------------------------------------------------- order


def test_bumped_then_new_releases_then_the_backlog(pg, database):
    q = builder(pg, database, "qo_lanes")
    share(pg, database, 0)
    release(pg, database, "old", "1", hours_ago=48)
    release(pg, database, "fresh", "2", lane="new")
    release(pg, database, "fresh", "1", lane="new", hours_ago=1)
    release(pg, database, "urgent", "1", lane="bumped")
    release(pg, database, "popular", "1", priority=100)
    assert claims(q, 6) == ["urgent 1", "fresh 1", "fresh 2", "popular 1", "old 1", "-"]


def test_a_job_ages_one_priority_point_per_hour(pg, database):
    """rank = queued_at - priority hours: priority 5 beats 4 hours of waiting, not 6."""
    q = builder(pg, database, "qo_age")
    release(pg, database, "waited6h", "1", hours_ago=6)
    release(pg, database, "prio5", "1", priority=5)
    release(pg, database, "waited4h", "1", hours_ago=4)
    assert claims(q, 3) == ["waited6h 1", "prio5 1", "waited4h 1"]
    # The trigger keeps rank in step when an operator changes a job's priority.
    release(pg, database, "later", "1")
    release(pg, database, "sooner", "1")
    pg.query(database, "UPDATE jobs SET priority = 1 WHERE package = 'sooner'")
    assert claims(q, 2) == ["sooner 1", "later 1"]


def test_the_backlog_keeps_a_share_of_claims_while_new_releases_keep_coming(pg, database):
    q = builder(pg, database, "qo_share")
    for i in range(30):
        release(pg, database, "new", str(i), lane="new")
        release(pg, database, "back", str(i), hours_ago=1)
    share(pg, database, 100)
    assert claims(q, 2) == ["back 0", "back 1"]
    share(pg, database, 0)
    assert claims(q, 2) == ["new 0", "new 1"]
    share(pg, database, 50)
    first = claims(q, 30)
    # Each claim tries the backlog first with probability 1/2: none in 30 is ~1e-9.
    assert 0 < sum(c.startswith("back") for c in first) < 30
    assert sum(c.startswith("new") for c in first) > 0


def download(pg, database, package: str, n: int) -> None:
    pg.query(database, "SELECT downloads_partition(now()), "
                       "downloads_partition(now() - interval '1 day')")
    pg.query(database, "INSERT INTO downloads (accessed_at, kind, path, status, package, "
                       "filename) SELECT now() - interval '1 day', 'wheel', '/packages/x', 200, "
                       "%s, 'x.whl' FROM generate_series(1, %s)", (package, n))


def test_popular_projects_move_up_by_a_day_per_factor_of_ten_downloads(pg, database):
    q = builder(pg, database, "qo_pop")
    release(pg, database, "quiet", "1", hours_ago=30)
    release(pg, database, "liked", "1")
    release(pg, database, "loved", "1", hours_ago=1)
    download(pg, database, "liked", 120)    # 2 days
    download(pg, database, "loved", 9)      # 1 day
    download(pg, database, "unknown", 50)   # not in the catalogue: not counted
    # Old downloads and failed requests do not count.
    pg.query(database, "INSERT INTO downloads (accessed_at, kind, path, status, package) "
                       "VALUES (now(), 'wheel', '/x', 404, 'quiet')")
    assert pg.query(database, "SELECT refresh_popularity()") == [(2,)]
    assert pg.query(database, "SELECT package, downloads_30d, boost_hours FROM "
                              "package_popularity ORDER BY 1") == \
        [("liked", 120, 48), ("loved", 9, 24)]
    assert pg.query(database, "SELECT refresh_popularity()") == [(None,)], "at most hourly"
    # liked: ranked 48 h early; loved: 25 h; quiet waited 30 h.
    assert claims(q, 3) == ["liked 1", "quiet 1", "loved 1"]
    # A job queued later for a popular project gets its boost at once.
    release(pg, database, "quiet", "2", hours_ago=40)
    release(pg, database, "liked", "2")
    assert claims(q, 2) == ["liked 2", "quiet 2"]
    # Popularity fades: the boost goes and queued jobs are ranked again.
    pg.query(database, "DELETE FROM downloads")
    release(pg, database, "liked", "3")
    release(pg, database, "quiet", "3", hours_ago=1)
    assert pg.query(database, "SELECT refresh_popularity('0 seconds')") == [(2,)]
    assert pg.query(database, "SELECT count(*) FROM package_popularity") == [(0,)]
    assert claims(q, 2) == ["quiet 3", "liked 3"]


# ------------------------------------------------- the watcher's new lane


@pytest.fixture
def up() -> Iterator[UpstreamIndex]:
    index = UpstreamIndex(build=False, serials=True)
    index.start()
    try:
        yield index
    finally:
        index.destroy()


def test_the_watcher_puts_releases_of_known_projects_in_the_new_lane(pg, database, up,
                                                                      tmp_path):
    pg.query(database, "INSERT INTO targets (abi, platform) VALUES ('cp311', 'linux_x86_64')")
    dsn = pg.create_login(database, "qo_watch", MASTER_GROUP, "watch-pw")
    (tmp_path / "www").mkdir()
    cfg = MasterConfig(dsn=dsn, www_root=tmp_path / "www", incoming_root=tmp_path / "in",
                       quarantine_root=tmp_path / "q", upstream_url=up.url,
                       watch=WatchConfig(mode="mirror"))
    up.add_release("pw-hist", "1.0")
    up.add_release("pw-hist", "1.1")
    up.add_release("pw-bin", "1.0", sdist=False, wheels=("py3-none-any",))
    watch.poll_once(cfg)
    # A project met for the first time is history: the backlog.
    assert pg.query(database, "SELECT version, lane FROM jobs ORDER BY 1") == \
        [("1.0", "backlog"), ("1.1", "backlog")]
    up.add_release("pw-hist", "2.0")
    up.add_release("pw-bin", "1.0", sdist=True)
    # A project created upstream after the first listing is new too, not history.
    up.add_release("pw-fresh", "0.1")
    watch.poll_once(cfg)
    assert pg.query(database, "SELECT package, version, lane FROM jobs ORDER BY 1, 2") == [
        ("pw-bin", "1.0", "new"), ("pw-fresh", "0.1", "new"), ("pw-hist", "1.0", "backlog"),
        ("pw-hist", "1.1", "backlog"), ("pw-hist", "2.0", "new")]
    assert pg.query(database, "SELECT package FROM watch_projects WHERE appeared_at IS NOT NULL"
                    ) == [("pw-fresh",)]


# ------------------------------------------------------ bump and retry


@pytest.fixture
def conf(pg, database, tmp_path) -> Path:
    for abi, platform in (("cp311", "linux_x86_64"), ("cp311", "linux_armv7l")):
        pg.query(database, "INSERT INTO targets (abi, platform) VALUES (%s, %s)", (abi, platform))
    for version in ("1.0", "2.0"):
        release(pg, database, "foo", version, hours_ago=2)
    release(pg, database, "other", "1.0", hours_ago=5)
    dsn = pg.create_login(database, "qo_master", MASTER_GROUP, "qo-pw")
    path = tmp_path / "master.conf"
    path.write_text(f"[master]\ndsn = {dsn}\n")
    return path


def run(conf: Path, capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main([*args, "--config", str(conf)])
    out, err = capsys.readouterr()
    return code, out, err


def test_bump_moves_queued_jobs_to_the_front(pg, database, conf, capsys):
    x86 = builder(pg, database, "qo_bump")
    running = x86.claim()
    assert running is not None and running.package == "other"
    code, out, _ = run(conf, capsys, "bump", "FOO", "2.0", "--target", ARM)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"foo 2.0 for {ARM}: 1 queued job(s) moved to the front of the queue"
    assert lines[1].split() == ["job", "version", "target", "state", "done"]
    assert lines[3].split()[1:] == ["2.0", ARM, "queued", "moved", "to", "the", "front"]
    code, out, _ = run(conf, capsys, "bump", "foo")
    assert code == 0 and out.startswith("foo: 3 queued job(s) moved to the front")
    assert "already at the front" in out
    assert x86.claim().version == "1.0"
    # A job being built is listed, not moved.
    code, out, _ = run(conf, capsys, "bump", "other", "1.0", "--target", X86)
    assert code == 0 and "building now" in out and "0 queued job(s) moved" in out


@pytest.mark.parametrize(("args", "code", "message"), [
    (("bump", "nope"), 1, "no project nope in the catalogue (`pinwheel add nope`"),
    (("bump", "foo", "9.9"), 1, "foo has no version 9.9 in the catalogue (latest known: "),
    (("bump", "foo", "--target", "cp27-linux_x86_64"), 1,
     f"no build target cp27-linux_x86_64; targets: {ARM}, {X86}"),
    (("bump", "foo", "--target", "cp311"), 2, "usage: pinwheel bump NAME [VERSION] [--target"),
    (("retry", "foo", "--target", "a-b-c"), 2, "is not a build target"),
    (("retry", "foo"), 1, "nothing to retry"),
])
def test_bad_requests_say_what_to_do(pg, database, conf, capsys, args, code, message):
    got, _, err = run(conf, capsys, *args)
    assert got == code
    assert message in err


def test_bump_of_a_release_with_nothing_queued(pg, database, conf, capsys):
    pg.query(database, "DELETE FROM jobs WHERE package = 'foo' AND version = '1.0'")
    code, _, err = run(conf, capsys, "bump", "foo", "1.0")
    assert code == 1
    assert "nothing of foo 1.0 is queued: `pinwheel add foo 1.0`" in err


def finish(q: BuilderQueue, status: str) -> None:
    job = q.claim()
    assert job is not None
    q.finish(job, status, datetime.now(timezone.utc), 1.0, None,
             [ReportedFile("foo.whl", 1, SHA)] if status == "success" else [])


def test_retry_queues_failed_and_timed_out_builds_again_at_the_front(pg, database, conf,
                                                                     capsys):
    x86 = builder(pg, database, "qo_retry_x86")
    arm = builder(pg, database, "qo_retry_arm", platform="linux_armv7l")
    pg.query(database, "DELETE FROM jobs WHERE package = 'other'")
    finish(x86, "failed")    # foo 1.0 x86
    finish(x86, "timeout")   # foo 2.0 x86
    finish(arm, "success")   # foo 1.0 arm
    finish(arm, "failed")    # foo 2.0 arm
    pg.query(database, "UPDATE versions SET skip_reason = 'needs CUDA' WHERE version = '2.0'")
    code, out, err = run(conf, capsys, "retry", "foo")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "foo: 1 failed build(s) queued again, at the front of the queue"
    assert lines[1].split() == ["version", "target", "last", "build", "finished", "job", "done"]
    rows = [line.split(None, 5) for line in lines[3:]]
    assert [(r[0], r[1], r[2]) for r in rows] == [("1.0", X86, "failed"), ("2.0", ARM, "failed"),
                                                  ("2.0", X86, "timeout")]
    assert rows[0][5].endswith("queued at the front")
    assert rows[1][5] == rows[2][5] == "skipped: needs CUDA"
    assert pg.query(database, "SELECT version, abi || '-' || platform, lane, attempts FROM jobs") \
        == [("1.0", X86, "bumped", 0)]
    # Again: it is queued already (exit 0, it is on its way); a skipped one alone: exit 1.
    code, out, _ = run(conf, capsys, "retry", "foo", "1.0")
    assert code == 0 and "already queued" in out
    code, out, err = run(conf, capsys, "retry", "foo", "2.0", "--target", ARM)
    assert code == 1 and "skipped: needs CUDA" in out
    assert "nothing could be queued again" in err and "`pinwheel unskip`" in err


# ------------------------------------------------ cancelled while building


def test_a_build_running_when_its_release_is_skipped_is_cancelled(pg, database, conf, capsys):
    q = builder(pg, database, "qo_cancel")
    pg.query(database, "DELETE FROM jobs WHERE package = 'other'")
    job = q.claim()
    assert (job.package, job.version) == ("foo", "1.0")
    code, out, _ = run(conf, capsys, "skip", "foo", "1.0", "--reason", "needs CUDA")
    assert code == 0 and "a build of it already running is cancelled" in out
    with pytest.raises(db.JobCancelled, match=r"job \d+ was cancelled: cancelled while "
                                              r"building: skipped: needs CUDA"):
        q.heartbeat(job)
    # Its report is refused, with the same error; nothing of it is recorded.
    with pytest.raises(db.JobCancelled, match="the master records and publishes nothing"):
        q.finish(job, "success", datetime.now(timezone.utc), 3.0, None,
                 [ReportedFile("foo-1.0-py3-none-any.whl", 10, SHA)])
    with pytest.raises(db.JobCancelled):
        q.release(job)
    assert pg.query(database, "SELECT status, builder, log_reason, ingest_state FROM builds") == \
        [("cancelled", "qo_cancel", "cancelled while building: skipped: needs CUDA", "done")]
    assert pg.query(database, "SELECT count(*) FROM files") == [(0,)]
    # Another builder asking about that job learns nothing about it.
    other = builder(pg, database, "qo_cancel2")
    with pytest.raises(db.LeaseLost) as info:
        other.heartbeat(job)
    assert not isinstance(info.value, db.JobCancelled)
    # Not retried: it was cancelled on purpose.
    assert run(conf, capsys, "retry", "foo", "1.0")[0] == 1


def test_a_build_running_when_its_project_is_removed_upstream_is_cancelled(pg, database, conf):
    q = builder(pg, database, "qo_gone")
    job = q.claim()
    pg.query(database, "UPDATE versions SET removed_upstream_at = now() "
                       "WHERE package = %s", (job.package,))
    with pytest.raises(db.JobCancelled, match="the release was removed upstream"):
        q.heartbeat(job)


# ------------------------------------------------------- project pages


def test_a_release_removed_upstream_is_marked_on_the_project_page():
    gone = datetime(2026, 11, 20, 23, 30, tzinfo=timezone.utc)
    data = ProjectData("demo", "Demo", ProjectStatus(), None, targets={X86: None})
    data.releases = [Release("1.0", None, False, None, None, True, None, gone),
                     Release("2.0", None, True, "broken", None, True, None)]
    html = project_page.render_html(data, None)
    assert '1.0 <span class="removed">removed upstream on 2026-11-20</span>' in html
    assert '<span class="yanked">yanked: broken</span>' in html
    doc = json.loads(project_page.render_json(data, None))
    by_version = {r["version"]: r for r in doc["releases"]}
    assert by_version["1.0"]["removed_upstream"] == "removed upstream on 2026-11-20"
    assert by_version["1.0"]["removed_upstream_at"] == "2026-11-20T23:30:00+00:00"
    assert by_version["2.0"]["removed_upstream"] is None
