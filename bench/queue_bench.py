#!/usr/bin/env python3
"""The queue benchmark: Pinwheel's claim → heartbeat → finish beside pgqueuer.

One run starts one throwaway PostgreSQL cluster (``tests/harness/postgres.py``)
and measures, in separate databases of that cluster:

1. Pinwheel throughput: a backlog of queued jobs (300,000 by default, refilled
   before every run), then 1, 8 and 32 concurrent builders, each a process with
   its own connection and its own builder login role (TCP, scram-sha-256),
   doing claim → heartbeat → finish through the real SECURITY DEFINER functions
   with the real client (``pinwheel.queue.BuilderQueue``). Every finish reports
   status ``success`` with one wheel file, the production hot path.
2. pgqueuer doing the same per job with its own API (``Queries.dequeue`` with a
   batch of one, ``Queries.update_heartbeat``, ``Queries.log_jobs`` 'successful')
   from the same number of consumer processes, and, as a reference that is not
   like-for-like, pgqueuer's ``QueueManager`` as it normally runs (batches of 10,
   buffered completion logging).
3. Pinwheel claim latency with a large backlog (1,000,000 queued jobs): the
   median and p99 of ``claim_job`` from one builder, each claim followed by a
   finish, plus the plan of the claim query.

Results go to ``bench/results/queue-*.json`` and (full runs) to the queue
section of ``docs/benchmarks.md``, between its markers; other sections of that
file are left alone.

Run it with the benchmark venv (see ``bench/requirements.txt``)::

    .cache/bench-venv/bin/python bench/queue_bench.py          # the real thing
    .cache/bench-venv/bin/python bench/queue_bench.py --quick  # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import multiprocessing as mp
import os
import platform
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchdocs import write_section  # bench/benchdocs.py (this script's directory)

if TYPE_CHECKING:
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Barrier

    from harness.postgres import PostgresCluster

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "benchmarks.md"
RESULTS = REPO / "bench" / "results"
MARK_START = "<!-- bench:queue:start -->"
MARK_END = "<!-- bench:queue:end -->"

ABI = "cp311"
PLATFORM = "linux_x86_64"
SHA256 = "ab" * 32
PINWHEEL_DB = "pinwheel_bench"
LATENCY_DB = "pinwheel_latency"
PGQ_DB = "pgqueuer_bench"
PGQ_ROLE = "pgq_bench"
PGQ_PASSWORD = "pgq-bench-password"  # a throwaway cluster's role
PGQ_ENTRYPOINT = "bench"
LEASE_SECONDS = 300
BARRIER_TIMEOUT = 300.0
# Extra warm-up for QueueManager runs: QueueManager.run checks the schema (a dozen catalogue
# queries) and sets up LISTEN before its first dequeue, all inside the run.
QM_STARTUP = 5.0
# Jobs are spread over packages of this many versions each.
VERSIONS_PER_PACKAGE = 1000

Result = dict[str, Any]


# ------------------------------------------------------------- configuration


@dataclass
class Config:
    backlog: int
    seconds: float
    warmup: float
    clients: list[int]
    latency_backlog: int
    latency_claims: int
    pgqueuer: bool
    qm_reference: bool
    qm_batch_size: int
    history: int
    repeat: int
    quick: bool
    docs: Path | None
    keep: bool
    render: Path | None = None


def parse_args(argv: Sequence[str] | None = None) -> Config:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true",
                   help="smoke mode: 10,000 jobs, 2 s per run, 200 claims at 20,000 queued; "
                        "does not touch docs/benchmarks.md unless --docs is given")
    p.add_argument("--seconds", type=float, help="measured seconds per run (default 20)")
    p.add_argument("--warmup", type=float,
                   help="seconds each run works before measuring starts (default 2)")
    p.add_argument("--backlog", type=int,
                   help="queued jobs at the start of every throughput run (default 300000)")
    p.add_argument("--clients", default="1,8,32",
                   help="comma-separated numbers of concurrent clients (default 1,8,32)")
    p.add_argument("--latency-backlog", type=int,
                   help="queued jobs for the claim-latency test (default 1000000)")
    p.add_argument("--latency-claims", type=int,
                   help="timed claims in the claim-latency test (default 2000)")
    p.add_argument("--no-pgqueuer", action="store_true", help="measure Pinwheel only")
    p.add_argument("--no-qm-reference", action="store_true",
                   help="skip the pgqueuer QueueManager reference runs")
    p.add_argument("--qm-batch-size", type=int, default=10,
                   help="QueueManager.run batch_size for the reference runs (its default, 10)")
    p.add_argument("--history", type=int,
                   help="finished builds (one published file each) already in Pinwheel's "
                        "databases before measuring, as in a farm in service (default 100000)")
    p.add_argument("--repeat", type=int,
                   help="run every throughput measurement this many times (interleaved) and "
                        "report the fastest, for a machine that others share "
                        "(default 2; 1 with --quick)")
    p.add_argument("--docs", type=Path,
                   help="markdown file whose queue section to (re)write "
                        "(default docs/benchmarks.md, except with --quick)")
    p.add_argument("--no-docs", action="store_true", help="write no markdown")
    p.add_argument("--keep", action="store_true",
                   help="leave the cluster running at the end and print how to reach it")
    p.add_argument("--render", type=Path, metavar="RESULTS_JSON",
                   help="measure nothing: rewrite the markdown section from a results file "
                        "this script wrote (bench/results/queue-*.json)")
    a = p.parse_args(argv)
    quick = bool(a.quick)
    docs: Path | None = a.docs if a.docs is not None else (None if quick else DOCS)
    if a.no_docs:
        docs = None
    clients = [int(c) for c in a.clients.split(",") if c.strip()]
    if not clients or min(clients) < 1:
        p.error("--clients needs positive integers")
    return Config(
        backlog=a.backlog or (10_000 if quick else 300_000),
        seconds=a.seconds or (2.0 if quick else 20.0),
        warmup=a.warmup if a.warmup is not None else (0.5 if quick else 2.0),
        clients=clients,
        latency_backlog=a.latency_backlog or (20_000 if quick else 1_000_000),
        latency_claims=a.latency_claims or (200 if quick else 2000),
        pgqueuer=not a.no_pgqueuer,
        qm_reference=not a.no_pgqueuer and not a.no_qm_reference,
        qm_batch_size=a.qm_batch_size,
        history=a.history if a.history is not None else (2_000 if quick else 100_000),
        repeat=max(1, a.repeat or (1 if quick else 2)),
        quick=quick,
        docs=docs,
        keep=bool(a.keep),
        render=a.render,
    )


# ------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile (q in 0..100) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class WindowCounter:
    """Cycles completed inside the measured window [start, end] (perf_counter), and the
    CPU time this process used over that window."""

    start: float
    end: float
    cycles: int = 0
    empty: int = 0
    latencies: list[float] = field(default_factory=list)
    cpu0: float | None = None
    cpu1: float = 0.0

    def tick(self, now: float) -> None:
        if self.cpu0 is None and now >= self.start:
            self.cpu0 = time.process_time()

    def record(self, t0: float, t1: float) -> None:
        if self.start <= t1 <= self.end:
            self.cycles += 1
            self.latencies.append(t1 - t0)

    def as_result(self) -> Result:
        self.cpu1 = time.process_time()
        cpu = self.cpu1 - self.cpu0 if self.cpu0 is not None else 0.0
        return {"cycles": self.cycles, "empty": self.empty, "latencies": self.latencies,
                "cpu": cpu, "error": None}


def _window(barrier: Barrier, warmup: float, seconds: float) -> WindowCounter:
    barrier.wait(BARRIER_TIMEOUT)
    start = time.perf_counter() + warmup
    return WindowCounter(start, start + seconds)


def _fail(barrier: Barrier, out: Queue[Result]) -> None:
    barrier.abort()
    out.put({"cycles": 0, "empty": 0, "latencies": [], "cpu": 0.0,
             "error": traceback.format_exc()})


# ------------------------------------------------- worker processes (spawned)


def pinwheel_worker(dsn: str, barrier: Barrier, out: Queue[Result], warmup: float,
                    seconds: float) -> None:
    """One builder: claim → heartbeat → finish(success, one file) until the window ends."""
    try:
        from pinwheel import db
        from pinwheel.queue import BuilderQueue, ReportedFile

        q = BuilderQueue(db.connect(dsn, application_name="queue-bench"))
        q.register(ABI, PLATFORM, "queue benchmark", platform.python_version())
        w = _window(barrier, warmup, seconds)
        while (t0 := time.perf_counter()) < w.end:
            w.tick(t0)
            started = dt.datetime.now(dt.timezone.utc)
            job = q.claim(LEASE_SECONDS)
            if job is None:
                w.empty += 1
                continue
            q.heartbeat(job, LEASE_SECONDS)
            wheel = f"{job.package}-{job.version}-cp311-cp311-{PLATFORM}.whl"
            q.finish(job, "success", started, time.perf_counter() - t0, None,
                     [ReportedFile(wheel, 123_456, SHA256)])
            w.record(t0, time.perf_counter())
        q.conn.close()
        out.put(w.as_result())
    except BaseException:
        _fail(barrier, out)


def pgqueuer_worker(dsn: str, barrier: Barrier, out: Queue[Result], warmup: float,
                    seconds: float) -> None:
    """One pgqueuer consumer doing per job what a Pinwheel builder does: three round trips."""
    try:
        import uvloop

        out.put(uvloop.run(_pgqueuer_cycles(dsn, barrier, warmup, seconds)))
    except BaseException:
        _fail(barrier, out)


async def _pgqueuer_cycles(dsn: str, barrier: Barrier, warmup: float,
                           seconds: float) -> Result:
    import uuid
    from datetime import timedelta

    import asyncpg
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.queries import EntrypointExecutionParameter, Queries
    from pgqueuer.types import QueueEntrypoint, QueueManagerId

    conn = await asyncpg.connect(dsn)
    queries = Queries(AsyncpgDriver(conn))
    entrypoints = {QueueEntrypoint(PGQ_ENTRYPOINT): EntrypointExecutionParameter(0)}
    worker_id = QueueManagerId(uuid.uuid4())
    timeout = timedelta(seconds=30)  # QueueManager.run's default heartbeat_timeout
    w = _window(barrier, warmup, seconds)
    while (t0 := time.perf_counter()) < w.end:
        w.tick(t0)
        jobs = await queries.dequeue(batch_size=1, entrypoints=entrypoints,
                                     queue_manager_id=worker_id,
                                     global_concurrency_limit=None,
                                     heartbeat_timeout=timeout)
        if not jobs:
            w.empty += 1
            continue
        await queries.update_heartbeat([jobs[0].id])
        await queries.log_jobs([(jobs[0], "successful", None)])
        w.record(t0, time.perf_counter())
    await conn.close()
    return w.as_result()


def pgqueuer_qm_worker(dsn: str, batch_size: int, barrier: Barrier, out: Queue[Result],
                       warmup: float, seconds: float) -> None:
    """One pgqueuer QueueManager as ``pgq run`` would run it, with an empty entrypoint."""
    try:
        import uvloop

        out.put(uvloop.run(_pgqueuer_qm(dsn, batch_size, barrier, warmup, seconds)))
    except BaseException:
        _fail(barrier, out)


async def _pgqueuer_qm(dsn: str, batch_size: int, barrier: Barrier, warmup: float,
                       seconds: float) -> Result:
    import asyncpg
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.models import Job
    from pgqueuer.qm import QueueManager
    from pgqueuer.queries import Queries

    conn = await asyncpg.connect(dsn)
    qm = QueueManager(Queries(AsyncpgDriver(conn)))
    done: list[float] = []

    async def work(job: Job) -> None:
        done.append(time.perf_counter())

    qm.entrypoint(PGQ_ENTRYPOINT, accepts_context=False)(work)
    w = _window(barrier, warmup, seconds)
    runner = asyncio.create_task(qm.run(batch_size=batch_size))
    await asyncio.sleep(max(0.0, w.start - time.perf_counter()))
    w.cpu0 = time.process_time()
    await asyncio.sleep(max(0.0, w.end - time.perf_counter()))
    result = w.as_result()
    qm.shutdown.set()
    await asyncio.wait_for(runner, 120)
    await conn.close()
    result["cycles"] = sum(1 for t in done if w.start <= t <= w.end)
    return result


# ------------------------------------------------------ running the clients


@dataclass
class RunResult:
    system: str
    clients: int
    seconds: float
    cycles: int
    per_second: float
    p50_ms: float
    p99_ms: float
    empty_polls: int
    backlog_at_start: int
    backlog_at_end: int
    # Average cores busy over the window: the cluster's processes, the clients, and the
    # rest of the machine (other users, the kernel's share of loopback networking).
    cores_postgres: float
    cores_clients: float
    cores_other: float
    # The claim/dequeue query's cost right after the run, before any VACUUM.
    probe_after: dict[str, float] = field(default_factory=dict)

    def cpu_us_per_cycle(self, cores: float) -> float:
        return cores * self.seconds / self.cycles * 1e6 if self.cycles else math.nan


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU-seconds the whole machine has been busy since boot (all cores)."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / CLOCK_TICKS


def _stat_fields(pid: str) -> list[str]:
    """/proc/PID/stat after the command: state (0), ppid (1), ..., utime (11), stime (12),
    cutime (13), cstime (14) -- cutime/cstime: the exited children it has reaped."""
    return Path("/proc", pid, "stat").read_text().rsplit(")", 1)[1].split()


def cluster_cpu_seconds(data_dir: Path) -> float:
    """CPU-seconds used by the postmaster and all its children, live or exited.

    A child reaped during the scan would be counted twice or not at all, so the scan is
    repeated until the postmaster's count of its reaped children stays the same across it.
    """
    postmaster = (data_dir / "postmaster.pid").read_text().split()[0]
    for _ in range(20):
        before = _stat_fields(postmaster)
        live = 0
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or entry.name == postmaster:
                continue
            try:
                rest = _stat_fields(entry.name)
            except (OSError, IndexError):
                continue
            if rest[1] == postmaster:
                live += int(rest[11]) + int(rest[12])
        after = _stat_fields(postmaster)
        if before[13:15] == after[13:15]:
            return (live + sum(int(x) for x in after[11:15])) / CLOCK_TICKS
    raise RuntimeError("PostgreSQL's processes kept exiting while their CPU time was read")


def run_clients(system: str, target: Callable[..., None], worker_args: list[tuple[Any, ...]],
                warmup: float, seconds: float, backlog: int, data_dir: Path) -> RunResult:
    """Start one process per client, release them together, add up their windows."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(worker_args) + 1)
    out: Queue[Result] = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*a, barrier, out, warmup, seconds), daemon=True)
             for a in worker_args]
    for proc in procs:
        proc.start()
    results: list[Result] = []
    # A worker that fails while connecting breaks the barrier; its traceback is in the queue.
    # The parent samples CPU time over the middle of the window, so that no client's
    # backend starts or ends in between. It raises its own priority meanwhile (the clients
    # keep theirs): on a saturated machine a scan of /proc could otherwise take seconds.
    machine0 = machine1 = cluster0 = cluster1 = t_a = 0.0
    t_b = 1.0
    margin = min(0.5, seconds / 10)
    niceness = os.getpriority(os.PRIO_PROCESS, 0)
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait(BARRIER_TIMEOUT)
        go = time.perf_counter()
        with contextlib.suppress(PermissionError):
            os.setpriority(os.PRIO_PROCESS, 0, niceness - 10)
        try:
            time.sleep(warmup + margin)
            t_a, machine0, cluster0 = (time.perf_counter(), machine_busy_seconds(),
                                       cluster_cpu_seconds(data_dir))
            time.sleep(max(0.0, go + warmup + seconds - margin - time.perf_counter()))
            t_b, machine1, cluster1 = (time.perf_counter(), machine_busy_seconds(),
                                       cluster_cpu_seconds(data_dir))
        finally:
            with contextlib.suppress(PermissionError):
                os.setpriority(os.PRIO_PROCESS, 0, niceness)
    deadline = time.monotonic() + warmup + seconds + 180
    while len(results) < len(procs) and time.monotonic() < deadline:
        try:
            results.append(out.get(timeout=5))
        except queue.Empty:
            if not any(proc.is_alive() for proc in procs) and out.empty():
                break
    for proc in procs:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
    errors = [r["error"] for r in results if r["error"]]
    if errors or len(results) < len(procs):
        detail = errors[0] if errors else f"only {len(results)} of {len(procs)} reported"
        raise RuntimeError(f"{system} with {len(procs)} clients failed:\n{detail}")
    cycles = sum(int(r["cycles"]) for r in results)
    latencies = [x for r in results for x in r["latencies"]]
    span = t_b - t_a
    machine, pg_cpu = machine1 - machine0, cluster1 - cluster0
    client_cpu = sum(float(r["cpu"]) for r in results)  # over each client's whole window
    if span < seconds / 2:  # the samples came too late to mean anything
        machine = pg_cpu = client_cpu = math.nan
    return RunResult(system=system, clients=len(procs), seconds=seconds, cycles=cycles,
                     per_second=cycles / seconds,
                     p50_ms=percentile(latencies, 50) * 1000,
                     p99_ms=percentile(latencies, 99) * 1000,
                     empty_polls=sum(int(r["empty"]) for r in results),
                     backlog_at_start=backlog, backlog_at_end=-1,
                     cores_postgres=pg_cpu / span, cores_clients=client_cpu / seconds,
                     cores_other=max(0.0, machine / span - pg_cpu / span
                                     - client_cpu / seconds)
                     if not math.isnan(machine) else math.nan)


