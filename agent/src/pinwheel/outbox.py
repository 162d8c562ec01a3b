"""A finished build waiting in the outbox, recorded so that a restarted agent can deliver it.

One directory per job, owned by the agent (mode 0700; the build user cannot
enter it)::

    outbox/job-<id>/
        build.log          the plain-text log (written by the sandbox)
        <name>.whl ...     the agent's copies of the wheels built
        job-<id>.log.gz    the gzipped log, pushed with the wheels
        result.json        written last, atomically: the job (its lease token),
                           the build's result, every file's size and SHA-256

``result.json`` exists only once every file it names is complete and flushed
to disk, so a directory without it is a build the agent did not finish
(wiped at start). A record is trusted no further than it can be checked: it
must parse, name only plain files of this directory, and every file must
still have the size and SHA-256 recorded; the database then decides whether
the job is still this builder's (:meth:`pinwheel.agent.Agent.resume_leftovers`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .aptdeps import Library
from .fsutil import atomic_write_text, fsync_file
from .queue import Job, ReportedFile

RECORD = "result.json"
FORMAT = 1
STATUSES = ("success", "failed", "timeout")
_JOB_DIR = re.compile(r"job-([1-9][0-9]{0,18})")
_MAX_RECORD = 1 << 20


class BadRecord(Exception):
    """An outbox cannot be delivered: no record, an unreadable one, or files that changed."""


@dataclass(frozen=True)
class Pending:
    """A build recorded in the outbox, not yet reported to the database."""

    directory: Path
    job: Job
    builder: str
    status: str
    started: datetime
    duration: float
    log: ReportedFile
    files: list[ReportedFile]

    @property
    def paths(self) -> list[Path]:
        """What to push: the wheels, then the gzipped log."""
        return [self.directory / f.filename for f in [*self.files, self.log]]


def job_dir(root: Path, job_id: int) -> Path:
    return root / f"job-{job_id}"


def job_id_of(directory: Path) -> int | None:
    """The job id in an outbox directory's name (``job-<id>``), or None."""
    m = _JOB_DIR.fullmatch(directory.name)
    return int(m.group(1)) if m else None


def record(pending: Pending) -> None:
    """Flush the outbox's files to disk, then write ``result.json`` atomically."""
    for path in pending.paths:
        fsync_file(path)
    job = pending.job
    data = {
        "format": FORMAT,
        "job": {"job_id": job.job_id, "package": job.package, "version": job.version,
                "abi": job.abi, "lease_token": job.lease_token,
                "lease_expires": job.lease_expires.isoformat(), "attempts": job.attempts},
        "builder": pending.builder,
        "status": pending.status,
        "started": pending.started.isoformat(),
        "duration": pending.duration,
        "log": pending.log.as_json(),
        "files": [f.as_json() for f in pending.files],
    }
    atomic_write_text(pending.directory / RECORD, json.dumps(data, indent=1) + "\n", mode=0o600)


# ------------------------------------------------------------------ loading

def _field(data: dict[str, Any], key: str, kind: type) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise BadRecord(f"{RECORD}: {key!r} is missing or not a {kind.__name__}")
    return value


def _file(entry: Any, what: str) -> ReportedFile:
    if not isinstance(entry, dict):
        raise BadRecord(f"{RECORD}: {what} is not an object")
    name = _field(entry, "filename", str)
    size = _field(entry, "size", int)
    sha = _field(entry, "sha256", str)
    if ("/" in name or "\0" in name or name.startswith(".") or not 0 < len(name) <= 255
            or name == RECORD):
        raise BadRecord(f"{RECORD}: {what} has a file name that is not a plain one: {name!r}")
    if size < 0 or not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise BadRecord(f"{RECORD}: {what} ({name}) has a bad size or SHA-256")
    return ReportedFile(name, size, sha, _libraries(entry.get("libraries"), name))


