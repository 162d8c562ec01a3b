"""Real pip and real uv against the nginx-served index (catalogue: index_catalogue.py).

Every client runs with no configuration of the host (no pip.conf, no find-links,
no cache) and only this index, so what they resolve is what the index says.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from index_catalogue import ARM, DEMO, YANK_REASON, Catalogue, served_catalogue

from harness.nginx import NginxServer

BIN = Path(sys.executable).parent
PIP = [sys.executable, "-m", "pip"]
UV = str(BIN / "uv")


@pytest.fixture(scope="module")
def served(pg, pg_template) -> Iterator[tuple[Catalogue, NginxServer]]:
    with served_catalogue(pg, pg_template, "pinwheel_index_clients") as both:
        yield both


def clean_env(tmp_path: Path) -> dict[str, str]:
    """No pip or uv configuration from the host (this machine sets PIP_FIND_LINKS...)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    env.update(PIP_CONFIG_FILE="/dev/null", PIP_NO_CACHE_DIR="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1", UV_NO_CONFIG="1",
               UV_CACHE_DIR=str(tmp_path / "uv-cache"), UV_PYTHON_DOWNLOADS="never",
               HOME=str(tmp_path))
    return env


def run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def pip_report(served, tmp_path: Path, *args: str) -> dict:
    """``pip install --dry-run --report``: what pip would install, resolved from the index."""
    _, server = served
    report = tmp_path / "report.json"
    done = run([*PIP, "install", "--dry-run", "--ignore-installed", "--quiet", "--report",
                str(report), "--index-url", f"{server.url}/simple/", *args], clean_env(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(report.read_text())


def installed(report: dict) -> dict[str, str]:
    return {i["metadata"]["name"]: i["metadata"]["version"] for i in report["install"]}


def access_log_since(server: NginxServer, offset: int) -> list[str]:
    with open(server.access_log, "rb") as fh:
        fh.seek(offset)
        return fh.read().decode(errors="replace").splitlines()


# ------------------------------------------------------------------ pip


def test_pip_installs_the_newest_usable_release(served, tmp_path):
    _, server = served
    target = tmp_path / "target"
    done = run([*PIP, "install", "--target", str(target), "--index-url", f"{server.url}/simple/",
                DEMO], clean_env(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    # 2.0 needs Python >= 3.99; 1.2 is the newest this Python can use.
    assert (target / "pwidx_demo-1.2.dist-info").is_dir(), sorted(os.listdir(target))
    assert (target / "pwidx_demo" / "__init__.py").is_file()


def test_pip_skips_the_release_whose_requires_python_excludes_it(served, tmp_path):
    assert installed(pip_report(served, tmp_path, DEMO)) == {DEMO: "1.2"}
    _, server = served
    refused = run([*PIP, "install", "--dry-run", "--index-url", f"{server.url}/simple/",
                   f"{DEMO}==2.0"], clean_env(tmp_path))
    assert refused.returncode != 0
    assert "Requires-Python >=3.99" in refused.stdout + refused.stderr


def test_pip_skips_a_yanked_release_unless_pinned_and_then_warns_with_the_reason(served,
                                                                                  tmp_path):
    assert installed(pip_report(served, tmp_path, f"{DEMO}<1.2")) == {DEMO: "1.0"}
    _, server = served
    pinned = run([*PIP, "install", "--dry-run", "--index-url", f"{server.url}/simple/",
                  f"{DEMO}==1.1"], clean_env(tmp_path))
    assert pinned.returncode == 0, pinned.stdout + pinned.stderr
    assert "yanked" in pinned.stderr and YANK_REASON in pinned.stderr


def test_pip_resolves_from_metadata_files_without_downloading_wheels(served, tmp_path):
    _, server = served
    start = server.access_log.stat().st_size
    assert installed(pip_report(served, tmp_path, DEMO)) == {DEMO: "1.2"}
    requests = access_log_since(server, start)
    assert any("/packages/pwidx-demo/pwidx_demo-1.2-py3-none-any.whl.metadata" in line
               and '"status":200' in line for line in requests), requests
    assert not any(".whl HTTP" in line for line in requests), \
        f"pip downloaded a wheel while resolving: {requests}"


def test_pip_uploaded_prior_to_sees_only_older_files(served, tmp_path):
    assert installed(pip_report(served, tmp_path, "--uploaded-prior-to", "2024-12-01T00:00:00Z",
                                DEMO)) == {DEMO: "1.0"}


def test_pip_download_for_armv7l_picks_the_armv7l_wheel(served, tmp_path):
    _, server = served
    dest = tmp_path / "dl"
    done = run([*PIP, "download", "--only-binary", ":all:", "--no-deps", "--platform",
                "linux_armv7l", "--python-version", "3.11", "--implementation", "cp",
                "--abi", "cp311", "-d", str(dest), "--index-url", f"{server.url}/simple/", ARM],
               clean_env(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert os.listdir(dest) == ["pwidx_arm-1.0-cp311-cp311-linux_armv7l.whl"]


def test_armv6l_alias_serves_the_armv7l_bytes_to_an_armv6l_client(served, tmp_path):
    _, server = served
    dest = tmp_path / "dl"
    done = run([*PIP, "download", "--only-binary", ":all:", "--no-deps", "--platform",
                "linux_armv6l", "--python-version", "3.11", "--implementation", "cp",
                "--abi", "cp311", "-d", str(dest), "--index-url", f"{server.url}/simple/", ARM],
               clean_env(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert os.listdir(dest) == ["pwidx_arm-1.0-cp311-cp311-linux_armv6l.whl"]
    armv7 = server.www_root / "packages" / ARM / "pwidx_arm-1.0-cp311-cp311-linux_armv7l.whl"
    assert (dest / "pwidx_arm-1.0-cp311-cp311-linux_armv6l.whl").read_bytes() == \
        armv7.read_bytes()


def test_a_differently_spelled_name_resolves(served, tmp_path):
    assert installed(pip_report(served, tmp_path, "PwIdx_Demo==1.0")) == {DEMO: "1.0"}
    assert installed(pip_report(served, tmp_path, "PWIDX.demo==1.0")) == {DEMO: "1.0"}


# ------------------------------------------------------------------- uv


def uv_install(served, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    _, server = served
    return run([UV, "pip", "install", "--python", sys.executable, "--target",
                str(tmp_path / "uvtarget"), "--no-cache", "--index-url", f"{server.url}/simple/",
                *args], clean_env(tmp_path))


def uv_installed(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "uvtarget").glob("*.dist-info"))


def test_uv_installs_the_newest_usable_release(served, tmp_path):
    done = uv_install(served, tmp_path, DEMO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert uv_installed(tmp_path) == ["pwidx_demo-1.2.dist-info"]


def test_uv_exclude_newer_sees_only_older_files(served, tmp_path):
    done = uv_install(served, tmp_path, "--exclude-newer", "2024-12-01T00:00:00Z", DEMO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert uv_installed(tmp_path) == ["pwidx_demo-1.0.dist-info"]


def test_uv_skips_a_yanked_release_unless_pinned(served, tmp_path):
    done = uv_install(served, tmp_path, f"{DEMO}<1.2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert uv_installed(tmp_path) == ["pwidx_demo-1.0.dist-info"]
    pinned = uv_install(served, tmp_path / "pinned", f"{DEMO}==1.1")
    assert pinned.returncode == 0, pinned.stdout + pinned.stderr
    assert uv_installed(tmp_path / "pinned") == ["pwidx_demo-1.1.dist-info"]
    assert "yanked" in pinned.stderr and YANK_REASON in pinned.stderr


def test_uv_resolves_a_differently_spelled_name(served, tmp_path):
    done = uv_install(served, tmp_path, "PwIdx.Demo==1.0")
    assert done.returncode == 0, done.stdout + done.stderr
    assert uv_installed(tmp_path) == ["pwidx_demo-1.0.dist-info"]
