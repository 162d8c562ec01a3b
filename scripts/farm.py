#!/usr/bin/env python3
"""The local Pinwheel farm in podman: `make farm`, `make farm-down`.

    scripts/farm.py up       start (or re-provision) the farm and build the default packages
    scripts/farm.py down     remove the farm's containers and network (images, cache kept)
    scripts/farm.py status   the farm's containers and `pinwheel status` on its master

`up` builds the base images it needs (scripts/build-image.sh, cached), starts
the hosts of inventory/local/ as podman containers with systemd as init on the
network `pinwheel-farm`, provisions them with `ansible-playbook -i
inventory/local playbooks/site.yml`, queues the latest release of each package
in FARM_PACKAGES on the master (`pinwheel add`), shows the builds' progress,
checks from this machine that pip installs what was built, and prints the
`pip install` line to use. Run it again on a running farm to re-provision it
(the playbook changes nothing that is already right) and build what is missing.

Environment (the Makefile passes these through):
  UPSTREAM       the upstream simple index (default: inventory/local, i.e. PyPI)
  FARM_PACKAGES  what to build, space separated, NAME or NAME==VERSION
                 (default: markupsafe simplejson six)
  FARM_PORT      port on 127.0.0.1 the master's index is published on (default 8080)
  FARM_TIMEOUT   seconds to wait for the builds (default 2400)
  CONTAINERS_CONF  podman configuration (default molecule/podman/containers.conf)
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
INVENTORY = REPO / "inventory" / "local"
NETWORK = "pinwheel-farm"
LABEL = "pinwheel.farm=local"
DEFAULT_PACKAGES = "markupsafe simplejson six"
MASTER_HTTP_PORT = 80  # the master role's default master_http_port
VENV_PYTHON = "/opt/pinwheel/venv/bin/python"  # the pinwheel role's venv on every host
PINWHEEL = "/usr/local/bin/pinwheel"
BUILDER_WAIT = 300  # seconds for the builders to register after the playbook


class FarmError(Exception):
    """Something the user has to act on; the message says what."""


@dataclass
class Host:
    name: str
    image: str
    groups: list[str]

    @property
    def arch(self) -> str:
        return self.image.rsplit("-", 1)[1]

    @property
    def image_ref(self) -> str:
        return f"localhost/pinwheel-{self.image}"


def say(msg: str) -> None:
    print(f"==> {msg}", flush=True)


def run(argv: list[str], check: bool = True, capture: bool = False, timeout: float | None = None,
        input_text: str | None = None, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(argv, check=False, text=True, timeout=timeout, input=input_text,
                              stdout=subprocess.PIPE if capture else None,
                              stderr=subprocess.PIPE if capture else None, env=env)
    except FileNotFoundError:
        raise FarmError(f"{argv[0]} is not installed: run `make farm`, which installs it") from None
    except subprocess.TimeoutExpired:
        raise FarmError(f"`{shlex.join(argv)}` did not finish in {timeout:.0f} s") from None
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout or "").strip() if capture else ""
        raise FarmError(f"`{shlex.join(argv)}` failed (exit {proc.returncode})"
                        + (f":\n{detail}" if detail else ""))
    return proc


def podman(*args: str, check: bool = True, capture: bool = True, timeout: float | None = 300,
           input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    return run(["podman", *args], check=check, capture=capture, timeout=timeout,
               input_text=input_text)


def tool_env() -> dict[str, str]:
    """The environment for ansible: the venv's tools first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env.setdefault("ANSIBLE_FORCE_COLOR", "1" if sys.stdout.isatty() else "0")
    return env


# ------------------------------------------------------------------ inventory

