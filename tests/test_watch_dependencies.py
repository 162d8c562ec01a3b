"""Allowlist mode follows the runtime dependencies of the listed projects.

The local upstream (harness.upstream) serves each release's core metadata
(PEP 658) with the Requires-Dist the test gives; the farm's targets are
cp311 on x86-64 and on armv7l; the catalogue is a real PostgreSQL database.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_watch import TARGETS, master_config, q

from harness.upstream import UpstreamIndex
from pinwheel import dependencies, watch
from pinwheel.schema import MASTER_GROUP

APP_REQUIRES = (
    "PW_Lib>=1.0",                                   # any spelling
    "pw-win; sys_platform == 'win32'",               # not on a Linux target
    "pw-old; python_version < '3'",                  # not on cp311
    "pw-docs; extra == 'docs'",                      # an extra: not a runtime dependency
    "pw-arm; platform_machine == 'armv7l'",          # on one of the targets: needed
)


@pytest.fixture
def up() -> Iterator[UpstreamIndex]:
    index = UpstreamIndex(build=False, serials=True)
    index.start()
    try:
        index.add_release("pw-app", "1.0", requires=APP_REQUIRES,
                          wheels=("py3-none-any",))
        index.add_release("pw-lib", "1.0", requires=("pw-deep",))
        index.add_release("pw-deep", "1.0", requires=("pw-app",))   # a cycle back
        for name in ("pw-win", "pw-old", "pw-docs", "pw-arm", "pw-other"):
            index.add_release(name, "1.0", requires=())
        yield index
    finally:
        index.destroy()


@pytest.fixture
def dsn(pg, database) -> str:
    for abi, platform in TARGETS:
        pg.query(database, "INSERT INTO targets (abi, platform) VALUES (%s, %s)", (abi, platform))
    return pg.create_login(database, "deps_master", MASTER_GROUP, "deps-pw")


def followed(pg, database) -> dict[str, str | None]:
    return {p: d for p, d in q(pg, database, "SELECT package, dependency_of FROM watch_projects "
                                             "WHERE listed ORDER BY package")}


def test_listed_projects_bring_their_runtime_dependencies_transitively(
        pg, database, up, dsn, tmp_path):
    cfg = master_config(dsn, up.url, tmp_path, mode="allowlist", projects=["pw-app"])
    result = watch.poll_once(cfg)
    assert not result.errors
    assert followed(pg, database) == {"pw-app": None, "pw-arm": "pw-app", "pw-lib": "pw-app",
                                      "pw-deep": "pw-lib"}
    # Recorded and queued in the same poll, like the listed project.
    assert q(pg, database, "SELECT package, count(*) FROM jobs GROUP BY 1 ORDER BY 1") == [
        ("pw-app", 2), ("pw-arm", 2), ("pw-deep", 2), ("pw-lib", 2)]
    # Nothing moves at the next poll.
    again = watch.poll_once(cfg)
    assert again.jobs == 0 and followed(pg, database)["pw-deep"] == "pw-lib"


def test_dependencies_leave_with_the_project_that_brought_them(pg, database, up, dsn, tmp_path):
    cfg = master_config(dsn, up.url, tmp_path, mode="allowlist", projects=["pw-app"])
    watch.poll_once(cfg)
    cfg = master_config(dsn, up.url, tmp_path, mode="allowlist", projects=["pw-other", "pw-lib"])
    watch.poll_once(cfg)
    # pw-lib is listed by the operator now (no longer "a dependency of"); pw-deep stays as
    # its dependency; pw-app and pw-arm, which only pw-app's listing brought, are no longer
    # followed (pw-deep's own dependencies are read again when its page changes).
    assert followed(pg, database) == {"pw-deep": "pw-lib", "pw-lib": None, "pw-other": None}


def test_a_requirements_file_is_an_allowlist_source(pg, database, up, dsn, tmp_path):
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("# the app\n--index-url https://example.invalid/simple\n"
                    "PW.Lib[extra]>=1.0 ; python_version >= '3.8'\n")
    cfg = master_config(dsn, up.url, tmp_path, mode="allowlist", projects_file=str(reqs))
    watch.poll_once(cfg)
    assert followed(pg, database) == {"pw-lib": None, "pw-deep": "pw-lib", "pw-app": "pw-deep",
                                      "pw-arm": "pw-app"}


def test_a_release_without_core_metadata_brings_nothing(pg, database, up, dsn, tmp_path):
    up.add_release("pw-plain", "1.0")                 # no .metadata served
    cfg = master_config(dsn, up.url, tmp_path, mode="allowlist", projects=["pw-plain"])
    result = watch.poll_once(cfg)
    assert not result.errors and followed(pg, database) == {"pw-plain": None}


def test_markers_are_evaluated_for_each_target():
    envs = dependencies.environments([("cp39", "linux_x86_64"), ("cp311", "linux_armv7l"),
                                      ("weird", "x")])
    assert [e["python_version"] for e in envs] == ["3.9", "3.11"]
    needed = dependencies.runtime_dependencies(
        ["a; python_version < '3.10'", "b; platform_machine == 'aarch64'", "C_D",
         "e; extra == 'test'", "not a requirement !!", "f; os_name == 'nt'"], envs)
    assert needed == {"a", "c-d"}
