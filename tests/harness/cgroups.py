"""Delegated cgroups (v2) for test agents, as systemd's ``Delegate=yes`` makes them.

systemd hands a unit with ``Delegate=yes`` its cgroup: the directory and its
``cgroup.procs``, ``cgroup.subtree_control`` and ``cgroup.threads`` belong to
the unit's user. The harness does the same under ``<cgroup2 mount>/pinwheel-tests/``
for a test agent's user, and moves the agent into it once started. Where the
host has no writable cgroup v2 hierarchy the tests that need one are skipped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

from pinwheel.cgroup import cgroup2_mount

DELEGATED_FILES = ("cgroup.procs", "cgroup.subtree_control", "cgroup.threads")


def cgroup_root() -> tuple[Path | None, str]:
    """(<cgroup2 mount>/pinwheel-tests, "") or (None, why the tests cannot have one)."""
    mount = cgroup2_mount()
    if mount is None:
        return None, "this host has no cgroup v2 hierarchy"
    if os.geteuid() != 0 or not os.access(mount / "cgroup.procs", os.W_OK):
        return None, f"{mount} is not writable (the tests need root)"
    root = mount / "pinwheel-tests"
    root.mkdir(exist_ok=True)
    return root, ""


def delegated_cgroup(root: Path, name: str, owner: str | None = None) -> Path:
    """A fresh cgroup ``root/name``, delegated to ``owner`` (as Delegate=yes does)."""
    path = root / name
    remove_cgroup(path)
    path.mkdir()
    if owner is not None:
        for target in (path, *(path / f for f in DELEGATED_FILES)):
            shutil.chown(target, owner)
    return path


def move_into(path: Path, pid: int) -> None:
    (path / "cgroup.procs").write_text(str(pid))


def remove_cgroup(path: Path) -> None:
    """Kill what is left in ``path`` and remove it, children first."""
    if not path.is_dir():
        return
    for child in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        _kill_and_remove(child)
    _kill_and_remove(path)


def _kill_and_remove(path: Path) -> None:
    kill = path / "cgroup.kill"
    if kill.exists():
        with contextlib.suppress(OSError):
            kill.write_text("1")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            path.rmdir()
            return
        except OSError:
            time.sleep(0.05)
    path.rmdir()
