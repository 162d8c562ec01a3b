"""nginx serving the master's static index, configured by the Ansible role's template.

The site (``roles/master/templates/nginx-site.conf.j2``, a ``server { }`` block)
is rendered with jinja2 exactly as the role installs it, then wrapped in a small
main ``nginx.conf`` of the harness's own: pid file, logs and every temp path live
in a temp dir, and nginx runs in the foreground as a subprocess. As root, the
workers run as ``www-data``, so whatever tests publish under ``www_root`` must be
world-readable (as it must be in production).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .ports import free_port, wait_listening
from .templates import render_role_template

NGINX = "/usr/sbin/nginx"
WORKER_USER = "www-data"
WWW_SUBDIRS = ("simple", "packages", "logs", "project")
PERL_MODULE = "/usr/lib/nginx/modules/ngx_http_perl_module.so"
TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def _main_conf(base: Path, site: Path) -> str:
    user = f"user {WORKER_USER} {WORKER_USER};\n" if os.geteuid() == 0 else ""
    temp = "".join(f"    {kind}_temp_path {base / 'temp' / kind};\n" for kind in TEMP_PATHS)
    return (
        f"{user}"
        # The site needs the perl module (libnginx-mod-http-perl), which Debian's
        # nginx.conf loads from modules-enabled/.
        f"load_module {PERL_MODULE};\n"
        "worker_processes 1;\n"
        f"pid {base / 'nginx.pid'};\n"
        f"error_log {base / 'error.log'} info;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        "    include /etc/nginx/mime.types;\n"
        "    default_type application/octet-stream;\n"
        # Requests the site does not log (none: the site logs all of them in JSON).
        f"    access_log {base / 'access.log'};\n"
        f"{temp}"
        f"    include {site};\n"
        "}\n"
    )


class NginxServer:
    """One nginx serving ``www_root`` on ``127.0.0.1:port`` (use :meth:`start`)."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="pinwheel-nginx-"))
        self.base.chmod(0o755)
        self.www_root = self.base / "www"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.conf = self.base / "nginx.conf"
        self.log = self.base / "error.log"
        # The site's JSON access log (the role's pinwheel_json format, docs/downloads.md).
        self.access_log = self.base / "access.json"
        self._proc: subprocess.Popen[bytes] | None = None

    def _write_config(self) -> None:
        for sub in WWW_SUBDIRS:
            (self.www_root / sub).mkdir(parents=True, exist_ok=True)
            (self.www_root / sub).chmod(0o755)
        self.www_root.chmod(0o755)
        (self.base / "temp").mkdir(exist_ok=True)
        site = self.base / "site.conf"
        site.write_text(render_role_template(
            "master", "nginx-site.conf.j2",
            master_http_port=self.port,
            master_http_address="127.0.0.1",
            master_www_root=str(self.www_root),
            master_logs_access_log=str(self.access_log),
        ))
        self.conf.write_text(_main_conf(self.base, site))

    def _nginx(self, *args: str) -> list[str]:
        return [NGINX, "-p", f"{self.base}/", "-e", str(self.log), "-c", str(self.conf), *args]

    def _fail(self, what: str, output: str = "") -> RuntimeError:
        log = self.log.read_text(errors="replace") if self.log.exists() else ""
        return RuntimeError(f"nginx {what} (config {self.conf}):\n{output}\n"
                            f"--- {self.log} ---\n{log}")

    def start(self) -> None:
        self._write_config()
        check = subprocess.run(self._nginx("-t"), capture_output=True, text=True)
        if check.returncode != 0:
            raise self._fail("configuration test failed", check.stdout + check.stderr)
        self._proc = subprocess.Popen(self._nginx("-g", "daemon off;"),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            wait_listening(self._proc, self.port, "nginx")
        except (RuntimeError, TimeoutError) as exc:
            self.stop()
            raise self._fail(f"did not start: {exc}") from exc

    def reopen_logs(self) -> None:
        """``nginx -s reopen`` (what logrotate's postrotate does: SIGUSR1 to the master)."""
        done = subprocess.run(self._nginx("-s", "reopen"), capture_output=True, text=True)
        if done.returncode != 0:
            raise self._fail("did not reopen its logs", done.stdout + done.stderr)

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
