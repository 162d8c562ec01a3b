"""`pinwheel skip` / `unskip` of a project, a release or a target, on a real database."""

from __future__ import annotations

from pathlib import Path

import pytest

from pinwheel import cli, db
from pinwheel.queue import BuilderQueue
from pinwheel.schema import BUILDER_GROUP, MASTER_GROUP

X86, ARM = "cp311-linux_x86_64", "cp311-linux_armv7l"


@pytest.fixture
def conf(pg, database, tmp_path) -> Path:
    for abi, platform in (("cp311", "linux_x86_64"), ("cp311", "linux_armv7l")):
        pg.query(database, "INSERT INTO targets (abi, platform) VALUES (%s, %s)", (abi, platform))
    pg.query(database, "INSERT INTO packages (package, display_name) VALUES ('foo', 'Foo')")
    for version, sdist in (("1.0", True), ("2.0", True), ("3.0", False)):
        pg.query(database, "INSERT INTO versions (package, version, has_sdist, skip_reason) "
                           "VALUES ('foo', %s, %s, %s)",
                 (version, sdist, None if sdist else "binary only"))
        pg.query(database, "SELECT plan_release('foo', %s)", (version,))
    dsn = pg.create_login(database, "skip_master", MASTER_GROUP, "skip-pw")
    path = tmp_path / "master.conf"
    path.write_text(f"[master]\ndsn = {dsn}\n")
    return path


def run(conf: Path, capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main([*args, "--config", str(conf)])
    out, err = capsys.readouterr()
    return code, out, err


def queued(pg, database) -> list[tuple[str, str]]:
    return [(v, t) for v, t in pg.query(database, "SELECT version, abi || '-' || platform "
                                                  "FROM jobs ORDER BY 1, 2")]


def test_skipping_a_release_cancels_its_jobs_and_unskipping_queues_them_again(
        pg, database, conf, capsys):
    assert len(queued(pg, database)) == 4
    code, out, _ = run(conf, capsys, "skip", "FOO", "1.0", "--reason", "needs  CUDA")
    assert code == 0
    assert out.splitlines()[0] == "skipped foo 1.0 (needs CUDA): 2 queued job(s) cancelled"
    assert queued(pg, database) == [("2.0", ARM), ("2.0", X86)]
    assert pg.query(database, "SELECT skip_reason FROM versions WHERE version = '1.0'") == \
        [("needs CUDA",)]
    # Planning (pinwheel add, pinwheel watch) respects it.
    assert pg.query(database, "SELECT plan_release('foo', '1.0')") == [(0,)]
    code, out, _ = run(conf, capsys, "unskip", "foo", "1.0")
    assert (code, out.strip()) == (0, "foo 1.0 unskipped: 2 job(s) queued")
    assert len(queued(pg, database)) == 4
    code, out, _ = run(conf, capsys, "unskip", "foo", "1.0")
    assert (code, out.strip()) == (0, "foo 1.0 was not skipped: 0 job(s) queued")


def test_skipping_a_project_or_a_target(pg, database, conf, capsys):
    assert run(conf, capsys, "skip", "foo", "--reason", "licence")[0] == 0
    assert queued(pg, database) == []
    assert run(conf, capsys, "unskip", "foo")[1].strip() == "foo unskipped: 4 job(s) queued"
    code, out, _ = run(conf, capsys, "skip", "--target", ARM, "--reason", "board is broken")
    assert code == 0 and f"skipped target {ARM}" in out and "2 queued job(s)" in out
    assert {t for _, t in queued(pg, database)} == {X86}
    assert pg.query(database, "SELECT plan_release('foo', '1.0')") == [(0,)]
    code, out, _ = run(conf, capsys, "unskip", "--target", ARM)
    assert out.strip() == f"target {ARM} unskipped: 2 job(s) queued"
    assert len(queued(pg, database)) == 4


def test_a_running_build_finishes_if_its_target_is_skipped_not_its_release(
        pg, database, conf, capsys):
    dsn = pg.create_login(database, "skip_builder", BUILDER_GROUP, "b-pw")
    q = BuilderQueue(db.connect(dsn))
    q.register("cp311", "linux_x86_64", "debian bookworm", "3.11.2")
    job = q.claim()
    code, out, _ = run(conf, capsys, "skip", "--target", X86, "--reason", "later")
    assert code == 0 and "a build already running finishes" in out
    assert pg.query(database, "SELECT state FROM jobs WHERE job_id = %s", (job.job_id,)) == \
        [("leased",)]
    q.heartbeat(job)
    # Skipping the release cancels the build: the builder's next heartbeat is told so
    # (tests/test_queue_order.py and tests/test_cancel_running.py for the rest).
    run(conf, capsys, "skip", "foo", job.version, "--reason", "later")
    assert pg.query(database, "SELECT state FROM jobs WHERE job_id = %s", (job.job_id,)) == []
    assert pg.query(database, "SELECT status FROM builds WHERE job_id = %s", (job.job_id,)) == \
        [("cancelled",)]
    with pytest.raises(db.JobCancelled):
        q.heartbeat(job)
    q.conn.close()


@pytest.mark.parametrize(("args", "code", "message"), [
    (("skip", "nope", "--reason", "x"), 1, "no project nope in the catalogue"),
    (("skip", "foo", "9.9", "--reason", "x"), 1, "foo has no version 9.9 in the catalogue"),
    (("skip", "--target", "cp27-x", "--reason", "x"), 1,
     f"no build target cp27-x; targets: {ARM}, {X86}"),
    (("skip", "foo", "1.0", "--reason", " "), 1, "give a reason"),
    (("skip", "foo", "1.0", "--reason", "binary only"), 1, "the planner's own reason"),
    (("unskip", "foo", "3.0"), 1, "foo 3.0 has no sdist upstream"),
    (("skip", "--reason", "x"), 2, "usage: pinwheel skip NAME [VERSION] | --target"),
    (("unskip", "foo", "--target", ARM), 2, "usage: pinwheel unskip"),
])
def test_bad_requests_say_what_to_do(conf, capsys, args, code, message):
    got, _, err = run(conf, capsys, *args)
    assert got == code
    assert message in err


def test_a_skip_needs_a_reason(conf, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["skip", "foo", "--config", str(conf)])
    assert info.value.code == 2
    assert "--reason" in capsys.readouterr().err
