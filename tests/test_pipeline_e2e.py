"""End to end on real parts: upstream sdists → queue → two agents → rsync → ingest → nginx → pip.

Two builder agents (each its own database role, SSH key, agent user and build
user) build the local upstream's ten releases at once; the master's ingest
verifies and publishes; a fresh venv installs the C extension from the
nginx-served index without compiling anything.
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.agents import (
    AgentProcess,
    make_agent_venv,
    wait_until,
    world_readable_tempdir,
    write_agent_config,
)
from harness.index_checks import fetch, parse_html
from harness.templates import write_role_template
from harness.users import AgentUsers, ensure_agent_users
from pinwheel.schema import BUILDER_GROUP, MASTER_GROUP

pytestmark = pytest.mark.e2e

BUILDERS = {
    "e2e_one": AgentUsers("pwtest-agent1", "pwtest-build1"),
    "e2e_two": AgentUsers("pwtest-agent2", "pwtest-build2"),
}
RELEASES = {"pwtest-cext": ["1.0"], "pwtest-broken": ["1.0"],
            "pwtest-pure": [f"1.{i}" for i in range(8)], "pwtest-clibs": ["1.0"]}


@dataclass
class Farm:
    pg: object
    database: str
    master_conf: Path
    agents: list[AgentProcess]
    ingest: subprocess.Popen[bytes]
    ingest_log: Path
    www_root: Path
    index_url: str

    def sql(self, query: str, params: tuple = ()) -> list[tuple]:
        conn = self.pg.admin(self.database)  # type: ignore[attr-defined]
        with conn.cursor() as cur:
            cur.execute("SET search_path = pinwheel")
            cur.execute(query, params)
            rows = cur.fetchall()
        conn.close()
        return rows

    def pinwheel(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pinwheel", *args, "--config",
                               str(self.master_conf)], capture_output=True, text=True)

    def diagnostics(self) -> str:
        parts = [f"--- {a.name} ---\n{a.output()[-4000:]}" for a in self.agents]
        parts.append(f"--- ingest ---\n{self.ingest_log.read_text(errors='replace')[-4000:]}")
        parts.append(f"--- status ---\n{self.pinwheel('status').stdout}")
        return "\n".join(parts)


@pytest.fixture(scope="module")
def farm(pg, pg_template, upstream, sshd_master, nginx_master) -> Iterator[Farm]:
    database = "pinwheel_e2e"
    pg.drop_database(database)
    pg.create_database(database, template=pg_template)
    place = world_readable_tempdir("pinwheel-e2e-")
    pg.create_login(database, "e2e_master", MASTER_GROUP, "master-pw")
    # The master role's own template, as it installs /etc/pinwheel/master.conf.
    master_conf = write_role_template(
        place / "master.conf", "master", "master.conf.j2", mode=0o600,
        master_database_host="127.0.0.1", master_database_port=pg.port,
        master_database_name=database, master_database_user="e2e_master",
        master_database_password="master-pw", master_database_sslmode="disable",
        master_www_root=str(nginx_master.www_root),
        master_incoming_root=str(sshd_master.incoming_root),
        master_quarantine_root=str(place / "quarantine"),
        master_upstream_url=upstream.url, master_ca_bundle="",
        master_max_wheel_size=1 << 30, master_max_log_size=64 << 20,
        master_public_index_url=f"{nginx_master.url}/simple/", master_armv6l_alias=False,
        master_watch_mode="allowlist", master_watch_projects=[], master_watch_projects_file="",
        master_watch_poll_seconds=60, master_watch_on_removal="keep", master_watch_history="all",
        master_watch_max_backoff_seconds=900, master_watch_priority=0,
        master_logs_access_log=str(nginx_master.access_log),
        master_logs_key_dir=str(place / "keys"),
        master_logs_key_keep_months=1, master_logs_batch_lines=10000)
    ensure_agent_users(list(BUILDERS.values()))
    venv = make_agent_venv()
    agents = []
    for name, users in BUILDERS.items():
        dsn = pg.create_login(database, name, BUILDER_GROUP, f"{name}-pw")
        key = sshd_master.add_builder(name, owner=users.agent)
        conf = place / f"{name}.conf"
        write_agent_config(conf, dsn=dsn, build_user=users.build, work_dir=place / name,
                           index_url=upstream.url,
                           extra_index_urls=[f"{nginx_master.url}/simple/"],
                           push_port=sshd_master.port, push_user=sshd_master.upload_user,
                           key=key.private_key, known_hosts=key.known_hosts, owner=users.agent)
        agents.append(AgentProcess(name, users, conf, place / f"{name}.log"))
    ingest_log = place / "ingest.log"
    with open(ingest_log, "wb") as out:
        ingest = subprocess.Popen([sys.executable, "-m", "pinwheel", "ingest", "--config",
                                   str(master_conf)], stdout=out, stderr=subprocess.STDOUT)
    farm = Farm(pg, database, master_conf, agents, ingest, ingest_log, nginx_master.www_root,
                f"{nginx_master.url}/simple/")
    try:
        for agent in agents:
            agent.start(venv)
        wait_until(lambda: len(farm.sql("SELECT builder FROM builders")) == 2, 60,
                   "both agents to register", diagnostics=farm.diagnostics)
        yield farm
    finally:
        for agent in agents:
            if agent.proc and agent.proc.poll() is None:
                agent.proc.kill()
        ingest.terminate()
        ingest.wait(30)


@pytest.fixture(scope="module")
def built(farm: Farm) -> Farm:
    """Every upstream release added, built and ingested."""
    for project in RELEASES:
        done = farm.pinwheel("add", project)
        assert done.returncode == 0, done.stderr
    total = sum(len(v) for v in RELEASES.values())
    wait_until(lambda: farm.sql("SELECT count(*) FROM builds WHERE ingest_state = 'done'")[0][0]
               >= total and not farm.sql("SELECT 1 FROM jobs"),
               600, f"{total} builds to be built and ingested", interval=1,
               diagnostics=farm.diagnostics)
    return farm


def test_add_reports_what_it_queued(farm: Farm):
    out = farm.pinwheel("add", "PWTEST_Pure", "1.0")  # any spelling, one version
    assert out.returncode == 0, out.stderr
    assert "pwtest-pure" in out.stdout and "1.0" in out.stdout
    missing = farm.pinwheel("add", "pwtest-pure", "9.9")
    assert missing.returncode == 1 and "has no version 9.9 upstream" in missing.stderr
    unknown = farm.pinwheel("add", "no-such-project")
    assert unknown.returncode == 1 and "not found upstream" in unknown.stderr


def test_every_job_is_built_exactly_once(built: Farm):
    rows = built.sql("SELECT package, version, abi, count(*) FROM builds "
                     "GROUP BY package, version, abi")
    assert len(rows) == sum(len(v) for v in RELEASES.values())
    assert {r[3] for r in rows} == {1}, f"some release was built twice: {rows}"
    assert built.sql("SELECT count(*) FROM jobs")[0][0] == 0
    statuses = dict(built.sql("SELECT package, string_agg(DISTINCT status, ',') FROM builds "
                              "GROUP BY package"))
    assert statuses == {"pwtest-cext": "success", "pwtest-pure": "success",
                        "pwtest-broken": "failed", "pwtest-clibs": "success"}
    builders = {r[0] for r in built.sql("SELECT DISTINCT builder FROM builds")}
    assert builders <= set(BUILDERS)


def test_agents_report_their_free_disk(built: Farm):
    # The agent pings with its work directory's free space (builder_ping, at most once a
    # minute): shown on /builders/, in `pinwheel status` and in the metrics.
    rows = built.sql("SELECT builder, disk_free_mb, disk_reported_at IS NOT NULL FROM builders "
                     "WHERE builder = ANY(%s)", (list(BUILDERS),))
    assert {r[0] for r in rows} == set(BUILDERS)
    for builder, free, reported in rows:
        assert reported and free is not None and free > 0, builder


def test_published_files_are_on_the_index(built: Farm):
    published = built.sql("SELECT filename, sha256 FROM files WHERE state = 'published' "
                          "ORDER BY filename")
    assert len(published) == 10
    assert built.sql("SELECT count(*) FROM files WHERE state <> 'published'")[0][0] == 0
    with urllib.request.urlopen(built.index_url) as resp:
        root = resp.read().decode()
    assert "pwtest-cext" in root and "pwtest-pure" in root and "pwtest-broken" not in root
    with urllib.request.urlopen(f"{built.index_url}pwtest-cext/") as resp:
        page = resp.read().decode()
    filename, sha = next(r for r in published if r[0].startswith("pwtest_cext"))
    assert f"{filename}#sha256={sha}" in page


def test_failed_build_is_recorded_with_its_log(built: Farm):
    (status, log_path), = built.sql("SELECT status, log_path FROM builds "
                                    "WHERE package = 'pwtest-broken'")
    assert status == "failed" and log_path
    text = gzip.decompress((built.www_root / log_path).read_bytes()).decode()
    assert "pwtest-broken fails to build on purpose" in text


def test_pip_installs_the_c_extension_without_compiling(built: Farm, tmp_path: Path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {"PIP_CONFIG_FILE": "/dev/null", "PATH": "/usr/bin:/bin",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--index-url", built.index_url, "--no-cache-dir",
         "--only-binary", ":all:", "pwtest-cext", "pwtest-clibs"],
        capture_output=True, text=True, env=env)
    assert install.returncode == 0, install.stdout + install.stderr
    assert "pwtest_cext-1.0-cp311-cp311-linux_x86_64.whl" in install.stdout
    assert "Building wheel" not in install.stdout
    run = subprocess.run([str(venv / "bin" / "python"), "-c",
                          "import pwtest_cext; print(pwtest_cext.add(2, 40))"],
                         capture_output=True, text=True, env=env)
    assert run.stdout.strip() == "42", run.stderr
    run = subprocess.run([str(venv / "bin" / "python"), "-c",
                          "import pwtest_clibs as c; print(c.ffi_uint32_size(), c.zlib_version())"],
                         capture_output=True, text=True, env=env)
    assert run.stdout.startswith("4 1."), run.stderr


def test_apt_dependencies_are_shown_on_the_project_page(built: Farm):
    """pwtest-clibs links zlib (every Debian system has zlib1g) and libffi (to be installed)."""
    site = built.index_url[:-len("simple/")]
    resp = fetch(f"{site}project/pwtest-clibs/")
    assert resp.status == 200
    tree = parse_html(resp.body, "project page")
    apt_lines = ["".join(pre.itertext()) for pre in tree.iter("pre")
                 if pre.get("class") == "apt-install"]
    assert len(apt_lines) == 1 and re.fullmatch(r"sudo apt install libffi\d+", apt_lines[0]), \
        apt_lines
    ffi = apt_lines[0].split()[-1]
    notes = ["".join(p.itertext()) for p in tree.iter("p") if p.get("class") == "note"]
    assert any(n.startswith("Also needs, on every Debian system:") and "zlib1g" in n
               for n in notes), notes
    # The file's row names both packages; zlib1g marked as on every Debian system.
    cell = next(td for td in tree.iter("td") if td.get("class") == "apt")
    spans = {"".join(s.itertext()): s.get("class") for s in cell.iter("span")}
    assert spans["zlib1g"] == "base" and spans[ffi] is None

    doc = json.loads(fetch(f"{site}project/pwtest-clibs/json/").body)
    (group,) = doc["apt"]
    assert group["install"] == f"sudo apt install {ffi}" and group["packages"] == [ffi]
    assert "zlib1g" in group["base_packages"]
    assert group["not_from_debian"] == [] and group["not_found"] == []
    (wheel,) = doc["files"]
    deps = wheel["apt_dependencies"]
    assert deps["checked"] is True and deps["refused"] is None
    assert {"library": "libz.so.1", "kind": "debian", "package": "zlib1g",
            "base": True} in deps["libraries"]
    assert any(lib["package"] == ffi and lib["base"] is False for lib in deps["libraries"])
    # Pure-Python projects have no apt line.
    pure = json.loads(fetch(f"{site}project/pwtest-pure/json/").body)
    assert pure["apt"] == []
    assert all(f["apt_dependencies"]["libraries"] == [] for f in pure["files"])


def test_agents_stop_cleanly_on_sigterm_and_leave_no_build_processes(built: Farm):
    for agent in built.agents:
        assert agent.stop(timeout=60) == 0, agent.output()[-3000:]
        assert "agent stopped" in agent.output()
        leftovers = subprocess.run(["ps", "-o", "stat=,args=", "-u", agent.users.build],
                                   capture_output=True, text=True).stdout.splitlines()
        assert [p for p in leftovers if not p.strip().startswith("Z")] == []
