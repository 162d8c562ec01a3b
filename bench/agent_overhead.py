#!/usr/bin/env python3
"""The agent's overhead per job: claim, sandbox, push and report, beyond pip's own build.

One real agent (its own user and build user, from a venv of the system Python,
as the builder role installs it) builds a trivial pure package
(``pwtest-pure`` 1.0 from the test upstream, ``tests/harness/upstream.py``)
against the test harness's real services: a throwaway PostgreSQL cluster, an
sshd + rrsync master it pushes to with rsync (``tests/harness/minifarm.py``).
Jobs are queued one at a time (an INSERT into ``jobs``, whose trigger wakes the
idle agent through LISTEN/NOTIFY) and each is timed from the database's own
clock, from queued to reported (``finish_job``). Alternating with them, the
same build runs as plain ``pip wheel`` (same interpreter, flags and no cache),
which is what the build costs without the agent.

Per job, from the database (``jobs.queued_at``, ``builds.started_at``,
``builds.duration``, ``builds.finished_at``; one host, one clock):

- *to build start*: wake-up, claim, killing the build user's processes and
  preparing the tree;
- *sandboxed pip*: sudo, prlimit, ``env -i`` and pip as the build user, with the
  log through the agent's pipe;
- *after the build*: killing and wiping the tree, gzipping the log, SHA-256 of
  the files, the outbox record, the rsync push over SSH and ``finish_job``.

Run it as root (it creates system users and a sudoers rule, as the tests do),
with the test venv (``make test-deps``)::

    .venv/bin/python bench/agent_overhead.py            # 20 jobs, docs/benchmarks.md
    .venv/bin/python bench/agent_overhead.py --jobs 5 --no-docs   # a smoke run

Results go to ``bench/results/agent-*.json`` and to the agent section of
``docs/benchmarks.md`` (between its markers; other sections are left alone).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from benchdocs import write_section  # noqa: E402
from machine import cpu_model, ram_gib  # noqa: E402

from harness.agents import SYSTEM_PYTHON, world_readable_tempdir  # noqa: E402
from harness.minifarm import MiniFarm, make_minifarm  # noqa: E402
from harness.postgres import PostgresCluster  # noqa: E402
from harness.upstream import UpstreamIndex  # noqa: E402
from harness.users import AgentUsers  # noqa: E402
from pinwheel import push  # noqa: E402
from pinwheel.sandbox import Sandbox  # noqa: E402

PACKAGE, VERSION = "pwtest-pure", "1.0"
USERS = AgentUsers("pwtest-bench-agent", "pwtest-bench-build")
BUILDER = "bench_agent"
DATABASE = "pinwheel_bench_agent"
DOCS = REPO / "docs" / "benchmarks.md"
RESULTS = REPO / "bench" / "results"
MARK_START, MARK_END = "<!-- bench:agent:start -->", "<!-- bench:agent:end -->"
# As the sandbox runs pip (pinwheel.sandbox.Sandbox._pip_command), minus sudo and limits.
PIP_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
           "PIP_CONFIG_FILE": "/dev/null", "PIP_NO_INPUT": "1", "PIP_NO_CACHE_DIR": "1",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile (q in 0..100) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


@dataclass
class AgentJob:
    job_id: int
    total: float          # queued → reported
    to_start: float       # queued → the sandbox starts pip
    sandboxed_pip: float  # builds.duration
    after_build: float    # the build's end → reported


def plain_pip(upstream_url: str) -> float:
    """Seconds for one ``pip wheel`` of the package, as the sandbox runs it but directly."""
    with tempfile.TemporaryDirectory(prefix="pinwheel-bench-pip-") as tmp:
        cmd = [SYSTEM_PYTHON, "-m", "pip", "wheel", f"{PACKAGE}=={VERSION}", "--no-deps",
               "--no-binary", PACKAGE, "--no-cache-dir", "--progress-bar", "off",
               "--index-url", upstream_url, "-w", f"{tmp}/out"]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, cwd=tmp, env={**PIP_ENV, "HOME": tmp, "TMPDIR": tmp},
                              capture_output=True, text=True)
        seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"plain pip wheel failed:\n{done.stdout}{done.stderr}")
    return seconds


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class Steps:
    """The agent's per-build steps that start processes, to be timed one by one."""

    def __init__(self, farm: MiniFarm, tmp: Path) -> None:
        self.farm = farm
        self.key = farm.sshd.builders[BUILDER]
        box = Sandbox(USERS.build, farm.work_dir(BUILDER), SYSTEM_PYTHON, farm.upstream_url,
                      [], 60)
        pushed = farm.sshd.incoming_root / BUILDER
        wheel = next(pushed.glob("*.whl"))
        build_log = next(pushed.glob("job-*.log.gz"))
        self.files = [Path(shutil.copy2(f, tmp)) for f in (wheel, build_log)]
        self.steps: dict[str, Callable[[], object]] = {
            "kill switch (`kill(-1)` as the build user, via sudo)": box.kill_build_processes,
            "purging the build user's files from /tmp, /var/tmp, /dev/shm (`find`, via sudo)":
                box._purge_shared_tmp,  # the sandbox's own step, timed alone
            "rsync push over SSH of a wheel and a log": self.push,
        }

    def push(self) -> None:
        error = push.push_once(self.files, self.farm.sshd.upload_user, "127.0.0.1",
                               self.farm.sshd.port, self.key.private_key, self.key.known_hosts)
        if error:
            raise RuntimeError(f"push failed: {error}")

    def time_each(self) -> dict[str, float]:
        return {name: timed(fn) for name, fn in self.steps.items()}