def inventory() -> list[Host]:
    """The farm's hosts, from inventory/local (ansible-inventory resolves the groups)."""
    ansible_inventory = Path(sys.executable).parent / "ansible-inventory"
    if not ansible_inventory.exists():
        raise FarmError(f"{ansible_inventory} is missing: run `make farm` (it installs the venv)")
    out = run([str(ansible_inventory), "-i", str(INVENTORY), "--list"], capture=True,
              env=tool_env(), timeout=120).stdout
    data = json.loads(out)
    hostvars = data.get("_meta", {}).get("hostvars", {})
    groups: dict[str, list[str]] = {}
    for group, body in data.items():
        for name in body.get("hosts", []) if isinstance(body, dict) else []:
            groups.setdefault(name, []).append(group)
    hosts = []
    for name, vars_ in sorted(hostvars.items()):
        image = vars_.get("pinwheel_farm_image")
        if not image:
            raise FarmError(f"inventory/local: host {name} has no pinwheel_farm_image "
                            "(e.g. bookworm-amd64)")
        hosts.append(Host(name, image, sorted(groups.get(name, []))))
    for group in ("pinwheel_database", "pinwheel_master", "pinwheel_builders"):
        if not any(group in h.groups for h in hosts):
            raise FarmError(f"inventory/local has no host in the group {group}")
    return hosts


def master_of(hosts: list[Host]) -> Host:
    return next(h for h in hosts if "pinwheel_master" in h.groups)


# ----------------------------------------------------------------- containers

def check_host() -> None:
    if os.geteuid() != 0:
        raise FarmError("the farm's containers run as root here: run `make farm` as root")
    conf = os.environ.get("CONTAINERS_CONF", "")
    if not conf or not Path(conf).is_file():
        raise FarmError("CONTAINERS_CONF must name the farm's podman configuration "
                        "(molecule/podman/containers.conf): run it through `make farm`")


def build_images(hosts: list[Host]) -> None:
    images = sorted({h.image for h in hosts})
    say(f"base images: {', '.join(images)} (built with debootstrap once, then cached)")
    run([str(REPO / "scripts" / "build-image.sh"), *images])


def ensure_network() -> None:
    if podman("network", "exists", NETWORK, check=False).returncode != 0:
        podman("network", "create", "--label", LABEL, NETWORK)
        say(f"created the podman network {NETWORK}")


def container_state(name: str) -> str | None:
    proc = podman("container", "inspect", "--format", "{{.State.Status}}", name, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def ensure_container(host: Host, port: int) -> None:
    state = container_state(host.name)
    if state == "running":
        print(f"    {host.name}: running")
        return
    if state is not None:
        podman("start", host.name)
        print(f"    {host.name}: started again (was {state})")
        return
    argv = ["run", "--detach", "--name", host.name, "--hostname", host.name,
            "--network", NETWORK, "--systemd=always", "--label", LABEL]
    if host.arch == "armhf":
        argv += ["--arch", "arm"]
    elif "pinwheel_builders" in host.groups:
        # nft loads the builds' firewall (builder_build_network) in the container's netns.
        argv += ["--cap-add", "NET_ADMIN"]
    if "pinwheel_master" in host.groups:
        argv += ["--publish", f"127.0.0.1:{port}:{MASTER_HTTP_PORT}"]
    proc = podman(*argv, host.image_ref, "/sbin/init", check=False)
    if proc.returncode != 0:
        hint = ""
        if "address already in use" in proc.stderr:
            hint = f"\nport {port} is taken on this machine: run `make farm FARM_PORT=<another>`"
        raise FarmError(f"cannot start {host.name}: {proc.stderr.strip()}{hint}")
    print(f"    {host.name}: created from {host.image_ref}")


def wait_for_systemd(hosts: list[Host], timeout: float = 180) -> None:
    """Wait until systemd has booted each container ('degraded' is fine under qemu)."""
    deadline = time.monotonic() + timeout
    for host in hosts:
        while True:
            proc = podman("exec", host.name, "systemctl", "is-system-running", "--wait",
                          check=False, timeout=max(5.0, deadline - time.monotonic()))
            state = proc.stdout.strip()
            if state in ("running", "degraded"):
                break
            if time.monotonic() > deadline:
                raise FarmError(f"systemd in {host.name} did not finish booting ({state!r}): "
                                f"see `podman logs {host.name}`")
            time.sleep(1)


def up_containers(hosts: list[Host], port: int) -> None:
    build_images(hosts)
    ensure_network()
    say("containers")
    for host in hosts:
        ensure_container(host, port)
    wait_for_systemd(hosts)


# ------------------------------------------------------------------- ansible

def provision(upstream: str) -> None:
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(INVENTORY),
            str(REPO / "playbooks" / "site.yml")]
    if upstream:
        argv += ["-e", f"pinwheel_upstream_url={upstream}"]
    say(f"provisioning: {shlex.join(['ansible-playbook', *argv[1:]])}")
    start = time.monotonic()
    proc = subprocess.run(argv, cwd=REPO, env=tool_env(), check=False)
    if proc.returncode != 0:
        raise FarmError("the playbook failed (see above). Fix the cause and run `make farm` "
                        "again: it re-runs the playbook on the running containers")
    say(f"provisioned in {time.monotonic() - start:.0f} s")


