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

For ``pinwheel watch`` the index also changes over time: releases are added
(sdists or wheels only, as small synthetic files), yanked, un-yanked and
deleted, projects deleted or listed under another spelling
(:meth:`UpstreamIndex.add_release` and the methods after it). Every change
bumps the project's serial; with ``serials=True`` the JSON root and project
pages carry PyPI's ``_last-serial`` (and the ``X-PyPI-Last-Serial`` header).
Every page has an ETag and answers ``If-None-Match`` with 304. Requests can
be made to fail (``fail_next``: 429/503 with Retry-After) and a callback can
run before a project page is served (``on_project_request``).
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
from dataclasses import dataclass, replace
from email.parser import HeaderParser
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

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
    metadata_sha256: str | None = None  # its core metadata is served (PEP 658)


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

    def _page(self, data: dict[str, Any], html_body: str, serial: int | None = None,
              project: str | None = None) -> None:
        media = _preferred_type(self.headers.get("Accept", ""))
        if media == JSON_TYPE:
            body, content_type = json.dumps(data, indent=1).encode(), JSON_TYPE
        else:
            body, content_type = html_body.encode(), f"{media}; charset=utf-8"
        etag = '"' + hashlib.sha256(content_type.encode() + b"\0" + body).hexdigest()[:32] + '"'
        headers = {"ETag": etag}
        if serial is not None and self.server.index.serials:
            headers["X-PyPI-Last-Serial"] = str(serial)
        if self.headers.get("If-None-Match") == etag:
            self.server.index.page_requests.append((project or "", 304))
            self.send_response(HTTPStatus.NOT_MODIFIED)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Vary", "Accept")
            self.end_headers()
            return
        self.server.index.page_requests.append((project or "", 200))
        self._send(200, body, content_type, headers)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        index = self.server.index
        with index.lock:
            failure = index.failures.pop(0) if index.failures else None
        if failure is not None:
            status, retry_after = failure
            headers = {"Retry-After": retry_after} if retry_after is not None else {}
            self._send(status, b"slow down\n", "text/plain", headers)
            return
        if path == "/simple":
            self._redirect("/simple/")
        elif path == "/simple/":
            with index.lock:
                data, page, serial = index.root_json(), index.root_html(), index.last_serial
            self._page(data, page, serial)
        elif m := re.fullmatch(r"/simple/([^/]+)(/?)", path):
            name, slash = m.groups()
            canonical = canonicalize_name(name)
            if name == canonical and slash and index.on_project_request is not None:
                index.on_project_request(canonical)
            with index.lock:
                known = canonical in index.by_project
                if known:
                    data, page = index.project_json(canonical), index.project_html(canonical)
                    serial = index.serial_of.get(canonical, 0)
            if not known:
                index.page_requests.append((canonical, 404))
                self._send(404, b"no such project\n", "text/plain")
            elif name != canonical or not slash:
                self._redirect(f"/simple/{canonical}/")
            else:
                self._page(data, page, serial, canonical)
        elif (m := re.fullmatch(r"/files/([^/]+)", path)) and m.group(1) in index.by_filename:
            body = (index.files_dir / m.group(1)).read_bytes()
            self._send(200, body, "application/octet-stream")
        elif ((m := re.fullmatch(r"/files/([^/]+)\.metadata", path))
              and index.by_filename.get(m.group(1)) is not None
              and index.by_filename[m.group(1)].metadata_sha256):
            body = (index.files_dir / f"{m.group(1)}.metadata").read_bytes()
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

    def __init__(self, build: bool = True, serials: bool = False) -> None:
        """``build=False``: start empty (no sdists packed, no seed wheels needed);
        ``serials``: publish PyPI's ``_last-serial`` in JSON pages and headers."""
        self.root = Path(tempfile.mkdtemp(prefix="pinwheel-upstream-"))
        self.files_dir = self.root / "files"
        self.files_dir.mkdir()
        try:
            self.files = build_files(self.files_dir) if build else []
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        self.lock = threading.RLock()
        self.serials = serials
        self.last_serial = 0
        self.serial_of: dict[str, int] = {}
        self.display: dict[str, str] = {}   # project -> the spelling the root page lists
        self.failures: list[tuple[int, str | None]] = []
        self.page_requests: list[tuple[str, int]] = []  # (project or "" for the root, status)
        self.on_project_request: Callable[[str], None] | None = None
        self._reindex()
        for name in self.projects:
            self._bump(name)
        self._server = _IndexServer(("127.0.0.1", 0), _Handler)
        self._server.index = self
        self._server.requests = []
        self.port = int(self._server.server_address[1])
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.base_url}/simple/"
        self._thread: threading.Thread | None = None

    # -- changing over time (for pinwheel watch) --------------------------------

    def _reindex(self) -> None:
        self.by_filename = {f.filename: f for f in self.files}
        self.by_project: dict[str, list[IndexFile]] = {}
        for f in self.files:
            self.by_project.setdefault(f.project, []).append(f)
        self.projects: dict[str, list[str]] = {
            name: sorted({f.version for f in files}, key=Version)
            for name, files in sorted(self.by_project.items())}

    def _bump(self, project: str) -> None:
        self.last_serial += 1
        self.serial_of[project] = self.last_serial

    def _synthetic(self, filename: str, project: str, version: str,
                   requires: tuple[str, ...] | None = None) -> IndexFile:
        path = self.files_dir / filename
        path.write_bytes(f"synthetic {filename}\n".encode())
        f = _index_file(path, project, version, None)
        if requires is None:
            return f
        metadata = "".join([f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n",
                            *(f"Requires-Dist: {r}\n" for r in requires)]).encode()
        (self.files_dir / f"{filename}.metadata").write_bytes(metadata)
        return replace(f, metadata_sha256=hashlib.sha256(metadata).hexdigest())

    def add_release(self, name: str, version: str, sdist: bool = True,
                    wheels: tuple[str, ...] = (),
                    requires: tuple[str, ...] | None = None) -> None:
        """Publish ``version`` of ``name`` (any spelling; a new project is listed under it):
        an sdist and/or wheels with the given tags (e.g. ``py3-none-any``). ``requires``:
        the files' core metadata (PEP 658) is served, with these ``Requires-Dist``."""
        project = canonicalize_name(name)
        stem = f"{project.replace('-', '_')}-{version}"
        with self.lock:
            if project not in self.by_project and name != project:
                self.display[project] = name
            new = ([self._synthetic(f"{stem}.tar.gz", project, version, requires)]
                   if sdist else [])
            new += [self._synthetic(f"{stem}-{tag}.whl", project, version, requires)
                    for tag in wheels]
            self.files += new
            self._reindex()
            self._bump(project)

    def _set_yanked(self, name: str, version: str, yanked: bool | str) -> None:
        project = canonicalize_name(name)
        with self.lock:
            self.files = [replace(f, yanked=yanked)
                          if f.project == project and f.version == version else f
                          for f in self.files]
            self._reindex()
            self._bump(project)

    def yank(self, name: str, version: str, reason: str = "") -> None:
        """Yank every file of a release (PEP 592), with a reason or none."""
        self._set_yanked(name, version, reason or True)

    def unyank(self, name: str, version: str) -> None:
        self._set_yanked(name, version, False)

    def delete_release(self, name: str, version: str) -> None:
        project = canonicalize_name(name)
        with self.lock:
            self.files = [f for f in self.files
                          if not (f.project == project and f.version == version)]
            self._reindex()
            self._bump(project)

    def delete_project(self, name: str) -> None:
        project = canonicalize_name(name)
        with self.lock:
            self.files = [f for f in self.files if f.project != project]
            self._reindex()
            self.serial_of.pop(project, None)
            self.last_serial += 1

    def respell(self, name: str) -> None:
        """List the project under another spelling of its name (as a rename that only
        changes case or punctuation does on PyPI)."""
        project = canonicalize_name(name)
        with self.lock:
            self.display[project] = name
            self._bump(project)

    def fail_next(self, count: int, status: int = 429, retry_after: str | None = "1") -> None:
        """Answer the next ``count`` requests with ``status`` (and Retry-After)."""
        with self.lock:
            self.failures += [(status, retry_after)] * count

    @property
    def requests(self) -> list[str]:
        """The request lines served so far (for debugging tests)."""
        return self._server.requests

    def file_url(self, f: IndexFile) -> str:
        return f"{self.base_url}/files/{f.filename}"

    def root_json(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"api-version": "1.1"}
        projects = []
        for name in self.projects:
            entry: dict[str, Any] = {"name": self.display.get(name, name)}
            if self.serials:
                entry["_last-serial"] = self.serial_of[name]
            projects.append(entry)
        if self.serials:
            meta["_last-serial"] = self.last_serial
        return {"meta": meta, "projects": projects}

    def root_html(self) -> str:
        links = "".join(f'<a href="/simple/{name}/">{html.escape(self.display.get(name, name))}'
                        '</a>\n' for name in self.projects)
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
            if f.metadata_sha256:
                entry["core-metadata"] = {"sha256": f.metadata_sha256}
            files.append(entry)
        meta: dict[str, Any] = {"api-version": "1.1"}
        if self.serials:
            meta["_last-serial"] = self.serial_of[name]
        return {"meta": meta, "name": name, "files": files, "versions": self.projects[name]}

    def project_html(self, name: str) -> str:
        links = []
        for f in self.by_project[name]:
            attrs = f'href="{html.escape(self.file_url(f))}#sha256={f.sha256}"'
            if f.requires_python:
                attrs += f' data-requires-python="{html.escape(f.requires_python)}"'
            if f.yanked:
                reason = f.yanked if isinstance(f.yanked, str) else ""
                attrs += f' data-yanked="{html.escape(reason)}"'
            if f.metadata_sha256:
                attrs += f' data-core-metadata="sha256={f.metadata_sha256}"'
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
