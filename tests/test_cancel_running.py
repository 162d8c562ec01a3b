"""A build running when its release is deleted upstream, or skipped, is stopped by its agent.

A real agent builds ``pwtest-gated`` (which waits at a gate the test keeps closed, so the
build surely runs); the release is deleted from a local upstream and ``pinwheel watch``
sees it, or an operator skips it. The agent's next heartbeat is told the job was
cancelled: it kills the build, reports nothing, says why, and builds the next job.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator

import pytest

from harness.agents import wait_until, world_readable_tempdir
from harness.minifarm import MiniFarm, make_minifarm
from harness.upstream import UpstreamIndex
from harness.users import AgentUsers
from pinwheel import watch
from pinwheel.config import MasterConfig, WatchConfig

pytestmark = pytest.mark.e2e

USERS = AgentUsers("pwtest-cnl-agent1", "pwtest-cnl-build1")
NAME = "cancel_one"
FAST = {"lease_seconds": 30, "heartbeat_seconds": 2, "poll_seconds": 5}


@pytest.fixture(scope="module")
def own_upstream() -> Iterator[UpstreamIndex]:
    index = UpstreamIndex()   # the test projects, packed; this module deletes from it
    index.start()
    try:
        yield index
    finally:
        index.destroy()


@pytest.fixture(scope="module")
def farm(pg, pg_template, own_upstream) -> Iterator[MiniFarm]:
    place = world_readable_tempdir("pinwheel-cancel-")
    farm = make_minifarm(pg, pg_template, own_upstream.url, place, "pinwheel_cancel")
    farm.add_agent(NAME, USERS, **FAST)
    try:
        farm.start(NAME)
        yield farm
    finally:
        farm.stop_all()
        farm.sshd.destroy()
        for v in ("1.6", "1.7"):
            farm.open_gate(v)   # a build still waiting gives up at once
            farm.close_gate(v)


def build_processes() -> list[str]:
    out = subprocess.run(["ps", "-o", "stat=,args=", "-u", USERS.build], capture_output=True,
                         text=True).stdout.splitlines()
    return [p for p in out if not p.strip().startswith("Z")]


def building(farm: MiniFarm, version: str) -> int:
    """Wait until the agent builds pwtest-gated ``version``; its job id."""
    wait_until(lambda: farm.sql("SELECT 1 FROM jobs WHERE package = 'pwtest-gated' AND "
                                "version = %s AND state = 'leased'", (version,)), 60,
               f"pwtest-gated {version} to be claimed", diagnostics=farm.diagnostics)
    (job_id,), = farm.sql("SELECT job_id FROM jobs WHERE package = 'pwtest-gated' AND "
                          "version = %s", (version,))
    farm.wait_building(NAME, version)
    # Past the download: the sdist's setup.py runs (in pip's PEP 517 hook process) and
    # waits at its gate, so deleting the release upstream cannot fail the build first.
    wait_until(lambda: any("pyproject_hooks" in p for p in build_processes()), 120,
               f"pwtest-gated {version}'s setup.py to run",
               diagnostics=lambda: "\n".join(build_processes()))
    return int(job_id)


def stopped(farm: MiniFarm, job_id: int, why: str) -> None:
    """The agent stopped the build of ``job_id`` for ``why``, killed it and reported nothing."""
    agent = farm.agents[NAME]
    pattern = rf"job {job_id}: build of pwtest-gated [\d.]+ stopped: job {job_id} was " \
              rf"cancelled: cancelled while building: {re.escape(why)}.*nothing is reported"
    wait_until(lambda: re.search(pattern, agent.output()), 240, "the agent to stop the build",
               diagnostics=farm.diagnostics)
    wait_until(lambda: build_processes() == [], 30, "the build's processes to be killed",
               diagnostics=lambda: "\n".join(build_processes()))
    assert farm.sql("SELECT status, log_reason FROM builds WHERE job_id = %s", (job_id,)) == \
        [("cancelled", f"cancelled while building: {why}")]
    assert farm.sql("SELECT count(*) FROM files f JOIN builds b USING (build_id) "
                    "WHERE b.job_id = %s", (job_id,)) == [(0,)]
    assert not (farm.sshd.incoming_root / NAME / f"job-{job_id}.log.gz").exists()
    assert f"job {job_id}: handed back" not in agent.output()
    farm.check_agents()


def test_a_release_deleted_upstream_or_skipped_stops_its_running_build(farm: MiniFarm,
                                                                       own_upstream):
    cfg = MasterConfig(
        dsn=farm.pg.tcp_dsn("pinwheel_cancel_master", "master-pw",  # type: ignore[attr-defined]
                            farm.database),
        www_root=farm.place / "www", incoming_root=farm.sshd.incoming_root,
        quarantine_root=farm.place / "quarantine", upstream_url=own_upstream.url,
        watch=WatchConfig(mode="allowlist", projects=["pwtest-gated"], history="latest"))
    (farm.place / "www").mkdir(exist_ok=True)
    farm.close_gate("1.7")
    first = watch.poll_once(cfg)
    assert first.jobs == 1, "the newest release, for the agent's target"
    job_id = building(farm, "1.7")

    own_upstream.delete_release("pwtest-gated", "1.7")
    result = watch.poll_once(cfg)
    assert result.cancelled == 1
    (detail,), = farm.sql("SELECT detail FROM upstream_events WHERE kind = 'release-removed'")
    assert detail.startswith("0 queued job(s), 1 running build(s) cancelled")
    stopped(farm, job_id, "the release was removed upstream")

    # Moving on: the next job is built; an operator's skip stops it the same way.
    farm.close_gate("1.6")
    job_id = farm.queue("pwtest-gated", "1.6")
    assert building(farm, "1.6") == job_id
    done = farm.pinwheel("skip", "pwtest-gated", "1.6", "--reason", "too slow")
    assert done.returncode == 0, done.stderr
    stopped(farm, job_id, "skipped: too slow")

    farm.queue("pwtest-pure", "1.0")
    row = farm.wait_built("pwtest-pure", "1.0")
    assert row[2] == "success", farm.diagnostics()
    assert farm.sql("SELECT status, count(*) FROM builds GROUP BY 1 ORDER BY 1") == \
        [("cancelled", 2), ("success", 1)]
