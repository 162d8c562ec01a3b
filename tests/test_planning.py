"""Planning on a real PostgreSQL: a pure or abi3 wheel is built once, new targets get the
catalogue, and one SQL rule (plan_due) decides what is due for every caller.

Builders register their own login roles and go through the real queue functions;
the ingest verifies real wheel files (tests/test_verify.make_wheel) before any job
is cancelled, and the project pages are read back from www_root.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from test_verify import make_wheel

from pinwheel import coverage, db, ingest, new_targets, skips
from pinwheel.config import MasterConfig, WatchConfig
from pinwheel.queue import BuilderQueue, Job, ReportedFile
from pinwheel.schema import BUILDER_GROUP, MASTER_GROUP

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
X86, ARM, ARM39, ARM313 = ("cp311-linux_x86_64", "cp311-linux_armv7l", "cp39-linux_armv7l",
                           "cp313-linux_armv7l")
ELF = b"\x7fELF\x01\x01\x01" + b"\0" * 60  # starts like an ELF file: compiled code


@dataclass
class Farm:
    pg: Any
    database: str
    cfg: MasterConfig
    master: Any
    builders: dict[str, BuilderQueue]

    def admin(self, query: str, params: tuple = ()) -> list[tuple]:
        return self.pg.query(self.database, query, params)

    def builder(self, target: str) -> BuilderQueue:
        if target not in self.builders:
            abi, platform = target.split("-", 1)
            name = f"pl_{abi}_{platform}"
            dsn = self.pg.create_login(self.database, name, BUILDER_GROUP, f"pw-{name}")
            q = BuilderQueue(db.connect(dsn))
            q.register(abi, platform, "debian bookworm", "3.11.2")
            (self.cfg.incoming_root / name).mkdir(parents=True, exist_ok=True)
            self.builders[target] = q
        return self.builders[target]

    def release(self, package: str, version: str, **columns: Any) -> None:
        self.admin("INSERT INTO packages (package, display_name) VALUES (%s, %s) "
                   "ON CONFLICT DO NOTHING", (package, package))
        values = {"has_sdist": True, **columns}
        names = ", ".join(values)
        self.admin(f"INSERT INTO versions (package, version, {names}) "
                   f"VALUES (%s, %s, {', '.join(['%s'] * len(values))})",
                   (package, version, *values.values()))

    def plan(self, package: str, version: str) -> int:
        return int(self.admin("SELECT plan_release(%s, %s)", (package, version))[0][0])

    def jobs(self, package: str = "foo") -> dict[tuple[str, str], str]:
        return {(v, t): s for v, t, s in self.admin(
            "SELECT version, abi || '-' || platform, state FROM jobs WHERE package = %s",
            (package,))}

    def build(self, target: str, tag: str, package: str = "foo", version: str = "1.0",
              report: dict[str, Any] | None = None, **wheel: Any) -> tuple[Job, int]:
        """Claim the target's next job, push a wheel with ``tag`` and finish the job."""
        q = self.builder(target)
        job = q.claim()
        assert job is not None and (job.package, job.version) == (package, version)
        incoming = self.cfg.incoming_root / f"pl_{target.replace('-', '_', 1)}"
        filename, size, sha = make_wheel(incoming, package, version, tag, **wheel)
        reported = ReportedFile(filename, size, sha, **(report or {}))
        return job, q.finish(job, "success", NOW, 3.0, None, [reported])

    def ingest(self) -> int:
        return ingest.process_pending(self.master, self.cfg)

    def page(self, package: str = "foo") -> tuple[str, dict[str, Any]]:
        root = self.cfg.www_root / "project" / package
        return ((root / "index.html").read_text(),
                json.loads((root / "json" / "index.json").read_text()))


@pytest.fixture
def farm(pg, database, tmp_path: Path):
    master_dsn = pg.create_login(database, "pl_master", MASTER_GROUP, "pw-master")
    cfg = MasterConfig(dsn=master_dsn, www_root=tmp_path / "www",
                       incoming_root=tmp_path / "incoming",
                       quarantine_root=tmp_path / "quarantine",
                       max_wheel_size=10 << 20, max_log_size=1 << 20)
    master = db.connect(master_dsn)
    f = Farm(pg, database, cfg, master, {})
    yield f
    for q in f.builders.values():
        q.conn.close()
    master.close()


def cells(doc: dict[str, Any], version: str) -> dict[str, tuple[str, str | None]]:
    release = next(r for r in doc["releases"] if r["version"] == version)
    return {t: (b["state"], b["covered_by"]) for t, b in release["builds"].items()}


# ------------------------------------------------------------------ pure wheels


