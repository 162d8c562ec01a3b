#!/usr/bin/env python3
"""The index benchmark: Pinwheel's index writer and nginx beside dumb-pypi and pypiserver.

One run starts a throwaway PostgreSQL cluster (``tests/harness/postgres.py``)
and nginx with the master role's site (``tests/harness/nginx.py``), and measures:

1. **Republishing one project as the catalogue grows.** A synthetic catalogue
   (``--files-per-project`` wheels per project: versions 1.0, 1.1, ... each
   built for cp311 on x86-64 and on armv7l, a build log each) is written into
   the database with set-based SQL, then grown through ``--sizes`` projects.
   At each size, ``--repeat`` projects picked at random get one new published
   wheel each and ``index.write_project`` rewrites their pages, as the ingest
   does after a build. Timed: ``write_project`` alone (the ingest's cost per
   published build); also a new project (``write_project`` + ``write_root``).
   dumb-pypi's incremental rebuild (``--previous-package-list-json``) of one
   changed project is timed at the same sizes.
2. **Full generation** at the largest size: Pinwheel's ``index.rebuild`` (every
   project's Simple API page in HTML and JSON and its project page in HTML and
   JSON, read from PostgreSQL) into empty ``simple/`` and ``project/``, beside
   dumb-pypi 1.15 generating its index from the same catalogue (exported as its
   JSON-lines package list, not timed): wall time, CPU time and disk used.
3. **Serving.** ``pip download`` of the same 20 projects (real wheels, three
   releases each) from Pinwheel's nginx and from pypiserver (on waitress)
   serving the same files, alternating, fresh download directory and no cache
   each time; then ``wrk`` requests/s on project pages and Simple API pages of
   the big catalogue (random projects), and on the 20-project pages of both
   servers.

Everything runs on this one machine: the clients, nginx, PostgreSQL and the
other helpers' work share its cores (the load average is recorded).

Results go to ``bench/results/index-*.json`` and to the index section of
``docs/benchmarks.md`` (between its markers; other sections are left alone).

    .cache/bench-venv/bin/python bench/index_bench.py              # 100,000 projects
    .cache/bench-venv/bin/python bench/index_bench.py --projects 20000 --sizes 1000,10000,20000
    .cache/bench-venv/bin/python bench/index_bench.py --quick      # a smoke run, no docs
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import io
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from benchdocs import write_section
from machine import cpu_model, ram_gib  # bench/machine.py (this script's directory)

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
DOCS = REPO / "docs" / "benchmarks.md"
MARK_START = "<!-- bench:index:start -->"
MARK_END = "<!-- bench:index:end -->"
BIN = Path(sys.executable).parent
DB = "pinwheel_index_bench"
PIP_DB = "pinwheel_pip_bench"
TARGETS = ("linux_x86_64", "linux_armv7l")  # t = 0, 1; all cp311
JSON_ACCEPT = "application/vnd.pypi.simple.v1+json"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ config


@dataclass
class Config:
    projects: int
    files_per_project: int
    sizes: list[int]
    full_size: int
    repeat: int
    new_projects: int
    dumb_pypi: bool
    dumb_repeat: int
    serving: bool
    pip_projects: int
    pip_repeat: int
    wrk_seconds: int
    wrk_connections: int
    docs: Path | None
    quick: bool
    command: str = ""


def parse_args(argv: Sequence[str] | None = None) -> Config:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--projects", type=int, default=100_000,
                   help="projects in the full catalogue (default 100000)")
    p.add_argument("--files-per-project", type=int, default=10,
                   help="published wheels per project (default 10: 1,000,000 files)")
    p.add_argument("--sizes", default="1000,10000,100000",
                   help="catalogue sizes at which republishing is timed (comma-separated; "
                        "capped at --projects, which is always the last)")
    p.add_argument("--full-size", type=int, default=None,
                   help="the size at which the full generation (Pinwheel and dumb-pypi) runs "
                        "(default: --projects). Beyond it the catalogue grows in the database "
                        "only: no pages are written for the projects added, republishing is "
                        "timed on projects that have pages, dumb-pypi is not run")
    p.add_argument("--repeat", type=int, default=30,
                   help="republished projects timed at each size (default 30)")
    p.add_argument("--new-projects", type=int, default=5,
                   help="new projects published (and timed) at each size (default 5)")
    p.add_argument("--no-dumb-pypi", dest="dumb_pypi", action="store_false",
                   help="do not run dumb-pypi")
    p.add_argument("--dumb-repeat", type=int, default=3,
                   help="dumb-pypi incremental rebuilds timed at each size (default 3)")
    p.add_argument("--no-serving", dest="serving", action="store_false",
                   help="skip pip download and wrk")
    p.add_argument("--pip-projects", type=int, default=20)
    p.add_argument("--pip-repeat", type=int, default=5)
    p.add_argument("--wrk-seconds", type=int, default=10)
    p.add_argument("--wrk-connections", type=int, default=16)
    p.add_argument("--docs", type=Path, default=DOCS,
                   help="write the results into this file's index section")
    p.add_argument("--no-docs", dest="docs", action="store_const", const=None)
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 2,000 projects, few repeats, no docs")
    a = p.parse_args(argv)
    if a.quick:
        a.projects, a.sizes, a.repeat, a.new_projects = 2000, "200,2000", 5, 2
        a.dumb_repeat, a.pip_repeat, a.wrk_seconds, a.docs = 1, 2, 3, None
    full_size = min(a.full_size or a.projects, a.projects)
    sizes = sorted({min(int(s), a.projects) for s in a.sizes.split(",") if s.strip()}
                   | {a.projects, full_size})
    if a.projects < 1 or a.files_per_project < 1 or sizes[0] < 1:
        p.error("--projects, --files-per-project and --sizes must be positive")
    if a.repeat + a.new_projects > sizes[0]:
        p.error("--repeat + --new-projects must not exceed the smallest size")
    return Config(a.projects, a.files_per_project, sizes, full_size, a.repeat, a.new_projects,
                  a.dumb_pypi, a.dumb_repeat, a.serving, a.pip_projects, a.pip_repeat,
                  a.wrk_seconds, a.wrk_connections, a.docs, a.quick,
                  "python bench/index_bench.py " + " ".join(argv or sys.argv[1:]))


# ----------------------------------------------------------------- helpers


def name_of(i: int) -> str:
    return f"proj-{i:06d}"


def load() -> str:
    with open("/proc/loadavg", encoding="utf-8") as f:
        return " ".join(f.read().split()[:3])


def cpu_seconds() -> float:
    """CPU time of this process and its waited-for children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def cluster_cpu_seconds(data_dir: Path) -> float:
    """CPU time of every PostgreSQL process of the cluster (postmaster and children)."""
    tick = os.sysconf("SC_CLK_TCK")
    pid = int((data_dir / "postmaster.pid").read_text().split()[0])
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if int(entry) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


