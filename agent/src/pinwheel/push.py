"""Pushing a build's files to the master: rsync over SSH, into incoming/<builder>/.

On the master the builder's key is forced to ``rrsync -wo <incoming>/<builder>``:
the push can only write files into that one directory. A push that fails is
retried with exponential backoff and jitter; the build is never redone for it
(the agent keeps the files in its outbox and heartbeats the job meanwhile).
"""

from __future__ import annotations

import logging
import random
import shlex
import subprocess
import time
from pathlib import Path
from typing import Callable

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


def backoff(attempt: int, base_delay: float = 2.0, max_delay: float = 120.0) -> float:
    """Seconds to wait after failed attempt number ``attempt``: exponential, with jitter."""
    return min(max_delay, base_delay * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)  # noqa: S311


def push_once(files: list[Path], user: str, host: str, port: int, key: Path,
              known_hosts: Path, kick: Callable[[], None] | None = None,
              timeout: float = 3600) -> str | None:
    """One rsync of ``files``; None on success, else why it failed (one line).

    ``kick`` runs every second meanwhile (the agent's watchdog).
    """
    cmd = rsync_command(files, user, host, port, key, known_hosts)
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
    except OSError as exc:
        return f"cannot run rsync: {exc}"
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                out, _ = proc.communicate(timeout=1)
                break
            except subprocess.TimeoutExpired:
                if kick is not None:
                    kick()
                if time.monotonic() > deadline:
                    proc.kill()
                    proc.communicate()
                    return f"rsync took more than {timeout:.0f}s"
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if proc.returncode == 0:
        return None
    lines = out.decode("utf-8", "replace").strip().splitlines()
    return lines[-1] if lines else f"rsync exit status {proc.returncode}"


def push(files: list[Path], user: str, host: str, port: int, key: Path, known_hosts: Path,
         attempts: int = 5, base_delay: float = 2.0, max_delay: float = 120.0) -> None:
    """Push ``files`` into this builder's incoming directory, retrying on failure."""
    last = ""
    for attempt in range(1, attempts + 1):
        error = push_once(files, user, host, port, key, known_hosts)
        if error is None:
            return
        last = error
        if attempt < attempts:
            delay = backoff(attempt, base_delay, max_delay)
            log.warning("push to %s@%s:%d failed (attempt %d/%d): %s; retrying in %.0fs",
                        user, host, port, attempt, attempts, last, delay)
            time.sleep(delay)
    raise PushFailed(failure_message(user, host, port, attempts, last))


def failure_message(user: str, host: str, port: int, attempts: int, last: str) -> str:
    return (f"could not push to {user}@{host}:{port} after {attempts} attempt(s): {last}. "
            "Check that the master is reachable and that this builder's key is "
            "authorised there (the master role adds it).")