# --------------------------------------------------------- Pinwheel's side


class PinwheelBench:
    """A Pinwheel database with a generated catalogue and builder roles."""

    def __init__(self, pg: PostgresCluster, dbname: str) -> None:
        self.pg = pg
        self.dbname = dbname
        self.next_n = 0
        pg.create_database(dbname)
        conn = pg.admin(dbname)
        with conn.cursor() as cur:
            cur.execute("INSERT INTO pinwheel.targets (abi, platform) VALUES (%s, %s)",
                        (ABI, PLATFORM))
        conn.close()

    def builder_dsn(self, i: int) -> str:
        from pinwheel.schema import BUILDER_GROUP

        name = f"bench_b{i:02d}"
        return self.pg.create_login(self.dbname, name, BUILDER_GROUP, f"pw-{name}")

    def queued(self) -> int:
        conn = self.pg.admin(self.dbname)
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pinwheel.jobs WHERE state = 'queued'")
            n = int(cur.fetchone()[0])
        conn.close()
        return n

    def seed_history(self, count: int) -> None:
        """Finished, ingested builds with one published file each, as in a farm in service.

        Without a history the builds table starts empty, and a builder session that plans
        the files → builds foreign-key check while it is tiny keeps a sequential scan of it
        for the rest of the session (until the next ANALYZE of builds).
        """
        if count <= 0:
            return
        conn = self.pg.admin(self.dbname)
        conn.autocommit = False
        params = {"per": VERSIONS_PER_PACKAGE, "last": count - 1, "abi": ABI, "sha": SHA256,
                  "plat": PLATFORM}
        with conn.cursor() as cur:
            cur.execute("SET LOCAL search_path = pinwheel")
            cur.execute("""
                INSERT INTO packages (package, display_name)
                SELECT DISTINCT 'hist-' || (n / %(per)s), 'Hist ' || (n / %(per)s)
                FROM generate_series(0, %(last)s) AS n""", params)
            cur.execute("""
                INSERT INTO versions (package, version, has_sdist, released)
                SELECT 'hist-' || (n / %(per)s), '0.' || n, true, now() - interval '1 year'
                FROM generate_series(0, %(last)s) AS n""", params)
            cur.execute("""
                INSERT INTO builds (job_id, package, version, abi, platform, status, attempts,
                                    started_at, finished_at, duration, ingest_state,
                                    ingested_at)
                SELECT -1 - n, 'hist-' || (n / %(per)s), '0.' || n, %(abi)s, %(plat)s, 'success', 1,
                       now() - make_interval(secs => n + 60), now() - make_interval(secs => n),
                       interval '60 seconds', 'done', now() - make_interval(secs => n)
                FROM generate_series(0, %(last)s) AS n""", params)
            cur.execute("""
                INSERT INTO files (build_id, filename, size, sha256, state, package, version,
                                   python_tag, abi_tag, platform_tag, metadata_sha256,
                                   published_at)
                SELECT build_id, package || '-' || version || '-cp311-cp311-' || %(plat)s
                                 || '.whl',
                       123456, %(sha)s, 'published', package, version, 'cp311', 'cp311',
                       %(plat)s, %(sha)s, finished_at
                FROM builds WHERE package LIKE 'hist-%%'""", params)
        conn.commit()
        conn.close()

    def fill(self, target: int) -> None:
        """Queue new releases (set-based, as the superuser) until ``target`` jobs are queued."""
        missing = target - self.queued()
        if missing <= 0:
            return
        first, last = self.next_n, self.next_n + missing - 1
        self.next_n += missing
        conn = self.pg.admin(self.dbname)
        conn.autocommit = False
        with conn.cursor() as cur:
            cur.execute("SET LOCAL search_path = pinwheel")
            cur.execute("""
                INSERT INTO packages (package, display_name)
                SELECT DISTINCT 'bench-' || (n / %(per)s), 'Bench ' || (n / %(per)s)
                FROM generate_series(%(first)s, %(last)s) AS n
                ON CONFLICT DO NOTHING""", {"per": VERSIONS_PER_PACKAGE, "first": first,
                                            "last": last})
            cur.execute("""
                INSERT INTO versions (package, version, has_sdist, released)
                SELECT 'bench-' || (n / %(per)s), '1.0.' || n, true, now()
                FROM generate_series(%(first)s, %(last)s) AS n""",
                        {"per": VERSIONS_PER_PACKAGE, "first": first, "last": last})
            cur.execute("""
                INSERT INTO jobs (package, version, abi, platform)
                SELECT 'bench-' || (n / %(per)s), '1.0.' || n, %(abi)s, %(plat)s
                FROM generate_series(%(first)s, %(last)s) AS n ORDER BY n""",
                        {"per": VERSIONS_PER_PACKAGE, "first": first, "last": last, "abi": ABI,
                         "plat": PLATFORM})
        conn.commit()
        conn.close()

    def settle(self) -> None:
        vacuum_and_checkpoint(self.pg, self.dbname)