class JobClock:
    """Queues one job at a time and waits (LISTEN pinwheel_ingest) until it is reported."""

    def __init__(self, farm: MiniFarm) -> None:
        self.farm = farm
        self.conn = farm.pg.admin(farm.database)  # type: ignore[attr-defined]
        with self.conn.cursor() as cur:
            cur.execute("SET search_path = pinwheel")
            cur.execute("LISTEN pinwheel_ingest")
            cur.execute("SELECT abi, platform FROM builders WHERE builder = %s", (BUILDER,))
            self.abi, self.platform = cur.fetchone()

    def run(self, timeout: float = 600) -> AgentJob:
        with self.conn.cursor() as cur:
            cur.execute("INSERT INTO jobs (package, version, abi, platform) "
                        "VALUES (%s, %s, %s, %s) RETURNING job_id, queued_at",
                        (PACKAGE, VERSION, self.abi, self.platform))
            job_id, queued = cur.fetchone()
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"job {job_id} was not reported in {timeout}s:\n"
                                   f"{self.farm.diagnostics()}")
            select.select([self.conn], [], [], min(left, 5))
            self.conn.poll()
            self.conn.notifies.clear()
            with self.conn.cursor() as cur:
                cur.execute("SELECT status, started_at, extract(epoch FROM duration), "
                            "finished_at FROM builds WHERE job_id = %s", (job_id,))
                row = cur.fetchone()
            if row is not None:
                break
            self.farm.check_agents()
        status, started, duration, finished = row
        if status != "success":
            raise RuntimeError(f"job {job_id}: {status}\n{self.farm.diagnostics()}")
        duration = float(duration)
        return AgentJob(job_id, (finished - queued).total_seconds(),
                        (started - queued).total_seconds(), duration,
                        (finished - started).total_seconds() - duration)

    def close(self) -> None:
        self.conn.close()