# ------------------------------------------------------------ the master's CLI

def pinwheel(master: Host, *args: str, timeout: float = 300) -> str:
    return podman("exec", master.name, PINWHEEL, *args, timeout=timeout).stdout


def status(master: Host, recent: int = 200) -> dict:
    return json.loads(pinwheel(master, "status", "--json", "--recent", str(recent)))


def wait_for_builders(master: Host, builders: list[Host]) -> None:
    wanted = {re.sub(r"[^a-z0-9_]", "_", b.name) for b in builders}
    deadline = time.monotonic() + BUILDER_WAIT
    while True:
        seen = {b["builder"] for b in status(master, 1)["builders"] if b.get("abi")}
        if wanted <= seen:
            return
        if time.monotonic() > deadline:
            missing = ", ".join(sorted(wanted - seen))
            raise FarmError(f"builders {missing} did not register in {BUILDER_WAIT} s: see "
                            "`podman exec <builder> journalctl -u pinwheel-agent`")
        time.sleep(2)


RESOLVE = r"""
import json, sys
from packaging.version import InvalidVersion, Version
from pinwheel import planner, upstream
from pinwheel.config import MasterConfig
cfg = MasterConfig.load("/etc/pinwheel/master.conf")
found = {}
for name in sys.argv[1:]:
    try:
        proj = upstream.project(cfg.upstream_url, name, ca_bundle=cfg.ca_bundle)
    except Exception as exc:
        found[name] = {"error": str(exc)}
        continue
    best = None
    for ver, files in planner.releases_of(proj).items():
        try:
            v = Version(ver)
        except InvalidVersion:
            continue
        if v.is_prerelease or not any(f.is_sdist and not f.yanked for f in files):
            continue
        if best is None or v > best[0]:
            best = (v, ver)
    found[name] = {"version": best[1]} if best else {"error": "no release with an sdist"}
print(json.dumps(found))
"""


def latest_versions(master: Host, names: list[str]) -> dict[str, dict[str, str]]:
    """The newest final release with an sdist of each project, as the master sees the upstream."""
    if not names:
        return {}
    out = podman("exec", "-i", master.name, VENV_PYTHON, "-", *names, input_text=RESOLVE,
                 timeout=300).stdout
    return json.loads(out)


def queue_packages(master: Host, specs: list[str]) -> dict[str, str]:
    """`pinwheel add` each NAME[==VERSION]; returns {normalised name: version}."""
    pinned = {}
    for spec in specs:
        name, _, version = spec.partition("==")
        pinned[name] = version
    resolved = latest_versions(master, [n for n, v in pinned.items() if not v])
    queued = {}
    for name, version in pinned.items():
        if not version:
            answer = resolved[name]
            if "error" in answer:
                raise FarmError(f"cannot find {name} upstream: {answer['error']}. Check "
                                "FARM_PACKAGES and UPSTREAM (and that the master reaches it)")
            version = answer["version"]
        out = pinwheel(master, "add", name, version)
        print("    " + out.strip().splitlines()[0])
        queued[re.sub(r"[-_.]+", "-", name).lower()] = version
    return queued


