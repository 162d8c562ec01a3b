"""The pip cache policy: no cache at all, so no build can plant anything a later one uses.

Builds run real pip (the system Python's) as the build user against the test
upstream; the upstream's request log shows what each build downloaded.
See docs/decisions.md, "pip's cache".
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.agents import world_readable_tempdir
from harness.upstream import UpstreamIndex
from harness.users import AgentUsers, ensure_agent_users
from pinwheel.sandbox import Sandbox

pytestmark = pytest.mark.e2e

USERS = AgentUsers("pwtest-pipc-agent", "pwtest-pipc-build")
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.fixture(scope="module")
def users() -> AgentUsers:
    ensure_agent_users([USERS])
    return USERS


@pytest.fixture
def place() -> Iterator[Path]:
    d = world_readable_tempdir("pinwheel-pipc-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def sandbox(users: AgentUsers, place: Path, upstream: UpstreamIndex,
            python: str = SYSTEM_PYTHON) -> Sandbox:
    return Sandbox(users.build, place / "work", python, upstream.url, [], 300)


def setuptools_downloads(upstream: UpstreamIndex) -> int:
    return sum("GET /files/setuptools-" in r for r in upstream.requests)


def build(box: Sandbox, place: Path, version: str, job_id: int) -> str:
    result = box.build("pwtest-pure", version, job_id, place / f"outbox-{job_id}",
                       tick=lambda: None, tick_seconds=5)
    text = result.log_path.read_text(errors="replace")
    assert result.status == "success", text[-3000:]
    return text


def test_every_build_fetches_its_build_dependencies_afresh(users, place, upstream):
    box = sandbox(users, place, upstream)
    for job_id, version in ((1, "1.0"), (2, "1.1")):
        before = setuptools_downloads(upstream)
        text = build(box, place, version, job_id)
        assert setuptools_downloads(upstream) == before + 1, "downloaded, not from a cache"
        assert "Using cached" not in text
        assert "PIP_NO_CACHE_DIR=1" in text and "--no-cache-dir" in text


# Run as the build user in place of pip: plant a cache and a pip configuration
# pointing at a poisoned index everywhere a later build's pip might look.
PLANT = r"""#!/bin/sh
poison() {
    mkdir -p "$1/pip/http" "$1/pip/wheels" 2>/dev/null &&
        echo poisoned > "$1/pip/http/entry" 2>/dev/null && echo "PLANTED $1" ||
        echo "REFUSED $1"
}
for d in "$HOME/.cache" /tmp/pwtest-pipc-cache /var/tmp/pwtest-pipc-cache \
         /dev/shm/pwtest-pipc-cache "$WORK/builds/job-12/tree/.cache" "$WORK/.cache" \
         /nonexistent/.cache; do
    poison "$d"
done
for d in "$HOME/.config/pip" "$HOME/.pip" /tmp/pwtest-pipc-conf; do
    mkdir -p "$d" 2>/dev/null &&
        printf '[global]\nindex-url = http://127.0.0.1:9/poisoned/\n' > "$d/pip.conf" &&
        echo "PLANTED $d/pip.conf" || echo "REFUSED $d/pip.conf"
done
exit 0
"""


def test_a_build_cannot_plant_a_cache_or_pip_config_for_the_next(users, place, upstream):
    work = place / "work"
    planter = place / "planter"
    planter.write_text(PLANT.replace("$WORK", str(work)))
    planter.chmod(0o755)
    hostile = sandbox(users, place, upstream, python=str(planter))
    result = hostile.build("pwtest-pure", "1.2", 11, place / "outbox-11",
                           tick=lambda: None, tick_seconds=5)
    text = result.log_path.read_text()
    assert "PLANTED" in text, text  # at least its own HOME: the test must have bite
    assert "REFUSED" in text        # the agent's directories and the missing home
    for planted in ("/tmp/pwtest-pipc-cache", "/var/tmp/pwtest-pipc-cache",
                    "/dev/shm/pwtest-pipc-cache", "/tmp/pwtest-pipc-conf"):
        assert not Path(planted).exists(), f"{planted} outlived the build"
    assert not (work / "builds" / "job-12").exists()
    assert not (work / ".cache").exists()

    before = setuptools_downloads(upstream)
    text = build(sandbox(users, place, upstream), place, "1.2", 12)
    assert setuptools_downloads(upstream) == before + 1
    assert "poisoned" not in text and "Using cached" not in text