def test_a_pure_wheel_covers_the_other_queued_targets_once_the_master_verified_it(farm):
    for target in (X86, ARM, ARM39):
        farm.builder(target)
    farm.release("foo", "1.0")
    assert farm.plan("foo", "1.0") == 3
    _, build_id = farm.build(X86, "py3-none-any")
    # The builder's report alone cancels nothing: the wheel is not verified yet.
    assert farm.jobs() == {("1.0", ARM): "queued", ("1.0", ARM39): "queued"}

    assert farm.ingest() == 1
    assert farm.jobs() == {}, "the verified pure wheel serves every target"
    assert farm.admin("SELECT covers, covers_refused FROM files") == [(True, None)]
    events = farm.admin("SELECT kind, version, abi || '-' || platform, detail FROM plan_events "
                        "ORDER BY 3")
    assert events == [
        ("covered", "1.0", target, f"covered by foo-1.0-py3-none-any.whl (build {build_id} "
                                   f"on {X86})") for target in (ARM, ARM39)]
    assert farm.plan("foo", "1.0") == 0, "a covered target is not due again"

    html, doc = farm.page()
    wheel = "foo-1.0-py3-none-any.whl"
    assert cells(doc, "1.0") == {X86: ("built", None), ARM: ("built", wheel),
                                 ARM39: ("built", wheel)}
    arm = next(r for r in doc["releases"] if r["version"] == "1.0")["builds"][ARM]
    assert arm["build_id"] == build_id and arm["note"] == f"{wheel}, built on {X86}"
    assert arm["log_url"] is None  # this build reported no log
    assert "not queued" not in html and html.count("by py3-none-any") == 2

    # The next release is planned for every target again: it may not be pure.
    farm.release("foo", "2.0")
    assert farm.plan("foo", "2.0") == 3


def test_a_job_already_claimed_elsewhere_finishes_and_its_target_shows_built(farm):
    for target in (X86, ARM, ARM39):
        farm.builder(target)
    farm.release("foo", "1.0")
    farm.plan("foo", "1.0")
    arm_job = farm.builder(ARM).claim()
    farm.build(X86, "py3-none-any")
    farm.ingest()
    assert farm.jobs() == {("1.0", ARM): "leased"}, "a running build is left to finish"
    # It builds the same pure wheel (not byte for byte): refused as a clash, but the
    # target is built all the same, by the wheel already published.
    incoming = farm.cfg.incoming_root / "pl_cp311_linux_armv7l"
    name, size, sha = make_wheel(incoming, members={"foo/__init__.py": b"VALUE = 2\n"})
    farm.builder(ARM).finish(arm_job, "success", NOW, 3.0, None, [ReportedFile(name, size, sha)])
    farm.ingest()
    _, doc = farm.page()
    assert cells(doc, "1.0")[ARM] == ("built", "foo-1.0-py3-none-any.whl")


def test_a_builder_claiming_a_pure_wheel_that_is_not_pure_cancels_nothing(farm):
    for target in (X86, ARM):
        farm.builder(target)
    farm.release("foo", "1.0")
    farm.plan("foo", "1.0")
    # Tagged py3-none-any, but it holds an armv7 shared object: not for every platform.
    farm.build(X86, "py3-none-any", members={"foo/__init__.py": b"", "foo/_speedups.so": ELF})
    farm.ingest()
    (state, covers, refused), = farm.admin("SELECT state, covers, covers_refused FROM files")
    assert (state, covers) == ("published", False)
    assert refused == ("tagged py3-none-any (any platform) but holds compiled code: "
                       "foo/_speedups.so; each target builds its own")
    assert farm.jobs() == {("1.0", ARM): "queued"}
    assert farm.admin("SELECT count(*) FROM plan_events") == [(0,)]
    _, doc = farm.page()
    assert cells(doc, "1.0")[ARM] == ("pending", None)


def test_an_elf_file_under_any_name_makes_a_wheel_impure(farm):
    for target in (X86, ARM):
        farm.builder(target)
    farm.release("foo", "1.0")
    farm.plan("foo", "1.0")
    farm.build(X86, "py3-none-any", members={"foo/__init__.py": b"", "foo/data/helper": ELF})
    farm.ingest()
    assert "foo/data/helper" in farm.admin("SELECT covers_refused FROM files")[0][0]
    assert farm.jobs() == {("1.0", ARM): "queued"}


