"""System users for the agent and its build user, as the builder role creates them.

Each test agent gets its own agent user and its own build user, and a sudoers
rule letting the agent run commands as the build user only: the same rule the
builder role installs (roles/builder/templates/sudoers.j2 once it exists).
"""

from __future__ import annotations

import pwd
import subprocess
from dataclasses import dataclass
from pathlib import Path

SUDOERS = Path("/etc/sudoers.d/pinwheel-tests")


@dataclass(frozen=True)
class AgentUsers:
    agent: str
    build: str


def ensure_user(name: str) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", name], check=True)


def ensure_agent_users(pairs: list[AgentUsers]) -> None:
    """Create the users and (re)write the sudoers rules for every pair."""
    for pair in pairs:
        ensure_user(pair.agent)
        ensure_user(pair.build)
    rules = "".join(f"{p.agent} ALL=({p.build}) NOPASSWD: ALL\n" for p in pairs)
    tmp = SUDOERS.with_name(".pinwheel-tests.tmp")
    tmp.write_text("# Written by Pinwheel's test harness\n" + rules, encoding="utf-8")
    tmp.chmod(0o440)
    subprocess.run(["visudo", "-cq", "-f", str(tmp)], check=True)
    tmp.replace(SUDOERS)