# ----------------------------------------------------------------- progress

def latest_builds(st: dict, queued: dict[str, str]) -> list[dict]:
    """The latest build of each queued release on each target (an earlier run's
    failure that has been built again since does not count)."""
    latest: dict[tuple[str, str, str], dict] = {}
    for b in st["recent_builds"]:  # newest first
        if queued.get(b["package"]) == b["version"]:
            latest.setdefault((b["package"], b["abi"], b["platform"]), b)
    return list(latest.values())


def progress_line(st: dict, queued: dict[str, str], elapsed: float) -> tuple[str, bool]:
    waiting = sum(q["queued"] for q in st["queue"])
    building = sum(q["building"] for q in st["queue"])
    ours = latest_builds(st, queued)
    ok = sum(1 for b in ours if b["status"] == "success")
    failed = sum(1 for b in ours if b["status"] != "success")
    publishing = sum(1 for b in ours if b["ingest"] != "done")
    now = []
    for b in st["builders"]:
        if b.get("current_job"):
            short = b["builder"].replace("pinwheel_builder_", "")
            now.append(f"{short}: {b['current_job']}")
    minutes, seconds = divmod(int(elapsed), 60)
    line = (f"[{minutes:2d}:{seconds:02d}] queued {waiting}, building {building}, "
            f"built {ok}, failed {failed}, publishing {publishing}")
    if now:
        line += " | " + "; ".join(now)
    done = waiting == 0 and building == 0 and publishing == 0
    return line, done


def watch_builds(master: Host, queued: dict[str, str], timeout: float) -> bool:
    say(f"building {', '.join(f'{n} {v}' for n, v in queued.items())} "
        f"(the emulated armhf builder is about ten times slower)")
    start = time.monotonic()
    last = ""
    tty = sys.stdout.isatty()
    while True:
        line, done = progress_line(status(master), queued, time.monotonic() - start)
        if tty:
            print("\r\033[K" + line[:200], end="", flush=True)
        elif line.split("] ", 1)[1] != last:
            print(line, flush=True)
        last = line.split("] ", 1)[1]
        if done:
            if tty:
                print()
            return True
        if time.monotonic() - start > timeout:
            if tty:
                print()
            return False
        time.sleep(3)


# ------------------------------------------------------------------ summary

def index_files(port: int, project: str) -> list[str]:
    url = f"http://127.0.0.1:{port}/simple/{project}/"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            page = resp.read().decode()
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return []
        raise
    return re.findall(r'<a [^>]*href="[^"#]*/([^/"#]+\.whl)', page)


def check_from_host(port: int, project: str, version: str) -> None:
    """Install the project from the farm's index alone (no build) into a throwaway venv."""
    index = f"http://127.0.0.1:{port}/simple/"
    # No pip configuration (files or PIP_* variables): the farm's index alone.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = "/dev/null"
    with tempfile.TemporaryDirectory(prefix="pinwheel-farm-") as tmp:
        run([sys.executable, "-m", "venv", "--without-pip", tmp], capture=True)
        run([sys.executable, "-m", "pip", "--python", f"{tmp}/bin/python", "install", "-q",
             "--index-url", index, "--only-binary", ":all:", "--no-deps",
             f"{project}=={version}"], capture=True, env=env, timeout=300)


def failed_builds(master: Host, queued: dict[str, str]) -> list[dict]:
    """The latest build of each queued release and target, where it did not succeed."""
    return [b for b in latest_builds(status(master), queued) if b["status"] != "success"]