def test_a_pure_wheel_the_ingest_quarantines_cancels_nothing(farm):
    for target in (X86, ARM):
        farm.builder(target)
    farm.release("foo", "1.0")
    farm.plan("foo", "1.0")
    # The builder reports another size and hash than the file it pushed.
    farm.build(X86, "py3-none-any")
    farm.admin("UPDATE files SET sha256 = %s", ("1" * 64,))
    farm.ingest()
    assert farm.admin("SELECT state, covers FROM files") == [("quarantined", None)]
    assert farm.jobs() == {("1.0", ARM): "queued"}
    assert farm.plan("foo", "1.0") == 0 and farm.jobs() == {("1.0", ARM): "queued"}


def test_wheels_published_before_planning_are_looked_at_once_from_the_published_copy(farm):
    for target in (X86, ARM):
        farm.builder(target)
    farm.release("foo", "1.0")
    farm.plan("foo", "1.0")
    farm.release("bar", "1.0")
    farm.plan("bar", "1.0")
    farm.build(X86, "py3-none-any")
    farm.build(X86, "py3-none-any", package="bar", version="1.0")
    farm.ingest()
    # As if published by an older Pinwheel: never looked at, and the other target queued.
    farm.admin("UPDATE files SET covers = NULL")
    farm.admin("DELETE FROM plan_events")
    assert farm.plan("foo", "1.0") == 1 and farm.plan("bar", "1.0") == 1
    # bar's published copy went missing: it is not trusted to cover anything.
    (farm.cfg.www_root / "packages" / "bar" / "bar-1.0-py3-none-any.whl").unlink()
    assert coverage.assess_published(farm.master, farm.cfg) == {"foo"}
    assert farm.admin("SELECT package, covers, covers_refused IS NULL FROM files "
                      "ORDER BY 1") == [("bar", False, False), ("foo", True, True)]
    assert farm.jobs("foo") == {} and farm.jobs("bar") == {("1.0", ARM): "queued"}
    assert coverage.assess_published(farm.master, farm.cfg) == set(), "once"


# ------------------------------------------------------------------ stable ABI


def test_an_abi3_wheel_covers_targets_at_or_above_its_floor_on_its_platform_only(farm):
    for target in (X86, ARM, ARM39, ARM313):
        farm.builder(target)
    farm.release("foo", "1.0")
    assert farm.plan("foo", "1.0") == 4
    farm.build(ARM, "cp311-abi3-linux_armv7l",
               members={"foo/__init__.py": b"", "foo/_c.abi3.so": ELF})
    farm.ingest()
    assert farm.admin("SELECT covers FROM files") == [(True,)]
    assert farm.jobs() == {("1.0", X86): "queued", ("1.0", ARM39): "queued"}
    _, doc = farm.page()
    got = cells(doc, "1.0")
    assert got[ARM313] == ("built", "foo-1.0-cp311-abi3-linux_armv7l.whl")
    assert got[ARM39] == got[X86] == ("pending", None)


def test_an_abi3_wheel_with_a_version_specific_extension_covers_nothing(farm):
    for target in (ARM, ARM313):
        farm.builder(target)
    farm.release("foo", "1.0")
    farm.plan("foo", "1.0")
    farm.build(ARM, "cp311-abi3-linux_armv7l", members={
        "foo/__init__.py": b"", "foo/_c.cpython-311-arm-linux-gnueabihf.so": ELF})
    farm.ingest()
    (covers, refused), = farm.admin("SELECT covers, covers_refused FROM files")
    assert covers is False and "extension modules for one Python version" in refused
    assert farm.jobs() == {("1.0", ARM313): "queued"}


@pytest.mark.parametrize(("tags", "target", "covers"), [
    (("py3", "none", "any"), ("cp39", "linux_armv7l"), True),
    (("py2.py3", "none", "any"), ("cp313t", "linux_x86_64"), True),
    (("py310", "none", "any"), ("cp39", "linux_x86_64"), False),
    (("py310", "none", "any"), ("cp311", "linux_x86_64"), True),
    (("cp311", "none", "any"), ("cp313", "linux_x86_64"), False),
    (("py3", "none", "linux_armv7l"), ("cp39", "linux_armv7l"), True),
    (("py3", "none", "linux_armv7l"), ("cp39", "linux_x86_64"), False),
    (("cp36", "abi3", "linux_armv7l"), ("cp39", "linux_armv7l"), True),
    (("cp36", "abi3", "linux_armv7l"), ("cp313", "linux_armv7l"), True),
    (("cp311", "abi3", "linux_armv7l"), ("cp39", "linux_armv7l"), False),
    (("cp36", "abi3", "linux_armv7l"), ("cp311", "linux_x86_64"), False),
    (("cp36", "abi3", "linux_armv7l"), ("cp313t", "linux_armv7l"), False),
    (("cp36", "abi3", "any"), ("cp311", "linux_armv7l"), False),
    (("cp311", "cp311", "linux_armv7l"), ("cp311", "linux_armv7l"), True),
    (("cp311", "cp311", "linux_armv7l"), ("cp313", "linux_armv7l"), False),
])
def test_wheel_covers_follows_pips_tag_rules(pg, database, tags, target, covers):
    assert pg.query(database, "SELECT wheel_covers(%s, %s, %s, %s, %s)",
                    (*tags, *target)) == [(covers,)]