def vacuum_and_checkpoint(pg: PostgresCluster, dbname: str) -> None:
    """The same treatment before every run of either system."""
    conn = pg.admin(dbname)
    with conn.cursor() as cur:
        cur.execute("VACUUM (ANALYZE)")
        cur.execute("CHECKPOINT")
    conn.close()


PGQ_DEQUEUE_QUERY = """
    SELECT id FROM pgqueuer
    WHERE entrypoint = %s AND status = 'queued' AND execute_after < now()
    ORDER BY priority DESC, id ASC
    LIMIT 1
    FOR UPDATE SKIP LOCKED"""


def probe_claim(pg: PostgresCluster, dbname: str, query: str,
                args: tuple[str, ...]) -> dict[str, float]:
    """EXPLAIN ANALYZE the claim (or dequeue) query once, in a transaction rolled back."""
    conn = pg.admin(dbname)
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + query, args)
        raw = cur.fetchone()[0]
        cur.execute("ROLLBACK")
    conn.close()
    doc = (json.loads(raw) if isinstance(raw, str) else raw)[0]
    plan = doc["Plan"]
    return {"execution_ms": float(doc["Execution Time"]),
            "shared_hit": float(plan.get("Shared Hit Blocks", 0)),
            "shared_read": float(plan.get("Shared Read Blocks", 0))}


