"""Running one build as the unprivileged build user, in a fresh directory.

A build runs a stranger's ``setup.py``, so it never runs as the agent's user:
the agent starts it with ``sudo -n -u <build_user>`` (the builder role
installs a sudoers rule allowing exactly that), with an empty environment, in
a fresh world-writable tree inside an agent-owned directory. The agent owns the
log file and only hands the build a file descriptor to it; its configuration,
database password and SSH key stay unreadable to the build user.

When the build ends, times out or its lease is lost, every process of the
build user is killed (``pkill -KILL -u <build_user>`` run *as* that user), which
also reaps anything the build left running in the background; then the tree
is wiped. One build user per agent: never share it between agents.

Wheels are copied out of the tree into the agent's outbox only if they are
regular files (never through a symlink a hostile build planted).
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

log = logging.getLogger("pinwheel.sandbox")

BUILD_PATH = "/usr/local/bin:/usr/bin:/bin"
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def plain_http_hosts(urls: list[str]) -> list[str]:
    """The hosts of plain-HTTP index URLs that pip must be told to trust.

    pip ignores an ``http://`` index on any host but the loopback ("not a
    trusted or secure host") unless it is named with ``--trusted-host``. A
    farm's own index is plain HTTP on the private network, and so is a test
    upstream, so the agent names them. HTTPS indexes are verified as usual.
    """
    hosts: list[str] = []
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or parts.hostname in _LOOPBACK:
            continue
        host = parts.netloc.rsplit("@", 1)[-1]
        if host not in hosts:
            hosts.append(host)
    return hosts


_PROBE = ("import json, sys, sysconfig; print(json.dumps({'implementation': "
          "sys.implementation.name, 'version': list(sys.version_info[:3]), "
          "'platform': sysconfig.get_platform(), 'maxsize': sys.maxsize}))")


class BuildAborted(Exception):
    """The build was stopped before it finished (its lease was lost, or the agent stops)."""


@dataclass
class BuildResult:
    status: str            # success, failed or timeout
    started: datetime
    duration: float        # seconds
    log_path: Path         # the agent-owned plain-text log
    wheels: list[Path]     # copies in the outbox, owned by the agent


@dataclass(frozen=True)
class Interpreter:
    implementation: str
    version: tuple[int, int, int]
    platform: str
    maxsize: int


def probe_interpreter(python: str) -> Interpreter:
    """Ask the build interpreter what it is (its tags are what the builder builds for)."""
    try:
        out = subprocess.run([python, "-c", _PROBE], check=True, capture_output=True,
                             text=True, timeout=60, env={"PATH": BUILD_PATH}).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"cannot run the build interpreter {python}: {exc}") from exc
    data = json.loads(out)
    major, minor, micro = data["version"]
    return Interpreter(data["implementation"], (major, minor, micro), data["platform"],
                       int(data["maxsize"]))


class Sandbox:
    """Builds one release at a time as ``build_user`` under ``work_dir``."""

    def __init__(self, build_user: str, work_dir: Path, python: str, index_url: str,
                 extra_index_urls: list[str], timeout: int, ca_bundle: str = "") -> None:
        self.build_user = build_user
        self.work_dir = work_dir
        self.python = python
        self.index_url = index_url
        self.extra_index_urls = extra_index_urls
        self.timeout = timeout
        self.ca_bundle = ca_bundle

    # ------------------------------------------------------------ commands

    def _as_build_user(self, *args: str) -> list[str]:
        return ["sudo", "-n", "-u", self.build_user, "--", *args]

    def _pip_command(self, package: str, version: str, tree: Path) -> list[str]:
        env = [f"HOME={tree}", f"TMPDIR={tree / 'tmp'}", f"PATH={BUILD_PATH}", "LANG=C.UTF-8",
               "PIP_CONFIG_FILE=/dev/null", "PIP_NO_INPUT=1",
               "PIP_DISABLE_PIP_VERSION_CHECK=1", "PYTHONDONTWRITEBYTECODE=1"]
        pip = [self.python, "-m", "pip", "wheel", f"{package}=={version}", "--no-deps",
               "--no-binary", package, "--no-cache-dir", "--progress-bar", "off",
               "--index-url", self.index_url]
        for url in self.extra_index_urls:
            pip += ["--extra-index-url", url]
        for host in plain_http_hosts([self.index_url, *self.extra_index_urls]):
            pip += ["--trusted-host", host]
        if self.ca_bundle:
            pip += ["--cert", self.ca_bundle]
        pip += ["-w", str(tree / "out")]
        return self._as_build_user("/usr/bin/env", "-i", *env, *pip)

    def kill_build_processes(self) -> None:
        """Kill every process of the build user (the build and anything it left behind)."""
        subprocess.run(self._as_build_user("/usr/bin/pkill", "-KILL", "-u", self.build_user),
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=60, check=False)

    def _wipe(self, job_dir: Path) -> None:
        tree = job_dir / "tree"
        if tree.exists():
            # The build user owns what it wrote: it must delete it (after
            # making sure nothing of its is still running to write more).
            self.kill_build_processes()
            for args in (("/bin/chmod", "-R", "u+rwX", str(tree)),
                         ("/usr/bin/find", str(tree), "-mindepth", "1", "-delete")):
                subprocess.run(self._as_build_user(*args), stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               timeout=600, check=False)
        shutil.rmtree(job_dir, ignore_errors=True)
        if job_dir.exists():
            log.error("could not wipe %s completely; remove it by hand", job_dir)

    def _prepare(self, job_id: int) -> Path:
        builds = self.work_dir / "builds"
        builds.mkdir(parents=True, exist_ok=True)
        # Traversable by the build user, never listable or readable.
        os.chmod(self.work_dir, 0o711)  # noqa: S103
        os.chmod(builds, 0o711)  # noqa: S103
        job_dir = builds / f"job-{job_id}"
        if job_dir.exists():  # left over from a crash
            self._wipe(job_dir)
        job_dir.mkdir(mode=0o711)
        for sub in ("tree", "tree/tmp", "tree/out"):
            (job_dir / sub).mkdir()
            os.chmod(job_dir / sub, 0o777)  # noqa: S103 - the build user writes here only
        return job_dir

    # --------------------------------------------------------------- build

    def build(self, package: str, version: str, job_id: int, outbox: Path,
              tick: Callable[[], None], tick_seconds: float,
              header: str = "") -> BuildResult:
        """Build ``package==version``; ``tick`` runs every ``tick_seconds`` meanwhile.

        ``tick`` may raise :class:`BuildAborted` (or any exception) to stop
        the build: the build's processes are killed and the tree wiped before
        the exception propagates.
        """
        job_dir = self._prepare(job_id)
        tree = job_dir / "tree"
        log_path = outbox / "build.log"
        outbox.mkdir(parents=True, exist_ok=True, mode=0o700)
        cmd = self._pip_command(package, version, tree)
        started = datetime.now(timezone.utc)
        t0 = time.monotonic()
        status = "failed"
        try:
            with open(log_path, "wb") as logfile:
                os.fchmod(logfile.fileno(), 0o600)
                logfile.write(header.encode("utf-8", "replace"))
                logfile.write(f"$ {shlex.join(cmd)}\n\n".encode("utf-8", "replace"))
                logfile.flush()
                proc = subprocess.Popen(cmd, cwd=tree, stdin=subprocess.DEVNULL,
                                        stdout=logfile, stderr=subprocess.STDOUT,
                                        start_new_session=True)
                try:
                    status = self._supervise(proc, t0, tick, tick_seconds)
                finally:
                    if proc.poll() is None:
                        self.kill_build_processes()
                        proc.wait()
                    self.kill_build_processes()  # whatever it left running
                duration = time.monotonic() - t0
                wheels = self._collect(tree / "out", outbox) if status == "success" else []
                if status == "success" and not wheels:
                    status = "failed"
                    logfile.write(b"\n*** pip reported success but produced no wheel\n")
                verdict = {"success": "succeeded", "failed": "failed",
                           "timeout": f"timed out after {self.timeout}s (killed)"}[status]
                logfile.write(f"\n*** build {verdict} in {duration:.1f}s, exit status "
                              f"{proc.returncode}\n".encode())
        finally:
            self._wipe(job_dir)
        return BuildResult(status, started, duration, log_path, wheels)

    def _supervise(self, proc: subprocess.Popen[bytes], t0: float,
                   tick: Callable[[], None], tick_seconds: float) -> str:
        deadline = t0 + self.timeout
        next_tick = t0 + tick_seconds
        while True:
            now = time.monotonic()
            try:
                code = proc.wait(timeout=max(0.05, min(deadline, next_tick) - now))
                return "success" if code == 0 else "failed"
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if now >= deadline:
                self.kill_build_processes()
                proc.wait()
                return "timeout"
            if now >= next_tick:
                tick()
                next_tick = now + tick_seconds

    @staticmethod
    def _collect(out: Path, outbox: Path) -> list[Path]:
        """Copy the wheels the build produced into the outbox, refusing anything odd."""
        wheels = []
        for entry in sorted(os.scandir(out), key=lambda e: e.name):
            if not entry.name.endswith(".whl") or "/" in entry.name or entry.name.startswith("."):
                log.warning("ignoring unexpected build output %r", entry.name)
                continue
            try:
                fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError as exc:
                log.warning("refusing build output %r: %s", entry.name, exc.strerror)
                continue
            with os.fdopen(fd, "rb") as src:
                if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
                    log.warning("refusing build output %r: not a regular file", entry.name)
                    continue
                dest = outbox / entry.name
                with open(dest, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                os.chmod(dest, 0o644)
                wheels.append(dest)
        return wheels
