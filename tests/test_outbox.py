"""The outbox's record of a finished build: written atomically, trusted only once checked.

(The agent's restart with a recorded build is in tests/test_faults.py.)
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pytest

from pinwheel import outbox
from pinwheel.agent import report_for
from pinwheel.aptdeps import Library
from pinwheel.queue import Job

TOKEN = "0b6f6c0e-4b7e-4b55-9a55-3b1f3fbd2e11"


def recorded(place: Path, job_id: int = 7) -> outbox.Pending:
    box = outbox.job_dir(place, job_id)
    box.mkdir(mode=0o700)
    wheel = box / "demo-1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK wheel bytes")
    log = box / f"job-{job_id}.log.gz"
    log.write_bytes(b"\x1f\x8b log")
    now = datetime.now(timezone.utc)
    job = Job(job_id, "demo", "1.0", "cp311", TOKEN, now, 1)
    pending = outbox.Pending(box, job, "builder1", "success", now, 3.5, report_for(log),
                             [report_for(wheel)])
    outbox.record(pending)
    return pending


@pytest.fixture
def place(tmp_path: Path) -> Path:
    return tmp_path


def test_a_recorded_build_loads_back_as_it_was(place):
    pending = recorded(place)
    assert oct(os.stat(pending.directory / outbox.RECORD).st_mode & 0o777) == "0o600"
    assert outbox.load(pending.directory) == pending
    assert [p.name for p in pending.paths] == ["demo-1.0-py3-none-any.whl", "job-7.log.gz"]


def test_a_recorded_wheels_shared_libraries_come_back_with_it(place):
    """A resumed delivery reports the apt dependencies the build found, not "not looked at"."""
    pending = recorded(place, job_id=8)
    libs = (Library("libffi.so.8", "debian", "libffi8", False),
            Library("libc.so.6", "debian", "libc6", True),
            Library("libfoo.so.1", "missing"))
    wheel = replace(pending.files[0], libraries=libs)
    pending = replace(pending, files=[wheel])
    outbox.record(pending)
    loaded = outbox.load(pending.directory)
    assert loaded.files[0].libraries == libs
    assert loaded == pending


def test_no_record_means_the_build_never_ended(place):
    box = outbox.job_dir(place, 3)
    box.mkdir()
    (box / "build.log").write_text("half a build")
    with pytest.raises(outbox.BadRecord, match="no build result was recorded"):
        outbox.load(box)
    assert outbox.job_of(box) is None


@pytest.mark.parametrize("change", ["append", "replace", "remove", "symlink"])
def test_files_changed_since_they_were_recorded_are_refused(place, change):
    pending = recorded(place)
    wheel = pending.paths[0]
    if change == "append":
        with wheel.open("ab") as fh:
            fh.write(b"!")
    elif change == "replace":
        wheel.write_bytes(b"PK wheel byteZ")  # same size, other bytes
    elif change == "remove":
        wheel.unlink()
    else:
        target = place / "elsewhere.whl"
        target.write_bytes(wheel.read_bytes())
        wheel.unlink()
        wheel.symlink_to(target)
    with pytest.raises(outbox.BadRecord, match=wheel.name):
        outbox.load(pending.directory)
    # Its job can still be read, so that it can be handed back.
    job = outbox.job_of(pending.directory)
    assert job is not None and (job.job_id, job.lease_token) == (7, TOKEN)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d["files"][0].update(filename="../../etc/passwd"), "not a plain one"),
    (lambda d: d["files"][0].update(filename="result.json"), "not a plain one"),
    (lambda d: d["job"].update(job_id=8), "for job 8, not for job-7"),
    (lambda d: d["job"].update(lease_token="nope"), "not a UUID"),
    (lambda d: d.update(status="published"), "unknown build status"),
    (lambda d: d.update(duration=True), "duration"),
    (lambda d: d["log"].update(filename="other.log.gz"), "not job-7.log.gz"),
    (lambda d: d.update(files=[]), "a successful build with no wheel"),
    (lambda d: d.update(format=2), "not a format 1 record"),
])
def test_a_malformed_record_is_refused_with_the_reason(place, edit, message):
    pending = recorded(place)
    path = pending.directory / outbox.RECORD
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(outbox.BadRecord, match=message):
        outbox.load(pending.directory)


def test_a_record_that_is_not_json_is_refused(place):
    pending = recorded(place)
    (pending.directory / outbox.RECORD).write_bytes(b"\xff{ not json")
    with pytest.raises(outbox.BadRecord, match="not valid JSON"):
        outbox.load(pending.directory)
