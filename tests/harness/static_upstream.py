"""A large synthetic upstream as static PEP 691 JSON files served by nginx.

For ``pinwheel import``: ``count`` projects (``pwsyn-000000`` ...), each with
one release (an sdist), written once as ``simple/<name>/index.json`` plus the
root ``simple/index.json`` with PyPI's ``_last-serial`` per project (or
without serials). nginx serves them with ETags and kept-alive connections, as
a real index would; the files themselves are never downloaded by the import.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .nginx import NGINX, TEMP_PATHS, WORKER_USER
from .ports import free_port, wait_listening

JSON_TYPE = "application/vnd.pypi.simple.v1+json"
SHA = "0" * 64


def project_name(i: int) -> str:
    return f"pwsyn-{i:06d}"


def _project_page(name: str, serial: int | None) -> bytes:
    stem = name.replace("-", "_")
    page = {"meta": {"api-version": "1.1", **({"_last-serial": serial} if serial else {})},
            "name": name, "versions": ["1.0"],
            "files": [{"filename": f"{stem}-1.0.tar.gz", "url": f"../../files/{stem}-1.0.tar.gz",
                       "hashes": {"sha256": SHA}, "size": 100, "yanked": False}]}
    return json.dumps(page, separators=(",", ":")).encode()


def write_tree(root: Path, count: int, serials: bool = True) -> None:
    """The root page and ``count`` project pages under ``root/simple``."""
    simple = root / "simple"
    simple.mkdir(parents=True, exist_ok=True)
    projects = []
    for i in range(count):
        name = project_name(i)
        serial = i + 1 if serials else None
        directory = simple / name
        os.mkdir(directory)
        fd = os.open(directory / "index.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, _project_page(name, serial))
        finally:
            os.close(fd)
        projects.append({"name": name, **({"_last-serial": serial} if serial else {})})
    meta = {"api-version": "1.1", **({"_last-serial": count} if serials else {})}
    (simple / "index.json").write_text(json.dumps({"meta": meta, "projects": projects},
                                                  separators=(",", ":")))


class StaticUpstream:
    """nginx serving a synthetic upstream of ``count`` projects at :attr:`url`."""

    def __init__(self, count: int, serials: bool = True) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="pinwheel-static-upstream-"))
        self.base.chmod(0o755)
        self.www = self.base / "www"
        self.count = count
        self.serials = serials
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/simple/"
        self.access_log = self.base / "access.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def _conf(self) -> Path:
        user = f"user {WORKER_USER} {WORKER_USER};\n" if os.geteuid() == 0 else ""
        (self.base / "temp").mkdir(exist_ok=True)
        temp = "".join(f"    {kind}_temp_path {self.base / 'temp' / kind};\n"
                       for kind in TEMP_PATHS)
        conf = self.base / "nginx.conf"
        conf.write_text(
            f"{user}worker_processes 1;\npid {self.base / 'nginx.pid'};\n"
            f"error_log {self.base / 'error.log'} warn;\n"
            "events { worker_connections 256; }\n"
            "http {\n"
            f"    access_log {self.access_log};\n"
            f"{temp}"
            "    keepalive_requests 100000;\n"
            f"    types {{ {JSON_TYPE} json; }}\n"
            f"    server {{\n        listen 127.0.0.1:{self.port};\n"
            f"        root {self.www};\n"
            "        location /simple/ { index index.json; }\n"
            "    }\n}\n")
        return conf

    def start(self) -> None:
        write_tree(self.www, self.count, self.serials)
        os.chmod(self.www, 0o755)
        conf = self._conf()
        cmd = [NGINX, "-p", f"{self.base}/", "-e", str(self.base / "error.log"),
               "-c", str(conf)]
        check = subprocess.run([*cmd, "-t"], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx configuration test failed:\n{check.stderr}")
        self._proc = subprocess.Popen([*cmd, "-g", "daemon off;"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_listening(self._proc, self.port, "nginx (static upstream)")

    def requests(self) -> int:
        """How many requests nginx has logged."""
        try:
            with self.access_log.open("rb") as f:
                return sum(1 for _ in f)
        except FileNotFoundError:
            return 0

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)
