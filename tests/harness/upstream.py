"""A local "upstream PyPI": the test projects' sdists plus setuptools and wheel.

The sdists are packed here from ``tests/upstream/<project>/`` (one source per
project; each version in :data:`VERSIONS` gets its own ``version = "..."`` line
and a PKG-INFO). setuptools and wheel come as wheels from the seed directory
(``$PINWHEEL_SEED_DIR``, default ``<repo>/.cache/upstream-seed``, filled by
``make test-deps``), so ``pip wheel --no-binary <project>`` with build isolation
works against this index alone.

The index is served by a thread of this process at ``/simple/`` as PEP 503 HTML
or PEP 691 JSON (API version 1.1), chosen by the request's Accept header; files
are under ``/files/``.
"""

from __future__ import annotations

import gzip
import hashlib
import html
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import threading
import zipfile
from dataclasses import dataclass
from email.parser import HeaderParser
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCES = REPO_ROOT / "tests" / "upstream"
DEFAULT_SEED_DIR = REPO_ROOT / ".cache" / "upstream-seed"
SEED_PROJECTS = ("setuptools", "wheel")

# The versions published of each test project.
VERSIONS: dict[str, list[str]] = {
    "pwtest-cext": ["1.0"],
    "pwtest-clibs": ["1.0"],
    "pwtest-pure": [f"1.{minor}" for minor in range(8)],
    "pwtest-broken": ["1.0"],
    "pwtest-hostile": ["1.0", "2.0"],
    "pwtest-gated": [f"1.{minor}" for minor in range(8)],
}

JSON_TYPE = "application/vnd.pypi.simple.v1+json"
HTML_TYPE = "application/vnd.pypi.simple.v1+html"
SDIST_MTIME = 1_700_000_000  # fixed, so the sdists (and their hashes) are reproducible
SKIP_NAMES = {"__pycache__", "build", "dist"}


@dataclass(frozen=True)
class IndexFile:
    project: str  # normalised
    version: str
    filename: str
    sha256: str
    size: int
    requires_python: str | None = None
    yanked: bool | str = False


# -- building the files ------------------------------------------------------

def seed_dir() -> Path:
    return Path(os.environ.get("PINWHEEL_SEED_DIR", str(DEFAULT_SEED_DIR)))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def project_metadata(pyproject: str) -> dict[str, str]:
    """The ``key = "value"`` lines of a test project's ``[project]`` table.

    The test projects keep their metadata to such lines (no tomllib on 3.9).
    """
    table = re.search(r"(?ms)^\[project\]\n(.*?)(?=^\[|\Z)", pyproject)
    if table is None:
        raise ValueError("pyproject.toml has no [project] table")
    return dict(re.findall(r'(?m)^([a-z-]+) = "([^"]*)"$', table.group(1)))


def _pkg_info(project: dict[str, str], version: str) -> str:
    lines = ["Metadata-Version: 2.1", f"Name: {project['name']}", f"Version: {version}"]
    if "description" in project:
        lines.append(f"Summary: {project['description']}")
    if "requires-python" in project:
        lines.append(f"Requires-Python: {project['requires-python']}")
    return "\n".join(lines) + "\n"


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = SDIST_MTIME
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _source_files(src: Path) -> list[Path]:
    return sorted(
        path for path in src.rglob("*")
        if path.is_file()
        and not SKIP_NAMES.intersection(path.relative_to(src).parts)
        and not path.name.endswith((".pyc", ".so"))
        and not any(part.endswith(".egg-info") for part in path.relative_to(src).parts))


def make_sdist(src: Path, version: str, outdir: Path) -> Path:
    """Pack ``src`` as the sdist of ``version`` (PEP 625 name) into ``outdir``."""
    pyproject = (src / "pyproject.toml").read_text()
    project = project_metadata(pyproject)
    stem = f"{canonicalize_name(project['name']).replace('-', '_')}-{version}"
    pyproject, count = re.subn(r'(?m)^version = ".*"$', f'version = "{version}"', pyproject)
    if count != 1:
        raise ValueError(f"{src}/pyproject.toml needs exactly one `version = \"...\"` line")
    target = outdir / f"{stem}.tar.gz"
    with target.open("wb") as raw, \
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=SDIST_MTIME, filename="") as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, f"{stem}/PKG-INFO", _pkg_info(project, version).encode())
        for path in _source_files(src):
            rel = path.relative_to(src).as_posix()
            data = pyproject.encode() if rel == "pyproject.toml" else path.read_bytes()
            _add_bytes(tar, f"{stem}/{rel}", data)
    return target


def _copy_seed_wheels(outdir: Path) -> list[Path]:
    seed = seed_dir()
    found = {name: sorted(seed.glob(f"{name}-*.whl")) for name in SEED_PROJECTS}
    missing = [name for name, wheels in found.items() if not wheels]
    if missing:
        raise RuntimeError(
            f"no {' or '.join(missing)} wheel in the upstream seed directory {seed}: "
            "run `make test-deps` (or set PINWHEEL_SEED_DIR)")
    copied = []
    for wheels in found.values():
        for wheel in wheels:
            copied.append(Path(shutil.copy2(wheel, outdir / wheel.name)))
    return copied


def _index_file(path: Path, project: str, version: str,
                requires_python: str | None) -> IndexFile:
    return IndexFile(project=canonicalize_name(project), version=version, filename=path.name,
                     sha256=_sha256(path), size=path.stat().st_size,
                     requires_python=requires_python)


def _wheel_requires_python(wheel: Path, project: str, version: str) -> str | None:
    dist_info = f"{project.replace('-', '_')}-{version}.dist-info/METADATA"
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n.lower() == dist_info.lower()]
        if not names:
            return None
        metadata = HeaderParser().parsestr(zf.read(names[0]).decode())
    return metadata.get("Requires-Python")


