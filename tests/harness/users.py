"""System users for the agent and its build user, as the builder role creates them.

Each test agent gets its own agent user and its own build user, and a sudoers
rule letting the agent run commands as the build user only: the rule the
builder role installs, rendered from its template
(``roles/builder/templates/sudoers.j2``), in a file of its own per pair
(``/etc/sudoers.d/pinwheel-tests-<agent user>``). Test runs of several
worktrees share these users and files: a run only ever adds or rewrites the
rules of its own pairs, never removes another's (an older harness wrote every
pair into ``/etc/sudoers.d/pinwheel-tests``, which is left alone).
"""

from __future__ import annotations

import pwd
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .templates import render_role_template

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


def sudoers_file(pair: AgentUsers) -> Path:
    return SUDOERS.with_name(f"{SUDOERS.name}-{pair.agent}")


def ensure_agent_users(pairs: list[AgentUsers]) -> None:
    """Create the users and (re)write the sudoers rule of every pair."""
    for pair in pairs:
        ensure_user(pair.agent)
        ensure_user(pair.build)
        rule = render_role_template("builder", "sudoers.j2", builder_agent_user=pair.agent,
                                    builder_build_user=pair.build,
                                    ansible_managed="Written by Pinwheel's test harness")
        target = sudoers_file(pair)
        # A name with a dot: sudo skips it while it is being written and checked.
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(rule, encoding="utf-8")
        tmp.chmod(0o440)
        subprocess.run(["visudo", "-cq", "-f", str(tmp)], check=True)
        tmp.replace(target)