@dataclass
class Disk:
    files: int = 0
    dirs: int = 0
    apparent: int = 0   # bytes of content
    allocated: int = 0  # bytes of blocks on this file system

    def add(self, other: Disk) -> Disk:
        return Disk(self.files + other.files, self.dirs + other.dirs,
                    self.apparent + other.apparent, self.allocated + other.allocated)


def disk_usage(path: Path) -> Disk:
    d = Disk()
    for root, _dirs, files in os.walk(path):
        d.dirs += 1
        d.allocated += os.lstat(root).st_blocks * 512
        for name in files:
            st = os.lstat(os.path.join(root, name))
            d.files += 1
            d.apparent += st.st_size
            d.allocated += st.st_blocks * 512
    return d


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------- the synthetic catalogue

_SEED_SQL = """
INSERT INTO packages (package, display_name)
SELECT 'proj-' || lpad(i::text, 6, '0'), 'Proj_' || lpad(i::text, 6, '0')
  FROM generate_series(%(first)s, %(last)s - 1) i;

INSERT INTO versions (package, version, released, has_sdist, requires_python)
SELECT 'proj-' || lpad(i::text, 6, '0'), '1.' || v,
       timestamptz '2025-01-01' + (i * 10 + v) * interval '1 minute', true, '>=3.8'
  FROM generate_series(%(first)s, %(last)s - 1) i,
       generate_series(0, (%(k)s + 1) / 2 - 1) v;

INSERT INTO builds (job_id, package, version, abi, platform, status, attempts, started_at,
                    finished_at, duration, log_name, log_size, log_sha256, ingest_state,
                    ingested_at)
SELECT 0, 'proj-' || lpad(i::text, 6, '0'), '1.' || (f / 2), 'cp311',
       (ARRAY['linux_x86_64', 'linux_armv7l'])[f %% 2 + 1], 'success', 1,
       timestamptz '2026-01-01', timestamptz '2026-01-01' + interval '42 s',
       interval '42 s', 'job.log.gz', 1000, repeat('0', 64), 'done', now()
  FROM generate_series(%(first)s, %(last)s - 1) i, generate_series(0, %(k)s - 1) f;

UPDATE builds SET log_path = 'logs/' || build_id || '.log.gz'
 WHERE log_path IS NULL AND package >= %(first_name)s AND package < %(last_name)s;

INSERT INTO files (build_id, filename, size, sha256, state, package, version, python_tag,
                   abi_tag, platform_tag, requires_python, metadata_sha256, published_at)
SELECT b.build_id,
       replace(b.package, '-', '_') || '-' || b.version || '-cp311-cp311-' || b.platform
           || '.whl',
       50000 + b.build_id %% 100000, md5('w' || b.build_id) || md5('x' || b.build_id),
       'published', b.package, b.version, 'cp311', 'cp311', b.platform, '>=3.8',
       md5('m' || b.build_id) || md5('n' || b.build_id),
       timestamptz '2026-01-01' + b.build_id * interval '1 second'
  FROM builds b
 WHERE b.package >= %(first_name)s AND b.package < %(last_name)s;
"""


