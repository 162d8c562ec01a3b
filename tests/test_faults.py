"""Faults around real agents: killed agents, a restarted database, an unreachable master,
SIGTERM, a full disk. Every job must end up built exactly once, with nobody's help.

Builds of ``pwtest-gated`` wait at a gate the test opens (tests/upstream/pwtest-gated),
so each fault happens while a build surely runs. The recovery times measured are
printed and appended to ``.cache/reliability.jsonl`` (docs/reliability.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.agents import REPO, wait_until, world_readable_tempdir
from harness.minifarm import MiniFarm, make_minifarm
from harness.users import AgentUsers

pytestmark = pytest.mark.e2e

ONE = AgentUsers("pwtest-flt-agent1", "pwtest-flt-build1")
TWO = AgentUsers("pwtest-flt-agent2", "pwtest-flt-build2")
FAST = {"lease_seconds": 15, "heartbeat_seconds": 3, "poll_seconds": 5}
RESULTS = REPO / ".cache" / "reliability.jsonl"


def record(fault: str, seconds: float, **details: object) -> None:
    print(f"\n[reliability] {fault}: recovered in {seconds:.1f}s {details}")
    RESULTS.parent.mkdir(exist_ok=True)
    with RESULTS.open("a") as fh:
        fh.write(json.dumps({"fault": fault, "recovery_seconds": round(seconds, 1),
                             "at": time.strftime("%Y-%m-%dT%H:%M:%S"), **details}) + "\n")


@pytest.fixture(scope="module")
def farm(pg, pg_template, upstream) -> Iterator[MiniFarm]:
    place = world_readable_tempdir("pinwheel-faults-")
    farm = make_minifarm(pg, pg_template, upstream.url, place, "pinwheel_faults")
    farm.add_agent("fault_one", ONE, **FAST)
    farm.add_agent("fault_two", TWO, **FAST)
    try:
        farm.start("fault_one")
        farm.start("fault_two")
        yield farm
    finally:
        farm.stop_all()
        farm.sshd.destroy()
        for v in range(8):
            farm.close_gate(f"1.{v}")


def build_processes(users: AgentUsers) -> list[str]:
    out = subprocess.run(["ps", "-o", "stat=,args=", "-u", users.build], capture_output=True,
                         text=True).stdout.splitlines()
    return [p for p in out if not p.strip().startswith("Z")]


def builder_of(farm: MiniFarm, job_id: int) -> str:
    (builder,), = farm.sql("SELECT builder FROM jobs WHERE job_id = %s", (job_id,))
    return str(builder)


def started_builds(farm: MiniFarm, name: str, version: str) -> int:
    return farm.agents[name].output().count(f"building pwtest-gated {version} ")


def assert_built_once(farm: MiniFarm, version: str) -> tuple:
    rows = farm.builds("pwtest-gated", version)
    assert len(rows) == 1, rows
    assert rows[0][2] == "success", (rows, farm.diagnostics())
    assert not farm.sql("SELECT 1 FROM jobs WHERE version = %s", (version,))
    return rows[0]


def test_kill_9_mid_build_job_returns_after_its_lease_and_is_built_once(farm: MiniFarm):
    version = "1.0"
    farm.close_gate(version)
    job_id = farm.queue("pwtest-gated", version)
    wait_until(lambda: farm.sql("SELECT 1 FROM jobs WHERE job_id = %s AND state = 'leased'",
                                (job_id,)), 60, "the job to be claimed")
    name = builder_of(farm, job_id)
    agent = farm.agents[name]
    farm.wait_building(name, version)
    t0 = time.monotonic()
    agent.kill9()
    assert build_processes(agent.users), "the orphaned build should still run until cleaned"
    farm.start(name)   # registered: its leftovers were killed before
    assert build_processes(agent.users) == []
    farm.open_gate(version)
    farm.wait_built("pwtest-gated", version)
    recovery = time.monotonic() - t0
    row = assert_built_once(farm, version)
    assert row[4] == 2, f"the job came back once (attempt 2), got {row}"
    record("agent killed with SIGKILL mid-build", recovery, lease_seconds=FAST["lease_seconds"],
           attempts=row[4])


def test_postgres_restarted_while_building_and_while_idle(farm: MiniFarm):
    versions = ["1.1", "1.2"]
    for v in versions:
        farm.close_gate(v)
    jobs = [farm.queue("pwtest-gated", v) for v in versions]
    wait_until(lambda: farm.sql("SELECT count(*) FROM jobs WHERE state = 'leased'")[0][0] == 2,
               120, "both jobs to be claimed", diagnostics=farm.diagnostics)
    for job_id, v in zip(jobs, versions):
        farm.wait_building(builder_of(farm, job_id), v)
    t0 = time.monotonic()
    farm.pg.restart()  # type: ignore[attr-defined]
    for v in versions:
        farm.open_gate(v)
    for v in versions:
        farm.wait_built("pwtest-gated", v)
    record("PostgreSQL restarted while two agents build", time.monotonic() - t0)
    for v in versions:
        row = assert_built_once(farm, v)
        assert row[4] == 1, f"built on its first attempt: {row}"

    # Idle: both agents wait for work on connections that the restart cuts.
    farm.pg.restart()  # type: ignore[attr-defined]
    t0 = time.monotonic()
    farm.open_gate("1.3")
    farm.queue("pwtest-gated", "1.3")
    farm.wait_built("pwtest-gated", "1.3")
    record("PostgreSQL restarted while agents are idle", time.monotonic() - t0)
    assert_built_once(farm, "1.3")
    farm.check_agents()  # nobody restarted them
    for name in farm.agents:
        assert "lost the database connection" in farm.agents[name].output()


def test_master_unreachable_during_a_push_is_retried_without_rebuilding(farm: MiniFarm):
    version = "1.4"
    farm.close_gate(version)
    job_id = farm.queue("pwtest-gated", version)
    wait_until(lambda: farm.sql("SELECT 1 FROM jobs WHERE job_id = %s AND state = 'leased'",
                                (job_id,)), 60, "the job to be claimed")
    name = builder_of(farm, job_id)
    agent = farm.agents[name]
    farm.wait_building(name, version)
    farm.sshd.stop()
    t_down = time.monotonic()
    farm.open_gate(version)
    wait_until(lambda: re.search(rf"job {job_id}: push to .* failed \(attempt 2\)",
                                 agent.output()), 180, "two failed pushes",
               diagnostics=farm.diagnostics)
    farm.sshd.resume()
    t_up = time.monotonic()
    farm.wait_built("pwtest-gated", version)
    recovery = time.monotonic() - t_up
    row = assert_built_once(farm, version)
    assert row[4] == 1, f"never handed back nor rebuilt: {row}"
    assert started_builds(farm, name, version) == 1, agent.output()[-3000:]
    assert (farm.sshd.incoming_root / name / "pwtest_gated-1.4-py3-none-any.whl").exists()
    record("master's sshd stopped during a push", recovery,
           outage_seconds=round(t_up - t_down, 1))


def interrupted_push(farm: MiniFarm, name: str, version: str) -> tuple[int, Path]:
    """Build pwtest-pure ``version`` on ``name`` with the master away; kill -9 the agent
    while it retries the push. Returns the job id and the job's outbox."""
    agent = farm.agents[name]
    farm.sshd.stop()
    job_id = farm.queue("pwtest-pure", version)
    wait_until(lambda: re.search(rf"job {job_id}: push to .* failed \(attempt 1\)",
                                 agent.output()), 180, "a failed push",
               diagnostics=farm.diagnostics)
    box = farm.work_dir(name) / "outbox" / f"job-{job_id}"
    assert (box / "result.json").is_file(), "the build is recorded before it is pushed"
    agent.kill9()
    assert farm.sql("SELECT builder FROM jobs WHERE job_id = %s", (job_id,)) == [(name,)]
    return job_id, box