def summary(master: Host, queued: dict[str, str], port: int, finished: bool) -> int:
    failed = failed_builds(master, queued)
    if failed:
        say("failed builds (their logs say why)")
        for b in failed:
            print(f"    {b['package']} {b['version']} for {b['abi']}-{b['platform']}: "
                  f"{b['status']}, log http://127.0.0.1:{port}/logs/{b['build_id']}.log")
    say("published wheels")
    installable = []
    for project, version in queued.items():
        wheels = [w for w in index_files(port, project) if f"-{version}-" in w]
        print(f"    {project} {version}: " + (", ".join(wheels) if wheels else "none yet"))
        host_tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
        if any(("-none-any" in w or (host_tag in w and "x86_64" in w)) for w in wheels):
            installable.append((project, version))
    index = f"http://127.0.0.1:{port}/simple/"
    if not finished:
        print("\nSome builds are still running after FARM_TIMEOUT; follow them with\n"
              "    podman exec pinwheel-master pinwheel status")
    if not installable:
        print("\nNothing installable on this machine was published yet: see\n"
              "    podman exec pinwheel-master pinwheel status", file=sys.stderr)
        return 1
    for project, version in installable:
        check_from_host(port, project, version)
    names = " ".join(p for p, _ in installable)
    print(f"\nThe farm is up: its index is {index} (project pages, logs: http://127.0.0.1:{port}/)."
          f"\nChecked from this machine: pip installed {names} from the farm's index alone."
          f"\nUse it with:\n\n    pip install --extra-index-url {index} {names}\n")
    if failed:
        print(f"{len(failed)} build(s) failed (above): the farm works, but not everything asked "
              "for was built. Read the logs, fix the cause and run `make farm` again.",
              file=sys.stderr)
    return 0 if finished and not failed else 1


# --------------------------------------------------------------- commands

def cmd_up() -> int:
    check_host()
    port = int(os.environ.get("FARM_PORT") or 8080)
    upstream = os.environ.get("UPSTREAM", "").strip()
    specs = (os.environ.get("FARM_PACKAGES") or DEFAULT_PACKAGES).split()
    timeout = float(os.environ.get("FARM_TIMEOUT") or 2400)
    start = time.monotonic()
    hosts = inventory()
    up_containers(hosts, port)
    say(f"containers up in {time.monotonic() - start:.0f} s")
    provision(upstream)
    master = master_of(hosts)
    wait_for_builders(master, [h for h in hosts if "pinwheel_builders" in h.groups])
    say("queueing packages on the master (pinwheel add)")
    queued = queue_packages(master, specs)
    finished = watch_builds(master, queued, timeout)
    rc = summary(master, queued, port, finished)
    say(f"make farm took {time.monotonic() - start:.0f} s")
    return rc


def cmd_down() -> int:
    check_host()
    names = podman("ps", "--all", "--filter", f"label={LABEL}",
                   "--format", "{{.Names}}").stdout.split()
    if names:
        podman("rm", "--force", "--time", "5", *names, timeout=120)
        say(f"removed {', '.join(names)}")
    if podman("network", "exists", NETWORK, check=False).returncode == 0:
        podman("network", "rm", NETWORK)
        say(f"removed the network {NETWORK}")
    if not names:
        say("no farm containers were running")
    print("Kept: the base images (podman images localhost/pinwheel-*), .cache/images/ and the "
          "farm's credentials in .cache/farm/.")
    return 0


def cmd_status() -> int:
    check_host()
    print(podman("ps", "-a", "--filter", f"label={LABEL}",
                 "--format", "{{.Names}}\t{{.Status}}\t{{.Ports}}").stdout.strip()
          or "no farm containers")
    hosts = inventory()
    master = master_of(hosts)
    if container_state(master.name) == "running":
        print(pinwheel(master, "status"))
    return 0


def main(argv: list[str]) -> int:
    commands = {"up": cmd_up, "down": cmd_down, "status": cmd_status}
    if len(argv) != 1 or argv[0] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        return commands[argv[0]]()
    except FarmError as exc:
        print(f"\nfarm: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nfarm: interrupted; the containers keep running (`make farm-down` removes them)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