def metadata_text(package: str, ver: str) -> bytes:
    display = package.replace("proj-", "Proj_")
    return (f"Metadata-Version: 2.1\nName: {display}\nVersion: {ver}\n"
            f"Summary: {display}, a synthetic project of the index benchmark\n"
            "Requires-Python: >=3.8\n\n"
            + f"{display} does nothing. This paragraph stands for a README.\n" * 12
            ).encode()


class Catalogue:
    """The synthetic catalogue: database rows plus the newest wheel's .metadata file."""

    def __init__(self, pg: Any, www_root: Path, files_per_project: int) -> None:
        from pinwheel import db
        from pinwheel.schema import MASTER_GROUP
        self.pg = pg
        self.www = www_root
        self.k = files_per_project
        self.size = 0
        pg.create_database(DB)
        pg.query(DB, "INSERT INTO targets (abi, platform) VALUES "
                     "('cp311', 'linux_x86_64'), ('cp311', 'linux_armv7l')")
        dsn = pg.create_login(DB, "bench_master", MASTER_GROUP, "bench-master-pw")
        self.conn = db.connect(dsn)
        self.extra = 0  # republished files added so far

    def newest(self, i: int) -> tuple[str, str]:
        ver = f"1.{(self.k + 1) // 2 - 1}"
        return ver, f"{name_of(i).replace('-', '_')}-{ver}-cp311-cp311-linux_x86_64.whl"

    def grow(self, size: int) -> float:
        """Add projects up to ``size``; returns the seconds the SQL took."""
        first, last = self.size, size
        t0 = time.perf_counter()
        conn = self.pg.admin(DB)
        with conn.cursor() as cur:
            cur.execute("SET search_path = pinwheel")
            cur.execute(_SEED_SQL, {"first": first, "last": last, "k": self.k,
                                    "first_name": name_of(first), "last_name": name_of(last)})
            cur.execute("ANALYZE")
        conn.close()
        seconds = time.perf_counter() - t0
        packages = self.www / "packages"
        for i in range(first, last):
            ver, wheel = self.newest(i)
            d = packages / name_of(i)
            d.mkdir(mode=0o755, exist_ok=True)
            (d / f"{wheel}.metadata").write_bytes(metadata_text(name_of(i), ver))
        self.size = size
        return seconds

    def publish_one(self, i: int) -> str:
        """One more published wheel for project ``i`` (a new release), as ingest leaves it."""
        package = name_of(i)
        self.extra += 1
        ver = f"2.{self.extra}"
        wheel = f"{package.replace('-', '_')}-{ver}-cp311-cp311-linux_x86_64.whl"
        meta = metadata_text(package, ver)
        (self.www / "packages" / package / f"{wheel}.metadata").write_bytes(meta)
        self.pg.query(DB, """
            WITH v AS (INSERT INTO versions (package, version, released, has_sdist)
                       VALUES (%(p)s, %(v)s, now(), true)),
                 b AS (INSERT INTO builds (job_id, package, version, abi, platform, status,
                                           attempts, finished_at, duration, log_path,
                                           ingest_state)
                       VALUES (0, %(p)s, %(v)s, 'cp311', 'linux_x86_64', 'success', 1, now(),
                               interval '42 s', 'logs/0.log.gz', 'done')
                       RETURNING build_id)
            INSERT INTO files (build_id, filename, size, sha256, state, package, version,
                               python_tag, abi_tag, platform_tag, metadata_sha256, published_at)
            SELECT build_id, %(w)s, 12345, md5(%(w)s) || md5(%(w)s), 'published', %(p)s, %(v)s,
                   'cp311', 'cp311', 'linux_x86_64', %(m)s, now() FROM b""",
            {"p": package, "v": ver, "w": wheel, "m": hashlib.sha256(meta).hexdigest()})
        return package

    def export_dumb_pypi(self, path: Path) -> float:
        """The published files as dumb-pypi's JSON-lines package list; returns seconds."""
        t0 = time.perf_counter()
        conn = self.pg.admin(DB)
        conn.autocommit = False  # a server-side cursor lives in a transaction
        with conn.cursor(name="export") as cur, open(path, "w", encoding="utf-8") as out:
            cur.itersize = 50_000
            cur.execute("SELECT filename, sha256, requires_python, metadata_sha256, "
                        "extract(epoch FROM published_at)::bigint "
                        "FROM pinwheel.files WHERE state = 'published' ORDER BY file_id")
            for filename, sha, requires, meta, when in cur:
                entry = {"filename": filename, "hash": f"sha256={sha}",
                         "upload_timestamp": when, "uploaded_by": "pinwheel",
                         "core_metadata": f"sha256={meta}"}
                if requires:
                    entry["requires_python"] = requires
                out.write(json.dumps(entry) + "\n")
        conn.close()
        return time.perf_counter() - t0


