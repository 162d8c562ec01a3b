"""Pushing a build's files to the master: rsync over SSH, into incoming/<builder>/.

On the master the builder's key is forced to ``rrsync -wo <incoming>/<builder>``:
the push can only write files into that one directory. A push that fails is
retried with exponential backoff and jitter; the build is never redone for it.
"""

from __future__ import annotations

import logging
import random
import shlex
import subprocess
import time
from pathlib import Path

log = logging.getLogger("pinwheel.push")


class PushFailed(Exception):
    """Every attempt to push to the master failed."""


def ssh_command(key: Path, known_hosts: Path, port: int) -> str:
    """The ``rsync -e`` remote shell: key-only, strict host checking, no prompts."""
    return shlex.join([
        "ssh", "-i", str(key), "-p", str(port),
        "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
        "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "ConnectTimeout=20", "-o", "ServerAliveInterval=15",
    ])


def rsync_command(files: list[Path], user: str, host: str, port: int, key: Path,
                  known_hosts: Path) -> list[str]:
    return ["rsync", "--times", "--chmod=F0644", "--timeout=120",
            "-e", ssh_command(key, known_hosts, port),
            *[str(f) for f in files], f"{user}@{host}:"]


def push(files: list[Path], user: str, host: str, port: int, key: Path, known_hosts: Path,
         attempts: int = 5, base_delay: float = 2.0, max_delay: float = 120.0) -> None:
    """Push ``files`` into this builder's incoming directory, retrying on failure."""
    cmd = rsync_command(files, user, host, port, key, known_hosts)
    last = ""
    for attempt in range(1, attempts + 1):
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              errors="replace", timeout=3600, check=False)
        if proc.returncode == 0:
            return
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        last = last[0]
        if attempt < attempts:
            delay = min(max_delay, base_delay * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)  # noqa: S311
            log.warning("push to %s@%s:%d failed (attempt %d/%d): %s; retrying in %.0fs",
                        user, host, port, attempt, attempts, last, delay)
            time.sleep(delay)
    raise PushFailed(f"could not push to {user}@{host}:{port} after {attempts} attempts: {last}. "
                     "Check that the master is reachable and that this builder's key is "
                     "authorised there (the master role adds it).")
