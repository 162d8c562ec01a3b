"""A throwaway PostgreSQL cluster: its own data directory, port and socket.

PostgreSQL refuses to run as root, so the cluster runs as the ``postgres``
user (created by Debian's postgresql package). Local socket connections are
trusted (the harness's superuser); TCP connections need scram-sha-256, as in
production, so builder roles log in with passwords.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg2
from psycopg2 import sql

from pinwheel import schema

from .ports import free_port, wait_for_port


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found: run `make test-deps`")
    return Path(found[-1]).parent


def _as_postgres(args: list[str]) -> subprocess.CompletedProcess[str]:
    cmd = args if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True)


class PostgresCluster:
    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="pinwheel-pg-"))
        self.data = self.base / "data"
        self.socket_dir = self.base / "run"
        self.port = free_port()
        self.bindir = _bindir()

    def start(self) -> None:
        self.socket_dir.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres", "postgres")
            shutil.chown(self.socket_dir, "postgres", "postgres")
        os.chmod(self.base, 0o755)
        _as_postgres([str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                      "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                      "--locale=C.UTF-8"])
        _as_postgres([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-w", "-l",
                      str(self.base / "server.log"), "-o",
                      f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 "
                      "-c fsync=off -c max_connections=200", "start"])
        wait_for_port(self.port, what="PostgreSQL")

    def stop(self, mode: str = "fast") -> None:
        _as_postgres([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-w", "-m", mode,
                      "stop"])

    def restart(self) -> None:
        # -l: the new server's output goes to the log, not into this call's pipe
        # (which would then never reach its end).
        _as_postgres([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-w", "-m", "fast",
                      "-l", str(self.base / "server.log"), "-o",
                      f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 "
                      "-c fsync=off -c max_connections=200", "restart"])

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    def admin_dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.socket_dir} port={self.port} user=postgres dbname={dbname}"

    def tcp_dsn(self, user: str, password: str, dbname: str) -> str:
        return (f"host=127.0.0.1 port={self.port} user={user} password={password} "
                f"dbname={dbname}")

    def admin(self, dbname: str = "postgres"):  # type: ignore[no-untyped-def]
        conn = psycopg2.connect(self.admin_dsn(dbname))
        conn.autocommit = True
        return conn

    def query(self, dbname: str, query: str, params: tuple = ()) -> list[tuple]:
        """Run one statement as the superuser in the pinwheel schema; its rows, if any."""
        conn = self.admin(dbname)
        try:
            with conn.cursor() as cur:
                cur.execute("SET search_path = pinwheel")
                cur.execute(query, params)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def create_database(self, name: str, template: str | None = None) -> None:
        conn = self.admin()
        with conn.cursor() as cur:
            if template:
                cur.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(template)))
            else:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        conn.close()
        conn = self.admin(name)
        schema.upgrade(conn)
        conn.close()

    def drop_database(self, name: str) -> None:
        conn = self.admin()
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))
        conn.close()

    def create_login(self, dbname: str, role: str, group: str, password: str) -> str:
        """A login role in a Pinwheel group; returns its TCP DSN for ``dbname``."""
        conn = self.admin(dbname)
        schema.create_login(conn, role, group, password)
        conn.close()
        return self.tcp_dsn(role, password, dbname)
