"""The master's ingest on a real PostgreSQL: builders report, ingest publishes or quarantines.

Each test registers a builder (its own login role), queues and claims jobs
through the real SQL functions, puts files in a tmp incoming directory,
finishes the job and runs ``process_pending`` as a pinwheel_master login.
"""

from __future__ import annotations

import gzip
import hashlib
import html
import os
import subprocess
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from test_verify import make_wheel, wheel_bytes

from harness.ports import free_port
from pinwheel import db, fsutil, index, ingest
from pinwheel.aptdeps import Library, System, wheel_libraries
from pinwheel.config import MasterConfig
from pinwheel.queue import BuilderQueue, Job, ReportedFile
from pinwheel.schema import BUILDER_GROUP, MASTER_GROUP

BUILDER = "ib_builder"
ABI, PLATFORM = "cp311", "linux_x86_64"
NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


@dataclass
class Farm:
    pg: Any
    database: str
    cfg: MasterConfig
    queue: BuilderQueue
    master: Any  # autocommit connection of a pinwheel_master login

    @property
    def incoming(self) -> Path:
        return self.cfg.incoming_root / BUILDER

    def admin(self, query: str, params: tuple = ()) -> list[tuple]:
        return self.pg.query(self.database, query, params)

    def claim(self, package: str = "foo", version: str = "1.0",
              requires_python: str | None = None) -> Job:
        self.admin("INSERT INTO packages (package, display_name) VALUES (%s, %s) "
                   "ON CONFLICT DO NOTHING", (package, package))
        self.admin("INSERT INTO versions (package, version, has_sdist, requires_python) "
                   "VALUES (%s, %s, true, %s)", (package, version, requires_python))
        self.admin("SELECT plan_release(%s, %s)", (package, version))
        job = self.queue.claim()
        assert job is not None and (job.package, job.version) == (package, version)
        return job

    def push(self, filename: str, data: bytes) -> ReportedFile:
        """Write a file into incoming as rsync would; return its honest report."""
        (self.incoming / filename).write_bytes(data)
        return ReportedFile(filename, len(data), hashlib.sha256(data).hexdigest())

    def push_wheel(self, name: str = "foo", version: str = "1.0", tag: str = "py3-none-any",
                   **kwargs: Any) -> ReportedFile:
        filename, size, sha = make_wheel(self.incoming, name, version, tag, **kwargs)
        return ReportedFile(filename, size, sha)

    def finish(self, job: Job, files: list[ReportedFile], log: ReportedFile | None = None,
               status: str = "success") -> int:
        return self.queue.finish(job, status, NOW, 12.5, log, files)

    def build(self, files: list[ReportedFile], package: str = "foo",
              version: str = "1.0") -> int:
        return self.finish(self.claim(package, version), files)

    def ingest(self, state: ingest.IngestState | None = None) -> int:
        return ingest.process_pending(self.master, self.cfg, state)

    def file_row(self, build_id: int) -> tuple[str, str | None]:
        rows = self.admin("SELECT state, reason FROM files WHERE build_id = %s", (build_id,))
        assert len(rows) == 1
        return rows[0]

    def published(self) -> list[str]:
        return sorted(p.name for p in (self.cfg.www_root / "packages").rglob("*")
                      if p.is_file()) if (self.cfg.www_root / "packages").exists() else []


@pytest.fixture
def farm(pg, database, tmp_path) -> Farm:
    builder_dsn = pg.create_login(database, BUILDER, BUILDER_GROUP, "pw-builder")
    master_dsn = pg.create_login(database, "ib_master", MASTER_GROUP, "pw-master")
    queue = BuilderQueue(db.connect(builder_dsn))
    queue.register(ABI, PLATFORM, "debian bookworm", "3.11.2")
    cfg = MasterConfig(dsn=master_dsn, www_root=tmp_path / "www",
                       incoming_root=tmp_path / "incoming",
                       quarantine_root=tmp_path / "quarantine",
                       max_wheel_size=10 << 20, max_log_size=1 << 20)
    (cfg.incoming_root / BUILDER).mkdir(parents=True)
    master = db.connect(master_dsn)
    yield Farm(pg, database, cfg, queue, master)
    master.close()
    queue.conn.close()


