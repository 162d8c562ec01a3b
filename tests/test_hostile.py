"""A hostile package on a real agent: it gains nothing, and the builder carries on.

``pwtest-hostile`` 1.0 (tests/upstream/pwtest-hostile/setup.py) tries to read
the agent's configuration and SSH key, to write outside its build directory, to
kill the agent, to leave a process running, to flood its log with 100 MB, to
leave its cgroup, to connect to every port listening on the host and to send a
DNS query; 2.0 hangs with children past the time limit.

Where the host allows (root, nft, tinyproxy, a writable cgroup v2 hierarchy),
the agent runs as on a provisioned builder: in a cgroup delegated to its user
(harness.cgroups), with ``build_network = restricted`` behind the builder
role's firewall rule and proxy (harness.buildnet).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.agents import world_readable_tempdir
from harness.buildnet import BuildNetwork, nft_usable
from harness.cgroups import cgroup_root, delegated_cgroup, remove_cgroup
from harness.minifarm import MiniFarm, make_minifarm
from harness.users import AgentUsers
from pinwheel.buildlog import TRUNCATED_MARKER

pytestmark = pytest.mark.e2e

NAME = "hostile_one"
USERS = AgentUsers("pwtest-hst-agent", "pwtest-hst-build")
LOG_CAP_MB = 2


@pytest.fixture(scope="module")
def net(upstream) -> Iterator[BuildNetwork | None]:
    """The build user's confined network, or None where this host cannot have one."""
    if nft_usable():
        yield None
        return
    net = BuildNetwork(USERS.build, ["127.0.0.1"],
                       world_readable_tempdir("pinwheel-hostile-net-")).start()
    try:
        yield net
    finally:
        net.stop()


@pytest.fixture(scope="module")
def farm(pg, pg_template, upstream, net) -> Iterator[MiniFarm]:
    place = world_readable_tempdir("pinwheel-hostile-")
    farm = make_minifarm(pg, pg_template, upstream.url, place, "pinwheel_hostile")
    restricted = ({"builder_build_network": "restricted", "builder_build_proxy_port": net.port}
                  if net else {})
    agent = farm.add_agent(NAME, USERS, build_timeout=60, builder_build_max_log_mb=LOG_CAP_MB,
                           **restricted)
    root, _ = cgroup_root()
    if root is not None:
        agent.cgroup = delegated_cgroup(root, f"hostile-{os.getpid()}", USERS.agent)
    try:
        farm.start(NAME)
        yield farm
    finally:
        farm.stop_all()
        farm.sshd.destroy()
        if agent.cgroup is not None:
            remove_cgroup(agent.cgroup)


def build_user_processes() -> list[str]:
    out = subprocess.run(["ps", "-o", "stat=,args=", "-u", USERS.build], capture_output=True,
                         text=True).stdout.splitlines()
    return [p for p in out if not p.strip().startswith("Z")]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_hostile_build_gains_nothing_and_its_log_is_capped(farm: MiniFarm, pg,
                                                            net: BuildNetwork | None):
    agent = farm.agents[NAME]
    conf_before = sha(agent.config)
    job_id = farm.queue("pwtest-hostile", "1.0")
    _, _, status, builder, _, _ = farm.wait_built("pwtest-hostile", "1.0")
    log = farm.pushed_log(NAME, job_id)
    assert (status, builder) == ("failed", NAME), log[:3000] + b"\n[...]\n" + log[-5000:]
    # Capped: the beginning, a marker, the end; far less than the 100 MB written.
    assert len(log) < (LOG_CAP_MB << 20) + 8192, len(log)
    assert TRUNCATED_MARKER in log
    text = log.decode(errors="replace")
    # It tried, and everything was refused.
    found = re.search(r"HOSTILE found (\d+) agent process", text)
    assert found and int(found.group(1)) >= 1, text[-5000:]
    for attack in (f"read config {agent.config}", f"write config {agent.config}",
                   "read key /tmp/pinwheel-sshd-", "kill agent", "read agent",
                   f"write {farm.work_dir(NAME)}/outbox/pwned", "write /etc/pwned-by"):
        assert f"HOSTILE {attack}" in text, f"{attack!r} not attempted:\n{text[-5000:]}"
    assert "HOSTILE-SUCCEEDED" not in text, text[-5000:]
    assert farm.passwords[NAME] not in text and "PRIVATE KEY" not in text
    assert "HOSTILE-TMP wrote /tmp/pwtest-hostile-was-here" in text
    assert "HOSTILE left a background process" in text
    # Its network: nothing but the proxy, which only forwards to the index (pip
    # fetched setuptools through it, or the build would not have got this far).
    if net is not None:
        assert "builds reach the network only through the proxy" in agent.output()
        for attack in (f"connect 127.0.0.1:{pg.port}", f"connect 127.0.0.1:{farm.sshd.port}",
                       "send a DNS query"):
            assert f"HOSTILE {attack}: refused" in text, f"{attack!r}:\n{text[-5000:]}"
    # Its cgroup: the agent's delegated one has the build in build/, which it cannot leave.
    if agent.cgroup is not None:
        assert f"builds run in the cgroup {agent.cgroup}/build" in agent.output()
        assert re.search(r"HOSTILE is in the cgroup \S*/build\n", text), text[-5000:]
        assert f"HOSTILE move into cgroup {agent.cgroup}/agent: refused" in text, text[-5000:]
        assert "populated 0" in (agent.cgroup / "build" / "cgroup.events").read_text()

    # Nothing it wrote or started outlives the build.
    assert not os.path.exists("/tmp/pwtest-hostile-was-here")
    assert not os.path.exists("/etc/pwned-by-pwtest-hostile")
    assert not list(farm.work_dir(NAME).rglob("pwned"))
    assert build_user_processes() == []
    assert sha(agent.config) == conf_before
    assert agent.proc is not None and agent.proc.poll() is None, "the agent was killed"
    # The agent's own log stays small: the flood went into the capped build log only.
    assert agent.log.stat().st_size < 1 << 20


def test_the_next_build_on_that_builder_is_unaffected(farm: MiniFarm):
    job_id = farm.queue("pwtest-pure", "1.0")
    _, _, status, builder, attempts, _ = farm.wait_built("pwtest-pure", "1.0")
    assert (status, builder, attempts) == ("success", NAME, 1)
    text = farm.pushed_log(NAME, job_id).decode()
    assert "HOSTILE" not in text and TRUNCATED_MARKER.decode() not in text
    assert (farm.sshd.incoming_root / NAME / "pwtest_pure-1.0-py3-none-any.whl").exists()


def test_a_build_over_its_time_limit_is_killed_with_its_children(farm: MiniFarm):
    job_id = farm.queue("pwtest-hostile", "2.0")
    _, _, status, builder, _, _ = farm.wait_built("pwtest-hostile", "2.0", timeout=240)
    assert (status, builder) == ("timeout", NAME)
    text = farm.pushed_log(NAME, job_id).decode()
    # pip keeps the hook's output to itself while it runs: the log shows where it hung.
    assert "Getting requirements to build wheel: started" in text
    assert "timed out after 60s" in text
    assert build_user_processes() == []
    assert not farm.sql("SELECT 1 FROM jobs")
