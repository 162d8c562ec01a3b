"""A small farm for fault tests: real agents, the test PostgreSQL, an sshd of its own.

Unlike the session's ``sshd_master``, the farm's sshd belongs to it, so a test
may stop it (the master is unreachable) and start it again on the same port.
Jobs are queued with ``pinwheel add`` from a master.conf rendered from the
master role's template; nothing is ingested (the tests look at the queue, the
``builds`` table and the files pushed into ``incoming/<builder>/``).
"""

from __future__ import annotations

import gzip
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .agents import AgentProcess, make_agent_venv, wait_until, write_agent_config
from .ports import wait_listening
from .sshd import SSHD, SshdMaster
from .templates import write_role_template
from .users import AgentUsers, ensure_agent_users

GATES = Path("/tmp/pwtest-gates")


class RestartableSshd(SshdMaster):
    """An sshd that can be stopped and started again with the same port, keys and config."""

    def resume(self) -> None:
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)],
                                          stdout=log, stderr=subprocess.STDOUT)
        wait_listening(self._proc, self.port, "sshd")

    def ensure_running(self) -> None:
        """Start it again if a test stopped it (and failed before starting it)."""
        if self._proc is None:
            self.resume()


@dataclass
class MiniFarm:
    pg: object
    database: str
    place: Path
    upstream_url: str
    sshd: RestartableSshd
    venv: Path
    master_conf: Path
    agents: dict[str, AgentProcess] = field(default_factory=dict)
    passwords: dict[str, str] = field(default_factory=dict)

    # -- agents --------------------------------------------------------------

    def add_agent(self, name: str, users: AgentUsers, **settings: object) -> AgentProcess:
        """Create builder ``name`` (database role, SSH key, users, agent.conf); not started."""
        from pinwheel.schema import BUILDER_GROUP
        ensure_agent_users([users])
        password = f"{name}-secret-pw-{int(time.time())}"
        self.passwords[name] = password
        dsn = self.pg.create_login(self.database, name, BUILDER_GROUP,  # type: ignore[attr-defined]
                                   password)
        key = self.sshd.add_builder(name, owner=users.agent)
        conf = self.place / f"{name}.conf"
        write_agent_config(conf, dsn=dsn, build_user=users.build, work_dir=self.place / name,
                           index_url=self.upstream_url, extra_index_urls=[],
                           push_port=self.sshd.port, push_user=self.sshd.upload_user,
                           key=key.private_key, known_hosts=key.known_hosts, owner=users.agent,
                           **settings)  # type: ignore[arg-type]
        agent = AgentProcess(name, users, conf, self.place / f"{name}.log")
        self.agents[name] = agent
        return agent

    def start(self, name: str) -> AgentProcess:
        """Start (or restart) agent ``name``; returns once it has registered."""
        agent = self.agents[name]
        before = agent.output().count("registered as builder")
        agent.start(self.venv)
        wait_until(lambda: agent.output().count("registered as builder") > before,
                   60, f"{name} to register", diagnostics=self.diagnostics)
        return agent

    def work_dir(self, name: str) -> Path:
        return self.place / name

    # -- the queue -----------------------------------------------------------

    def sql(self, query: str, params: tuple = ()) -> list[tuple]:
        return self.pg.query(self.database, query, params)  # type: ignore[attr-defined]

    def pinwheel(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pinwheel", *args, "--config",
                               str(self.master_conf)], capture_output=True, text=True)

    def queue(self, project: str, version: str) -> int:
        """Queue one release; returns its job id."""
        done = self.pinwheel("add", project, version)
        assert done.returncode == 0, done.stdout + done.stderr
        (job_id,), = self.sql("SELECT job_id FROM jobs WHERE package = %s AND version = %s",
                              (project, version))
        return int(job_id)

    def builds(self, project: str, version: str) -> list[tuple]:
        """(build_id, job_id, status, builder, attempts, log_path) of a release's builds."""
        return self.sql("SELECT build_id, job_id, status, builder, attempts, log_path "
                        "FROM builds WHERE package = %s AND version = %s ORDER BY build_id",
                        (project, version))

    def check_agents(self) -> None:
        """Fail at once (with the logs) if an agent that was started has died."""
        for agent in self.agents.values():
            if agent.proc is not None and agent.proc.poll() is not None and not agent.stopped:
                raise AssertionError(f"agent {agent.name} exited ({agent.proc.returncode})\n"
                                     f"{self.diagnostics()}")

    def wait_built(self, project: str, version: str, timeout: float = 300) -> tuple:
        def built() -> bool:
            self.check_agents()
            return bool(self.builds(project, version))

        wait_until(built, timeout,
                   f"{project} {version} to be built", interval=0.5,
                   diagnostics=self.diagnostics)
        return self.builds(project, version)[0]

    def pushed_log(self, builder: str, job_id: int) -> bytes:
        path = self.sshd.incoming_root / builder / f"job-{job_id}.log.gz"
        return gzip.decompress(path.read_bytes())

    # -- gates of pwtest-gated ------------------------------------------------

    @staticmethod
    def open_gate(version: str) -> None:
        GATES.mkdir(mode=0o755, exist_ok=True)
        GATES.chmod(0o755)
        (GATES / f"pwtest-gated-{version}").touch()

    @staticmethod
    def close_gate(version: str) -> None:
        (GATES / f"pwtest-gated-{version}").unlink(missing_ok=True)

    def wait_building(self, name: str, version: str, timeout: float = 180) -> None:
        """Until ``name``'s build of pwtest-gated ``version`` waits at its gate."""
        build_user = self.agents[name].users.build

        def ps() -> str:
            return subprocess.run(["ps", "-o", "args=", "-u", build_user], capture_output=True,
                                  text=True).stdout

        # The gate holds the build until the test opens it: running is enough.
        wait_until(lambda: f"pwtest-gated=={version}" in ps(), timeout,
                   f"{name} to be building pwtest-gated {version}",
                   diagnostics=lambda: f"{ps()}\n{self.diagnostics()}")

    # -- reports -------------------------------------------------------------

    def diagnostics(self) -> str:
        parts = [f"--- {a.name} ---\n{a.output()[-4000:]}" for a in self.agents.values()]
        parts.append(f"--- jobs ---\n{self.sql('SELECT * FROM jobs')}")
        parts.append(f"--- builds ---\n{self.sql('SELECT * FROM builds')}")
        return "\n".join(parts)

    def stop_all(self) -> None:
        for agent in self.agents.values():
            if agent.proc is not None and agent.proc.poll() is None:
                agent.proc.kill()
                agent.proc.wait()
            # Whatever a killed agent's build left running.
            subprocess.run(["sudo", "-n", "-u", agent.users.build, "--", "/bin/kill", "-9", "--",
                            "-1"], capture_output=True)