# ---------------------------------------------------------- pgqueuer's side


class PgqueuerBench:
    """A database with pgqueuer's schema, owned and used by one login role over TCP."""

    def __init__(self, pg: PostgresCluster) -> None:
        from psycopg2 import sql

        self.pg = pg
        conn = pg.admin()
        with conn.cursor() as cur:
            cur.execute("SET password_encryption = 'scram-sha-256'")
            cur.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(PGQ_ROLE), sql.Literal(PGQ_PASSWORD)))
            cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(PGQ_DB), sql.Identifier(PGQ_ROLE)))
        conn.close()
        self.dsn = (f"postgresql://{PGQ_ROLE}:{PGQ_PASSWORD}@127.0.0.1:{pg.port}/{PGQ_DB}")
        asyncio.run(self._install())

    async def _install(self) -> None:
        import asyncpg
        from pgqueuer.db import AsyncpgDriver
        from pgqueuer.queries import Queries

        conn = await asyncpg.connect(self.dsn)
        await Queries(AsyncpgDriver(conn)).install()
        await conn.close()

    def queued(self) -> int:
        conn = self.pg.admin(PGQ_DB)
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pgqueuer WHERE status = 'queued'")
            n = int(cur.fetchone()[0])
        conn.close()
        return n

    def fill(self, target: int) -> None:
        """Enqueue with pgqueuer's own batch API until ``target`` jobs are queued."""
        missing = target - self.queued()
        if missing > 0:
            asyncio.run(self._enqueue(missing))

    async def _enqueue(self, count: int) -> None:
        import asyncpg
        from pgqueuer.db import AsyncpgDriver
        from pgqueuer.queries import Queries

        conn = await asyncpg.connect(self.dsn)
        queries = Queries(AsyncpgDriver(conn))
        chunk = 20_000
        for first in range(0, count, chunk):
            n = min(chunk, count - first)
            await queries.enqueue([PGQ_ENTRYPOINT] * n,
                                  [f"bench-{i}==1.0.{i}".encode() for i in range(first,
                                                                              first + n)],
                                  [0] * n)
        await conn.close()

    def settle(self) -> None:
        vacuum_and_checkpoint(self.pg, PGQ_DB)


