"""`pinwheel rebuild` and `pinwheel remove` on a real catalogue, ingest and index.

The farm is test_ingest's: one real builder login reporting synthetic wheels
through the real SQL functions, the master's real ingest publishing them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
from test_ingest import Farm
from test_ingest import farm as farm  # the fixture, shared (the redundant alias re-exports it)

from pinwheel import cli, index, ingest
from pinwheel import operator_release as ops
from pinwheel.ingest import index_options


def write_config(farm: Farm, path: Path) -> Path:
    cfg = farm.cfg
    path.write_text(f"""[master]
dsn = {cfg.dsn}
www_root = {cfg.www_root}
incoming_root = {cfg.incoming_root}
quarantine_root = {cfg.quarantine_root}
""")
    return path


def run(farm: Farm, tmp_path: Path, capsys, *argv: str) -> tuple[int, str, str]:
    conf = write_config(farm, tmp_path / "master.conf")
    try:
        code = cli.main([*argv, "--config", str(conf)])
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def page_hashes(farm: Farm, package: str) -> dict[str, str]:
    page = farm.cfg.www_root / "simple" / package / "index.json"
    return {f["filename"]: f["hashes"]["sha256"] for f in json.loads(page.read_text())["files"]}


def published_build(farm: Farm, version: str = "1.0", **wheel) -> int:
    build = farm.build([farm.push_wheel(version=version, **wheel)], version=version)
    farm.ingest()
    return build


# ------------------------------------------------------------------- rebuild


def test_a_rebuild_keeps_the_old_wheel_until_the_new_build_replaces_it(farm, tmp_path, capsys):
    first = published_build(farm)
    old_sha = farm.admin("SELECT sha256 FROM files WHERE build_id = %s", (first,))[0][0]
    code, out, _ = run(farm, tmp_path, capsys, "rebuild", "FOO", "--reason", "new compiler")
    assert code == 0
    assert "cp311-linux_x86_64" in out and "success" in out and "1 build(s) queued" in out
    # Until the new build is ingested, the old wheel is what the index serves.
    assert farm.file_row(first) == ("published", None)
    assert page_hashes(farm, "foo") == {"foo-1.0-py3-none-any.whl": old_sha}

    job = farm.queue.claim()
    assert job is not None and (job.package, job.version) == ("foo", "1.0")
    changed = farm.push_wheel(members={"foo/__init__.py": b"VALUE = 2\n"})
    second = farm.finish(job, [changed])
    farm.ingest()
    assert farm.file_row(second) == ("published", None)
    state, reason = farm.file_row(first)
    assert state == "removed" and f"replaced by build {second}" in reason
    on_disk = farm.cfg.www_root / "packages" / "foo" / changed.filename
    assert hashlib.sha256(on_disk.read_bytes()).hexdigest() == changed.sha256
    assert page_hashes(farm, "foo") == {changed.filename: changed.sha256}
    assert farm.admin("SELECT count(*) FROM rebuilds") == [(0,)]
    assert farm.admin("SELECT action, package, reason FROM operator_actions") == [
        ("rebuild", "foo", "new compiler")]


def test_a_rebuild_under_a_new_name_retires_the_old_file_and_a_failed_one_keeps_it(farm):
    first = published_build(farm, tag="py3-none-any")
    ops.rebuild(farm.master, "foo")
    job = farm.queue.claim()
    farm.finish(job, [], status="failed")
    farm.ingest()
    assert farm.file_row(first) == ("published", None), "a failed rebuild leaves the old wheel"

    ops.rebuild(farm.master, "foo", "1.0", "cp311-linux_x86_64")
    job = farm.queue.claim()
    renamed = farm.push_wheel(tag="cp311-cp311-linux_x86_64")
    second = farm.finish(job, [renamed])
    farm.ingest()
    assert farm.file_row(second) == ("published", None)
    assert farm.file_row(first)[0] == "removed"
    assert list(page_hashes(farm, "foo")) == [renamed.filename]
    assert not (farm.cfg.www_root / "packages" / "foo" / "foo-1.0-py3-none-any.whl").exists()


def test_a_second_rebuild_while_queued_queues_nothing_twice(farm):
    published_build(farm)
    assert ops.rebuild(farm.master, "foo").queued == 1
    again = ops.rebuild(farm.master, "foo")
    assert again.queued == 0 and not again.rows[0].queued
    assert farm.admin("SELECT count(*) FROM jobs") == [(1,)]


def test_rebuild_of_nothing_built_exits_1_and_says_what_to_do(farm, tmp_path, capsys):
    code, _, err = run(farm, tmp_path, capsys, "rebuild", "nosuch")
    assert code == 1 and "`pinwheel add nosuch`" in err
    farm.claim("foo", "1.0")  # queued, leased, never finished
    code, _, err = run(farm, tmp_path, capsys, "rebuild", "foo")
    assert code == 1 and "nothing of foo has been built" in err
    code, _, err = run(farm, tmp_path, capsys, "rebuild", "foo", "9.9")
    assert code == 1 and "no version 9.9" in err and "1.0" in err
    code, _, err = run(farm, tmp_path, capsys, "rebuild", "foo", "--target", "cp99-x")
    assert code == 1 and "target cp99-x does not exist" in err


# -------------------------------------------------------------------- remove


def test_remove_a_release_unpublishes_it_and_the_watcher_does_not_queue_it_again(
        farm, tmp_path, capsys):
    published_build(farm, "1.0")
    published_build(farm, "1.1")
    code, out, _ = run(farm, tmp_path, capsys, "remove", "foo", "1.0",
                       "--reason", "licence problem")
    assert code == 0, out
    assert "foo-1.0-py3-none-any.whl" in out and "removed foo 1.0: 1 file(s) unpublished" in out
    assert list(page_hashes(farm, "foo")) == ["foo-1.1-py3-none-any.whl"]
    assert not (farm.cfg.www_root / "packages" / "foo" / "foo-1.0-py3-none-any.whl").exists()
    assert farm.admin("SELECT state, reason FROM files WHERE version = '1.0'") == [
        ("removed", "removed by an operator: licence problem")]
    # A skip: planning it again (as the watcher does for a release it sees) queues nothing.
    farm.admin("UPDATE builds SET status = 'failed' WHERE version = '1.0'")
    assert farm.admin("SELECT plan_release('foo', '1.0')") == [(0,)]
    assert farm.admin("SELECT action, version, reason FROM operator_actions") == [
        ("remove", "1.0", "licence problem")]


def test_remove_a_project_cancels_its_jobs_and_removes_its_pages(farm, tmp_path, capsys):
    published_build(farm, "1.0")
    farm.admin("INSERT INTO versions (package, version, has_sdist) VALUES ('foo', '2.0', true)")
    farm.admin("SELECT plan_release('foo', '2.0')")
    result = ops.remove(farm.master, farm.cfg.www_root, index_options(farm.cfg), "Foo", None,
                        "spam")
    assert (result.files, result.cancelled) == (["foo-1.0-py3-none-any.whl"], 1)
    assert farm.admin("SELECT count(*) FROM jobs") == [(0,)]
    assert not (farm.cfg.www_root / "simple" / "foo").exists()
    assert not (farm.cfg.www_root / "project" / "foo").exists()
    assert "foo" not in (farm.cfg.www_root / "simple" / "index.html").read_text()
    farm.admin("INSERT INTO versions (package, version, has_sdist) VALUES ('foo', '3.0', true)")
    assert farm.admin("SELECT plan_release('foo', '3.0')") == [(0,)], "skipped"
    # Again: nothing left to unpublish, said so; the pages stay as they are.
    again = ops.remove(farm.master, farm.cfg.www_root, index_options(farm.cfg), "foo", None,
                       "spam")
    assert again.already and again.files == []
    assert index.published_packages(farm.master) == []


def test_a_build_finished_before_a_remove_is_not_published_by_the_ingest_after_it(
        farm, tmp_path, capsys):
    published_build(farm, "1.0")
    wheel = farm.push_wheel(version="2.0")
    build = farm.build([wheel], version="2.0")   # finished, not yet ingested
    code, out, _ = run(farm, tmp_path, capsys, "remove", "foo", "--reason", "malware")
    assert code == 0, out
    assert farm.ingest() == 1
    assert farm.file_row(build) == (
        "removed", "not published: removed by an operator: malware")
    assert not (farm.incoming / wheel.filename).exists(), "the incoming copy is deleted"
    assert not (farm.cfg.www_root / "packages" / "foo" / wheel.filename).exists()
    assert not (farm.cfg.www_root / "simple" / "foo").exists()
    assert farm.admin("SELECT ingest_state FROM builds WHERE build_id = %s", (build,)) == [
        ("done",)]


@pytest.mark.parametrize("on_removal, published", [("keep", True), ("remove", False)])
def test_a_build_of_a_release_deleted_upstream_is_published_as_on_removal_says(
        farm, on_removal, published):
    build = farm.build([farm.push_wheel(version="1.0")], version="1.0")
    farm.admin("UPDATE versions SET removed_upstream_at = now() WHERE package = 'foo'")
    cfg = dataclasses.replace(farm.cfg, watch=dataclasses.replace(farm.cfg.watch,
                                                                  on_removal=on_removal))
    ingest.process_pending(farm.master, cfg)
    assert farm.file_row(build) == (("published", None) if published else (
        "removed", "not published: the release was removed upstream"))


def test_a_plain_skip_still_publishes_what_was_built(farm, tmp_path, capsys):
    build = farm.build([farm.push_wheel(version="1.0")], version="1.0")
    code, out, _ = run(farm, tmp_path, capsys, "skip", "foo", "--reason", "too slow")
    assert code == 0, out
    farm.ingest()
    assert farm.file_row(build) == ("published", None)


def test_remove_usage_and_nothing_matched(farm, tmp_path, capsys):
    code, _, err = run(farm, tmp_path, capsys, "remove", "foo")
    assert code == 2 and "--reason" in err
    code, _, err = run(farm, tmp_path, capsys, "remove", "nosuch", "--reason", "x")
    assert code == 1 and "no project nosuch" in err
    code, _, err = run(farm, tmp_path, capsys, "remove", "foo", "--reason", "   ")
    assert code == 1


@pytest.mark.parametrize("argv", [["rebuild"], ["remove"]])
def test_commands_without_a_name_are_usage_errors(argv, farm, tmp_path, capsys):
    code, _, err = run(farm, tmp_path, capsys, *argv)
    assert code == 2 and "usage" in err
