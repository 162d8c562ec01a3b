"""The local upstream index builds with a real pip, and its two views agree."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
import urllib.request
import zipfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from harness.upstream import HTML_TYPE, JSON_TYPE, UpstreamIndex

SYSTEM_PYTHON = "/usr/bin/python3"
PIP_ACCEPT = f"{JSON_TYPE}, {HTML_TYPE}; q=0.1, text/html; q=0.01"  # what pip sends


def system_pip_wheel(upstream: UpstreamIndex, requirement: str, project: str,
                     outdir: Path) -> subprocess.CompletedProcess[str]:
    """Debian's pip, building from sdist with build isolation, seeing only ``upstream``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = "/dev/null"  # this host's pip config adds other indexes
    return subprocess.run(
        [SYSTEM_PYTHON, "-m", "pip", "wheel", requirement, "--no-deps", "--no-binary", project,
         "--no-cache-dir", "--index-url", upstream.url, "-w", str(outdir)],
        env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)


def system_python_tag() -> str:
    out = subprocess.run([SYSTEM_PYTHON, "-c", "import sys; print(*sys.version_info[:2])"],
                         capture_output=True, text=True, check=True).stdout.split()
    return f"cp{out[0]}{out[1]}"


def fetch(url: str, accept: str | None = None) -> tuple[str, str, bytes]:
    """(final URL, Content-Type, body)."""
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.geturl(), response.headers["Content-Type"], response.read()


class LinkParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.links.append(dict(attrs))


def html_links(body: bytes) -> list[dict[str, str | None]]:
    parser = LinkParser()
    parser.feed(body.decode())
    return parser.links


def test_pip_builds_the_c_extension(upstream: UpstreamIndex, tmp_path: Path) -> None:
    tag = system_python_tag()

    result = system_pip_wheel(upstream, "pwtest-cext==1.0", "pwtest-cext", tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    wheel = tmp_path / f"pwtest_cext-1.0-{tag}-{tag}-linux_x86_64.whl"
    assert [p.name for p in tmp_path.iterdir()] == [wheel.name]
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(tmp_path / "unpacked")
    added = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import pwtest_cext; print(pwtest_cext.add(2, 3))"],
        env={"PYTHONPATH": str(tmp_path / "unpacked")}, capture_output=True, text=True)
    assert added.stdout.strip() == "5", added.stderr


def test_pip_builds_the_newest_pure_version(upstream: UpstreamIndex, tmp_path: Path) -> None:
    result = system_pip_wheel(upstream, "pwtest-pure", "pwtest-pure", tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["pwtest_pure-1.7-py3-none-any.whl"]


def test_broken_fails_with_its_message(upstream: UpstreamIndex, tmp_path: Path) -> None:
    result = system_pip_wheel(upstream, "pwtest-broken==1.0", "pwtest-broken", tmp_path)

    assert result.returncode != 0
    assert "pwtest-broken fails to build on purpose" in result.stdout + result.stderr
    assert list(tmp_path.iterdir()) == []


def test_projects_and_versions(upstream: UpstreamIndex) -> None:
    assert upstream.projects["pwtest-cext"] == ["1.0"]
    assert upstream.projects["pwtest-broken"] == ["1.0"]
    assert upstream.projects["pwtest-pure"] == [f"1.{n}" for n in range(8)]
    assert {"setuptools", "wheel"} <= set(upstream.projects)


def test_root_views_agree(upstream: UpstreamIndex) -> None:
    _, json_type, json_body = fetch(upstream.url, PIP_ACCEPT)
    _, html_type, html_body = fetch(upstream.url)

    assert json_type == JSON_TYPE
    assert html_type.startswith("text/html")
    data = json.loads(json_body)
    assert data["meta"]["api-version"] == "1.1"
    json_names = [p["name"] for p in data["projects"]]
    html_names = [link["href"] for link in html_links(html_body)]
    assert json_names == list(upstream.projects)
    assert html_names == [f"/simple/{name}/" for name in upstream.projects]


def _html_files(body: bytes) -> dict[str, dict[str, Any]]:
    files = {}
    for link in html_links(body):
        url, _, fragment = str(link["href"]).partition("#")
        files[url.rsplit("/", 1)[1]] = {
            "url": url, "sha256": fragment.removeprefix("sha256="),
            "requires-python": link.get("data-requires-python"),
            "yanked": "data-yanked" in link}
    return files


def _json_files(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["filename"]: {"url": f["url"], "sha256": f["hashes"]["sha256"],
                            "requires-python": f.get("requires-python"),
                            "yanked": bool(f.get("yanked", False))}
            for f in data["files"]}


@pytest.mark.parametrize("project", ["pwtest-cext", "pwtest-pure", "pwtest-broken",
                                     "setuptools", "wheel"])
def test_project_views_agree(upstream: UpstreamIndex, project: str) -> None:
    _, json_type, json_body = fetch(f"{upstream.url}{project}/", PIP_ACCEPT)
    _, html_type, html_body = fetch(f"{upstream.url}{project}/", "text/html")
    data = json.loads(json_body)

    assert json_type == JSON_TYPE
    assert html_type.startswith("text/html")
    assert data["meta"]["api-version"] == "1.1"
    assert data["name"] == project
    assert data["versions"] == upstream.projects[project]
    assert _json_files(data) == _html_files(html_body)
    for f in data["files"]:
        _, _, content = fetch(f["url"])
        assert hashlib.sha256(content).hexdigest() == f["hashes"]["sha256"]
        assert len(content) == f["size"]


def test_pure_declares_requires_python(upstream: UpstreamIndex) -> None:
    _, _, body = fetch(f"{upstream.url}pwtest-pure/", JSON_TYPE)
    files = json.loads(body)["files"]

    assert sorted(f["filename"] for f in files) == [
        f"pwtest_pure-1.{n}.tar.gz" for n in range(8)]
    assert {f["requires-python"] for f in files} == {">=3.8"}


def test_sdist_layout(upstream: UpstreamIndex) -> None:
    with tarfile.open(upstream.root / "files" / "pwtest_cext-1.0.tar.gz") as tar:
        names = tar.getnames()
        member = tar.extractfile("pwtest_cext-1.0/PKG-INFO")
        assert member is not None
        pkg_info = member.read().decode()

    assert all(name.startswith("pwtest_cext-1.0/") for name in names)
    assert "pwtest_cext-1.0/pyproject.toml" in names
    assert "Name: pwtest-cext\n" in pkg_info
    assert "Version: 1.0\n" in pkg_info


def test_unnormalised_project_url_redirects(upstream: UpstreamIndex) -> None:
    final, _, _ = fetch(f"{upstream.url}PWTest_Pure")

    assert final == f"{upstream.url}pwtest-pure/"


def test_explicit_html_preference(upstream: UpstreamIndex) -> None:
    _, content_type, body = fetch(f"{upstream.url}pwtest-cext/",
                                  f"{HTML_TYPE}, {JSON_TYPE}; q=0.5")

    assert content_type.startswith(HTML_TYPE)
    assert b"pwtest_cext-1.0.tar.gz#sha256=" in body
