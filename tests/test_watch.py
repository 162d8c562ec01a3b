"""`pinwheel watch` against a local upstream that changes between polls.

The upstream is harness.upstream.UpstreamIndex served over HTTP (PEP 691 JSON,
with PyPI's `_last-serial` where a test asks for it, ETags and 304s); the
catalogue is a real PostgreSQL database; the pages are the real index writer's.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from index_catalogue import DEMO, DEMO_DISPLAY, YANK_REASON, close_catalogue, make_catalogue

from harness.templates import render_role_template, write_role_template
from harness.upstream import UpstreamIndex
from pinwheel import db, upstream, watch
from pinwheel.config import ConfigError, MasterConfig, WatchConfig, allowlist_names
from pinwheel.schema import MASTER_GROUP

TARGETS = (("cp311", "linux_x86_64"), ("cp311", "linux_armv7l"))


@pytest.fixture
def up() -> Iterator[UpstreamIndex]:
    index = UpstreamIndex(build=False, serials=True)
    index.start()
    try:
        yield index
    finally:
        index.destroy()


def master_config(dsn: str, url: str, root: Path, **watch_settings) -> MasterConfig:
    (root / "www").mkdir(exist_ok=True)
    return MasterConfig(dsn=dsn, www_root=root / "www", incoming_root=root / "incoming",
                        quarantine_root=root / "quarantine", upstream_url=url,
                        watch=WatchConfig(**{"mode": "mirror", **watch_settings}))


@pytest.fixture
def farm(pg, database, up, tmp_path) -> MasterConfig:
    for abi, platform in TARGETS:
        pg.query(database, "INSERT INTO targets (abi, platform) VALUES (%s, %s)", (abi, platform))
    dsn = pg.create_login(database, "watch_master", MASTER_GROUP, "watch-pw")
    return master_config(dsn, up.url, tmp_path)


def q(pg, database, query: str, params: tuple = ()) -> list[tuple]:
    return pg.query(database, query, params)


def jobs(pg, database, package: str) -> list[tuple[str, str]]:
    rows = q(pg, database, "SELECT version, abi, platform FROM jobs WHERE package = %s "
                           "ORDER BY 1, 2, 3", (package,))
    return [(v, f"{a}-{p}") for v, a, p in rows]


def events(pg, database, package: str) -> list[tuple[str | None, str]]:
    return [tuple(r) for r in q(pg, database, "SELECT version, kind FROM upstream_events "
                                              "WHERE package = %s ORDER BY event_id", (package,))]


def project_requests(up: UpstreamIndex, package: str) -> list[int]:
    return [status for name, status in up.page_requests if name == package]


# ------------------------------------------------------------- new work


def test_a_new_project_and_a_new_release_queue_a_job_per_target_fetching_only_changes(
        pg, database, up, farm):
    up.add_release("pw-a", "1.0")
    up.add_release("pw-quiet", "1.0")
    first = watch.poll_once(farm)
    assert (first.due, first.fetched, first.jobs) == (2, 2, 4)
    assert jobs(pg, database, "pw-a") == [("1.0", "cp311-linux_armv7l"),
                                          ("1.0", "cp311-linux_x86_64")]
    assert events(pg, database, "pw-a") == [("1.0", "new-release")]

    up.page_requests.clear()
    up.add_release("pw-a", "1.1")
    second = watch.poll_once(farm)
    assert (second.due, second.jobs) == (1, 2)
    assert [v for v, _ in jobs(pg, database, "pw-a")] == ["1.0", "1.0", "1.1", "1.1"]
    # Only the project whose serial moved was fetched; the quiet one was not asked for.
    assert project_requests(up, "pw-a") == [200]
    assert project_requests(up, "pw-quiet") == []

    up.page_requests.clear()
    third = watch.poll_once(farm)
    assert (third.due, third.events, third.jobs) == (0, 0, 0)
    assert up.page_requests == [("", 304)], "an unchanged root is a 304 (If-None-Match)"


def test_a_binary_only_release_is_skipped_then_planned_when_an_sdist_appears(
        pg, database, up, farm):
    up.add_release("pw-bin", "1.0", sdist=False, wheels=("py3-none-any",))
    watch.poll_once(farm)
    assert q(pg, database, "SELECT has_sdist, skip_reason FROM versions "
                           "WHERE package = 'pw-bin'") == [(False, "binary only")]
    assert jobs(pg, database, "pw-bin") == []
    up.add_release("pw-bin", "1.0", sdist=True)
    result = watch.poll_once(farm)
    assert result.jobs == 2
    assert q(pg, database, "SELECT has_sdist, skip_reason FROM versions "
                           "WHERE package = 'pw-bin'") == [(True, None)]
    assert events(pg, database, "pw-bin") == [("1.0", "binary-only"), ("1.0", "sdist-added")]


def test_an_index_without_serials_is_polled_with_conditional_requests(pg, database, farm):
    plain = UpstreamIndex(build=False, serials=False)
    plain.start()
    try:
        cfg = master_config(farm.dsn, plain.url, farm.www_root.parent, mode="allowlist",
                            projects=["PW_Listed"])
        plain.add_release("pw-listed", "1.0")
        plain.add_release("pw-unlisted", "1.0")
        assert watch.poll_once(cfg).jobs == 2
        again = watch.poll_once(cfg)
        assert (again.due, again.unchanged, again.events) == (1, 1, 0)
        assert project_requests(plain, "pw-listed") == [200, 304]
        assert project_requests(plain, "pw-unlisted") == []
        assert q(pg, database, "SELECT count(*) FROM packages WHERE package = 'pw-unlisted'") \
            == [(0,)]
    finally:
        plain.destroy()


def test_history_latest_queues_only_the_newest_release_of_a_new_project(
        pg, database, up, farm):
    for version in ("1.0", "1.1", "2.0rc1"):
        up.add_release("pw-hist", version)
    cfg = master_config(farm.dsn, up.url, farm.www_root.parent, history="latest")
    assert watch.poll_once(cfg).jobs == 2
    assert {v for v, _ in jobs(pg, database, "pw-hist")} == {"1.1"}
    assert q(pg, database, "SELECT count(*) FROM versions WHERE package = 'pw-hist'") == [(3,)]
    up.add_release("pw-hist", "1.2")  # later releases are all queued
    watch.poll_once(cfg)
    assert {v for v, _ in jobs(pg, database, "pw-hist")} == {"1.1", "1.2"}


# ------------------------------------------------------------ spellings


def test_every_spelling_is_one_project(pg, database, up, farm):
    up.add_release("PwTest_Spell", "1.0")
    watch.poll_once(farm)
    up.respell("pwtest.SPELL")
    up.add_release("PWTEST-spell", "1.1")
    watch.poll_once(farm)
    assert q(pg, database, "SELECT package FROM packages") == [("pwtest-spell",)]
    assert q(pg, database, "SELECT package FROM watch_projects") == [("pwtest-spell",)]
    assert [v for v, _ in jobs(pg, database, "pwtest-spell")] == ["1.0", "1.0", "1.1", "1.1"]
    # An allowlist naming it twice, in two spellings, polls it once.
    cfg = master_config(farm.dsn, up.url, farm.www_root.parent, mode="allowlist",
                        projects=["PWTEST.Spell", "pwtest_spell"])
    up.page_requests.clear()
    assert watch.poll_once(cfg).due == 1
    assert project_requests(up, "pwtest-spell") == [304]


# -------------------------------------------------------------- deletions


def test_a_deleted_release_and_project_cancel_their_jobs_and_are_kept_marked(
        pg, database, up, farm):
    up.add_release("pw-del", "1.0")
    up.add_release("pw-del", "2.0")
    watch.poll_once(farm)
    assert len(jobs(pg, database, "pw-del")) == 4
    up.delete_release("pw-del", "2.0")
    result = watch.poll_once(farm)
    assert result.cancelled == 2
    assert [v for v, _ in jobs(pg, database, "pw-del")] == ["1.0", "1.0"]
    assert q(pg, database, "SELECT version FROM versions WHERE package = 'pw-del' AND "
                           "removed_upstream_at IS NOT NULL") == [("2.0",)]
    up.delete_project("pw-del")
    result = watch.poll_once(farm)
    assert (result.removed, result.cancelled) == (1, 2)
    assert jobs(pg, database, "pw-del") == []
    status, reason = q(pg, database, "SELECT status, status_reason FROM packages "
                                     "WHERE package = 'pw-del'")[0]
    assert status == "archived" and reason.startswith("removed from the upstream index")
    watch.poll_once(farm)  # nothing is recorded twice
    assert events(pg, database, "pw-del") == [
        ("1.0", "new-release"), ("2.0", "new-release"), ("2.0", "release-removed"),
        (None, "project-removed")]
    # It comes back: active again, its release planned again.
    up.add_release("pw-del", "3.0")
    watch.poll_once(farm)
    assert q(pg, database, "SELECT status, removed_upstream_at FROM packages") == \
        [("active", None)]
    assert events(pg, database, "pw-del")[-2:] == [(None, "project-returned"),
                                                   ("3.0", "new-release")]


# ------------------------------------------------- yanks and index pages


@pytest.fixture
def catalogue(pg, pg_template, tmp_path):
    (tmp_path / "www").mkdir()
    cat = make_catalogue(pg, pg_template, tmp_path / "www", tmp_path, "pinwheel_watch_pages")
    try:
        yield cat
    finally:
        close_catalogue(cat)
        pg.drop_database("pinwheel_watch_pages")


def page_files(www: Path, package: str) -> dict[str, object]:
    doc = json.loads((www / "simple" / package / "index.json").read_text())
    return {f["filename"].split("-")[1]: f.get("yanked", False) for f in doc["files"]}


def demo_upstream(up: UpstreamIndex) -> None:
    for version in ("1.0", "1.1", "1.2", "2.0", "3.0"):
        up.add_release(DEMO_DISPLAY, version)
    up.yank(DEMO, "1.1", YANK_REASON)


def test_a_yank_and_an_unyank_upstream_rewrite_the_index_pages_at_once(up, catalogue):
    demo_upstream(up)
    cfg = master_config(catalogue.cfg.dsn, up.url, catalogue.cfg.www_root.parent,
                        mode="allowlist", projects=[DEMO_DISPLAY])
    cfg.public_index_url = catalogue.cfg.public_index_url
    first = watch.poll_once(cfg)
    assert (first.events, first.jobs) == (0, 0), "a catalogue in step with upstream: no change"
    www = cfg.www_root
    assert page_files(www, DEMO)["1.2"] is False
    up.yank(DEMO, "1.2", "installs the wrong thing")
    up.unyank(DEMO, "1.1")
    result = watch.poll_once(cfg)
    assert result.events == 2
    files = page_files(www, DEMO)
    assert files["1.2"] == "installs the wrong thing"
    assert files["1.1"] is False
    html = (www / "simple" / DEMO / "index.html").read_text()
    assert 'data-yanked="installs the wrong thing"' in html


def test_with_on_removal_remove_a_deleted_release_leaves_the_index(up, catalogue):
    demo_upstream(up)
    cfg = master_config(catalogue.cfg.dsn, up.url, catalogue.cfg.www_root.parent,
                        mode="allowlist", projects=[DEMO], on_removal="remove")
    watch.poll_once(cfg)
    wheel = next((cfg.www_root / "packages" / DEMO).glob("*-1.2-*.whl"))
    up.delete_release(DEMO, "1.2")
    watch.poll_once(cfg)
    assert "1.2" not in page_files(cfg.www_root, DEMO)
    assert not wheel.exists() and not Path(f"{wheel}.metadata").exists()
    assert catalogue.admin("SELECT state FROM files WHERE package = %s AND version = '1.2'",
                           (DEMO,)) == [("removed",)]
    # The whole project: its pages go, and the root page no longer lists it.
    up.delete_project(DEMO)
    watch.poll_once(cfg)
    assert not (cfg.www_root / "simple" / DEMO).exists()
    assert DEMO not in (cfg.www_root / "simple" / "index.html").read_text()


def test_a_page_the_catalogue_refuses_is_recorded_and_the_others_go_on(
        pg, database, up, farm, tmp_path):
    up.add_release("pw-hostile", "1." + "0" * 210)   # versions are at most 200 characters
    up.add_release("pw-fine", "1.0")
    result = watch.poll_once(farm)
    assert len(result.errors) == 1 and "cannot record this page" in result.errors[0]
    assert result.jobs == 2
    error = q(pg, database, "SELECT last_error FROM watch_projects WHERE package = 'pw-hostile'")
    assert "cannot record this page" in error[0][0]
    assert q(pg, database, "SELECT count(*) FROM versions WHERE package = 'pw-hostile'") == [(0,)]
    # The command says so and exits 1; the project is retried at every poll.
    proc = run_watch(write_config(farm, tmp_path / "master.conf"), "--once")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "1 project(s) could not be read" in err


# ------------------------------------------------- restart, rate limits


def write_config(cfg: MasterConfig, path: Path) -> Path:
    path.write_text(f"""[master]