def make_minifarm(pg: object, pg_template: str, upstream_url: str, place: Path,
                  database: str) -> MiniFarm:
    from pinwheel.schema import MASTER_GROUP
    pg.drop_database(database)  # type: ignore[attr-defined]
    pg.create_database(database, template=pg_template)  # type: ignore[attr-defined]
    pg.create_login(database, f"{database}_master", MASTER_GROUP,  # type: ignore[attr-defined]
                    "master-pw")
    sshd = RestartableSshd()
    sshd.start()
    master_conf = write_role_template(
        place / "master.conf", "master", "master.conf.j2", mode=0o600,
        master_database_host="127.0.0.1", master_database_port=pg.port,  # type: ignore[attr-defined]
        master_database_name=database, master_database_user=f"{database}_master",
        master_database_password="master-pw", master_database_sslmode="disable",
        master_www_root=str(place / "www"), master_incoming_root=str(sshd.incoming_root),
        master_quarantine_root=str(place / "quarantine"), master_upstream_url=upstream_url,
        master_ca_bundle="", master_max_wheel_size=1 << 30, master_max_log_size=64 << 20,
        master_public_index_url="", master_armv6l_alias=False,
        master_watch_mode="allowlist", master_watch_projects=[], master_watch_projects_file="",
        master_watch_poll_seconds=60, master_watch_on_removal="keep", master_watch_history="all",
        master_watch_max_backoff_seconds=900, master_watch_priority=0,
        master_logs_access_log=str(place / "access.json"), master_logs_key_dir=str(place / "keys"),
        master_logs_key_keep_months=1, master_logs_batch_lines=10000)
    return MiniFarm(pg, database, place, upstream_url, sshd, make_agent_venv(), master_conf)
