"""The resource limits of one build, and how they are applied.

Limits on one process (memory, file size, core dumps) and on the build user
(processes) are set with ``prlimit`` *as the build user*, right before pip
starts: lowering one's own limits needs no privilege, and everything the build
starts inherits them. What no rlimit covers is watched by the agent while the
build runs: the total size of the build's tree, and the free space left on the
work directory's file system.

* memory: the whole build's, in a cgroup of its own (:mod:`pinwheel.cgroup`)
  when systemd delegated one to the agent; otherwise ``RLIMIT_AS`` (address
  space) of each process.
* processes: ``RLIMIT_NPROC`` counts every process of the build user, which
  belongs to this agent alone, so it caps the whole build (a fork bomb stops at
  the limit, and the kill switch still ends it: see ``Sandbox``).
* disk: ``RLIMIT_FSIZE`` caps each file; the tree's total is measured with
  ``du`` every few seconds, and the build is stopped when it exceeds its limit
  or when the file system's free space falls under a floor.

A limit of 0 means "no limit".
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

MIB = 1 << 20
PRLIMIT = "/usr/bin/prlimit"


@dataclass(frozen=True)
class BuildLimits:
    timeout: int = 3600          # seconds of wall time for the whole build
    memory_mb: int = 2048        # address space of each process (RLIMIT_AS)
    max_processes: int = 256     # processes of the build user (RLIMIT_NPROC)
    max_file_mb: int = 2048      # size of any one file written (RLIMIT_FSIZE)
    max_disk_mb: int = 8192      # total size of the build's tree
    max_log_mb: int = 16         # the build's log; the rest is cut out, with a marker
    min_free_mb: int = 512       # stop the build when its file system has less free
    # memory_mb is the whole build's, enforced by its cgroup (no RLIMIT_AS then)
    memory_in_cgroup: bool = False

    def prlimit_command(self) -> list[str]:
        """``prlimit`` options that apply the per-process limits, ending with ``--``."""
        args = [PRLIMIT, "--core=0"]
        if self.memory_mb > 0 and not self.memory_in_cgroup:
            args.append(f"--as={self.memory_mb * MIB}")
        if self.max_processes > 0:
            args.append(f"--nproc={self.max_processes}")
        if self.max_file_mb > 0:
            args.append(f"--fsize={self.max_file_mb * MIB}")
        return [*args, "--"]

    def describe(self) -> str:
        """One line for the build's log: what this build may use."""
        def cap(value: int, unit: str) -> str:
            return f"{value}{unit}" if value > 0 else "unlimited"
        scope = "for the whole build (cgroup)" if self.memory_in_cgroup else "per process"
        return (f"limits: {self.timeout}s wall time, memory {cap(self.memory_mb, ' MiB')} "
                f"{scope}, {cap(self.max_processes, '')} processes, files up to "
                f"{cap(self.max_file_mb, ' MiB')}, tree up to {cap(self.max_disk_mb, ' MiB')}, "
                f"log up to {cap(self.max_log_mb, ' MiB')}")


def free_mb(path: os.PathLike[str] | str) -> int:
    """MiB available to unprivileged users on the file system holding ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize // MIB


def tree_size_mb(command_prefix: list[str], tree: str, timeout: float = 60) -> int | None:
    """Disk used by ``tree`` in MiB, measured by ``du`` run through ``command_prefix``.

    The build user owns what it wrote (and may make it unreadable to the
    agent), so ``du`` runs as the build user. ``None`` when it cannot tell.
    """
    try:
        proc = subprocess.run([*command_prefix, "/usr/bin/du", "-s", "-x", "-B1", tree],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    try:
        return int(proc.stdout.split()[0]) // MIB
    except (IndexError, ValueError):
        return None