# ----------------------------------------------------- claim latency (1M)


@dataclass
class LatencyResult:
    backlog: int
    claims: int
    claim_p50_ms: float
    claim_p99_ms: float
    claim_mean_ms: float
    claim_max_ms: float
    heartbeat_p50_ms: float
    finish_p50_ms: float
    finish_p99_ms: float
    server_ms: dict[str, float]
    claim_plan: str


CLAIM_QUERY = """
    SELECT j.job_id FROM pinwheel.jobs j
    WHERE j.state = 'queued' AND j.abi = %s AND j.platform = %s
    ORDER BY j.priority DESC, j.queued_at, j.job_id
    LIMIT 1
    FOR UPDATE SKIP LOCKED"""


def claim_latency(pg: PostgresCluster, backlog: int, claims: int,
                  history: int) -> LatencyResult:
    """One builder: claim (timed) → heartbeat → finish, ``claims`` times, at ``backlog``."""
    from pinwheel import db
    from pinwheel.queue import BuilderQueue, ReportedFile

    bench = PinwheelBench(pg, LATENCY_DB)
    bench.seed_history(history)
    conn = pg.admin(LATENCY_DB)
    with conn.cursor() as cur:
        # Server-side time per PL/pgSQL function, for this database's sessions only.
        cur.execute(f"ALTER DATABASE {LATENCY_DB} SET track_functions = 'pl'")
    conn.close()
    log(f"latency: queueing {backlog:,} jobs")
    bench.fill(backlog)
    bench.settle()
    q = BuilderQueue(db.connect(bench.builder_dsn(0), application_name="queue-bench"))
    q.register(ABI, PLATFORM, "queue benchmark", platform.python_version())
    claim_t: list[float] = []
    beat_t: list[float] = []
    finish_t: list[float] = []
    warmup = max(10, claims // 20)
    for i in range(warmup + claims):
        started = dt.datetime.now(dt.timezone.utc)
        t0 = time.perf_counter()
        job = q.claim(LEASE_SECONDS)
        t1 = time.perf_counter()
        if job is None:
            raise RuntimeError("the latency backlog ran out")
        q.heartbeat(job, LEASE_SECONDS)
        t2 = time.perf_counter()
        wheel = f"{job.package}-{job.version}-cp311-cp311-{PLATFORM}.whl"
        q.finish(job, "success", started, t2 - t0, None, [ReportedFile(wheel, 123_456, SHA256)])
        t3 = time.perf_counter()
        if i >= warmup:
            claim_t.append(t1 - t0)
            beat_t.append(t2 - t1)
            finish_t.append(t3 - t2)
    q.conn.close()
    time.sleep(1.5)  # let the closed backend's function statistics reach the collector
    server: dict[str, float] = {}
    conn = pg.admin(LATENCY_DB)
    with conn.cursor() as cur:
        cur.execute("SELECT funcname, total_time / calls, self_time / calls "
                    "FROM pg_stat_user_functions WHERE schemaname = 'pinwheel' AND calls > 0 "
                    "ORDER BY funcname")
        for name, total, self_ms in cur.fetchall():
            server[f"{name} total"] = round(float(total), 4)
            server[f"{name} self"] = round(float(self_ms), 4)
        cur.execute("BEGIN")
        cur.execute("EXPLAIN (ANALYZE, BUFFERS, TIMING) " + CLAIM_QUERY, (ABI, PLATFORM))
        plan = "\n".join(row[0] for row in cur.fetchall())
        cur.execute("ROLLBACK")
    conn.close()
    return LatencyResult(
        backlog=backlog, claims=claims,
        claim_p50_ms=percentile(claim_t, 50) * 1000,
        claim_p99_ms=percentile(claim_t, 99) * 1000,
        claim_mean_ms=sum(claim_t) / len(claim_t) * 1000,
        claim_max_ms=max(claim_t) * 1000,
        heartbeat_p50_ms=percentile(beat_t, 50) * 1000,
        finish_p50_ms=percentile(finish_t, 50) * 1000,
        finish_p99_ms=percentile(finish_t, 99) * 1000,
        server_ms=server, claim_plan=plan)


# ----------------------------------------------------------- the machine


def machine_info(pg: PostgresCluster) -> dict[str, str]:
    cpu = "unknown"
    family = model = ""
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "model name" and cpu == "unknown":
                cpu = value
            elif key == "cpu family" and not family:
                family = value
            elif key == "model" and not model:
                model = value
    if family:
        cpu = f"{cpu} (family {family}, model {model})"
    mem_kib = 0
    with open("/proc/meminfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    conn = pg.admin()
    with conn.cursor() as cur:
        cur.execute("SHOW server_version")
        server_version = str(cur.fetchone()[0])
        cur.execute("SHOW shared_buffers")
        shared_buffers = str(cur.fetchone()[0])
    conn.close()
    info = {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "ram": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "postgresql": f"{server_version} (throwaway cluster from tests/harness/postgres.py: "
                      f"fsync=off, shared_buffers={shared_buffers}, otherwise defaults)",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "kernel": platform.release(),
    }
    versions = []
    for dist in ("psycopg2", "pgqueuer", "asyncpg", "uvloop"):
        try:
            versions.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            continue
    info["clients"] = ", ".join(versions)
    return info


# --------------------------------------------------------------- the report


def _fmt(x: float, digits: int = 0) -> str:
    if math.isnan(x):
        return "n/a"
    return f"{x:,.{digits}f}"


def _shared_machine_warning(runs: list[RunResult], machine: dict[str, str]) -> list[str]:
    """A warning when other processes kept the machine busy during the runs."""
    if not runs:
        return []
    measured = [r.cores_other for r in runs if not math.isnan(r.cores_other)]
    other = sum(measured) / len(measured) if measured else 0.0
    if other < 0.25:
        return []
    return ["", f"**Warning: the machine was shared.** Other processes kept on average "
                f"{other:.2f} of its {machine['cores']} cores busy during the measured windows "
                "(the *other load* column below), so the absolute numbers are low and noisy; "
                "runs alternate between the systems, which keeps the comparison roughly fair. "
                "Re-run on a quiet machine for numbers to quote."]


def _ran_dry(r: RunResult) -> bool:
    return r.empty_polls > 0 or r.backlog_at_end == 0


def _rate(r: RunResult | None) -> str:
    if r is None:
        return "n/a"
    return _fmt(r.per_second) + (" †" if _ran_dry(r) else "")


def render_section(cfg: Config, machine: dict[str, str], runs: list[RunResult],
                   latency: LatencyResult | None, notes: list[str]) -> str:
    by = best_runs(runs)
    best_of = f", the fastest of {cfg.repeat} runs each" if cfg.repeat > 1 else ""
    lines = [
        MARK_START,
        "## Queue: claim → heartbeat → finish",
        "",
        f"Written by `bench/queue_bench.py` on {machine['date']}; re-running it replaces "
        "everything between this section's markers.",
        "",
        "Re-run (about 15 minutes with the default two runs of each on a quiet machine; "
        "`--quick` checks that it works in a few minutes):",
        "",
        "```sh",
        "python3 -m venv .cache/bench-venv",
        ".cache/bench-venv/bin/pip install -e ./agent -r bench/requirements.txt",
        ".cache/bench-venv/bin/python bench/queue_bench.py" + (" --quick" if cfg.quick else "")
        + (f" --repeat {cfg.repeat}" if cfg.repeat != (1 if cfg.quick else 2) else ""),
        "```",
        "",
        "### Machine",
        "",
        "| | |",
        "| --- | --- |",
        f"| CPU | {machine['cpu']} |",
        f"| Cores | {machine['cores']} |",
        f"| RAM | {machine['ram']} |",
        f"| PostgreSQL | {machine['postgresql']} |",
        f"| Python | {machine['python']} |",
        f"| Client libraries | {machine['clients']} |",
        f"| Kernel | {machine['kernel']} |",
        f"| Date | {machine['date']} |",
        "",
        f"### Throughput: {cfg.backlog:,} queued jobs at the start of every run, "
        f"{cfg.seconds:g} s measured after {cfg.warmup:g} s of warm-up{best_of}",
        "",
        "Each client is its own process with its own connection; clients and PostgreSQL share "
        f"the machine's {machine['cores']} cores, so beyond a few clients they contend for CPU.",
        *_shared_machine_warning(runs, machine),
        "",
        "| clients | pinwheel cycles/s | pgqueuer jobs/s | ratio |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for n in cfg.clients:
        pw = by.get(("pinwheel", n))
        pq = by.get(("pgqueuer", n))
        ratio = (f"{pw.per_second / pq.per_second:.2f}"
                 if pw and pq and pq.per_second > 0 else "n/a")
        lines.append(f"| {n} | {_rate(pw)} | {_rate(pq)} | {ratio} |")
    lines += [
        "",
        "ratio = Pinwheel cycles/s ÷ pgqueuer jobs/s (above 1: Pinwheel is faster). One cycle "
        "and one job are the same work: claim one job, extend its lease once, record it done."
        + (" † the backlog ran out during the run: a lower bound."
           if any(_ran_dry(r) for r in by.values()) else ""),
        "",
        "Per run: time per cycle as each client saw it (claim + heartbeat + finish), the CPU "
        "time PostgreSQL and the clients spent per cycle (a measure of work that other load on "
        "the machine disturbs less than throughput does), and how many cores everything else "
        "on the machine kept busy meanwhile (other users, the kernel's loopback networking):",
        "",
        "| clients | system | per s | p50 ms | p99 ms | PostgreSQL CPU µs | client CPU µs "
        "| other load (cores) | claim query after the run |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for n in cfg.clients:
        for system in ("pinwheel", "pgqueuer", "pgqueuer-qm"):
            r = by.get((system, n))
            if r is None:
                continue
            lines.append(
                f"| {n} | {system} | {_rate(r)} | {_fmt(r.p50_ms, 2)} | "
                f"{_fmt(r.p99_ms, 2)} | {_fmt(r.cpu_us_per_cycle(r.cores_postgres))} | "
                f"{_fmt(r.cpu_us_per_cycle(r.cores_clients))} | {_fmt(r.cores_other, 2)} | "
                f"{r.probe_after.get('execution_ms', math.nan):.2f} ms, "
                f"{r.probe_after.get('shared_hit', math.nan):.0f} buffers |")
    lines += [
        "",
        "The last column is the claim query alone (`SELECT … FOR UPDATE SKIP LOCKED LIMIT 1`, "
        "Pinwheel's from `claim_job`, pgqueuer's from `dequeue`), run once with `EXPLAIN "
        "ANALYZE` right after the run, before the next `VACUUM`: jobs claimed during the run "
        "leave dead entries at the head of the queue's index, which every claim steps over "
        "until a vacuum removes them. After a `VACUUM` it reads about 5 buffers.",
    ]
    if any(r.system == "pgqueuer-qm" for r in runs):
        lines += [
            "",
            f"`pgqueuer-qm` is a reference, not like-for-like: pgqueuer's `QueueManager.run("
            f"batch_size={cfg.qm_batch_size})` as `pgq run` runs it, one per process, with an "
            "empty entrypoint. It dequeues up to that many jobs per statement and logs "
            "completions in buffered batches (its heartbeats only start after 15 s of work), "
            "which a Pinwheel builder, running one build of minutes at a time, has no use for. "
            f"Its warm-up is {QM_STARTUP / 2.5 if cfg.quick else QM_STARTUP:g} s longer, for "
            "`run()`'s start-up checks.",
        ]
    if latency is not None:
        server = latency.server_ms
        lines += [
            "",
            f"### Claim latency at {latency.backlog:,} queued jobs",
            "",
            f"One builder, {latency.claims:,} timed claims (after "
            f"{max(10, latency.claims // 20)} untimed), each followed by a heartbeat and a "
            "finish, so the backlog stays near its size. Times are round trips from the client "
            "(`BuilderQueue.claim`, TCP on loopback), in ms:",
            "",
            "| queued jobs | claims | claim_job median | claim_job p99 | claim_job max | "
            "finish_job median | finish_job p99 |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            f"| {latency.backlog:,} | {latency.claims:,} | {latency.claim_p50_ms:.2f} | "
            f"{latency.claim_p99_ms:.2f} | {latency.claim_max_ms:.2f} | "
            f"{latency.finish_p50_ms:.2f} | {latency.finish_p99_ms:.2f} |",
            "",
            "Server-side mean time per call of the functions in the cycle "
            "(`pg_stat_user_functions`, including the functions they call): "
            + ", ".join(f"`{name}` {server[name + ' total']:.3f} ms"
                        for name in ("claim_job", "heartbeat", "finish_job", "calling_builder",
                                     "held_job") if name + " total" in server)
            + ".",
        ]
    lines += [
        "",
        "### What each side does",
        "",
        "- **Pinwheel**, per cycle, three autocommit round trips through `pinwheel.queue."
        "BuilderQueue` (psycopg2), each a SECURITY DEFINER function run as the builder's own "
        "login role (TCP, scram-sha-256; every client has its own role): `claim_job(300)` "
        "(looks the builder up, updates its `last_seen`, checks for expired leases, locks the "
        "first queued job of its build target (ABI and platform) with `FOR UPDATE SKIP LOCKED` "
        "and leases it), "
        "`heartbeat(job, token, 300)` (checks the lease and token, extends the lease), "
        "`finish_job(..., 'success', ..., files)` with one reported wheel file (validates the "
        "report, inserts a `builds` row and a `files` row, deletes the job, NOTIFYs ingest). "
        "The backlog is one target (`cp311-linux_x86_64`), one job per release, queued with "
        "set-based SQL as the superuser.",
        "- **pgqueuer**, per job, three round trips through its own API (`pgqueuer.queries."
        "Queries` over asyncpg on uvloop, one consumer role over TCP, scram-sha-256): "
        "`dequeue(batch_size=1)` (locks the first queued job of the entrypoint with `FOR "
        "UPDATE SKIP LOCKED`, marks it picked, writes a `pgqueuer_log` row), "
        "`update_heartbeat([id])`, `log_jobs([(job, 'successful', None)])` (deletes the job, "
        "writes a `pgqueuer_log` row). Its statement-level trigger NOTIFYs on every change to "
        "the queue table. The backlog is queued with its batch `enqueue`. Tables are LOGGED "
        "(its default `durable` setting), like Pinwheel's.",
        "- Both: one process per client, all released together; only cycles that complete "
        "inside the measured window count. Before every run the backlog is topped up to its "
        "size, then `VACUUM (ANALYZE)` and `CHECKPOINT` run on that database. Runs alternate "
        "between the systems at each client count. Pinwheel's databases start with a "
        f"history of {cfg.history:,} finished builds with one published file each, as in a "
        "farm in service; that history (`builds`, `files`) and pgqueuer's `pgqueuer_log` grow "
        "across runs.",
        "- The clients run on the same cores as PostgreSQL, so client-side CPU (psycopg2 vs "
        "asyncpg + pydantic) is part of both numbers.",
    ]
    lines += [f"- {n}" for n in notes]
    lines.append(MARK_END)
    return "\n".join(lines) + "\n"


DOC_HEADER = """# Benchmarks

Measured numbers for Pinwheel, each section written by the script that
measures it. A script replaces only its own section, between its
`<!-- bench:NAME:start -->` and `<!-- bench:NAME:end -->` markers, so
benchmarks can share this file; text outside the markers is left alone.

"""


def write_docs(path: Path, section: str) -> None:
    write_section(path, MARK_START, MARK_END, section, DOC_HEADER)


# -------------------------------------------------------------------- main


def _throughput(cfg: Config, pw: PinwheelBench, pq: PgqueuerBench | None,
                builder_dsns: list[str]) -> list[RunResult]:
    runs: list[RunResult] = []

    def one(system: str, bench: PinwheelBench | PgqueuerBench,
            target: Callable[..., None], args: list[tuple[Any, ...]]) -> None:
        bench.fill(cfg.backlog)
        bench.settle()
        start = bench.queued()
        startup = QM_STARTUP / 2.5 if cfg.quick else QM_STARTUP
        warmup = cfg.warmup + (startup if system == "pgqueuer-qm" else 0.0)
        log(f"{system}: {len(args)} clients, {start:,} queued, "
            f"{warmup:g} s warm-up + {cfg.seconds:g} s")
        r = run_clients(system, target, args, warmup, cfg.seconds, start, pw.pg.data)
        r.backlog_at_end = bench.queued()
        if isinstance(bench, PinwheelBench):
            r.probe_after = probe_claim(bench.pg, bench.dbname, CLAIM_QUERY, (ABI, PLATFORM))
        else:
            r.probe_after = probe_claim(bench.pg, PGQ_DB, PGQ_DEQUEUE_QUERY, (PGQ_ENTRYPOINT,))
        log(f"  {r.per_second:,.0f}/s  p50 {r.p50_ms:.2f} ms  p99 {r.p99_ms:.2f} ms"
            + ("  (THE BACKLOG RAN OUT)" if r.empty_polls or not r.backlog_at_end else "")
            + f"; CPU µs/cycle: postgres {r.cpu_us_per_cycle(r.cores_postgres):.0f}, "
            f"clients {r.cpu_us_per_cycle(r.cores_clients):.0f}; other load "
            f"{_fmt(r.cores_other, 2)} cores; then the claim query: "
            f"{r.probe_after['execution_ms']:.2f} ms, {r.probe_after['shared_hit']:.0f} buffers")
        runs.append(r)

    for _ in range(cfg.repeat):
        for n in cfg.clients:
            one("pinwheel", pw, pinwheel_worker, [(dsn,) for dsn in builder_dsns[:n]])
            if pq is not None:
                one("pgqueuer", pq, pgqueuer_worker, [(pq.dsn,)] * n)
    if pq is not None and cfg.qm_reference:
        for _ in range(cfg.repeat):
            for n in cfg.clients:
                one("pgqueuer-qm", pq, pgqueuer_qm_worker, [(pq.dsn, cfg.qm_batch_size)] * n)
    return runs


def best_runs(runs: list[RunResult]) -> dict[tuple[str, int], RunResult]:
    """The fastest run of each system and client count."""
    best: dict[tuple[str, int], RunResult] = {}
    for r in runs:
        key = (r.system, r.clients)
        if key not in best or r.per_second > best[key].per_second:
            best[key] = r
    return best


def render_saved(cfg: Config) -> int:
    """Rewrite the markdown section from a saved results file, measuring nothing."""
    assert cfg.render is not None
    saved = json.loads(cfg.render.read_text(encoding="utf-8"))
    fields = {f for f in Config.__dataclass_fields__ if f not in ("docs", "render")}
    run_cfg = Config(**{k: v for k, v in saved["config"].items() if k in fields},
                     docs=cfg.docs, render=cfg.render)
    runs = [RunResult(**r) for r in saved["runs"]]
    latency = LatencyResult(**saved["latency"]) if saved["latency"] else None
    section = render_section(run_cfg, saved["machine"], runs, latency, saved["notes"])
    print(section)
    if cfg.docs is not None:
        write_docs(cfg.docs, section)
        log(f"wrote the queue section of {cfg.docs} from {cfg.render}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    if cfg.render is not None:
        return render_saved(cfg)
    sys.path.insert(0, str(REPO / "tests"))
    from harness.postgres import PostgresCluster

    notes: list[str] = []
    pgq_reason: str | None = None
    if cfg.pgqueuer:
        try:
            import asyncpg  # noqa: F401
            import pgqueuer  # noqa: F401
            import uvloop  # noqa: F401
        except ImportError as exc:
            pgq_reason = (f"pgqueuer was not measured: {exc} (install bench/requirements.txt "
                          "into the benchmark venv)")
            log(pgq_reason)
            notes.append(pgq_reason)
            cfg.pgqueuer = cfg.qm_reference = False

    pg = PostgresCluster()
    log(f"starting PostgreSQL in {pg.base} (port {pg.port})")
    pg.start()
    runs: list[RunResult] = []
    latency: LatencyResult | None = None
    try:
        machine = machine_info(pg)
        log(f"machine: {machine}")
        pw = PinwheelBench(pg, PINWHEEL_DB)
        pw.seed_history(cfg.history)
        builder_dsns = [pw.builder_dsn(i) for i in range(max(cfg.clients))]
        pq = PgqueuerBench(pg) if cfg.pgqueuer else None
        runs = _throughput(cfg, pw, pq, builder_dsns)
        for name in (PINWHEEL_DB, PGQ_DB):
            if name == PGQ_DB and pq is None:
                continue
            pg.drop_database(name)
        latency = claim_latency(pg, cfg.latency_backlog, cfg.latency_claims, cfg.history)
        log(f"latency at {latency.backlog:,}: claim p50 {latency.claim_p50_ms:.2f} ms, "
            f"p99 {latency.claim_p99_ms:.2f} ms, max {latency.claim_max_ms:.2f} ms; "
            f"finish p50 {latency.finish_p50_ms:.2f} ms")
        log(f"server-side ms per call: {latency.server_ms}")
        log("claim query plan at this backlog:\n" + latency.claim_plan)
    finally:
        if cfg.keep:
            log(f"cluster left running: psql -h {pg.socket_dir} -p {pg.port} -U postgres; "
                f"stop it with: runuser -u postgres -- {pg.bindir}/pg_ctl -D {pg.data} stop")
        else:
            pg.destroy()

    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    result_path = RESULTS / f"queue-{stamp}{'-quick' if cfg.quick else ''}.json"
    result_path.write_text(json.dumps({
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "machine": machine, "runs": [asdict(r) for r in runs],
        "latency": asdict(latency) if latency else None, "notes": notes,
    }, indent=2) + "\n", encoding="utf-8")
    log(f"results: {result_path.relative_to(REPO)}")

    section = render_section(cfg, machine, runs, latency, notes)
    print(section)
    if cfg.docs is not None:
        write_docs(cfg.docs, section)
        log(f"wrote the queue section of {cfg.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