def assert_quarantined(farm: Farm, build_id: int, why: str) -> str:
    state, reason = farm.file_row(build_id)
    assert state == "quarantined"
    assert why in reason
    assert farm.published() == [], "nothing may be published"
    assert farm.admin("SELECT ingest_state FROM builds WHERE build_id = %s",
                      (build_id,)) == [("done",)]
    return reason


# --------------------------------------------------------------- publishing


def test_good_wheel_is_published_with_metadata_and_index_pages(farm):
    job = farm.claim("foo", "1.0")
    wheel = farm.push_wheel(tag="cp311-cp311-linux_x86_64", requires_python=">=3.9")
    build_id = farm.finish(job, [wheel])
    assert farm.ingest() == 1

    www = farm.cfg.www_root
    published = www / "packages" / "foo" / wheel.filename
    assert published.read_bytes() == wheel_bytes(tag="cp311-cp311-linux_x86_64",
                                                  requires_python=">=3.9")
    assert oct(published.stat().st_mode & 0o777) == "0o644"
    metadata = (www / "packages" / "foo" / f"{wheel.filename}.metadata").read_bytes()
    assert metadata.startswith(b"Metadata-Version: 2.1\nName: foo\nVersion: 1.0\n")
    assert not (farm.incoming / wheel.filename).exists(), "the incoming copy is removed"

    row = farm.admin("SELECT state, package, version, python_tag, abi_tag, platform_tag, "
                     "requires_python, metadata_sha256, published_at IS NOT NULL "
                     "FROM files WHERE build_id = %s", (build_id,))
    assert row == [("published", "foo", "1.0", "cp311", "cp311", "linux_x86_64", ">=3.9",
                    hashlib.sha256(metadata).hexdigest(), True)]

    page = (www / "simple" / "foo" / "index.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert '<meta name="pypi:repository-version" content="1.4">' in page
    assert (f'<a href="../../packages/foo/{wheel.filename}#sha256={wheel.sha256}" '
            f'data-requires-python="&gt;=3.9"') in page
    assert f'data-core-metadata="sha256={hashlib.sha256(metadata).hexdigest()}"' in page
    root = (www / "simple" / "index.html").read_text()
    assert '<a href="foo/">foo</a>' in root


def test_second_release_is_added_to_the_page_in_version_order(farm):
    farm.build([farm.push_wheel(version="1.10")], version="1.10")
    farm.build([farm.push_wheel(version="1.9")], version="1.9")
    assert farm.ingest() == 2
    page = (farm.cfg.www_root / "simple" / "foo" / "index.html").read_text()
    assert page.index("foo-1.9-py3-none-any.whl") < page.index("foo-1.10-py3-none-any.whl")
    assert index.write_root(farm.master, farm.cfg.www_root) is False, "projects unchanged"


def test_root_page_is_rewritten_only_when_the_set_of_projects_changes(farm):
    farm.build([farm.push_wheel("foo")], "foo")
    farm.ingest()
    root = farm.cfg.www_root / "simple" / "index.html"
    assert index.write_root(farm.master, farm.cfg.www_root) is False
    farm.build([farm.push_wheel("bar")], "bar")
    farm.ingest()
    assert '<a href="bar/">bar</a>' in root.read_text()
    assert '<a href="foo/">foo</a>' in root.read_text()


def test_failed_build_log_is_published_at_logs_build_id(farm):
    job = farm.claim()
    log = farm.push(f"job-{job.job_id}.log.gz", gzip.compress(b"error: no compiler\n"))
    build_id = farm.finish(job, [], log=log, status="failed")
    assert farm.ingest() == 1
    published = farm.cfg.www_root / "logs" / f"{build_id}.log.gz"
    assert gzip.decompress(published.read_bytes()) == b"error: no compiler\n"
    assert farm.admin("SELECT log_path, log_reason, ingest_state FROM builds "
                      "WHERE build_id = %s", (build_id,)) == [
        (f"logs/{build_id}.log.gz", None, "done")]
    assert not (farm.incoming / log.filename).exists()


def test_log_that_is_not_gzip_is_refused_and_quarantined(farm):
    job = farm.claim()
    log = farm.push(f"job-{job.job_id}.log.gz", b"plain text log\n")
    build_id = farm.finish(job, [], log=log, status="failed")
    farm.ingest()
    path, reason = farm.admin("SELECT log_path, log_reason FROM builds WHERE build_id = %s",
                              (build_id,))[0]
    assert path is None and "not gzip-compressed" in reason
    assert not (farm.cfg.www_root / "logs" / f"{build_id}.log.gz").exists()
    assert (farm.cfg.quarantine_root / BUILDER / f"build{build_id}-{log.filename}").exists()


def rebuild(farm: Farm, first_build: int) -> Job:
    """Queue and claim foo 1.0 again (an operator marked the first build failed)."""
    farm.admin("UPDATE builds SET status = 'failed' WHERE build_id = %s", (first_build,))
    farm.admin("SELECT plan_release('foo', '1.0')")
    job = farm.queue.claim()
    assert job is not None
    return job


def test_identical_wheel_reported_by_a_rebuild_is_marked_duplicate(farm):
    first = farm.build([farm.push_wheel()])
    farm.ingest()
    job = rebuild(farm, first)
    second = farm.finish(job, [farm.push_wheel()])
    farm.ingest()
    assert farm.file_row(first) == ("published", None)
    assert farm.file_row(second) == ("quarantined", "duplicate of an already published file")
    assert not (farm.incoming / "foo-1.0-py3-none-any.whl").exists()
    assert not farm.cfg.quarantine_root.exists(), "a duplicate is not kept"
    assert len(farm.published()) == 2, "the wheel and its .metadata, once"


def test_different_wheel_with_a_published_name_is_quarantined(farm):
    first = farm.build([farm.push_wheel()])
    farm.ingest()
    job = rebuild(farm, first)
    changed = farm.push_wheel(members={"foo/__init__.py": b"VALUE = 2\n"})
    second = farm.finish(job, [changed])
    farm.ingest()
    state, reason = farm.file_row(second)
    assert state == "quarantined" and "a different file named" in reason
    published = farm.cfg.www_root / "packages" / "foo" / changed.filename
    assert hashlib.sha256(published.read_bytes()).hexdigest() != changed.sha256, \
        "the published file is not replaced"
    file_id = farm.admin("SELECT file_id FROM files WHERE build_id = %s", (second,))[0][0]
    assert (farm.cfg.quarantine_root / BUILDER / f"{file_id}-{changed.filename}").exists()


# ----------------------------------------------------------------- refusals


def test_wheel_whose_hash_differs_from_the_report_is_quarantined(farm):
    wheel = farm.push_wheel()
    lie = ReportedFile(wheel.filename, wheel.size, "f" * 64)
    build_id = farm.build([lie])
    farm.ingest()
    assert_quarantined(farm, build_id, "but the builder reported " + "f" * 64)
    file_id = farm.admin("SELECT file_id FROM files WHERE build_id = %s", (build_id,))[0][0]
    kept = farm.cfg.quarantine_root / BUILDER / f"{file_id}-{wheel.filename}"
    assert kept.read_bytes() == wheel_bytes(), "kept in quarantine for inspection"
    assert not (farm.incoming / wheel.filename).exists()


def test_wheel_for_another_package_is_quarantined(farm):
    build_id = farm.build([farm.push_wheel("bar")], "foo")
    farm.ingest()
    assert_quarantined(farm, build_id, "is a wheel of 'bar', but the job was 'foo'")


def test_wheel_for_another_version_is_quarantined(farm):
    build_id = farm.build([farm.push_wheel(version="2.0")], "foo", "1.0")
    farm.ingest()
    assert_quarantined(farm, build_id, "is version 2.0, but the job was 1.0")


@pytest.mark.parametrize("reported", ["../foo-1.0-py3-none-any.whl",
                                      "sub/foo-1.0-py3-none-any.whl",
                                      "foo-1.0-py3-none-any..whl"])
def test_reported_names_with_a_slash_or_dotdot_are_quarantined_unread(farm, reported):
    # A real, valid wheel sits where the name would lead if it were followed.
    (farm.incoming / "sub").mkdir()
    for where in (farm.cfg.incoming_root, farm.incoming / "sub"):
        make_wheel(where)
    bait = farm.cfg.incoming_root / "foo-1.0-py3-none-any.whl"
    report = ReportedFile(reported, bait.stat().st_size,
                          hashlib.sha256(bait.read_bytes()).hexdigest())
    build_id = farm.build([report])
    farm.ingest()
    reason = assert_quarantined(farm, build_id, "file name")
    assert "path separator" in reason or "'..'" in reason
    assert bait.exists() and (farm.incoming / "sub" / bait.name).exists(), "nothing was moved"
    assert not farm.cfg.quarantine_root.exists()


def test_non_zip_wheel_is_quarantined(farm):
    build_id = farm.build([farm.push("foo-1.0-py3-none-any.whl", b"MZ\x90\x00 not a zip")])
    farm.ingest()
    assert_quarantined(farm, build_id, "not a valid zip archive")


def test_symlink_in_incoming_is_quarantined_and_its_target_untouched(farm, tmp_path):
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$secret\n")
    (farm.incoming / "foo-1.0-py3-none-any.whl").symlink_to(secret)
    report = ReportedFile("foo-1.0-py3-none-any.whl", secret.stat().st_size,
                          hashlib.sha256(secret.read_bytes()).hexdigest())
    build_id = farm.build([report])
    farm.ingest()
    assert_quarantined(farm, build_id, "is a symlink, not a regular file")
    assert secret.read_text() == "root:$6$secret\n"
    quarantined = list(farm.cfg.quarantine_root.rglob("*.whl"))
    assert quarantined == [], "the secret is never copied into quarantine"
    assert (farm.incoming / report.filename).is_symlink(), "left for the operator"


@pytest.mark.parametrize("tag", ["cp39-cp39-linux_x86_64", "cp311-cp311-linux_armv7l",
                                 "cp313-cp313-linux_x86_64"])
def test_wheel_whose_tags_do_not_fit_the_builder_is_quarantined(farm, tag):
    build_id = farm.build([farm.push_wheel(tag=tag)])
    farm.ingest()
    assert_quarantined(farm, build_id, "does not fit builder cp311/linux_x86_64")


def test_wheel_with_a_record_hash_mismatch_is_quarantined(farm):
    def lie(rows):
        rows[0][1] = "sha256=" + "A" * 43

    build_id = farm.build([farm.push_wheel(tamper_record=lie)])
    farm.ingest()
    assert_quarantined(farm, build_id, "'foo/__init__.py' does not match its RECORD hash")


def test_wheel_that_was_never_pushed_is_quarantined(farm):
    build_id = farm.build([ReportedFile("foo-1.0-py3-none-any.whl", 10, "0" * 64)])
    farm.ingest()
    assert_quarantined(farm, build_id, "not in the builder's incoming directory")


def test_missing_incoming_directory_is_a_quarantine_reason_not_a_crash(farm):
    wheel = farm.push_wheel()
    build_id = farm.build([wheel])
    (farm.incoming / wheel.filename).unlink()
    farm.incoming.rmdir()
    assert farm.ingest() == 1
    assert_quarantined(farm, build_id, "incoming directory")


def test_files_of_an_unregistered_builder_are_quarantined(farm):
    build_id = farm.build([farm.push_wheel()])
    farm.admin("UPDATE builders SET platform = NULL WHERE builder = %s", (BUILDER,))
    farm.ingest()
    assert_quarantined(farm, build_id, f"builder {BUILDER} is unknown")


def test_wheels_of_a_failed_build_are_not_published(farm):
    job = farm.claim()
    build_id = farm.finish(job, [farm.push_wheel()], status="failed")
    farm.ingest()
    assert_quarantined(farm, build_id, "did not succeed (status failed)")


def test_one_bad_file_does_not_stop_the_good_one_in_the_same_build(farm):
    good = farm.push_wheel(tag="py3-none-any")
    bad = farm.push_wheel(tag="cp311-cp311-linux_armv7l")
    build_id = farm.build([good, bad])
    farm.ingest()
    rows = dict(farm.admin("SELECT filename, state FROM files WHERE build_id = %s",
                           (build_id,)))
    assert rows == {good.filename: "published", bad.filename: "quarantined"}


# --------------------------------------------------------- robustness, service


def test_a_build_that_fails_unexpectedly_is_rolled_back_and_does_not_block_others(farm):
    poison = farm.build([farm.push_wheel("foo")], "foo")
    good = farm.build([farm.push_wheel("bar")], "bar")
    (farm.cfg.www_root / "packages").mkdir(parents=True)
    (farm.cfg.www_root / "packages" / "foo").write_text("not a directory")
    state = ingest.IngestState()
    assert farm.ingest(state) == 1
    assert farm.file_row(good) == ("published", None)
    assert farm.file_row(poison) == ("pending", None)
    assert farm.admin("SELECT ingest_state FROM builds WHERE build_id = %s",
                      (poison,)) == [("pending",)]
    assert state.failed_builds == {poison}
    assert (farm.incoming / "foo-1.0-py3-none-any.whl").exists(), "kept for the retry"
    assert farm.ingest(state) == 0, "the poison build is not retried in this run"
    (farm.cfg.www_root / "packages" / "foo").unlink()
    assert farm.ingest() == 1, "a new run (a restart) retries it"
    assert farm.file_row(poison) == ("published", None)


def test_a_build_locked_by_another_ingest_is_skipped(farm):
    build_id = farm.build([farm.push_wheel()])
    other = farm.pg.admin(farm.database)
    other.autocommit = False
    with other.cursor() as cur:
        cur.execute("SELECT 1 FROM pinwheel.builds WHERE build_id = %s FOR UPDATE",
                    (build_id,))
        assert farm.ingest() == 0
    other.rollback()
    other.close()
    assert farm.file_row(build_id) == ("pending", None)
    assert farm.ingest() == 1


def test_two_ingest_processes_share_the_work_without_collisions(farm):
    builds = [farm.build([farm.push_wheel(package, f"1.{i}")], package, f"1.{i}")
              for i in range(8) for package in ("foo", "bar")]
    conns = [db.connect(farm.cfg.dsn) for _ in range(2)]
    start = threading.Barrier(2)
    counts: list[int] = []

    def worker(conn) -> None:
        start.wait()
        counts.append(ingest.process_pending(conn, farm.cfg))

    threads = [threading.Thread(target=worker, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for c in conns:
        c.close()
    assert sum(counts) == len(builds), "every build ingested exactly once"
    assert farm.admin("SELECT count(*) FROM files WHERE state = 'published'") == [(16,)]
    for package in ("foo", "bar"):
        page = (farm.cfg.www_root / "simple" / package / "index.html").read_text()
        assert page.count("<a href=") == 8, "the last page written lists every file"


def test_process_pending_restores_the_connections_autocommit(farm):
    farm.build([farm.push_wheel()])
    farm.ingest()
    assert farm.master.autocommit is True


def wait_for(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def expired_lease_of_a_departed_builder(farm: Farm) -> int:
    """A cp39 job leased by a builder that went away: no claim will ever requeue it."""
    farm.admin("INSERT INTO targets (abi, platform) VALUES ('cp39', 'linux_armv7l')")
    farm.admin("INSERT INTO builders (builder, abi, platform) "
               "VALUES ('ib_gone', 'cp39', 'linux_armv7l')")
    farm.admin("INSERT INTO packages (package, display_name) VALUES ('baz', 'baz')")
    farm.admin("INSERT INTO versions (package, version, has_sdist) VALUES ('baz', '1.0', true)")
    return farm.admin(
        "INSERT INTO jobs (package, version, abi, platform, state, builder, lease_token, "
        "lease_expires, attempts) VALUES ('baz', '1.0', 'cp39', 'linux_armv7l', 'leased', "
        "'ib_gone', gen_random_uuid(), "
        "now() - interval '1 second', 1) RETURNING job_id")[0][0]


def test_serve_ingests_on_notify_survives_a_lost_connection_and_requeues_leases(farm):
    stop = threading.Event()
    thread = threading.Thread(target=ingest.serve, args=(farm.cfg, stop),
                              kwargs={"poll_seconds": 3600, "janitor_seconds": 3600,
                                      "max_backoff": 1})
    first = farm.build([farm.push_wheel()])
    thread.start()
    try:
        wait_for(lambda: farm.file_row(first)[0] == "published", "the pending build")
        second = farm.build([farm.push_wheel("bar")], "bar")
        wait_for(lambda: farm.file_row(second)[0] == "published", "a NOTIFY")
        # The janitor runs when ingest (re)connects, then every janitor_seconds.
        expired = expired_lease_of_a_departed_builder(farm)
        farm.admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                   "WHERE application_name = 'pinwheel-ingest' AND datname = %s",
                   (farm.database,))
        third = farm.build([farm.push_wheel("qux")], "qux")
        wait_for(lambda: farm.file_row(third)[0] == "published", "ingest after reconnecting")
        wait_for(lambda: farm.admin("SELECT state FROM jobs WHERE job_id = %s",
                                    (expired,)) == [("queued",)],
                 "the janitor to requeue the expired lease")
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()


def test_serve_rebuilds_an_index_written_by_an_older_pinwheel_when_it_starts(farm):
    """An upgraded master does not serve old pages beside new ones."""
    farm.build([farm.push_wheel()])
    farm.ingest()
    page_dir = farm.cfg.www_root / "simple" / "foo"
    # As the first index writer left it: HTML only, no JSON variant, no stamp.
    (page_dir / index.JSON_FILE).unlink()
    (page_dir / index.INDEX_FILE).write_text("<!DOCTYPE html><title>old</title>")
    (farm.cfg.www_root / index.FORMAT_STAMP).unlink(missing_ok=True)
    assert not index.is_current(farm.cfg.www_root)
    stop = threading.Event()
    thread = threading.Thread(target=ingest.serve, args=(farm.cfg, stop),
                              kwargs={"poll_seconds": 3600, "janitor_seconds": 3600})
    thread.start()
    try:
        wait_for(lambda: index.is_current(farm.cfg.www_root), "the index to be rebuilt")
    finally:
        stop.set()
        thread.join(30)
    assert (page_dir / index.JSON_FILE).is_file()
    assert "foo-1.0-py3-none-any.whl" in (page_dir / index.INDEX_FILE).read_text()


def test_serve_keeps_retrying_an_unreachable_database_until_stopped(tmp_path, caplog):
    cfg = MasterConfig(dsn=f"host=127.0.0.1 port={free_port()} user=x password=x dbname=x",
                       www_root=tmp_path / "www", incoming_root=tmp_path / "in",
                       quarantine_root=tmp_path / "q")
    stop = threading.Event()
    caplog.set_level("INFO", logger="pinwheel.ingest")
    thread = threading.Thread(target=ingest.serve, args=(cfg, stop), kwargs={"max_backoff": 0.2})
    thread.start()
    try:
        wait_for(lambda: sum("cannot connect to the database" in r.getMessage()
                             for r in caplog.records) >= 2, "two failed connection attempts")
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert any("ingest stopped" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------- index pages


def test_project_page_escapes_untrusted_text_and_marks_yanked_files():
    files = [index.IndexFile("foo-1.0-py3-none-any.whl", "a" * 64, "1.0",
                             requires_python='>=3.9"><script>alert(1)</script>',
                             yanked=True, yanked_reason="broken <b>"),
             index.IndexFile("foo-0.9+local-py3-none-any.whl", "b" * 64, "0.9+local")]
    page = index.render_project("foo", files)
    assert "<script>" not in page and "<b>" not in page
    assert html.escape('>=3.9"><script>alert(1)</script>', quote=True) in page
    assert 'data-yanked="broken &lt;b&gt;"' in page
    assert page.index("foo-0.9") < page.index("foo-1.0")
    assert "../../packages/foo/foo-0.9%2Blocal-py3-none-any.whl#sha256=" + "b" * 64 in page


def test_write_project_refuses_a_name_that_is_not_normalised(farm):
    with pytest.raises(ValueError, match="not a normalised project name"):
        index.write_project(farm.master, farm.cfg.www_root, "../etc")


def test_new_project_directory_appears_complete_and_readable(farm):
    farm.build([farm.push_wheel()])
    farm.ingest()
    simple = farm.cfg.www_root / "simple"
    assert sorted(p.name for p in simple.iterdir()) == ["foo", "index.html", "index.html.gz",
                                                    "index.json", "index.json.gz"], \
        "no temporary directories are left behind"
    assert sorted(p.name for p in (simple / "foo").iterdir()) == ["index.html", "index.json"]
    assert oct(os.stat(simple / "foo").st_mode & 0o777) == "0o755"
    assert oct(os.stat(simple / "foo" / "index.html").st_mode & 0o777) == "0o644"


# ------------------------------------------------- atomic writes (fsutil)


def test_atomic_copy_with_the_wrong_digest_leaves_the_destination_untouched(tmp_path):
    src = tmp_path / "src.whl"
    src.write_bytes(b"new bytes")
    dest = tmp_path / "out" / "dest.whl"
    dest.parent.mkdir()
    dest.write_bytes(b"old bytes")
    with pytest.raises(fsutil.DigestMismatch, match="did the source change"):
        fsutil.atomic_copy(src, dest, sha256="0" * 64)
    assert dest.read_bytes() == b"old bytes"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["dest.whl"], "no temp file left"
    fd = os.open(src, os.O_RDONLY)
    try:
        os.read(fd, 3)  # a descriptor is copied from its start, whatever its offset
        got = fsutil.atomic_copy(fd, dest, sha256=hashlib.sha256(b"new bytes").hexdigest())
    finally:
        os.close(fd)
    assert dest.read_bytes() == b"new bytes" and got == hashlib.sha256(b"new bytes").hexdigest()
    assert oct(dest.stat().st_mode & 0o777) == "0o644"


def test_atomic_write_replaces_the_file_and_make_dirs_refuses_a_file_in_the_way(tmp_path):
    target = tmp_path / "a" / "b" / "page.html"
    fsutil.make_dirs(target.parent)
    fsutil.atomic_write_text(target, "one")
    fsutil.atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert oct((tmp_path / "a").stat().st_mode & 0o777) == "0o755"
    with pytest.raises(NotADirectoryError, match="is not a directory"):
        fsutil.make_dirs(target)


# ------------------------------------------------------------ apt dependencies


def _ctypes_extension() -> bytes:
    """The system Python's _ctypes: a real extension needing libffi and libc."""
    path = subprocess.run(["/usr/bin/python3", "-c", "import _ctypes; print(_ctypes.__file__)"],
                          capture_output=True, text=True, check=True).stdout.strip()
    return Path(path).read_bytes()


def test_the_master_keeps_a_list_of_libraries_that_fits_the_wheel(farm):
    so = _ctypes_extension()
    wheel = farm.push_wheel(tag="cp311-cp311-linux_x86_64", members={"foo/_c.so": so})
    honest = wheel_libraries(farm.incoming / wheel.filename, System())
    assert any(lib.library.startswith("libffi.so.") for lib in honest)
    build_id = farm.build([ReportedFile(wheel.filename, wheel.size, wheel.sha256,
                                        tuple(honest))])
    farm.ingest()
    assert farm.file_row(build_id) == ("published", None)
    assert farm.admin("SELECT libraries_checked, libraries_refused FROM files "
                      "WHERE build_id = %s", (build_id,)) == [(True, None)]
    stored = farm.admin("SELECT l.library, l.package FROM file_libraries l JOIN files f "
                        "USING (file_id) WHERE f.build_id = %s ORDER BY 1", (build_id,))
    assert stored == [(lib.library, lib.package) for lib in honest]


def test_the_master_drops_a_list_of_libraries_the_wheel_does_not_need(farm):
    so = _ctypes_extension()
    wheel = farm.push_wheel(tag="cp311-cp311-linux_x86_64", members={"foo/_c.so": so})
    # A lying builder: a package the wheel does not need, to get onto the apt line.
    lie = (Library("libc.so.6", "debian", "libc6", True),
           Library("libevil.so.1", "debian", "evil-tools"))
    build_id = farm.build([ReportedFile(wheel.filename, wheel.size, wheel.sha256, lie)])
    farm.ingest()
    assert farm.file_row(build_id) == ("published", None), "the wheel itself is fine"
    (checked, refused), = farm.admin("SELECT libraries_checked, libraries_refused FROM files "
                                     "WHERE build_id = %s", (build_id,))
    assert checked is False
    assert refused.startswith("the master refused the builder's list of shared libraries: ")
    assert "libevil.so.1, which no ELF file of the wheel needs" in refused
    assert "the wheel needs libffi.so." in refused
    assert farm.admin("SELECT count(*) FROM file_libraries")[0][0] == 0
    page = (farm.cfg.www_root / "project" / "foo" / "index.html").read_text()
    assert "evil-tools" not in page and "sudo apt install" not in page
    assert html.escape("libevil.so.1, which no ELF file", quote=True) in page