@pytest.fixture
def resume_agent(farm: MiniFarm) -> Iterator[str]:
    """An agent of its own (unlimited push attempts), the only one running."""
    name = "fault_resume"
    if name not in farm.agents:
        farm.add_agent(name, AgentUsers("pwtest-flt-agent5", "pwtest-flt-build5"),
                       push_attempts=0, **FAST)
    for other in ("fault_one", "fault_two"):
        if farm.agents[other].proc is not None and farm.agents[other].proc.poll() is None:
            farm.agents[other].stop()
    farm.start(name)
    try:
        yield name
    finally:
        farm.sshd.ensure_running()
        agent = farm.agents[name]
        if agent.proc is not None and agent.proc.poll() is None:
            agent.stop()


def test_a_push_cut_by_an_agent_restart_is_resumed_without_rebuilding(farm: MiniFarm,
                                                                        resume_agent: str):
    name, version = resume_agent, "1.0"
    agent = farm.agents[name]
    job_id, box = interrupted_push(farm, name, version)
    farm.sshd.resume()
    t0 = time.monotonic()
    farm.start(name)
    farm.wait_built("pwtest-pure", version)
    recovery = time.monotonic() - t0
    rows = farm.builds("pwtest-pure", version)
    assert len(rows) == 1 and rows[0][2] == "success", rows
    assert rows[0][4] == 1, f"attempt 1: never handed back nor rebuilt: {rows}"
    out = agent.output()
    assert out.count(f"building pwtest-pure {version} ") == 1, out[-3000:]
    assert f"job {job_id}: resuming the delivery of pwtest-pure {version}" in out
    assert (farm.sshd.incoming_root / name / f"pwtest_pure-{version}-py3-none-any.whl").exists()
    assert (farm.sshd.incoming_root / name / f"job-{job_id}.log.gz").exists()
    assert not box.exists(), "the outbox is emptied once the job is reported"
    record("agent killed (SIGKILL) while retrying a push, restarted with the master back",
           recovery, attempts=rows[0][4])