def dumb_pypi(package_list: Path, out: Path, previous: Path | None = None) -> dict[str, float]:
    cmd = [str(BIN / "dumb-pypi"), "--package-list-json", str(package_list),
           "--packages-url", "../../packages/", "--output-dir", str(out)]
    if previous is not None:
        cmd += ["--previous-package-list-json", str(previous)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, "max_rss_mib": after.ru_maxrss / 1024}


# ------------------------------------------------------ 1 + 2: generation


@dataclass
class SizeResult:
    projects: int
    files: int
    seed_seconds: float
    pages_seconds: float             # writing the pages of the projects added at this size
    republish_ms: list[float] = field(default_factory=list)
    new_project_ms: list[float] = field(default_factory=list)
    dumb_incremental_s: list[float] = field(default_factory=list)
    load: str = ""


@dataclass
class FullResult:
    projects: int
    files: int
    pinwheel_wall: float
    pinwheel_cpu: float             # the writer's own process
    postgres_cpu: float             # the cluster, meanwhile
    pinwheel_disk: Disk
    dumb_wall: float | None = None
    dumb_cpu: float | None = None
    dumb_rss_mib: float | None = None
    dumb_disk: Disk | None = None
    export_seconds: float | None = None
    load_before: str = ""
    load_after: str = ""


def generation(cfg: Config, pg: Any, www: Path, work: Path
               ) -> tuple[list[SizeResult], FullResult | None]:
    from pinwheel import index
    options = index.IndexOptions(index_url="http://pinwheel.example/simple/")
    cat = Catalogue(pg, www, cfg.files_per_project)
    rng = random.Random(4)
    sizes: list[SizeResult] = []
    full: FullResult | None = None
    dumb_out = work / "dumb-pypi"
    for size in cfg.sizes:
        first = cat.size
        log(f"catalogue: adding projects {first:,}..{size:,} "
            f"({(size - first) * cfg.files_per_project:,} files)")
        seed = cat.grow(size)
        t0 = time.perf_counter()
        paged = min(size, cfg.full_size)  # projects 0..paged-1 have pages
        if size > cfg.full_size:
            log(f"  beyond --full-size {cfg.full_size:,}: no pages written for these")
        elif size == cfg.full_size:
            # The full generation: every page from nothing, beside dumb-pypi.
            for sub in ("simple", "project"):
                shutil.rmtree(www / sub)
                (www / sub).mkdir(mode=0o755)
            log(f"full generation of {size:,} projects by Pinwheel (load {load()})")
            full = FullResult(size, size * cfg.files_per_project, 0, 0, 0, Disk(),
                              load_before=load())
            cpu0, pg0 = cpu_seconds(), cluster_cpu_seconds(pg.data)
            t0 = time.perf_counter()
            index.rebuild(cat.conn, www, options)
            full.pinwheel_wall = time.perf_counter() - t0
            full.pinwheel_cpu = cpu_seconds() - cpu0
            full.postgres_cpu = cluster_cpu_seconds(pg.data) - pg0
            full.load_after = load()
            full.pinwheel_disk = disk_usage(www / "simple").add(disk_usage(www / "project"))
            log(f"  Pinwheel: {full.pinwheel_wall:.1f} s, {full.pinwheel_disk}")
            pages = full.pinwheel_wall
        else:
            for i in range(first, size):
                index.write_project(cat.conn, www, name_of(i), options)
            index.write_root(cat.conn, www)
            pages = time.perf_counter() - t0
        result = SizeResult(size, size * cfg.files_per_project, seed, pages, load=load())
        listing = work / "packages.jsonl"
        dumb = cfg.dumb_pypi and size <= cfg.full_size
        if dumb and size == cfg.full_size:
            full.export_seconds = cat.export_dumb_pypi(listing)
            shutil.rmtree(dumb_out, ignore_errors=True)
            log(f"full generation of {size:,} projects by dumb-pypi (load {load()})")
            run = dumb_pypi(listing, dumb_out)
            full.dumb_wall, full.dumb_cpu = run["wall"], run["cpu"]
            full.dumb_rss_mib = run["max_rss_mib"]
            full.dumb_disk = disk_usage(dumb_out)
            log(f"  dumb-pypi: {run['wall']:.1f} s, {full.dumb_disk}")
        for i in rng.sample(range(paged), cfg.repeat):
            package = cat.publish_one(i)
            t0 = time.perf_counter()
            index.write_project(cat.conn, www, package, options)
            result.republish_ms.append((time.perf_counter() - t0) * 1000)
        for _ in range(cfg.new_projects):
            n = cat.size
            cat.grow(n + 1)
            t0 = time.perf_counter()
            index.write_project(cat.conn, www, name_of(n), options)
            index.write_root(cat.conn, www)
            result.new_project_ms.append((time.perf_counter() - t0) * 1000)
        if dumb:
            # dumb-pypi's incremental mode, one republished project per rebuild, from its
            # output for the catalogue as it is now (made untimed: in full, or at the largest
            # size by catching up from the full generation above).
            previous = work / "previous.jsonl"
            cat.export_dumb_pypi(previous)
            if size == cfg.full_size:
                dumb_pypi(previous, dumb_out, listing)
            else:
                shutil.rmtree(dumb_out, ignore_errors=True)
                dumb_pypi(previous, dumb_out)
            for _ in range(cfg.dumb_repeat):
                cat.publish_one(rng.randrange(size))
                cat.export_dumb_pypi(listing)
                result.dumb_incremental_s.append(dumb_pypi(listing, dumb_out, previous)["wall"])
                listing.replace(previous)
            previous.unlink()
        log(f"size {size:,}: republish median {statistics.median(result.republish_ms):.1f} ms, "
            f"p90 {pct(result.republish_ms, 0.9):.1f} ms; new project median "
            f"{statistics.median(result.new_project_ms or [0]):.1f} ms; dumb-pypi incremental "
            f"{[round(s, 2) for s in result.dumb_incremental_s]} s")
        sizes.append(result)
    shutil.rmtree(dumb_out, ignore_errors=True)
    cat.conn.close()
    return sizes, full


