"""Running one build as the unprivileged build user, in a fresh directory.

A build runs a stranger's ``setup.py``, so it never runs as the agent's user:
the agent starts it with ``sudo -n -u <build_user>`` (the builder role
installs a sudoers rule allowing exactly that), with an empty environment, in
a fresh world-writable tree inside an agent-owned directory, in a session of
its own, under the limits of :mod:`pinwheel.limits` (wall time, memory,
processes, file and tree size). The build writes into a pipe; the agent
copies it into the log, capped (:mod:`pinwheel.buildlog`). The agent's
configuration, database password and SSH key stay unreadable to the build user.

When the build ends, times out, exceeds a limit or its lease is lost, every
process of the build user is killed (``kill(-1, SIGKILL)`` run *as* that user,
until none is left), which also ends anything the build left running in the
background; then the tree is wiped, and whatever the build user left in
``/tmp``, ``/var/tmp`` and ``/dev/shm`` deleted. One build user per agent:
never share it between agents.

Where systemd delegated a cgroup to the agent, each build runs in a cgroup of
its own (:mod:`pinwheel.cgroup`): memory and processes are limited for the
whole tree, and one write to ``cgroup.kill`` ends it. With a restricted
network (``build_network = restricted``), a firewall rule of the builder role
lets the build user reach nothing but a local proxy, which lets through only
requests to the indexes; the build finds it in ``http_proxy``/``https_proxy``.
The agent checks at start that the rule is in force.

Wheels are copied out of the tree into the agent's outbox only if they are
regular files (never through a symlink a hostile build planted).
"""

from __future__ import annotations

import json
import logging
import os
import select
import shlex
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from .buildlog import CappedLog
from .cgroup import BuildCgroup, NoCgroup
from .limits import MIB, BuildLimits, free_mb, tree_size_mb

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


# Run as the build user: SIGKILL every process it has, in rounds, until none
# but zombies are left. kill(-1) walks the process list with forks blocked, so
# a fork bomb (already capped by RLIMIT_NPROC) cannot outrun it.
_KILL_ALL = """
import os, sys, time
uid, me = os.getuid(), os.getpid()
def alive():
    n = 0
    for pid in os.listdir('/proc'):
        if not pid.isdigit() or int(pid) == me:
            continue
        try:
            if os.stat('/proc/' + pid).st_uid != uid:
                continue
            with open('/proc/' + pid + '/stat') as f:
                state = f.read().rsplit(')', 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in 'ZX':
            n += 1
    return n
for _ in range(200):
    try:
        os.kill(-1, 9)
    except ProcessLookupError:
        sys.exit(0)
    if not alive():
        sys.exit(0)
    time.sleep(0.02)
print(alive(), 'processes survive')
sys.exit(1)
"""
KILL_PYTHON = "/usr/bin/python3"
# Run as the build user: can it open a TCP connection outside the proxy?
# The builder role's firewall rejects it (admin-prohibited: EHOSTUNREACH, or
# EACCES/EPERM); a refused or accepted connection means packets got through.
_NET_PROBE = """
import errno, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(5)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
except OSError as exc:
    confined = exc.errno in (errno.EHOSTUNREACH, errno.EACCES, errno.EPERM, errno.ENETUNREACH)
    print("blocked" if confined else "reached", exc.errno and errno.errorcode.get(exc.errno), exc)
    sys.exit(0 if confined else 1)
print("reached: connected")
sys.exit(1)
"""
# Where the probe tries to connect: a local port no proxy listens on.
NET_PROBE_ADDRESS = ("127.0.0.1", 9)
# World-writable places a build may have written to outside its tree; what the
# build user left there is deleted after every build. (On a provisioned
# builder, the unit's PrivateTmp makes /tmp and /var/tmp the agent's own.)
SHARED_TMP = ("/tmp", "/var/tmp", "/dev/shm")  # noqa: S108
DISK_CHECK_SECONDS = 5.0
_READ_CHUNK = 1 << 20


