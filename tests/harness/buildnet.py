"""The builder role's confined build network, on the test host.

``build_network = restricted`` on a builder is two things of the builder role:
an nftables table rejecting every packet of the build user except TCP to a
local proxy (``build-firewall.nft.j2``), and tinyproxy forwarding only requests
to the indexes (``tinyproxy.conf.j2``, ``tinyproxy-filter.j2``). The harness
renders those same templates, for one test build user: the table gets a name of
its own (``pwtest_build_<pid>``) and is deleted afterwards, so other users'
traffic (and other worktrees' test users) are never touched; tinyproxy runs in
the foreground on a free port with its pid and log files in the test's own
directory instead of the system's.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .ports import free_port, wait_listening
from .templates import render_role_template

NFT = shutil.which("nft") or "/usr/sbin/nft"
TINYPROXY = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"


def nft_usable() -> str:
    """Why this host cannot load an nftables table, or "" when it can."""
    if os.geteuid() != 0:
        return "the tests do not run as root"
    if not os.path.exists(NFT):
        return f"{NFT} is not installed"
    if not os.path.exists(TINYPROXY):
        return f"{TINYPROXY} is not installed (make test-deps)"
    proc = subprocess.run([NFT, "list", "tables"], capture_output=True, text=True)
    if proc.returncode != 0:
        return f"nft does not work here: {proc.stderr.strip()}"
    return ""


@dataclass
class BuildNetwork:
    """A confined network for ``build_user``: a firewall table and a proxy of its own."""

    build_user: str
    allowed_hosts: list[str]
    place: Path
    port: int = 0
    table: str = ""
    _proxy: subprocess.Popen[bytes] | None = None

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> BuildNetwork:
        self.place.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.table = self.table or f"pwtest_build_{os.getpid()}"
        variables = {
            "builder_build_user": self.build_user,
            "builder_build_proxy_port": self.port,
            "builder_build_allowed_hosts": self.allowed_hosts,
            "__builder_firewall_table": self.table,
            "__builder_firewall_rules": str(self.place / "build-firewall.nft"),
            "__builder_proxy_filter": str(self.place / "allowed-hosts"),
            "__builder_proxy_connect_ports": [443],
            # tinyproxy 1.11 here (bookworm); bullseye's 1.10 needs a process pool.
            "__builder_tinyproxy_prefork": False,
        }
        (self.place / "allowed-hosts").write_text(
            render_role_template("builder", "tinyproxy-filter.j2", **variables))
        conf = render_role_template("builder", "tinyproxy.conf.j2", **variables)
        # The system's pid and log files belong to the system's tinyproxy.
        conf = re.sub(r'(?m)^PidFile .*$', f'PidFile "{self.place}/tinyproxy.pid"', conf)
        conf = re.sub(r'(?m)^LogFile .*$', f'LogFile "{self.place}/tinyproxy.log"', conf)
        (self.place / "tinyproxy.conf").write_text(conf)
        for name in ("allowed-hosts", "tinyproxy.conf"):
            os.chmod(self.place / name, 0o644)
        # tinyproxy drops to its user, which must write its log and pid file here.
        os.chmod(self.place, 0o777)  # a test directory
        rules = self.place / "build-firewall.nft"
        rules.write_text(render_role_template("builder", "build-firewall.nft.j2", **variables))
        subprocess.run([NFT, "--check", "--file", str(rules)], check=True)
        subprocess.run([NFT, "--file", str(rules)], check=True)
        with open(self.place / "tinyproxy.out", "ab") as out:
            self._proxy = subprocess.Popen(
                [TINYPROXY, "-d", "-c", str(self.place / "tinyproxy.conf")],
                stdout=out, stderr=subprocess.STDOUT)
        wait_listening(self._proxy, self.port, "tinyproxy")
        return self

    def log(self) -> str:
        path = self.place / "tinyproxy.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.table:
            subprocess.run([NFT, "delete", "table", "inet", self.table], capture_output=True)
        if self._proxy is not None and self._proxy.poll() is None:
            self._proxy.terminate()
            try:
                self._proxy.wait(10)
            except subprocess.TimeoutExpired:
                self._proxy.kill()
                self._proxy.wait()