def _libraries(value: Any, name: str) -> tuple[Library, ...] | None:
    """The recorded shared libraries of a file (None: it was not looked at)."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(lib, dict) for lib in value):
        raise BadRecord(f"{RECORD}: the libraries of {name} are not a list of objects")
    try:
        return tuple(Library(library=str(lib["library"]), kind=str(lib["kind"]),
                             package=None if lib.get("package") is None else str(lib["package"]),
                             base=bool(lib.get("base", False))) for lib in value)
    except KeyError as exc:
        raise BadRecord(f"{RECORD}: a library of {name} has no {exc}") from None


def _parse(directory: Path, data: Any) -> Pending:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BadRecord(f"{RECORD} is not a format {FORMAT} record")
    j = _field(data, "job", dict)
    job_id = _field(j, "job_id", int)
    if job_id != job_id_of(directory):
        raise BadRecord(f"{RECORD} is for job {job_id}, not for {directory.name}")
    token = _field(j, "lease_token", str)
    try:
        token = str(uuid.UUID(token))
    except ValueError:
        raise BadRecord(f"{RECORD}: the lease token {token!r} is not a UUID") from None
    try:
        expires = datetime.fromisoformat(_field(j, "lease_expires", str))
        started = datetime.fromisoformat(_field(data, "started", str))
    except ValueError as exc:
        raise BadRecord(f"{RECORD}: a bad timestamp: {exc}") from None
    job = Job(job_id, _field(j, "package", str), _field(j, "version", str), _field(j, "abi", str),
              token, expires, _field(j, "attempts", int))
    status = _field(data, "status", str)
    if status not in STATUSES:
        raise BadRecord(f"{RECORD}: unknown build status {status!r}")
    duration = data.get("duration")
    if not isinstance(duration, (int, float)) or isinstance(duration, bool) or duration < 0:
        raise BadRecord(f"{RECORD}: 'duration' is not a number of seconds")
    log = _file(data.get("log"), "the log")
    if log.filename != f"job-{job_id}.log.gz":
        raise BadRecord(f"{RECORD}: the log is named {log.filename!r}, not job-{job_id}.log.gz")
    raw_files = _field(data, "files", list)
    files = [_file(f, f"file {i + 1}") for i, f in enumerate(raw_files)]
    names = [f.filename for f in files]
    if any(not n.endswith(".whl") for n in names) or len(set(names)) != len(names):
        raise BadRecord(f"{RECORD}: the files must be distinct wheels: {names}")
    if status == "success" and not files:
        raise BadRecord(f"{RECORD}: a successful build with no wheel")
    return Pending(directory, job, _field(data, "builder", str), status, started,
                   float(duration), log, files)


def _verify(directory: Path, expected: ReportedFile) -> None:
    """The file is a regular file of this directory with the size and SHA-256 recorded."""
    path = directory / expected.filename
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise BadRecord(f"{expected.filename}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise BadRecord(f"{expected.filename} is not a regular file of the agent's")
        if st.st_size != expected.size:
            raise BadRecord(f"{expected.filename} has {st.st_size} bytes, {expected.size} "
                            "were recorded")
        digest = hashlib.sha256()
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != expected.sha256:
        raise BadRecord(f"{expected.filename} has SHA-256 {digest.hexdigest()}, "
                        f"{expected.sha256} was recorded")


def read_record(directory: Path) -> Any:
    """The parsed JSON of ``directory``'s record (BadRecord if there is none, or it is bad)."""
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise BadRecord(f"{directory} is not a directory of the agent's")
    path = directory / RECORD
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise BadRecord("no build result was recorded (the agent stopped before the build "
                        "ended)") from None
    except OSError as exc:
        raise BadRecord(f"{RECORD}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise BadRecord(f"{RECORD} is not a regular file")
        raw = fh.read(_MAX_RECORD + 1)
    if len(raw) > _MAX_RECORD:
        raise BadRecord(f"{RECORD} is larger than {_MAX_RECORD} bytes")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRecord(f"{RECORD} is not valid JSON: {exc}") from None


def load(directory: Path) -> Pending:
    """The verified record of ``directory``; BadRecord says why it cannot be delivered."""
    pending = _parse(directory, read_record(directory))
    for f in [*pending.files, pending.log]:
        _verify(directory, f)
    return pending


def job_of(directory: Path) -> Job | None:
    """The job a (possibly bad) record names, if its job and lease token can be read at all."""
    try:
        data = read_record(directory)
        j = data["job"]
        job_id, token = int(j["job_id"]), str(uuid.UUID(str(j["lease_token"])))
    except (BadRecord, KeyError, TypeError, ValueError, OSError):
        return None
    if job_id != job_id_of(directory):
        return None
    return Job(job_id, str(j.get("package")), str(j.get("version")), str(j.get("abi")), token,
               datetime.now().astimezone(), 0)