# ---------------------------------------------------------- 3: serving


def make_wheel(dest: Path, package: str, ver: str, payload: int) -> tuple[str, bytes, bytes]:
    """A small, valid pure-Python wheel; returns its name, its bytes and its METADATA."""
    dist = package.replace("-", "_")
    name = f"{dist}-{ver}-py3-none-any.whl"
    meta = (f"Metadata-Version: 2.1\nName: {package}\nVersion: {ver}\n"
            f"Summary: benchmark project {package}\n").encode()
    members = {
        f"{dist}/__init__.py": b"DATA = %r\n" % random.Random(name).randbytes(payload).hex(),
        f"{dist}-{ver}.dist-info/METADATA": meta,
        f"{dist}-{ver}.dist-info/WHEEL":
            b"Wheel-Version: 1.0\nGenerator: bench\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(
        f"{n},sha256={_b64(hashlib.sha256(d).digest())},{len(d)}\n" for n, d in members.items())
    record += f"{dist}-{ver}.dist-info/RECORD,,\n"
    members[f"{dist}-{ver}.dist-info/RECORD"] = record.encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for n, d in members.items():
            zf.writestr(n, d)
    data = buf.getvalue()
    (dest / name).write_bytes(data)
    return name, data, meta


def _b64(digest: bytes) -> str:
    import base64
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def pip_catalogue(cfg: Config, pg: Any, www: Path, flat: Path) -> list[str]:
    """``cfg.pip_projects`` projects of three releases, published into ``www`` through the
    index writer and copied flat into ``flat`` for pypiserver."""
    from pinwheel import db, index
    from pinwheel.schema import MASTER_GROUP
    pg.create_database(PIP_DB)
    pg.query(PIP_DB, "INSERT INTO targets (abi, platform) VALUES ('cp311', 'linux_x86_64')")
    names = [f"bench-dl-{i:02d}" for i in range(cfg.pip_projects)]
    for package in names:
        d = www / "packages" / package
        d.mkdir(mode=0o755)
        for ver in ("1.0", "1.1", "2.0"):
            wheel, data, meta = make_wheel(d, package, ver, 20_000)
            (d / f"{wheel}.metadata").write_bytes(meta)
            shutil.copy(d / wheel, flat / wheel)
            pg.query(PIP_DB, """
                INSERT INTO packages (package, display_name) VALUES (%(p)s, %(p)s)
                    ON CONFLICT DO NOTHING;
                INSERT INTO versions (package, version, has_sdist) VALUES (%(p)s, %(v)s, true);
                WITH b AS (INSERT INTO builds (job_id, package, version, abi, platform, status,
                                               attempts, ingest_state)
                           VALUES (0, %(p)s, %(v)s, 'cp311', 'linux_x86_64', 'success', 1,
                                   'done') RETURNING build_id)
                INSERT INTO files (build_id, filename, size, sha256, state, package, version,
                                   python_tag, abi_tag, platform_tag, metadata_sha256,
                                   published_at)
                SELECT build_id, %(w)s, %(n)s, %(s)s, 'published', %(p)s, %(v)s, 'py3',
                       'none', 'any', %(m)s, now() FROM b""",
                {"p": package, "v": ver, "w": wheel, "n": len(data),
                 "s": hashlib.sha256(data).hexdigest(), "m": hashlib.sha256(meta).hexdigest()})
    conn = db.connect(pg.create_login(PIP_DB, "bench_pip", MASTER_GROUP, "bench-pip-pw"))
    index.rebuild(conn, www)
    conn.close()
    return names