dsn = {cfg.dsn}
www_root = {cfg.www_root}
incoming_root = {cfg.incoming_root}
quarantine_root = {cfg.quarantine_root}
upstream_url = {cfg.upstream_url}

[watch]
mode = {cfg.watch.mode}
poll_seconds = 1
max_backoff_seconds = 2
""")
    return path


def run_watch(conf: Path, *args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "agent" / "src")}
    return subprocess.Popen([sys.executable, "-m", "pinwheel", "watch", "--config", str(conf),
                             *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kwargs)


def test_a_watcher_killed_in_the_middle_of_a_batch_misses_nothing_and_repeats_nothing(
        pg, database, up, farm, tmp_path):
    batch = [f"pw-batch{i}" for i in range(6)]
    for name in batch:
        up.add_release(name, "1.0")
    conf = write_config(farm, tmp_path / "master.conf")
    proc = run_watch(conf, "--once")
    served: list[str] = []

    def kill_on_third(package: str) -> None:
        served.append(package)
        if len(served) == 3:
            os.kill(proc.pid, signal.SIGKILL)

    up.on_project_request = kill_on_third
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    up.on_project_request = None
    done = q(pg, database, "SELECT count(*) FROM watch_projects WHERE last_serial IS NOT NULL")
    assert done[0][0] < len(batch), "killed in the middle of the batch"
    # While it is down: a processed project and an unprocessed one change again.
    up.add_release(batch[0], "1.1")
    up.add_release(batch[5], "1.1")
    again = run_watch(conf, "--once")
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    counts = Counter(tuple(r) for r in q(pg, database, "SELECT package, version, kind FROM "
                                                       "upstream_events"))
    expected = {(name, "1.0", "new-release") for name in batch}
    expected |= {(batch[0], "1.1", "new-release"), (batch[5], "1.1", "new-release")}
    assert set(counts) == expected and set(counts.values()) == {1}
    assert q(pg, database, "SELECT count(*), count(DISTINCT (package, version, abi, platform)) "
                           "FROM jobs") == [(16, 16)]
    # And a third run has nothing to do: no project page is fetched.
    up.page_requests.clear()
    third = run_watch(conf, "--once")
    out, err = third.communicate(timeout=120)
    assert third.returncode == 0, err
    assert "0 project(s) due" in out and up.page_requests == [("", 304)]


def test_rate_limits_stop_the_poll_and_report_retry_after(pg, database, up, farm):
    up.add_release("pw-slow", "1.0")
    up.fail_next(1, 429, "7")
    with pytest.raises(upstream.RateLimited) as info:
        watch.poll_once(farm)
    assert info.value.retry_after == 7.0
    up.fail_next(1, 503, "Wed, 21 Oct 2015 07:28:00 GMT")
    with pytest.raises(upstream.RateLimited) as info:
        watch.poll_once(farm)
    assert info.value.retry_after == 0.0, "a date in the past: no extra wait"
    assert watch.poll_once(farm).jobs == 2


def test_backoff_grows_with_jitter_is_capped_and_honours_retry_after():
    low, high = (lambda a, b: a), (lambda a, b: b)
    assert [watch.backoff_delay(n, 60, jitter=high) for n in (1, 2, 3, 10)] == [2, 4, 8, 60]
    assert watch.backoff_delay(3, 60, jitter=low) == 4
    assert watch.backoff_delay(1, 60, retry_after=30, jitter=high) == 30
    assert watch.backoff_delay(1, 60, retry_after=10 ** 9, jitter=high) == 86400


def test_the_service_backs_off_through_errors_and_then_records_the_change(
        pg, database, up, farm, tmp_path):
    conf = write_config(farm, tmp_path / "master.conf")
    up.add_release("pw-svc", "1.0")
    up.fail_next(2, 503, "1")
    proc = run_watch(conf)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not jobs(pg, database, "pw-svc"):
            time.sleep(0.2)
        assert len(jobs(pg, database, "pw-svc")) == 2
        up.yank("pw-svc", "1.0", "oops")
        while time.monotonic() < deadline and len(events(pg, database, "pw-svc")) < 2:
            time.sleep(0.2)
        assert events(pg, database, "pw-svc") == [("1.0", "new-release"), ("1.0", "yanked")]
        # A second watcher on the same database refuses to run beside it.
        other = run_watch(conf, "--once")
        _, err = other.communicate(timeout=60)
        assert other.returncode == 1 and "another `pinwheel watch` is running" in err
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert "rate limited" in err and "retrying in" in err


# ------------------------------------------------------------ the config


def test_allowlist_files_take_names_from_requirements_lines(tmp_path):
    assert allowlist_names("# farm\nnumpy\nPillow[extra]>=9 ; python_version>'3'\n"
                           "-r other.txt\n--index-url x\nfoo.bar==1  # pinned\n") == \
        ["numpy", "Pillow", "foo.bar"]
    conf = tmp_path / "master.conf"
    conf.write_text("[master]\ndsn = x\n[watch]\nmode = everything\n")
    with pytest.raises(ConfigError, match="mode must be mirror or allowlist"):
        MasterConfig.load(conf)
    conf.write_text("[master]\ndsn = x\n[watch]\nmode = allowlist\nprojects = a b\n"
                    f"projects_file = {tmp_path / 'list.txt'}\non_removal = remove\n")
    (tmp_path / "list.txt").write_text("c\n")
    cfg = MasterConfig.load(conf)
    assert cfg.watch.allowlist() == ["a", "b", "c"] and cfg.watch.on_removal == "remove"




def test_the_master_roles_templates_configure_the_watcher(tmp_path):
    conf = write_role_template(
        tmp_path / "master.conf", "master", "master.conf.j2",
        master_database_host="db", master_database_port=5432, master_database_name="pinwheel",
        master_database_user="m", master_database_password="pw", master_database_sslmode="require",
        master_www_root="/var/www/pinwheel", master_incoming_root="/srv/in",
        master_quarantine_root="/srv/q", master_upstream_url="https://pypi.org/simple/",
        master_ca_bundle="", master_max_wheel_size=1, master_max_log_size=1,
        master_public_index_url="", master_armv6l_alias=False,
        master_watch_mode="allowlist", master_watch_projects=["markupsafe", "Simple_JSON"],
        master_watch_projects_file="", master_watch_poll_seconds=30,
        master_watch_on_removal="remove", master_watch_history="latest",
        master_watch_max_backoff_seconds=600, master_watch_priority=5,
        master_logs_access_log="/var/log/pinwheel/access.json", master_logs_key_dir="/k",
        master_logs_key_keep_months=1, master_logs_batch_lines=10000)
    w = MasterConfig.load(conf).watch
    assert (w.mode, w.allowlist(), w.poll_seconds, w.on_removal, w.history,
            w.max_backoff_seconds, w.priority) == \
        ("allowlist", ["markupsafe", "Simple_JSON"], 30, "remove", "latest", 600, 5)
    # The watcher's unit is sandboxed like the ingest's, but writes only the www root.
    units = {}
    for unit in ("pinwheel-ingest.service", "pinwheel-watch.service"):
        text = render_role_template(
            "master", f"{unit}.j2", master_user="pinwheel", pinwheel_group="pinwheel",
            master_pinwheel_command="/opt/pinwheel/bin/pinwheel",
            __master_conf_file="/etc/pinwheel/master.conf", master_www_root="/var/www/pinwheel",
            master_incoming_root="/srv/in", master_quarantine_root="/srv/q",
            master_upstream_url="https://pypi.org/simple/", master_watch_mode="allowlist")
        units[unit] = text
    sandbox = [{line for line in text.splitlines()
                if "=" in line and not line.startswith(("#", "ExecStart", "Description",
                                                        "ReadWritePaths"))}
               for text in units.values()]
    assert sandbox[0] == sandbox[1]
    assert "ReadWritePaths=/var/www/pinwheel\n" in units["pinwheel-watch.service"]
    assert "watch --config /etc/pinwheel/master.conf" in units["pinwheel-watch.service"]


def test_a_second_watcher_waits_for_the_lock_then_takes_over(pg, database, up, farm, caplog):
    up.add_release("pw-standby", "1.0")
    holder = db.connect(farm.dsn)
    db.call(holder, "SELECT pg_advisory_lock(%s, 0)", (watch.WATCH_LOCK,))
    stop = threading.Event()
    farm.watch.poll_seconds = 1
    caplog.set_level(logging.INFO, logger="pinwheel.watch")
    thread = threading.Thread(target=watch.serve, args=(farm, stop))
    thread.start()
    try:
        deadline = time.monotonic() + 60
        # It tries again after each pause, and never polls without the lock.
        while time.monotonic() < deadline and caplog.text.count("another `pinwheel watch`") < 2:
            time.sleep(0.1)
        assert caplog.text.count("another `pinwheel watch` is running") >= 2
        assert up.page_requests == [], "no poll while another watcher holds the lock"
        holder.close()  # the first watcher goes away
        while time.monotonic() < deadline and not jobs(pg, database, "pw-standby"):
            time.sleep(0.2)
        assert len(jobs(pg, database, "pw-standby")) == 2
    finally:
        stop.set()
        thread.join(60)
        if not holder.closed:
            holder.close()
    assert not thread.is_alive()