# ------------------------------------------------------------------ new targets


def catalogue(farm: Farm) -> None:
    """Releases of every kind for an established x86 target; pure 1.0 built there as a
    verified py3-none-any wheel, which serves every target."""
    farm.builder(X86)
    farm.release("pure", "1.0")
    farm.plan("pure", "1.0")
    farm.build(X86, "py3-none-any", package="pure", version="1.0")
    farm.ingest()
    for version in ("1.0", "2.0", "2.1rc1"):
        farm.release("foo", version)
    farm.release("baz", "1.0")
    farm.release("baz", "2.0", yanked=True)
    farm.release("gone", "1.0", removed_upstream_at=NOW)
    farm.release("bin", "1.0", has_sdist=False, skip_reason="binary only")
    farm.release("later", "1.0", skip_reason="needs CUDA")
    for package, version in farm.admin("SELECT package, version FROM versions"):
        farm.plan(package, version)
    farm.admin("UPDATE targets SET planned_at = now()")


def test_a_new_target_gets_the_latest_due_release_of_each_project_once(farm):
    catalogue(farm)
    before = farm.admin("SELECT count(*) FROM jobs")[0][0]
    farm.builder(ARM)
    assert farm.admin("SELECT planned_at IS NULL FROM targets WHERE platform = 'linux_armv7l'") \
        == [(True,)]
    watch = WatchConfig(history="latest", priority=5)
    plans = new_targets.plan_new_targets(farm.master, watch)
    assert [(p.target, p.jobs, p.priority) for p in plans] == [(ARM, 2, 4)]
    assert farm.admin("SELECT package, version, priority FROM jobs WHERE platform = "
                      "'linux_armv7l' ORDER BY 1") == [("baz", "1.0", 4), ("foo", "2.0", 4)]
    assert farm.admin("SELECT kind, abi || '-' || platform, jobs FROM plan_events "
                      "WHERE kind = 'target-planned'") == [("target-planned", ARM, 2)]
    # Twice: nothing more (the target is planned), and the x86 queue is untouched.
    assert new_targets.plan_new_targets(farm.master, watch) == []
    farm.admin("UPDATE targets SET planned_at = NULL")  # even forced, nothing twice
    new_targets.plan_new_targets(farm.master, watch)
    assert farm.admin("SELECT count(*) FROM jobs")[0][0] == before + 2


def test_a_new_target_with_history_all_gets_every_due_release(farm):
    catalogue(farm)
    farm.builder(ARM)
    plans = new_targets.plan_new_targets(farm.master, WatchConfig(history="all"))
    assert [(p.target, p.jobs) for p in plans] == [(ARM, 4)]
    assert farm.admin("SELECT package, version FROM jobs WHERE platform = 'linux_armv7l' "
                      "ORDER BY 1, 2") == [("baz", "1.0"), ("foo", "1.0"), ("foo", "2.0"),
                                           ("foo", "2.1rc1")]


def test_unskip_and_plan_release_queue_the_same_jobs(farm):
    catalogue(farm)
    farm.builder(ARM)
    farm.admin("DELETE FROM jobs")
    for package, version in farm.admin("SELECT package, version FROM versions"):
        farm.plan(package, version)
    by_plan_release = set(farm.admin("SELECT package, version, abi, platform FROM jobs"))
    farm.admin("DELETE FROM jobs")
    farm.admin("UPDATE packages SET skip_reason = 'x'")
    for (package,) in farm.admin("SELECT package FROM packages"):
        skips.unskip(farm.master, package)
    by_unskip = set(farm.admin("SELECT package, version, abi, platform FROM jobs"))
    assert by_unskip == by_plan_release
    assert {(p, v) for p, v, _, _ in by_unskip} == {
        ("foo", "1.0"), ("foo", "2.0"), ("foo", "2.1rc1"), ("baz", "1.0")}
    # Both leave out the yanked, the deleted, the skipped, the binary-only and the
    # covered; an operator who names a yanked release still gets it built.
    assert farm.admin("SELECT plan_release('baz', '2.0', 0, true)") == [(2,)]
