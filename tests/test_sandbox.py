"""The build sandbox with real sudo and real processes.

A stand-in "interpreter" (a shell script the sandbox runs instead of
``python3 -m pip wheel ...``) lets these tests do what a hostile build would.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.agents import world_readable_tempdir
from harness.buildnet import BuildNetwork, nft_usable
from harness.cgroups import cgroup_root, delegated_cgroup, remove_cgroup
from harness.users import AgentUsers, ensure_agent_users
from pinwheel.buildlog import TRUNCATED_MARKER
from pinwheel.cgroup import BuildCgroup
from pinwheel.limits import BuildLimits
from pinwheel.sandbox import BuildAborted, Sandbox, plain_http_hosts

USERS = AgentUsers("pwtest-sbx-agent", "pwtest-sbx-build")


@pytest.fixture(scope="module")
def users() -> AgentUsers:
    ensure_agent_users([USERS])
    return USERS


@pytest.fixture
def place() -> Iterator[Path]:
    d = world_readable_tempdir("pinwheel-sbx-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def fake_python(place: Path, body: str) -> str:
    script = place / "fake-python"
    script.write_text("#!/bin/sh\nout=\"$(eval echo \\${$#})\"\n" + body)
    script.chmod(0o755)
    return str(script)


def sandbox(users: AgentUsers, place: Path, python: str, timeout: int = 60,
            **limits: int) -> Sandbox:
    return Sandbox(users.build, place / "work", python, "http://127.0.0.1:9/simple/", [], timeout,
                   limits=BuildLimits(**limits))


def build_user_processes(user: str) -> list[str]:
    """Live processes of ``user`` (killed ones not yet reaped by init are dead: ignored)."""
    proc = subprocess.run(["ps", "-o", "stat=,args=", "-u", user], capture_output=True,
                          text=True)
    return [line for line in proc.stdout.splitlines() if not line.strip().startswith("Z")]


def test_build_runs_as_the_build_user_with_an_empty_environment(users, place, monkeypatch):
    monkeypatch.setenv("PINWHEEL_SECRET", "s3cret-agent-env")
    py = fake_python(place, 'id -un; env; echo "out=$out"; exit 3\n')
    result = sandbox(users, place, py).build("foo", "1.0", 1, place / "outbox",
                                            tick=lambda: None, tick_seconds=5)
    text = result.log_path.read_text()
    assert result.status == "failed" and result.wheels == []
    assert f"\n{users.build}\n" in text
    assert "s3cret-agent-env" not in text
    assert "PIP_CONFIG_FILE=/dev/null" in text
    assert "exit status 3" in text
    assert not (place / "work" / "builds" / "job-1").exists(), "the build tree is wiped"


def test_time_limit_kills_the_whole_tree_even_escaped_processes(users, place):
    py = fake_python(place, "setsid sleep 300 >/dev/null 2>&1 &\nsleep 300 &\nsleep 300\n")
    result = sandbox(users, place, py, timeout=2).build("foo", "1.0", 2, place / "outbox",
                                                       tick=lambda: None, tick_seconds=1)
    assert result.status == "timeout"
    assert "timed out after 2s" in result.log_path.read_text()
    assert build_user_processes(users.build) == []


def test_a_lost_lease_stops_the_build_and_kills_it(users, place):
    py = fake_python(place, "sleep 300\n")

    def tick() -> None:
        raise BuildAborted("lease lost")

    with pytest.raises(BuildAborted):
        sandbox(users, place, py).build("foo", "1.0", 3, place / "outbox", tick=tick,
                                        tick_seconds=0.5)
    assert build_user_processes(users.build) == []
    assert not (place / "work" / "builds" / "job-3").exists()


def test_a_planted_symlink_is_never_collected_as_a_wheel(users, place):
    secret = place / "agent-secret"
    secret.write_text("password=hunter2")
    secret.chmod(0o600)
    py = fake_python(place, f'ln -s {secret} "$out/evil-1.0-py3-none-any.whl"\n'
                            f'ln -s /etc/shadow "$out/shadow-1.0-py3-none-any.whl"\nexit 0\n')
    result = sandbox(users, place, py).build("evil", "1.0", 4, place / "outbox",
                                            tick=lambda: None, tick_seconds=5)
    assert result.status == "failed" and result.wheels == []
    assert "produced no wheel" in result.log_path.read_text()
    assert sorted(p.name for p in (place / "outbox").iterdir()) == ["build.log"]


def test_build_user_cannot_read_the_agents_files(users, place):
    secret = place / "agent.conf"
    secret.write_text("dsn = password=hunter2")
    secret.chmod(0o600)
    py = fake_python(place, f"cat {secret}; echo cat-exit=$?\n")
    result = sandbox(users, place, py).build("foo", "1.0", 5, place / "outbox",
                                            tick=lambda: None, tick_seconds=5)
    text = result.log_path.read_text()
    assert "hunter2" not in text and "Permission denied" in text


def test_real_build_of_a_c_extension(users, place, upstream):
    sb = Sandbox(users.build, place / "work", "/usr/bin/python3", upstream.url, [], 600)
    result = sb.build("pwtest-cext", "1.0", 6, place / "outbox", tick=lambda: None,
                      tick_seconds=30)
    assert result.status == "success", result.log_path.read_text()[-3000:]
    assert [w.name for w in result.wheels] == ["pwtest_cext-1.0-cp311-cp311-linux_x86_64.whl"]


def test_pip_is_told_to_trust_plain_http_indexes_on_other_hosts_only():
    urls = ["http://pwm-master/simple/", "https://pypi.org/simple/",
            "http://user:pw@10.0.0.5:8080/simple/", "http://127.0.0.1:9/simple/",
            "http://localhost/simple/", "http://pwm-master/other/"]
    assert plain_http_hosts(urls) == ["pwm-master", "10.0.0.5:8080"]


def build_once(sb: Sandbox, place: Path, job_id: int):  # type: ignore[no-untyped-def]
    return sb.build("foo", "1.0", job_id, place / "outbox", tick=lambda: None, tick_seconds=5)


def test_the_log_is_capped_with_a_marker_and_keeps_its_end(users, place):
    # 20 MiB of output against a 1 MiB cap: the log keeps its head and its tail.
    py = fake_python(place, "echo FIRST-LINE\n"
                            "head -c 20971520 /dev/zero | tr '\\0' x\n"
                            "echo; echo LAST-LINE; exit 1\n")
    result = build_once(sandbox(users, place, py, max_log_mb=1), place, 10)
    data = result.log_path.read_bytes()
    assert result.status == "failed"
    assert len(data) < (1 << 20) + 4096, len(data)
    assert b"FIRST-LINE" in data and b"LAST-LINE" in data
    assert TRUNCATED_MARKER in data
    written = re.search(rb"the build wrote (\d+) bytes", data)
    assert written and int(written.group(1)) > 20 << 20
    assert b"exit status 1" in data


def test_memory_is_limited_per_process(users, place):
    py = fake_python(place, "/usr/bin/python3 -c 'b = bytearray(600 << 20); print(\"GOT-600MB\")'"
                            "\nexit 1\n")
    result = build_once(sandbox(users, place, py, memory_mb=256), place, 11)
    text = result.log_path.read_text()
    assert "MemoryError" in text and "GOT-600MB" not in text
    assert "memory 256 MiB per process" in text


def test_the_number_of_processes_is_limited(users, place):
    py = fake_python(place, "i=0; while [ $i -lt 60 ]; do sleep 300 & i=$((i+1)); done\n"
                            "echo STARTED-ALL; exit 1\n")
    result = build_once(sandbox(users, place, py, max_processes=20), place, 12)
    text = result.log_path.read_text()
    assert "Cannot fork" in text or "Resource temporarily unavailable" in text, text[-2000:]
    assert build_user_processes(users.build) == []


def test_a_file_cannot_grow_past_the_file_size_limit(users, place):
    py = fake_python(place, 'head -c 3145728 /dev/zero > "$HOME/big"; echo head-exit=$?\n'
                            'wc -c < "$HOME/big"; exit 1\n')
    result = build_once(sandbox(users, place, py, max_file_mb=1), place, 13)
    text = result.log_path.read_text()
    assert "head-exit=0" not in text
    assert "\n1048576\n" in text, text[-2000:]


def test_a_build_filling_its_tree_is_stopped(users, place):
    py = fake_python(place, 'for i in 1 2 3 4 5 6; do head -c 1048576 /dev/zero > "$HOME/f$i"; '
                            "done\nsleep 300\n")
    result = build_once(sandbox(users, place, py, max_disk_mb=3), place, 14)
    text = result.log_path.read_text()
    assert result.status == "failed"
    assert "more than the limit of 3 MiB" in text
    assert build_user_processes(users.build) == []
    assert not (place / "work" / "builds" / "job-14").exists()


def test_files_left_in_shared_temporary_directories_are_deleted(users, place):
    marker = f"pwtest-sbx-leftover-{os.getpid()}"
    py = fake_python(place, f"mkdir /tmp/{marker}; echo x > /tmp/{marker}/f; "
                            f"echo y > /var/tmp/{marker}; echo z > /dev/shm/{marker}; exit 1\n")
    build_once(sandbox(users, place, py), place, 15)
    for path in (f"/tmp/{marker}", f"/var/tmp/{marker}", f"/dev/shm/{marker}"):
        assert not os.path.exists(path), path


def test_a_fork_bomb_is_contained_and_killed(users, place):
    py = fake_python(place, "bomb() { bomb & bomb & wait; }\n(bomb) &\nsleep 3; exit 1\n")
    result = build_once(sandbox(users, place, py, max_processes=50), place, 16)
    assert result.status == "failed"
    assert build_user_processes(users.build) == []


def test_build_isolations_pip_subprocess_gets_the_ca_bundle_and_trusted_hosts(tmp_path):
    # pip installs build dependencies with a pip subprocess that inherits the
    # environment but not --cert (bookworm's pip 23): a farm behind a private CA
    # failed every build needing setuptools until PIP_CERT was set.
    sb = Sandbox("pwtest-nobody", tmp_path, "/usr/bin/python3", "https://pypi.org/simple/",
                 ["http://pwm-master/simple/"], 60, ca_bundle="/etc/pinwheel/ca.crt")
    cmd = sb._pip_command("foo", "1.0", tmp_path / "tree")
    env = cmd[cmd.index("-i") + 1:cmd.index("-m") - 1]
    assert "PIP_CERT=/etc/pinwheel/ca.crt" in env
    assert "PIP_TRUSTED_HOST=pwm-master" in env
    assert cmd[cmd.index("--cert") + 1] == "/etc/pinwheel/ca.crt"


# ------------------------------------------------------------------ cgroup


@pytest.fixture
def cgroup_base(users) -> Iterator[Path]:
    """A cgroup for the builds (the agent's, which systemd delegates); skipped without one."""
    root, why = cgroup_root()
    if root is None:
        pytest.skip(why)
    base = delegated_cgroup(root, f"sbx-{os.getpid()}")
    try:
        yield base
    finally:
        remove_cgroup(base)


def test_builds_run_in_their_cgroup_which_one_kill_empties(users, place, cgroup_base):
    py = fake_python(place, "cat /proc/self/cgroup\n"
                            "setsid sleep 300 >/dev/null 2>&1 &\nsleep 301 &\n"
                            f"echo $$ > {cgroup_base}/agent/cgroup.procs; echo escape-exit=$?\n"
                            f"echo $$ > {cgroup_base}/cgroup.procs; echo escape-exit=$?\n"
                            "exit 1\n")
    sb = sandbox(users, place, py)
    assert sb.use_cgroup(cgroup_base)
    assert sb.cgroup is not None and sb.cgroup.path == cgroup_base / "build"
    result = build_once(sb, place, 20)
    text = result.log_path.read_text()
    mount = str(cgroup_base).split("/pinwheel-tests/")[0]
    assert f"0::{str(cgroup_base / 'build')[len(mount):]}\n" in text, text[-2000:]
    assert f"in the cgroup {cgroup_base}/build" in text
    assert "escape-exit=0" not in text and text.count("escape-exit=") == 2, text[-2000:]
    assert not sb.cgroup.populated()
    assert build_user_processes(users.build) == []


def test_memory_of_the_whole_build_is_limited_by_its_cgroup(users, place, cgroup_base):
    # Four processes of 100 MiB each: every one is far under the 256 MiB limit,
    # together they are over it.
    sb = sandbox(users, place, "/bin/false", memory_mb=256)
    sb.use_cgroup(cgroup_base)
    assert sb.cgroup is not None
    if not sb.cgroup.limits_memory:
        pytest.skip(f"no memory controller in {cgroup_base} (a hybrid or legacy cgroup "
                    "hierarchy): memory stays limited per process")
    alloc = ("/usr/bin/python3 -c 'import time; b = bytearray(100 << 20); "
             "b[::4096] = b\"x\" * len(b[::4096]); time.sleep(30)' &\n")
    sb.python = fake_python(place, alloc * 4 + "wait; echo ALL-DONE; exit 0\n")
    result = build_once(sb, place, 21)
    text = result.log_path.read_text()
    assert result.status == "failed", text[-2000:]
    assert "killed: over its memory limit (256 MiB for the whole build)" in text
    assert "memory 256 MiB for the whole build (cgroup)" in text
    assert build_user_processes(users.build) == []


def test_without_a_writable_cgroup_memory_stays_limited_per_process(users, place, caplog):
    sb = sandbox(users, place, "/bin/false", memory_mb=256)
    with caplog.at_level(logging.WARNING, "pinwheel.sandbox"):
        assert not sb.use_cgroup(Path("/proc/self"))
    assert "no cgroup for the builds" in caplog.text and "RLIMIT_AS" in caplog.text
    assert sb.cgroup is None and not sb.limits.memory_in_cgroup
    assert "--as=268435456" in sb.limits.prlimit_command()


def test_a_cgroup_with_the_memory_controller_replaces_rlimit_as():
    cg = BuildCgroup(Path("/nonexistent"), 512, frozenset({"memory", "pids"}))
    assert cg.limits_memory
    limits = BuildLimits(memory_mb=512, memory_in_cgroup=True)
    assert not any(a.startswith("--as") for a in limits.prlimit_command())
    assert "memory 512 MiB for the whole build (cgroup)" in limits.describe()


# ----------------------------------------------------------------- network


@pytest.fixture
def buildnet(users, place) -> Iterator[BuildNetwork]:
    """The builder role's firewall rule and proxy, for the test build user only."""
    why = nft_usable()
    if why:
        pytest.skip(why)
    net = BuildNetwork(users.build, ["127.0.0.1"], place / "net").start()
    try:
        yield net
    finally:
        net.stop()


PROBE = """/usr/bin/python3 - ARGS <<'END'
import os, socket, sys, urllib.error, urllib.request
port, index = int(sys.argv[1]), sys.argv[2]
try:
    socket.create_connection(("127.0.0.1", port), timeout=5).close()
    print("direct: connected")
except OSError as exc:
    print("direct: blocked", exc)
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
    try:
        udp.sendto(b"x", ("127.0.0.1", 53))
        print("dns: sent")
    except OSError as exc:
        print("dns: blocked", exc)
for name, url in (("index", index + "pwtest-pure/"), ("other", f"http://localhost:{port}/")):
    try:
        print(name + ":", urllib.request.urlopen(url, timeout=20).status)
    except urllib.error.HTTPError as exc:
        print(name + ":", exc.code)
    except OSError as exc:
        print(name + ": error", exc)
print("proxy:", os.environ.get("http_proxy"))
END
exit 1
"""


def test_a_restricted_build_reaches_the_index_through_the_proxy_and_nothing_else(
        users, place, upstream, buildnet):
    with socket.socket() as listener:  # a local service the build must not reach
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        py = fake_python(place, PROBE.replace("ARGS", f"{port} {upstream.url}"))
        sb = Sandbox(users.build, place / "work", py, upstream.url, [], 60,
                     proxy=buildnet.proxy_url)
        result = build_once(sb, place, 30)
    text = result.log_path.read_text()
    assert "direct: blocked" in text, text[-2000:]
    assert "dns: blocked" in text, text[-2000:]
    assert "index: 200" in text, text[-2000:]
    assert "other: 403" in text, text[-2000:]
    assert f"proxy: {buildnet.proxy_url}" in text
    assert 'refused on filtered domain "localhost"' in buildnet.log()


def test_the_network_check_refuses_a_proxy_without_the_firewall(users, place, buildnet):
    sb = Sandbox(users.build, place / "work", "/bin/false", "http://127.0.0.1:9/simple/", [], 60,
                 proxy=buildnet.proxy_url)
    assert sb.network_probe()[0]
    sb.check_network()
    buildnet.stop()
    confined, seen = sb.network_probe()
    assert not confined and "Connection refused" in seen
    with pytest.raises(RuntimeError, match="pinwheel-build-firewall"):
        sb.check_network()


def test_real_build_through_the_proxy(users, place, upstream, buildnet):
    # pip resolves setuptools (build isolation) from the upstream through the proxy.
    sb = Sandbox(users.build, place / "work", "/usr/bin/python3", upstream.url, [], 600,
                 proxy=buildnet.proxy_url)
    result = sb.build("pwtest-cext", "1.0", 31, place / "outbox", tick=lambda: None,
                      tick_seconds=30)
    assert result.status == "success", result.log_path.read_text()[-3000:]
    assert [w.name for w in result.wheels] == ["pwtest_cext-1.0-cp311-cp311-linux_x86_64.whl"]


def test_build_network_settings_are_checked(tmp_path):
    from pinwheel.config import AgentConfig, ConfigError
    base = "[agent]\ndsn = host=x\nbuild_user = b\n"
    conf = tmp_path / "agent.conf"
    conf.write_text(base + "build_network = restricted\nbuild_proxy = http://127.0.0.1:8888\n")
    assert AgentConfig.load(conf).build_proxy == "http://127.0.0.1:8888"
    conf.write_text(base + "build_network = open\nbuild_proxy = http://127.0.0.1:8888\n")
    assert AgentConfig.load(conf).build_proxy == ""
    conf.write_text(base + "build_network = restricted\n")
    with pytest.raises(ConfigError, match="needs build_proxy"):
        AgentConfig.load(conf)
    conf.write_text(base + "build_network = closed\n")
    with pytest.raises(ConfigError, match="must be open or restricted"):
        AgentConfig.load(conf)
