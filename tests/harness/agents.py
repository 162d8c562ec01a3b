"""Builder agents as real processes: a venv from the system Python, own users, own config.

The agent runs as its own unprivileged user from a venv made with the host's
system Python (``--system-site-packages``, so Debian's python3-psycopg2 is
used), as the builder role installs it; builds run as a second user. Its
``agent.conf`` is rendered from the role's own template
(``roles/builder/templates/agent.conf.j2``).
"""

from __future__ import annotations

import atexit
import functools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .templates import render_role_template
from .users import AgentUsers

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"


def world_readable_tempdir(prefix: str) -> Path:
    """A directory in /tmp the agent and build users can enter (pytest's tmp_path
    is root's alone); removed when the test process exits."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o755)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@functools.cache
def make_agent_venv() -> Path:
    """The agent installed into a venv made from the system Python; returns the venv.

    Built once per test process (agents only run it, never change it) and removed
    when the process exits, so a test session leaves no venvs behind in /tmp."""
    base = world_readable_tempdir("pinwheel-agent-venv-")
    src = base / "src"
    shutil.copytree(REPO / "agent", src,
                    ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"))
    venv = base / "venv"
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True)
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps",
                           "--no-build-isolation", "--no-index", str(src)],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"installing the agent into {venv} failed:\n{proc.stdout}{proc.stderr}")
    for path in base.rglob("*"):
        if path.is_dir():
            path.chmod(0o755)
    return venv


@dataclass
class AgentProcess:
    name: str
    users: AgentUsers
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    stopped: bool = False   # the test stopped or killed it on purpose
    # A cgroup delegated to the agent's user (harness.cgroups), as systemd's
    # Delegate=yes gives the unit's: the agent is moved into it once started.
    cgroup: Path | None = None

    def start(self, venv: Path, env: dict[str, str] | None = None) -> None:
        self.stopped = False
        logfile = open(self.log, "ab")  # noqa: SIM115 - owned by the process
        account = pwd.getpwnam(self.users.agent)
        self.proc = subprocess.Popen(
            [str(venv / "bin" / "pinwheel"), "agent", "--config", str(self.config)],
            stdin=subprocess.DEVNULL, stdout=logfile, stderr=subprocess.STDOUT,
            user=account.pw_uid, group=account.pw_gid, extra_groups=[], cwd="/",
            env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", **(env or {})})
        logfile.close()
        if self.cgroup is not None:
            # Before the agent forks anything: Python takes far longer to start.
            (self.cgroup / "cgroup.procs").write_text(str(self.proc.pid))

    def kill9(self) -> None:
        """SIGKILL the agent (a crash, a power cut of the agent alone)."""
        assert self.proc is not None
        self.stopped = True
        self.proc.kill()
        self.proc.wait()

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM (the agent drains), then wait; returns the exit status."""
        assert self.proc is not None
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


# The builder role's defaults (roles/builder/defaults/main.yml) for the settings
# the harness does not choose itself; a test may override any of them.
ROLE_LIMIT_DEFAULTS: dict[str, object] = {
    "builder_build_memory_mb": 2048,
    "builder_build_max_processes": 256,
    "builder_build_max_file_mb": 2048,
    "builder_build_max_disk_mb": 8192,
    "builder_build_max_log_mb": 16,
    "builder_min_free_disk_mb": 1024,
    # The role's default is restricted; a test that wants it loads a firewall
    # rule of its own for its build user (harness.buildnet).
    "builder_build_network": "open",
    "builder_build_proxy_port": 8888,
}


def parse_dsn(dsn: str) -> dict[str, str]:
    """``key=value ...`` (the harness's own DSNs: no quoting) as a dict."""
    fields = dict(item.split("=", 1) for item in dsn.split())
    unknown = set(fields) - {"host", "port", "dbname", "user", "password", "sslmode"}
    if unknown:
        raise ValueError(f"the agent.conf template has no place for {sorted(unknown)} in {dsn!r}")
    return fields


def write_agent_config(path: Path, *, dsn: str, build_user: str, work_dir: Path, index_url: str,
                       extra_index_urls: list[str], push_port: int, push_user: str,
                       key: Path, known_hosts: Path, owner: str,
                       build_timeout: int = 600, lease_seconds: int = 120,
                       heartbeat_seconds: int = 5, poll_seconds: int = 10,
                       push_attempts: int = 3, **settings: object) -> None:
    """Write ``agent.conf`` from the builder role's template, as the role installs it.

    Owned by root and the agent's group, mode 0640, as the role leaves it. The
    DSN's fields become the role's variables (the template puts them back
    together, quoted), so the test agents read what a provisioned builder reads.
    ``settings`` override the role's other variables (``builder_build_max_log_mb=1`` ...);
    the rest take the role's defaults.
    """
    db = parse_dsn(dsn)
    text = render_role_template(
        "builder", "agent.conf.j2",
        builder_name=db["user"],
        builder_database_host=db["host"],
        builder_database_port=db["port"],
        builder_database_name=db["dbname"],
        builder_database_password=db["password"],
        builder_database_sslmode=db.get("sslmode", "prefer"),
        builder_build_user=build_user,
        builder_work_dir=str(work_dir),
        builder_index_url=index_url,
        builder_extra_index_urls=extra_index_urls,
        builder_ca_bundle="",
        builder_python=SYSTEM_PYTHON,
        builder_build_timeout=build_timeout,
        builder_lease_seconds=lease_seconds,
        builder_heartbeat_seconds=heartbeat_seconds,
        builder_poll_seconds=poll_seconds,
        builder_master_host="127.0.0.1",
        builder_master_ssh_port=push_port,
        builder_master_upload_user=push_user,
        builder_ssh_key=str(key),
        builder_known_hosts=str(known_hosts),
        builder_push_attempts=push_attempts,
        **{**ROLE_LIMIT_DEFAULTS, "builder_drain_seconds": build_timeout + 300, **settings},
    )
    path.write_text(text, encoding="utf-8")
    shutil.chown(path, "root", pwd.getpwnam(owner).pw_gid)
    path.chmod(0o640)
    work_dir.mkdir(parents=True, exist_ok=True)
    shutil.chown(work_dir, owner)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.5,  # type: ignore[no-untyped-def]
               diagnostics=None) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    detail = f"\n{diagnostics()}" if diagnostics else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}{detail}")