class Sandbox:
    """Builds one release at a time as ``build_user`` under ``work_dir``."""

    def __init__(self, build_user: str, work_dir: Path, python: str, index_url: str,
                 extra_index_urls: list[str], timeout: int, ca_bundle: str = "",
                 limits: BuildLimits | None = None, proxy: str = "") -> None:
        self.build_user = build_user
        self.work_dir = work_dir
        self.python = python
        self.index_url = index_url
        self.extra_index_urls = extra_index_urls
        self.limits = replace(limits or BuildLimits(), timeout=timeout)
        self.ca_bundle = ca_bundle
        self.proxy = proxy                      # http://host:port every build goes through
        self.cgroup: BuildCgroup | None = None  # see use_cgroup()

    @property
    def timeout(self) -> int:
        return self.limits.timeout

    # ----------------------------------------------------------- confinement

    def use_cgroup(self, base: Path | None = None) -> bool:
        """Run builds in a cgroup of their own, if one can be made; says which in the log.

        ``base``: the cgroup to make it in (default: the agent's own, which
        systemd delegates to it). Without one, memory stays limited per process.
        """
        lim = self.limits
        try:
            self.cgroup = BuildCgroup.setup(lim.memory_mb, lim.max_processes, base)
        except NoCgroup as exc:
            log.warning("no cgroup for the builds (%s): memory is limited per process "
                        "(RLIMIT_AS) and the build's processes are ended by kill rounds", exc)
            return False
        self.limits = replace(lim, memory_in_cgroup=self.cgroup.limits_memory)
        if lim.memory_mb > 0 and not self.cgroup.limits_memory:
            log.warning("%s: memory is limited per process (RLIMIT_AS)", self.cgroup.describe())
        else:
            log.info("%s (memory %s for the whole build)", self.cgroup.describe(),
                     f"{lim.memory_mb} MiB" if lim.memory_mb > 0 else "unlimited")
        return True

    def network_probe(self) -> tuple[bool, str]:
        """(confined, what was seen): may the build user open a connection past the proxy?"""
        host, port = NET_PROBE_ADDRESS
        proc = self._run_quietly(self._as_build_user(KILL_PYTHON, "-I", "-S", "-c", _NET_PROBE,
                                                     host, str(port)), 30)
        return proc.returncode == 0, (proc.stdout + proc.stderr).strip()[-300:]

    def check_network(self) -> None:
        """Refuse to build (RuntimeError) when the proxy is set but the firewall is not there."""
        if not self.proxy:
            return
        confined, seen = self.network_probe()
        if not confined:
            raise RuntimeError(
                f"build_network is restricted, but {self.build_user} can open connections "
                f"that do not go through the proxy (a test connection to "
                f"{NET_PROBE_ADDRESS[0]}:{NET_PROBE_ADDRESS[1]}: {seen}); load the firewall "
                "rule (systemctl start pinwheel-build-firewall) or set build_network = open")
        log.info("builds reach the network only through the proxy %s", self.proxy)

    # ------------------------------------------------------------ commands

    def _as_build_user(self, *args: str) -> list[str]:
        return ["sudo", "-n", "-u", self.build_user, "--", *args]

    def _pip_command(self, package: str, version: str, tree: Path) -> list[str]:
        env = [f"HOME={tree}", f"TMPDIR={tree / 'tmp'}", f"PATH={BUILD_PATH}", "LANG=C.UTF-8",
               "PIP_CONFIG_FILE=/dev/null", "PIP_NO_INPUT=1", "PIP_NO_CACHE_DIR=1",
               "PIP_DISABLE_PIP_VERSION_CHECK=1", "PYTHONDONTWRITEBYTECODE=1"]
        pip = [self.python, "-m", "pip", "wheel", f"{package}=={version}", "--no-deps",
               "--no-binary", package, "--no-cache-dir", "--progress-bar", "off",
               "--index-url", self.index_url]
        for url in self.extra_index_urls:
            pip += ["--extra-index-url", url]
        # Also as environment variables: pip installs build dependencies (PEP 517
        # build isolation) with a pip subprocess that inherits the environment
        # but not every option (bookworm's pip 23 drops --cert there).
        trusted = plain_http_hosts([self.index_url, *self.extra_index_urls])
        for host in trusted:
            pip += ["--trusted-host", host]
        if trusted:
            env.append(f"PIP_TRUSTED_HOST={' '.join(trusted)}")
        if self.ca_bundle:
            pip += ["--cert", self.ca_bundle]
            env.append(f"PIP_CERT={self.ca_bundle}")
        if self.proxy:
            env += [f"{name}={self.proxy}"
                    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")]
        pip += ["-w", str(tree / "out")]
        return self._as_build_user(*self.limits.prlimit_command(), "/usr/bin/env", "-i",
                                   *env, *pip)

    def _run_quietly(self, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              errors="replace", timeout=timeout, check=False)

    def kill_build_processes(self) -> None:
        """Kill every process of the build user (the build and anything it left behind)."""
        try:
            proc = self._run_quietly(
                self._as_build_user(KILL_PYTHON, "-I", "-S", "-c", _KILL_ALL), 60)
        except subprocess.TimeoutExpired:
            log.error("killing the processes of %s timed out", self.build_user)
            return
        if proc.returncode != 0:
            log.error("could not kill every process of %s: %s", self.build_user,
                      (proc.stdout + proc.stderr).strip()[-500:])

    def _purge_shared_tmp(self) -> None:
        """Delete what the build user left in the world-writable temporary directories."""
        dirs = [d for d in SHARED_TMP if os.path.isdir(d)]
        if dirs:
            self._run_quietly(self._as_build_user(
                "/usr/bin/find", *dirs, "-xdev", "-mindepth", "1", "-user", self.build_user,
                "-delete"), 600)

    def _wipe(self, job_dir: Path) -> None:
        tree = job_dir / "tree"
        # Nothing of the build user may still run (to write more), anywhere.
        self.kill_build_processes()
        if tree.exists():
            # The build user owns what it wrote: it must delete it.
            for args in (("/bin/chmod", "-R", "u+rwX", str(tree)),
                         ("/usr/bin/find", str(tree), "-mindepth", "1", "-delete")):
                self._run_quietly(self._as_build_user(*args), 600)
        self._purge_shared_tmp()
        shutil.rmtree(job_dir, ignore_errors=True)
        if job_dir.exists():
            log.error("could not wipe %s completely; remove it by hand", job_dir)

    def wipe_leftovers(self) -> None:
        """Kill the build user's processes and wipe every build tree (after a crash)."""
        self.kill_build_processes()
        builds = self.work_dir / "builds"
        if builds.is_dir():
            for job_dir in sorted(builds.iterdir()):
                if job_dir.name.startswith("job-"):
                    log.info("wiping %s, left over from an earlier run", job_dir)
                    self._wipe(job_dir)

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
              header: str = "", poll: Callable[[], None] | None = None) -> BuildResult:
        """Build ``package==version``; ``tick`` runs every ``tick_seconds`` meanwhile.

        ``poll`` (if given) runs several times a second. Either may raise
        :class:`BuildAborted` (or any exception) to stop the build: the build's
        processes are killed and the tree wiped before the exception propagates.
        The build's output goes through a pipe into ``outbox/build.log``, capped
        at ``limits.max_log_mb``.
        """
        self.kill_build_processes()  # a build starts with the build user idle
        job_dir = self._prepare(job_id)
        tree = job_dir / "tree"
        log_path = outbox / "build.log"
        outbox.mkdir(parents=True, exist_ok=True, mode=0o700)
        cmd = self._pip_command(package, version, tree)
        cgroup = self.cgroup
        oom_before = cgroup.oom_kills() if cgroup else 0
        started = datetime.now(timezone.utc)
        t0 = time.monotonic()
        status, reason, code = "failed", "", None
        try:
            with open(log_path, "wb") as logfile:
                os.fchmod(logfile.fileno(), 0o600)
                logfile.write(header.encode("utf-8", "replace"))
                where = f"in the cgroup {cgroup.path}\n" if cgroup else ""
                logfile.write(f"{self.limits.describe()}\n{where}$ {shlex.join(cmd)}\n\n".encode(
                    "utf-8", "replace"))
                logfile.flush()
                capped = CappedLog(logfile, self.limits.max_log_mb * MIB)
                pipe, child_end = os.pipe()
                try:
                    proc = subprocess.Popen(cgroup.enter_command(cmd) if cgroup else cmd,
                                            cwd=tree, stdin=subprocess.DEVNULL,
                                            stdout=child_end, stderr=child_end,
                                            start_new_session=True)
                except BaseException:
                    os.close(pipe)
                    raise
                finally:
                    os.close(child_end)
                try:
                    status, reason = self._supervise(proc, pipe, capped, t0, tick,
                                                     tick_seconds, poll, tree)
                finally:
                    # The build's processes first (the pipe's writers), then what
                    # is left in the pipe, which then reaches its end.
                    if cgroup:
                        cgroup.kill()
                    self.kill_build_processes()
                    proc.wait()
                    code = proc.returncode
                    self._drain(pipe, capped, time.monotonic() + 30)
                    os.close(pipe)
                    capped.close()
                duration = time.monotonic() - t0
                if cgroup and cgroup.oom_kills() > oom_before and status != "timeout":
                    status = "failed"
                    reason = (f"killed: over its memory limit ({self.limits.memory_mb} MiB for "
                              "the whole build)")
                wheels = self._collect(tree / "out", outbox) if status == "success" else []
                if status == "success" and not wheels:
                    status = "failed"
                    logfile.write(b"\n*** pip reported success but produced no wheel\n")
                if reason:
                    logfile.write(f"\n*** {reason}\n".encode())
                verdict = {"success": "succeeded", "failed": "failed",
                           "timeout": f"timed out after {self.timeout}s (killed)"}[status]
                logfile.write(f"\n*** build {verdict} in {duration:.1f}s, exit status "
                              f"{code}\n".encode())
        finally:
            self._wipe(job_dir)
        return BuildResult(status, started, duration, log_path, wheels)

    def _supervise(self, proc: subprocess.Popen[bytes], pipe: int, capped: CappedLog,
                   t0: float, tick: Callable[[], None], tick_seconds: float,
                   poll: Callable[[], None] | None, tree: Path) -> tuple[str, str]:
        """Follow the build until it ends or must be stopped: (status, reason)."""
        deadline = t0 + self.timeout
        next_tick = t0 + tick_seconds
        next_disk = t0 + DISK_CHECK_SECONDS
        open_pipe = True
        while True:
            if open_pipe:
                open_pipe = self._pump(pipe, capped, 0.2)
            code = proc.poll()
            if code is not None:
                return ("success" if code == 0 else "failed"), ""
            if not open_pipe:
                time.sleep(0.2)
            now = time.monotonic()
            if now >= deadline:
                return "timeout", f"the build took more than {self.timeout}s and was killed"
            if poll is not None:
                poll()
            if now >= next_tick:
                tick()
                next_tick = now + tick_seconds
            if now >= next_disk:
                reason = self._disk_check(tree)
                if reason:
                    return "failed", reason
                next_disk = time.monotonic() + DISK_CHECK_SECONDS

    @staticmethod
    def _pump(pipe: int, capped: CappedLog, timeout: float) -> bool:
        """Move what the build wrote into the log; False once the pipe is at its end."""
        ready, _, _ = select.select([pipe], [], [], timeout)
        budget = 64  # chunks per call, so the loop still looks at the clock
        while ready and budget:
            data = os.read(pipe, _READ_CHUNK)
            if not data:
                return False
            capped.write(data)
            budget -= 1
            ready, _, _ = select.select([pipe], [], [], 0)
        return True

    def _drain(self, pipe: int, capped: CappedLog, until: float) -> None:
        while time.monotonic() < until:
            if not self._pump(pipe, capped, 0.5):
                return
        log.warning("the build's output did not end after its processes were killed")

    def _disk_check(self, tree: Path) -> str:
        """Why the build must stop for its disk use, or ""."""
        lim = self.limits
        if lim.max_disk_mb > 0:
            used = tree_size_mb(self._as_build_user(), str(tree))
            if used is not None and used > lim.max_disk_mb:
                return (f"the build was stopped: its directory holds {used} MiB, more than "
                        f"the limit of {lim.max_disk_mb} MiB")
        if lim.min_free_mb > 0:
            free = free_mb(self.work_dir)
            if free < lim.min_free_mb:
                return (f"the build was stopped: only {free} MiB are left free on the file "
                        f"system of {self.work_dir} (the floor is {lim.min_free_mb} MiB)")
        return ""

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