@contextlib.contextmanager
def pypiserver(flat: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([str(BIN / "pypi-server"), "run", "-p", str(port), "-i", "127.0.0.1",
                             "-a", ".", "-P", ".", "--disable-fallback", "--log-stream", "none",
                             str(flat)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("pypiserver did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def pip_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    env.update(PIP_CONFIG_FILE="/dev/null", PIP_NO_CACHE_DIR="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1", HOME=str(home))
    return env


def pip_download(index_url: str, names: list[str], work: Path) -> float:
    dest = Path(tempfile.mkdtemp(dir=work, prefix="dl-"))
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                           "-d", str(dest), "--index-url", index_url, *names],
                          env=pip_env(work), capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"pip download from {index_url} failed:\n{done.stderr}")
    got = sorted(os.listdir(dest))
    if len(got) != len(names) or not all(n.endswith("-2.0-py3-none-any.whl") for n in got):
        raise RuntimeError(f"pip downloaded {got}")
    shutil.rmtree(dest)
    return seconds


_WRK_SCRIPT = """
math.randomseed(%(seed)d)
local n = %(n)d
local headers = %(headers)s
request = function()
  return wrk.format("GET", string.format(%(pattern)r, math.random(0, n - 1)), headers)
end
"""


def wrk(url: str, pattern: str, n: int, cfg: Config, work: Path,
        headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Requests/s and latency of GETs of ``pattern % random(0..n-1)``."""
    lua = "{" + ", ".join(f'["{k}"] = "{v}"' for k, v in (headers or {}).items()) + "}"
    script = work / "wrk.lua"
    script.write_text(_WRK_SCRIPT % {"seed": 7, "n": n, "headers": lua,
                                     "pattern": pattern.replace("'", "")})
    done = subprocess.run(["wrk", "-t2", f"-c{cfg.wrk_connections}", f"-d{cfg.wrk_seconds}s",
                           "--latency", "-s", str(script), url],
                          capture_output=True, text=True, check=True)
    out = done.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.MULTILINE)  # the latency distribution
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    transfer = re.search(r"Transfer/sec:\s+(\S+)", out)
    return {"rps": rps, "p50": p50.group(1) if p50 else "", "p99": p99.group(1) if p99 else "",
            "non2xx": int(errors.group(1)) if errors else 0,
            "transfer": transfer.group(1) if transfer else "", "raw": out}


@dataclass
class ServingResult:
    pip_nginx: list[float] = field(default_factory=list)
    pip_pypiserver: list[float] = field(default_factory=list)
    wrk: dict[str, dict[str, Any]] = field(default_factory=dict)


def serving(cfg: Config, pg: Any, big: Any, work: Path, big_projects: int) -> ServingResult:
    from harness.nginx import NginxServer
    result = ServingResult()
    small = NginxServer()
    small.start()
    flat = work / "flat"
    flat.mkdir()
    try:
        names = pip_catalogue(cfg, pg, small.www_root, flat)
        with pypiserver(flat) as pypi_url:
            log(f"pip download of {len(names)} projects, {cfg.pip_repeat} times from each")
            pip_download(f"{small.url}/simple/", names, work)  # warm both up
            pip_download(f"{pypi_url}/simple/", names, work)
            for _ in range(cfg.pip_repeat):
                result.pip_nginx.append(pip_download(f"{small.url}/simple/", names, work))
                result.pip_pypiserver.append(pip_download(f"{pypi_url}/simple/", names, work))
            log(f"  nginx median {statistics.median(result.pip_nginx):.2f} s, pypiserver "
                f"{statistics.median(result.pip_pypiserver):.2f} s")
            runs = {
                "big: /project/<p>/": (big.url, "/project/proj-%06d/", big_projects, None),
                "big: /simple/<p>/ (JSON)": (big.url, "/simple/proj-%06d/", big_projects,
                                              {"Accept": JSON_ACCEPT}),
                "big: /simple/<p>/ (HTML)": (big.url, "/simple/proj-%06d/", big_projects,
                                              {"Accept": "text/html"}),
                "20: nginx /simple/<p>/ (HTML)": (small.url, "/simple/bench-dl-%02d/",
                                                  len(names), {"Accept": "text/html"}),
                "20: pypiserver /simple/<p>/": (pypi_url, "/simple/bench-dl-%02d/", len(names),
                                                {"Accept": "text/html"}),
            }
            for label, (url, pattern, n, headers) in runs.items():
                result.wrk[label] = wrk(url, pattern, n, cfg, work, headers)
                log(f"  wrk {label}: {result.wrk[label]['rps']:,.0f} req/s, "
                    f"non-2xx {result.wrk[label]['non2xx']}")
    finally:
        small.destroy()
    return result


# ------------------------------------------------------------------ report


def machine_info(pg: Any) -> dict[str, str]:
    server = pg.query("postgres", "SHOW server_version")[0][0]
    nginx = subprocess.run(["/usr/sbin/nginx", "-v"], capture_output=True, text=True).stderr
    wrk_v = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("[")[0]
    fs = subprocess.run(["df", "-T", str(RESULTS.parent)], capture_output=True,
                        text=True).stdout.splitlines()[-1].split()[1]
    versions = []
    for dist in ("dumb-pypi", "pypiserver", "waitress", "pip"):
        with contextlib.suppress(PackageNotFoundError):
            versions.append(f"{dist} {version(dist)}")
    return {
        "CPU": cpu_model(), "Cores": str(os.cpu_count()), "RAM": ram_gib(),
        "File system": f"{fs} (the temporary directory)",
        "PostgreSQL": f"{server} (throwaway cluster from tests/harness/postgres.py, fsync=off)",
        "nginx": f"{nginx.strip().split('/')[-1]} (tests/harness/nginx.py: the master role's "
                 "site, worker_processes 1)",
        "wrk": wrk_v.strip(),
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "Others": ", ".join(versions),
        "Kernel": platform.release(),
        "Date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _mib(n: int) -> str:
    return f"{n / 1024 / 1024:,.0f} MiB"


def render(cfg: Config, machine: dict[str, str], sizes: list[SizeResult],
           full: FullResult | None, serve: ServingResult | None) -> str:
    out = [MARK_START, "## Index: generation, republishing, serving", ""]
    out.append(f"Written by `bench/index_bench.py` on {machine['Date']}; re-running it "
               "replaces everything between this section's markers.")
    out += ["", "Re-run (`make bench` runs both benchmarks; this one alone, as run here):", "",
            "```sh",
            "make .cache/bench-apt.stamp .cache/bench-venv/.installed  # wrk, the venv",
            f"nice -n 10 .cache/bench-venv/bin/{cfg.command.strip()}", "```", ""]
    out += ["### Machine", "", "| | |", "| --- | --- |"]
    out += [f"| {k} | {v} |" for k, v in machine.items()]
    k = cfg.files_per_project
    out += ["", f"The synthetic catalogue: {k} published wheels per project (releases 1.0, "
            "1.1, ... each built for cp311 on linux_x86_64 and linux_armv7l, each with a "
            "build log), one `.metadata` file per project on disk (the newest wheel's, which "
            "the project page reads for its description). Written with set-based SQL "
            "straight into the tables, not through the ingest; the wheels themselves are "
            "not on disk (no generator reads them)."]
    if full is not None:
        out += ["", f"### Full generation: {full.projects:,} projects, {full.files:,} files", ""]
        out += ["| | wall time | CPU time | files | directories | disk used (blocks) | "
                "content (bytes) |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        d = full.pinwheel_disk
        out.append(f"| Pinwheel `index.rebuild` | {full.pinwheel_wall:,.0f} s | "
                   f"{full.pinwheel_cpu:,.0f} s + PostgreSQL {full.postgres_cpu:,.0f} s | "
                   f"{d.files:,} | {d.dirs:,} | {_mib(d.allocated)} | {_mib(d.apparent)} |")
        if full.dumb_disk is not None and full.dumb_wall is not None:
            dd = full.dumb_disk
            out.append(f"| dumb-pypi | {full.dumb_wall:,.0f} s | {full.dumb_cpu:,.0f} s | "
                       f"{dd.files:,} | {dd.dirs:,} | {_mib(dd.allocated)} | "
                       f"{_mib(dd.apparent)} |")
            out += ["", f"Time ratio (Pinwheel ÷ dumb-pypi, wall): "
                    f"**{full.pinwheel_wall / full.dumb_wall:.2f}**; disk ratio (blocks): "
                    f"**{d.allocated / max(dd.allocated, 1):.2f}**. dumb-pypi's peak memory: "
                    f"{full.dumb_rss_mib:,.0f} MiB. Exporting its package list from the "
                    f"database took {full.export_seconds:,.0f} s more (not counted)."]
        out += ["", f"Load average before and after Pinwheel's run: {full.load_before} → "
                f"{full.load_after} (2 cores; other helpers were running tests).", "",
                "What each writes: Pinwheel, per project, `simple/<p>/index.html` and "
                "`index.json` (Simple API 1.4: hashes, Requires-Python, core-metadata, size, "
                "upload-time, status), `project/<p>/index.html` (the grid of versions by "
                "targets with log links, files, description) and `project/<p>/json/index.json`, "
                "each directory assembled under a temporary name and renamed in, every file "
                "written to a temporary and renamed; it reads each project from PostgreSQL "
                "in one snapshot (six queries). dumb-pypi (defaults), from a package list in "
                "memory: `simple/<p>/index.html` (PEP 503 HTML only: no JSON API), "
                "`pypi/<p>/json` and `pypi/<p>/<version>/json` (PyPI's legacy JSON), a "
                "changelog, `index.html` and `packages.json`; no project pages with build "
                "states."]
    out += ["", "### Republishing one project as the catalogue grows", "",
            f"At each size, {cfg.repeat} projects picked at random each get one new published "
            "wheel (a row in `files`, its `.metadata` on disk), then `index.write_project` "
            "rewrites that project's pages: what the ingest does after each build (the root "
            "page is not rewritten: the set of projects did not change). A *new* project "
            "also rewrites the root page (`write_root`), which lists every project. dumb-pypi: "
            "its incremental mode (`--previous-package-list-json`) after one project "
            "changed.", "",
            *([f"Beyond {cfg.full_size:,} projects (the full generation's size) the catalogue "
               "grew in the database only (the time left did not allow writing every page "
               "at each size on this shared machine): the projects republished there are "
               f"among the first {cfg.full_size:,}, which have their pages, and dumb-pypi "
               "was not run.", ""] if cfg.sizes[-1] > cfg.full_size else []),
            "| projects | files | `write_project` median | p90 | max | new project median "
            "(+ root page) | dumb-pypi incremental (median) | load |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for s in sizes:
        dumb = (f"{statistics.median(s.dumb_incremental_s):,.2f} s"
                if s.dumb_incremental_s else "n/a")
        new = f"{statistics.median(s.new_project_ms):,.1f} ms" if s.new_project_ms else "n/a"
        out.append(f"| {s.projects:,} | {s.files:,} | "
                   f"{statistics.median(s.republish_ms):.1f} ms | "
                   f"{pct(s.republish_ms, 0.9):.1f} ms | {max(s.republish_ms):.1f} ms | "
                   f"{new} | {dumb} | {s.load} |")
    if serve is not None:
        nginx, pypi = serve.pip_nginx, serve.pip_pypiserver
        out += ["", f"### `pip download` of the same {cfg.pip_projects} projects", "",
                f"{cfg.pip_projects} projects of three releases each (pure wheels of about "
                "30 kB), published by Pinwheel's writer and served by nginx, and the same "
                "files in one directory served by pypiserver (`pypi-server run -a . -P . "
                "--disable-fallback`, on waitress). Each run: `pip download --no-deps` of all "
                f"{cfg.pip_projects} (the newest release of each), no cache, a fresh "
                f"directory; {len(nginx)} runs each, alternating, after one warm-up each.", "",
                "| server | median | min | max |", "| --- | ---: | ---: | ---: |",
                f"| Pinwheel (nginx) | {statistics.median(nginx):.2f} s | {min(nginx):.2f} s | "
                f"{max(nginx):.2f} s |",
                f"| pypiserver | {statistics.median(pypi):.2f} s | {min(pypi):.2f} s | "
                f"{max(pypi):.2f} s |", "",
                "pip itself (start-up, resolution) is most of both times; pip asks for JSON "
                "and gets it from nginx (PEP 691), HTML from pypiserver. It reads a wheel's "
                "`.metadata` (PEP 658) from nginx; with pypiserver it reads the wheel.", "",
                f"### nginx requests/s (`wrk -t2 -c{cfg.wrk_connections} -d{cfg.wrk_seconds}s`, "
                "random projects)", "",
                "| what | requests/s | p50 | p99 | non-2xx | transfer/s |",
                "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for label, r in serve.wrk.items():
            out.append(f"| {label} | {r['rps']:,.0f} | {r['p50']} | {r['p99']} | "
                       f"{r['non2xx']} | {r['transfer']} |")
        out += ["", f"\"big\" is the catalogue above, its {cfg.full_size:,} projects with "
                "pages (each request a random one of them, so the file cache, not one hot "
                "file, is measured); \"20\" the "
                "pip catalogue, on nginx and on pypiserver. wrk, the server and the "
                "benchmark share the 2 cores; nginx runs one worker here (the Debian default "
                "is one per core)."]
    out.append(MARK_END)
    return "\n".join(out) + "\n"


def write_docs(path: Path, section: str) -> None:
    write_section(path, MARK_START, MARK_END, section)


# -------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    sys.path.insert(0, str(REPO / "tests"))
    logging_setup()
    from harness.nginx import NginxServer
    from harness.postgres import PostgresCluster
    if cfg.serving and shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install wrk (make bench installs it)")
    pg = PostgresCluster()
    big = NginxServer()
    work = Path(tempfile.mkdtemp(prefix="pinwheel-index-bench-"))
    work.chmod(0o755)
    log(f"PostgreSQL in {pg.base}, nginx in {big.base}, work in {work}")
    pg.start()
    big.start()
    try:
        machine = machine_info(pg)
        sizes, full = generation(cfg, pg, big.www_root, work)
        serve = serving(cfg, pg, big, work, cfg.full_size) if cfg.serving else None
    finally:
        big.destroy()
        pg.destroy()
        shutil.rmtree(work, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    path = RESULTS / f"index-{stamp}{'-quick' if cfg.quick else ''}.json"
    path.write_text(json.dumps({
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "machine": machine, "sizes": [asdict(s) for s in sizes],
        "full": asdict(full) if full else None, "serving": asdict(serve) if serve else None,
    }, indent=1) + "\n", encoding="utf-8")
    log(f"results: {path.relative_to(REPO)}")
    section = render(cfg, machine, sizes, full, serve)
    print(section)
    if cfg.docs is not None:
        write_docs(cfg.docs, section)
        log(f"wrote the index section of {cfg.docs}")
    return 0


def logging_setup() -> None:
    import logging
    # The writer logs one line per removed file or missing .metadata: keep warnings only.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