def build_files(outdir: Path) -> list[IndexFile]:
    """Every file of the index, written into ``outdir``."""
    files = []
    for name, versions in VERSIONS.items():
        src = SOURCES / name
        requires = project_metadata((src / "pyproject.toml").read_text()).get(
            "requires-python")
        for version in versions:
            files.append(_index_file(make_sdist(src, version, outdir), name, version, requires))
    for wheel in _copy_seed_wheels(outdir):
        project, parsed, _, _ = parse_wheel_filename(wheel.name)
        version = wheel.name.split("-")[1]
        requires = _wheel_requires_python(wheel, project, version)
        files.append(_index_file(wheel, project, str(parsed), requires))
    return files


# -- serving -----------------------------------------------------------------

def _preferred_type(accept: str) -> str:
    """The PEP 691 content type to answer with, by the Accept header's q-values."""
    best, best_q = "text/html", 0.0
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if media in (JSON_TYPE, HTML_TYPE, "text/html") and q > best_q:
            best, best_q = media, q
    return best


class _Handler(BaseHTTPRequestHandler):
    server: _IndexServer

    def log_message(self, format: str, *args: Any) -> None:
        self.server.requests.append(format % args)

    def _send(self, status: int, body: bytes, content_type: str,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Vary", "Accept")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self._send(HTTPStatus.MOVED_PERMANENTLY, b"", "text/plain", {"Location": location})

    def _page(self, data: dict[str, Any], html_body: str) -> None:
        media = _preferred_type(self.headers.get("Accept", ""))
        if media == JSON_TYPE:
            self._send(200, json.dumps(data, indent=1).encode(), JSON_TYPE)
        else:
            self._send(200, html_body.encode(), f"{media}; charset=utf-8")

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        index = self.server.index
        if path == "/simple":
            self._redirect("/simple/")
        elif path == "/simple/":
            self._page(index.root_json(), index.root_html())
        elif m := re.fullmatch(r"/simple/([^/]+)(/?)", path):
            name, slash = m.groups()
            canonical = canonicalize_name(name)
            if canonical not in index.by_project:
                self._send(404, b"no such project\n", "text/plain")
            elif name != canonical or not slash:
                self._redirect(f"/simple/{canonical}/")
            else:
                self._page(index.project_json(canonical), index.project_html(canonical))
        elif (m := re.fullmatch(r"/files/([^/]+)", path)) and m.group(1) in index.by_filename:
            body = (index.files_dir / m.group(1)).read_bytes()
            self._send(200, body, "application/octet-stream")
        else:
            self._send(404, b"not found\n", "text/plain")


class _IndexServer(ThreadingHTTPServer):
    daemon_threads = True
    index: UpstreamIndex
    requests: list[str]


# -- the index ---------------------------------------------------------------

class UpstreamIndex:
    """The test projects (and setuptools, wheel) served at ``url`` (``.../simple/``).

    ``projects`` maps every served project's normalised name to its versions,
    oldest first; ``root`` holds the served files (under ``root / "files"``).
    """

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="pinwheel-upstream-"))
        self.files_dir = self.root / "files"
        self.files_dir.mkdir()
        try:
            self.files = build_files(self.files_dir)
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        self.by_filename = {f.filename: f for f in self.files}
        self.by_project: dict[str, list[IndexFile]] = {}
        for f in self.files:
            self.by_project.setdefault(f.project, []).append(f)
        self.projects: dict[str, list[str]] = {
            name: sorted({f.version for f in files}, key=Version)
            for name, files in sorted(self.by_project.items())}
        self._server = _IndexServer(("127.0.0.1", 0), _Handler)
        self._server.index = self
        self._server.requests = []
        self.port = int(self._server.server_address[1])
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.base_url}/simple/"
        self._thread: threading.Thread | None = None

    @property
    def requests(self) -> list[str]:
        """The request lines served so far (for debugging tests)."""
        return self._server.requests

    def file_url(self, f: IndexFile) -> str:
        return f"{self.base_url}/files/{f.filename}"

    def root_json(self) -> dict[str, Any]:
        return {"meta": {"api-version": "1.1"},
                "projects": [{"name": name} for name in self.projects]}

    def root_html(self) -> str:
        links = "".join(f'<a href="/simple/{name}/">{name}</a>\n' for name in self.projects)
        return _html_page("Simple index", links)

    def project_json(self, name: str) -> dict[str, Any]:
        files = []
        for f in self.by_project[name]:
            entry: dict[str, Any] = {"filename": f.filename, "url": self.file_url(f),
                                     "hashes": {"sha256": f.sha256}, "size": f.size}
            if f.requires_python:
                entry["requires-python"] = f.requires_python
            if f.yanked:
                entry["yanked"] = f.yanked
            files.append(entry)
        return {"meta": {"api-version": "1.1"}, "name": name, "files": files,
                "versions": self.projects[name]}

    def project_html(self, name: str) -> str:
        links = []
        for f in self.by_project[name]:
            attrs = f'href="{html.escape(self.file_url(f))}#sha256={f.sha256}"'
            if f.requires_python:
                attrs += f' data-requires-python="{html.escape(f.requires_python)}"'
            if f.yanked:
                reason = f.yanked if isinstance(f.yanked, str) else ""
                attrs += f' data-yanked="{html.escape(reason)}"'
            links.append(f"<a {attrs}>{html.escape(f.filename)}</a><br/>\n")
        return _html_page(f"Links for {name}", "".join(links))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="upstream-index", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def _html_page(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html>\n<head>\n"
            '<meta name="pypi:repository-version" content="1.1">\n'
            f"<title>{html.escape(title)}</title>\n</head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n{body}</body>\n</html>\n")