def test_a_tampered_or_stale_outbox_is_wiped_not_pushed(farm: MiniFarm, resume_agent: str):
    name = resume_agent
    agent = farm.agents[name]
    # Files changed since they were recorded: wiped, the job handed back and built again.
    job_id, box = interrupted_push(farm, name, "1.1")
    wheel = box / "pwtest_pure-1.1-py3-none-any.whl"
    with wheel.open("ab") as fh:
        fh.write(b"tampered")
    farm.sshd.resume()
    farm.start(name)
    farm.wait_built("pwtest-pure", "1.1")
    out = agent.output()
    assert re.search(rf"job {job_id}: wiping .*job-{job_id}, left by the agent's previous run: "
                     r"pwtest_pure-1\.1-py3-none-any\.whl has \d+ bytes", out), out[-3000:]
    assert f"job {job_id}: handed back to the queue" in out
    rows = farm.builds("pwtest-pure", "1.1")
    assert len(rows) == 1 and rows[0][2] == "success", rows
    assert out.count("building pwtest-pure 1.1 ") == 2, "rebuilt once after the wipe"
    pushed = farm.sshd.incoming_root / name / wheel.name
    (sha,), = farm.sql("SELECT sha256 FROM files WHERE build_id = %s", (rows[0][0],))
    assert hashlib.sha256(pushed.read_bytes()).hexdigest() == sha
    assert b"tampered" not in pushed.read_bytes()

    # The job was taken from this builder meanwhile (its lease ran out): wiped, not pushed.
    job_id, box = interrupted_push(farm, name, "1.2")
    farm.sql("UPDATE jobs SET state = 'queued', builder = NULL, lease_token = NULL, "
             "lease_expires = NULL WHERE job_id = %s", (job_id,))
    farm.sshd.resume()
    farm.start(name)
    farm.wait_built("pwtest-pure", "1.2")
    out = agent.output()
    assert re.search(rf"job {job_id}: wiping .*job-{job_id}, left by the agent's previous run: "
                     r"the job is no longer this builder's: job \d+ is not held", out), out[-3000:]
    assert out.count("building pwtest-pure 1.2 ") == 2
    rows = farm.builds("pwtest-pure", "1.2")
    assert len(rows) == 1 and rows[0][2] == "success", rows


class NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        os.chmod(self.path, 0o777)  # the agent runs as another user
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def collect(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except (TimeoutError, socket.timeout):
                return self.messages

    def seen(self, field: str) -> bool:
        return any(field in m.split("\n") for m in self.collect())


def test_sigterm_hands_the_job_back_after_the_drain_period(farm: MiniFarm):
    """Also: the agent tells systemd it is ready, alive while it builds, and stopping."""
    name = "fault_drain"
    agent = farm.add_agent(name, AgentUsers("pwtest-flt-agent3", "pwtest-flt-build3"),
                           builder_drain_seconds=5, **FAST)
    notify = NotifySocket(world_readable_tempdir("pinwheel-notify-"))
    for other in ("fault_one", "fault_two"):
        farm.agents[other].stop()
    version = "1.5"
    farm.close_gate(version)
    agent.start(farm.venv, env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "4000000"})
    wait_until(lambda: notify.seen("READY=1"), 60, "READY=1", diagnostics=farm.diagnostics)
    job_id = farm.queue("pwtest-gated", version)
    farm.wait_building(name, version)
    notify.messages.clear()
    wait_until(lambda: notify.seen("WATCHDOG=1"), 30, "WATCHDOG=1 while building")
    t0 = time.monotonic()
    assert agent.stop(timeout=120) == 0, agent.output()[-3000:]
    handed_back = time.monotonic() - t0
    assert notify.seen("STOPPING=1")
    assert "drain period (5s) is over" in agent.output()
    assert f"job {job_id}: handed back to the queue" in agent.output()
    (state,), = farm.sql("SELECT state FROM jobs WHERE job_id = %s", (job_id,))
    assert state == "queued", "handed back, not left to its lease"
    assert build_processes(agent.users) == []
    farm.open_gate(version)
    agent.start(farm.venv)
    farm.wait_built("pwtest-gated", version)
    assert_built_once(farm, version)
    record("SIGTERM during a build, drain period 5 s", handed_back)
    agent.stop()


def test_a_full_disk_pauses_claims_instead_of_failing_jobs(farm: MiniFarm):
    name = "fault_disk"
    users = AgentUsers("pwtest-flt-agent4", "pwtest-flt-build4")
    agent = farm.add_agent(name, users, builder_min_free_disk_mb=1 << 40, **FAST)
    for other in farm.agents.values():
        if other is not agent and other.proc is not None and other.proc.poll() is None:
            other.stop()
    farm.start(name)
    wait_until(lambda: "claiming no jobs: only" in agent.output(), 60, "the pause to be logged",
               diagnostics=farm.diagnostics)
    version = "1.6"
    farm.open_gate(version)
    job_id = farm.queue("pwtest-gated", version)
    time.sleep(FAST["poll_seconds"] * 2)  # two of its checks go by
    assert farm.sql("SELECT state FROM jobs WHERE job_id = %s", (job_id,)) == [("queued",)]
    assert not farm.builds("pwtest-gated", version)
    assert agent.stop() == 0
    # Space is back (here: the floor is lowered): claims resume, the job is built.
    text = agent.config.read_text().replace(f"min_free_disk_mb = {1 << 40}",
                                            "min_free_disk_mb = 1")
    agent.config.write_text(text)
    t0 = time.monotonic()
    agent.start(farm.venv)
    farm.wait_built("pwtest-gated", version)
    assert_built_once(farm, version)
    record("work directory's file system under min_free_disk_mb", time.monotonic() - t0,
           note="claims paused, job stayed queued; built once space was back")
    assert agent.stop() == 0
