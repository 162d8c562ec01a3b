"""A cgroup (v2) for the builds: memory and processes of the whole tree, and one kill.

systemd delegates the agent's cgroup to it (``Delegate=yes`` in the unit: the
directory and its ``cgroup.procs`` and ``cgroup.subtree_control`` belong to
the agent's user). At start the agent moves itself into a leaf ``agent/``
(cgroup v2 lets only leaves hold processes once controllers are enabled for
the children) and makes ``build/``, with ``memory.max`` (and no swap),
``memory.oom.group`` and ``pids.max`` from the build's limits. Every build is
started inside ``build/`` (its first process writes itself into
``cgroup.procs`` before it runs sudo), so all it starts, whatever user or
session, is in there and cannot leave: moving a process out needs write access
to cgroup files the build user does not have.

* memory: the kernel counts every process of the build together; over
  ``memory.max`` it kills the whole build (``memory.oom.group``) and
  ``memory.events`` counts an ``oom_kill``, which the agent records.
* kill: ``cgroup.kill`` (Linux 5.14+) ends every process of the build in one
  write; older kernels keep the kill rounds as the build user.

Without a writable cgroup v2 (a host in the legacy or hybrid hierarchy, an
agent not started by systemd, the memory controller disabled, as on older
Raspberry Pi kernels without ``cgroup_enable=memory``), :func:`BuildCgroup.setup`
says why, and each process of a build is limited by ``RLIMIT_AS`` instead.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .limits import MIB

CONTROLLERS = ("memory", "pids")


def cgroup2_mount(mountinfo: str = "/proc/self/mountinfo") -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (``/sys/fs/cgroup``, or ``.../unified``)."""
    try:
        with open(mountinfo, encoding="utf-8") as fh:
            for line in fh:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    return Path(left.split()[4])
    except OSError:
        return None
    return None


def own_cgroup(proc_cgroup: str = "/proc/self/cgroup") -> Path | None:
    """This process's cgroup v2 directory, or None without a cgroup v2 hierarchy."""
    mount = cgroup2_mount()
    if mount is None:
        return None
    try:
        with open(proc_cgroup, encoding="utf-8") as fh:
            for line in fh:
                hierarchy, _, path = line.rstrip("\n").partition("::")
                if hierarchy == "0":
                    return mount / path.lstrip("/")
    except OSError:
        return None
    return None


def _write(path: Path, value: str) -> None:
    with open(path, "w", encoding="ascii") as fh:
        fh.write(value)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii")
    except OSError:
        return ""


class NoCgroup(Exception):
    """No delegated, writable cgroup v2 is available: the message says why."""


@dataclass
class BuildCgroup:
    path: Path            # the builds' cgroup (<the agent's cgroup>/build)
    memory_mb: int        # memory.max of the whole build, 0: none
    controllers: frozenset[str]  # of CONTROLLERS, those enabled in ``path``

    @property
    def limits_memory(self) -> bool:
        """True when the kernel limits the memory of the whole build."""
        return self.memory_mb > 0 and "memory" in self.controllers

    @classmethod
    def setup(cls, memory_mb: int, max_processes: int, base: Path | None = None) -> BuildCgroup:
        """Make ``<base>/build`` (``base``: this process's own cgroup) with the limits.

        Raises :class:`NoCgroup` when the cgroup is missing or not writable.
        The processes in ``base`` (this agent) move into ``<base>/agent``.
        """
        if base is None:
            base = own_cgroup()
            if base is None:
                raise NoCgroup("this host has no cgroup v2 hierarchy")
        for name in ("", "cgroup.procs", "cgroup.subtree_control"):
            if not os.access(base / name, os.W_OK):
                raise NoCgroup(f"{base / name} is not writable by this user (start the agent "
                               "with Delegate=yes, as pinwheel-agent.service does)")
        try:
            leaf = base / "agent"
            leaf.mkdir(exist_ok=True)
            for pid in _read(base / "cgroup.procs").split():
                with contextlib.suppress(ProcessLookupError):
                    try:
                        _write(leaf / "cgroup.procs", pid)
                    except OSError as exc:
                        if exc.errno != errno.ESRCH:
                            raise
            available = set(_read(base / "cgroup.controllers").split())
            for controller in CONTROLLERS:
                if controller in available:
                    with contextlib.suppress(OSError):
                        _write(base / "cgroup.subtree_control", f"+{controller}")
            build = base / "build"
            build.mkdir(exist_ok=True)
        except OSError as exc:
            raise NoCgroup(f"cannot set up {base}/build: {exc}") from exc
        enabled = frozenset(c for c in CONTROLLERS
                            if c in _read(build / "cgroup.controllers").split())
        cg = cls(build, memory_mb, enabled)
        cg.kill()  # anything left from a predecessor
        try:
            if "memory" in enabled:
                _write(build / "memory.max", str(memory_mb * MIB) if memory_mb > 0 else "max")
                if (build / "memory.swap.max").exists():
                    _write(build / "memory.swap.max", "0" if memory_mb > 0 else "max")
                if (build / "memory.oom.group").exists():
                    _write(build / "memory.oom.group", "1")
            if "pids" in enabled:
                _write(build / "pids.max", str(max_processes) if max_processes > 0 else "max")
        except OSError as exc:
            raise NoCgroup(f"cannot set the limits of {build}: {exc}") from exc
        return cg

    def describe(self) -> str:
        missing = [c for c in CONTROLLERS if c not in self.controllers]
        text = f"builds run in the cgroup {self.path}"
        if missing:
            text += (f" without the {' and '.join(missing)} controller(s) (not delegated to "
                     "the agent, or disabled in the kernel)")
        return text

    def enter_command(self, cmd: list[str]) -> list[str]:
        """``cmd`` run by a shell that first moves itself into the build's cgroup."""
        return ["/bin/sh", "-c", 'echo 0 > "$0" && exec "$@"', str(self.path / "cgroup.procs"),
                *cmd]

    def oom_kills(self) -> int:
        """How many processes the kernel killed in the build's cgroup for its memory limit."""
        for line in _read(self.path / "memory.events").splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def populated(self) -> bool:
        return "populated 1" in _read(self.path / "cgroup.events")

    def kill(self, wait: float = 10.0) -> bool:
        """SIGKILL every process of the build's cgroup; False if this kernel cannot."""
        kill_file = self.path / "cgroup.kill"
        if not kill_file.exists():
            return False
        try:
            _write(kill_file, "1")
        except OSError:
            return False
        deadline = time.monotonic() + wait
        while self.populated() and time.monotonic() < deadline:
            time.sleep(0.02)
        return True