def machine_info(pg: PostgresCluster) -> dict[str, str]:
    (server,), = pg.query("postgres", "SHOW server_version")
    pip_version = subprocess.run([SYSTEM_PYTHON, "-m", "pip", "--version"], capture_output=True,
                                 text=True).stdout.split(" from ")[0]
    rsync_version = subprocess.run(["rsync", "--version"], capture_output=True,
                                   text=True).stdout.splitlines()[0]
    return {
        "cpu": cpu_model(), "cores": str(os.cpu_count()), "ram": ram_gib(),
        "kernel": platform.release(),
        "build python": subprocess.run([SYSTEM_PYTHON, "--version"], capture_output=True,
                                       text=True).stdout.strip() + f" ({pip_version})",
        "postgresql": f"{server} (throwaway cluster from tests/harness/postgres.py, fsync=off)",
        "rsync": rsync_version,
        "files in the shared temporary directories": shared_tmp_files()
        + (" (private /tmp and /var/tmp, as with PrivateTmp=)"
           if os.environ.get(PRIVATE_TMP_ENV) == "1" else " (the host's own)"),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def shared_tmp_files() -> str:
    """How many entries ``find`` walks in /tmp, /var/tmp and /dev/shm (the purge's work)."""
    counts = []
    for d in ("/tmp", "/var/tmp", "/dev/shm"):
        out = subprocess.run(["find", d, "-xdev", "-mindepth", "1"], capture_output=True,
                             text=True).stdout
        counts.append(f"{d} {out.count(chr(10)):,}")
    return ", ".join(counts)


def stats(values: Sequence[float]) -> tuple[float, float]:
    return percentile(values, 50), percentile(values, 95)


def render(jobs: list[AgentJob], pip_times: list[float], parts: dict[str, list[float]],
           machine: dict[str, str], load: tuple[float, float], argv: str) -> str:
    pip_med = stats(pip_times)[0]
    rows = [
        ("plain `pip wheel` (no agent)", pip_times),
        ("agent: queued → reported", [j.total for j in jobs]),
        ("agent overhead (queued → reported minus the plain pip median)",
         [j.total - pip_med for j in jobs]),
        ("agent's own time outside pip (queued → pip starts, plus pip's end → reported)",
         [j.to_start + j.after_build for j in jobs]),
        ("· queued → pip starts (wake-up, claim, kill switch, fresh tree)",
         [j.to_start for j in jobs]),
        ("· sandboxed pip (sudo, prlimit, env -i, log pipe)", [j.sandboxed_pip for j in jobs]),
        ("· pip's end → reported (wipe, gzip, SHA-256, record, rsync push, finish_job)",
         [j.after_build for j in jobs]),
    ]
    lines = [
        MARK_START,
        "## Agent: overhead per job beyond pip's own build",
        "",
        f"Written by `bench/agent_overhead.py` on {machine['date']}; re-running it replaces "
        "everything between this section's markers.",
        "",
        "```sh",
        "make test-deps    # the test venv, the upstream's seed wheels",
        f".venv/bin/python bench/agent_overhead.py{argv}   # as root, about 5 minutes",
        "```",
        "",
        f"One real agent builds `{PACKAGE}` {VERSION} (pure Python, setuptools backend, "
        f"build dependencies fetched from the upstream at every build: no pip cache) "
        f"{len(jobs)} times, one job at a time, against the test harness's PostgreSQL, "
        "sshd + rrsync and upstream on loopback; alternating with it, the same `pip wheel` "
        "(interpreter, flags, environment, no cache) runs directly, without the agent, "
        f"{len(pip_times)} times. The first two of each are warm-up, not counted. Job times come "
        "from the database's clock: `jobs.queued_at`, `builds.started_at`, `builds.duration` "
        "and `builds.finished_at`.",
        "",
        "| seconds | median | p95 |",
        "| --- | ---: | ---: |",
    ]
    for label, values in rows:
        med, p95 = stats(values)
        lines.append(f"| {label} | {med:.2f} | {p95:.2f} |")
    runs = len(next(iter(parts.values()), []))
    lines += [
        "",
        f"Steps of the agent that start processes, each timed alone right after each job "
        f"({runs} runs):",
        "",
        "| seconds | median | p95 |",
        "| --- | ---: | ---: |",
    ]
    for label, values in parts.items():
        med, p95 = stats(values)
        lines.append(f"| {label} | {med:.2f} | {p95:.2f} |")
    total_med = stats([j.total for j in jobs])[0]
    biggest = max(parts, key=lambda k: stats(parts[k])[0]) if parts else ""
    lines += [
        "",
        f"So the agent adds about {total_med - pip_med:.1f} s to a build that pip alone does in "
        f"{pip_med:.1f} s; that is a fixed cost per job, the same for a build of minutes. The "
        "agent's own Python work (claim, heartbeat, report) takes milliseconds (the queue "
        "section); the rest is processes started for every build: `sudo` and `prlimit`, the "
        "kill switch before and after, `find` wiping the tree and purging the shared temporary "
        "directories, and `ssh` for the push. The largest step here: "
        f"{biggest.split(' (')[0]}. The purge walks every file in /tmp, /var/tmp and /dev/shm, "
        "so it grows with what is there: by default this benchmark gives itself empty private "
        "ones, as a provisioned builder's unit does (`PrivateTmp=`); `--shared-tmp` measures "
        "with the host's (on a development machine with hundreds of thousands of files in "
        "/tmp the purge alone takes seconds per build).",
        "",
        "### Machine",
        "",
        "| | |",
        "| --- | --- |",
    ]
    for key, value in machine.items():
        lines.append(f"| {key} | {value} |")
    lines += [
        f"| load average | {load[0]:.2f} before, {load[1]:.2f} after (other engineers' "
        "tests may run beside it: read the numbers as orders of magnitude) |",
        MARK_END,
    ]
    return "\n".join(lines) + "\n"


def write_docs(path: Path, section: str) -> None:
    write_section(path, MARK_START, MARK_END, section)


PRIVATE_TMP_ENV = "PINWHEEL_BENCH_PRIVATE_TMP"


def private_tmp_exec(argv: list[str]) -> None:
    """Run this script again in a mount namespace of its own with empty /tmp and /var/tmp.

    That is what the builder's unit gives the agent (``PrivateTmp=``), and what
    builds started through sudo inherit: the sandbox's purge of the shared
    temporary directories then walks only what the farm itself put there, not a
    development machine's clutter (``--shared-tmp`` measures that instead).
    """
    mounts = " && ".join(f"mount -t tmpfs -o mode=1777 pinwheel-bench {d}"
                         for d in ("/tmp", "/var/tmp"))
    os.environ[PRIVATE_TMP_ENV] = "1"
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
           f'{mounts} && exec "$0" "$@"', sys.executable, str(Path(__file__).resolve()), *argv]
    try:
        os.execvp(cmd[0], cmd)
    except OSError as exc:
        sys.exit(f"cannot run unshare for a private /tmp ({exc}); pass --shared-tmp")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--jobs", type=int, default=20, help="measured jobs (and plain pip runs)")
    p.add_argument("--warmup", type=int, default=2, help="uncounted runs of each first")
    p.add_argument("--no-docs", action="store_true", help="leave docs/benchmarks.md alone")
    p.add_argument("--shared-tmp", action="store_true",
                   help="use the host's /tmp and /var/tmp (default: private ones, as the "
                        "agent's unit has with PrivateTmp=)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        p.error("run it as root: it creates system users and a sudoers rule, as the tests do")
    if not args.shared_tmp and os.environ.get(PRIVATE_TMP_ENV) != "1":
        private_tmp_exec(list(sys.argv[1:] if argv is None else argv))

    load_before = os.getloadavg()[0]
    pg = PostgresCluster()
    upstream = UpstreamIndex()
    place = world_readable_tempdir("pinwheel-bench-agent-")
    farm: MiniFarm | None = None
    jobs: list[AgentJob] = []
    pip_times: list[float] = []
    parts: dict[str, list[float]] = {}
    try:
        pg.start()
        upstream.start()
        pg.create_database("pinwheel_template")
        farm = make_minifarm(pg, "pinwheel_template", upstream.url, place, DATABASE)
        farm.add_agent(BUILDER, USERS)
        farm.start(BUILDER)
        farm.queue(PACKAGE, VERSION)  # the release's rows, and a first (warm-up) job
        farm.wait_built(PACKAGE, VERSION)
        clock = JobClock(farm)
        steps = Steps(farm, place)
        for i in range(args.warmup + args.jobs):
            counted = i >= args.warmup
            seconds = plain_pip(upstream.url)
            job = clock.run()
            alone = steps.time_each()
            log(f"{'run' if counted else 'warm-up'} {i + 1}: plain pip {seconds:.2f} s; agent "
                f"job {job.job_id} {job.total:.2f} s (to start {job.to_start:.2f}, pip "
                f"{job.sandboxed_pip:.2f}, after {job.after_build:.2f}); steps alone "
                + ", ".join(f"{v:.2f}" for v in alone.values()))
            if counted:
                pip_times.append(seconds)
                jobs.append(job)
                for name, value in alone.items():
                    parts.setdefault(name, []).append(value)
        clock.close()
        machine = machine_info(pg)
    finally:
        if farm is not None:
            farm.stop_all()
            farm.sshd.destroy()
        upstream.destroy()
        pg.destroy()
        shutil.rmtree(place, ignore_errors=True)
    load = (load_before, os.getloadavg()[0])
    extra = "" if (args.jobs, args.warmup) == (20, 2) else f" --jobs {args.jobs}"
    section = render(jobs, pip_times, parts, machine, load, extra)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"agent-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps({"machine": machine, "load": load, "plain_pip": pip_times,
                               "jobs": [asdict(j) for j in jobs], "components": parts},
                              indent=1) + "\n")
    log(f"results: {out.relative_to(REPO)}")
    print(section)
    if not args.no_docs:
        write_docs(DOCS, section)
        log(f"wrote the agent section of {DOCS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
