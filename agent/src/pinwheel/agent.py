"""The builder agent: claim a job, build it in the sandbox, push, report.

    register (name = database role; ABI and platform from the build Python)
    loop:  claim ─▶ build as the build user (heartbeat meanwhile)
                 ─▶ gzip the log ─▶ rsync wheels + log to the master
                 ─▶ finish (only after the push succeeded)
           nothing to do ─▶ LISTEN until work for our ABI is queued, or poll

A failed build is a result like any other (reported with its log). SIGTERM or
SIGINT asks the agent to stop after the current job, which it may spend
``drain_seconds`` on before handing the job back; a second one hands the job
back at once. Lost database connections are retried with backoff and jitter,
and so is a push that fails: the built files stay in the outbox and the job
is heartbeated meanwhile, for as long as its lease holds; nothing is rebuilt
for it. A finished build is recorded in the outbox (:mod:`pinwheel.outbox`)
before it is pushed, so an agent that restarts delivers it (if the files are
intact and the database says the job is still this builder's) instead of
building it again. A job cancelled while it builds (its release deleted upstream or
skipped: the heartbeat is refused with :class:`db.JobCancelled`) is killed and reported
nowhere. When the work directory's file system is nearly full the agent claims
nothing (and says so) until space is freed. It tells systemd it is ready and
alive (:mod:`pinwheel.notify`).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import logging
import os
import random
import shutil
import signal
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Callable, TypeVar

import psycopg2

from . import aptdeps, db, names, outbox, push
from .config import AgentConfig
from .limits import free_mb
from .notify import Notifier
from .queue import BuilderQueue, Job, Registration, ReportedFile
from .sandbox import BuildAborted, BuildResult, Sandbox, probe_interpreter

log = logging.getLogger("pinwheel.agent")
T = TypeVar("T")
# Seconds between two reports of the free disk space to the master (builder_ping).
DISK_REPORT_SECONDS = 60


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def report_for(path: Path, system: aptdeps.System | None = None) -> ReportedFile:
    """What the master is told about a pushed file; with ``system``, its apt dependencies."""
    libraries = None
    if system is not None:
        try:
            libraries = tuple(aptdeps.wheel_libraries(path, system))
        except Exception as exc:  # a wheel we cannot read still ships
            log.warning("%s: could not list its shared libraries: %s", path.name, exc)
    return ReportedFile(path.name, path.stat().st_size, sha256_of(path), libraries)


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.stopping = threading.Event()   # finish the current job, then exit
        self.abort = threading.Event()      # hand the current job back now
        self.queue: BuilderQueue | None = None
        self.registration: Registration | None = None
        interp = probe_interpreter(cfg.python)
        self.abi = names.abi_tag(interp.implementation, interp.version[0], interp.version[1])
        self.platform = names.platform_tag(interp.platform, interp.maxsize)
        self.python_version = ".".join(str(v) for v in interp.version)
        self._wake_r: int | None = None
        self.sandbox = Sandbox(cfg.build_user, cfg.work_dir, cfg.python, cfg.index_url,
                               cfg.extra_index_urls, cfg.build_timeout, cfg.ca_bundle,
                               limits=cfg.build_limits(), proxy=cfg.build_proxy)
        self.notifier = Notifier()
        self.drain_deadline: float | None = None  # monotonic time the drain ends
        self.claims_paused_for_disk = False
        self.disk_reported_at: float | None = None  # monotonic time of the last report

    # ------------------------------------------------------------ signals

    def install_signal_handlers(self) -> None:
        # A signal also writes to this pipe, so an idle wait ends at once.
        self._wake_r, wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _drain_wake_pipe(self) -> None:
        if self._wake_r is None:
            return
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.stopping.is_set():
            log.warning("second %s: handing the current job back now",
                        signal.Signals(signum).name)
            self.abort.set()
        else:
            log.info("%s: stopping after the current job, or handing it back in %ds (send it "
                     "again to hand it back now)", signal.Signals(signum).name,
                     self.cfg.drain_seconds)
            self.drain_deadline = time.monotonic() + self.cfg.drain_seconds
            self.stopping.set()
            self.notifier.stopping("stopping: finishing the current job")

    def must_hand_back(self) -> bool:
        """True when the job held must go back to the queue now (second signal, drain over)."""
        if self.abort.is_set():
            return True
        if self.drain_deadline is not None and time.monotonic() >= self.drain_deadline:
            log.warning("the drain period (%ds) is over: handing the job back",
                        self.cfg.drain_seconds)
            self.abort.set()
            return True
        return False

    def _sleep(self, seconds: float, event: threading.Event) -> bool:
        """Wait up to ``seconds`` (until ``event`` is set), telling the watchdog meanwhile."""
        end = time.monotonic() + seconds
        step = self.notifier.max_wait or seconds
        while not event.is_set():
            left = end - time.monotonic()
            if left <= 0:
                break
            event.wait(min(left, step))
            self.notifier.kick()
        return event.is_set()

    # ----------------------------------------------------------- database

    def _connect_once(self) -> BuilderQueue:
        queue = BuilderQueue(db.connect(self.cfg.dsn, application_name="pinwheel-agent"))
        try:
            self.registration = queue.register(self.abi, self.platform, names.os_release(),
                                               self.python_version)
        except BaseException:
            with contextlib.suppress(Exception):
                queue.conn.close()
            raise
        log.info("registered as builder %s (%s, %s, Python %s)%s",
                 self.registration.builder, self.abi, self.platform,
                 self.python_version, " [paused]" if self.registration.paused else "")
        self.notifier.status(f"connected as builder {self.registration.builder}")
        return queue

    def _connect(self) -> BuilderQueue:
        """Connect and register, retrying with backoff and jitter until the agent stops."""
        delay = 1.0
        while not self.stopping.is_set():
            try:
                return self._connect_once()
            except db.DatabaseUnavailable as exc:
                wait = delay * random.uniform(0.5, 1.0)  # noqa: S311
                log.warning("%s; retrying in %.0fs", exc, wait)
                self.notifier.status(f"waiting for the database: {exc}")
                self._sleep(wait, self.stopping)
                delay = min(delay * 2, 60.0)
        raise SystemExit(0)

    def _db(self, fn: Callable[[BuilderQueue], T], retry: bool = True) -> T:
        """Run ``fn`` on the queue, reconnecting (with backoff) when the database is lost.

        With ``retry=False`` one attempt is made (connecting first if needed),
        and :class:`db.DatabaseUnavailable` is raised if it fails.
        """
        delay = 1.0
        while True:
            try:
                if self.queue is None:
                    self.queue = self._connect() if retry else self._connect_once()
                return fn(self.queue)
            except db.DatabaseUnavailable as exc:
                self._drop_connection()
                if not retry or self.abort.is_set():
                    raise
                wait = delay * random.uniform(0.5, 1.0)  # noqa: S311
                log.warning("%s; retrying in %.0fs", exc, wait)
                self._sleep(wait, self.abort)
                delay = min(delay * 2, 60.0)

    def _drop_connection(self) -> None:
        if self.queue is not None:
            with contextlib.suppress(Exception):  # the connection is already broken
                self.queue.conn.close()
        self.queue = None

    # --------------------------------------------------------------- loop

    def run(self) -> None:
        self.cfg.work_dir.mkdir(parents=True, exist_ok=True)
        # The builds' cgroup (if delegated) and network confinement (if configured).
        self.sandbox.use_cgroup()
        try:
            self.sandbox.check_network()
        except RuntimeError as exc:
            log.error("%s", exc)
            raise SystemExit(f"pinwheel agent: {exc}") from None
        # A crashed predecessor's leftovers: its build's processes and trees
        # (its outboxes are delivered or wiped once the database is reached).
        self.sandbox.wipe_leftovers()
        self.notifier.ready("waiting for the database")
        self.queue = self._connect()
        self.resume_leftovers()
        while not self.stopping.is_set():
            self.notifier.kick()
            self._report_disk()
            if not self._disk_allows_claims():
                self._sleep(min(self.cfg.poll_seconds, 30), self.stopping)
                continue
            job = self._db(lambda q: q.claim(self.cfg.lease_seconds))
            if job is None:
                self.notifier.status("idle: waiting for work")
                try:
                    self._db(self._wait_for_work, retry=False)
                except db.DatabaseUnavailable as exc:
                    log.warning("%s; reconnecting", exc)
                    self._sleep(1 + random.random(), self.stopping)  # noqa: S311
                self._drain_wake_pipe()
                continue
            self.handle(job)
        self.notifier.stopping("stopped")
        log.info("agent stopped")

    def _disk_allows_claims(self) -> bool:
        """False (said once in the log) while the work directory's file system is nearly full."""
        floor = self.cfg.min_free_disk_mb
        free = free_mb(self.cfg.work_dir) if floor > 0 else floor
        if free < floor:
            if not self.claims_paused_for_disk:
                log.warning("claiming no jobs: only %d MiB free on the file system of %s, under "
                            "min_free_disk_mb = %d; free some space and claiming resumes by "
                            "itself", free, self.cfg.work_dir, floor)
                self.notifier.status(f"paused: only {free} MiB free in {self.cfg.work_dir}")
                self.claims_paused_for_disk = True
            return False
        if self.claims_paused_for_disk:
            log.info("claiming jobs again: %d MiB free on the file system of %s",
                     free, self.cfg.work_dir)
            self.claims_paused_for_disk = False
        return True

    def _report_disk(self) -> None:
        """Tell the master the work directory's free space, at most once a minute.

        Shown on the master's /builders/ page and in its metrics; a failure is
        logged and never stops the agent (an older master lacks the function).
        """
        now = time.monotonic()
        if self.disk_reported_at is not None and now - self.disk_reported_at < DISK_REPORT_SECONDS:
            return
        self.disk_reported_at = now
        try:
            free = free_mb(self.cfg.work_dir)
            self._db(lambda q: q.ping(free), retry=False)
        except (OSError, db.PinwheelError, psycopg2.Error) as exc:
            log.warning("could not report the free disk space: %s", exc)

    def _wait_for_work(self, queue: BuilderQueue) -> bool:
        wake = (self._wake_r,) if self._wake_r is not None else ()
        timeout = min(self.cfg.poll_seconds, self.notifier.max_wait or self.cfg.poll_seconds)
        return queue.wait_for_work(names.target(self.abi, self.platform), timeout, wake)

    @property
    def outbox_root(self) -> Path:
        return self.cfg.work_dir / "outbox"

    def resume_leftovers(self) -> None:
        """Deliver the builds a previous run of the agent left in the outbox, or wipe them.

        A build is pushed and reported (not built again) only if its record
        and files are intact and the database says this builder still holds
        the job under the token recorded (a heartbeat succeeds: its lease is
        live, or expired with nobody having taken the job since). Anything
        else is wiped, saying why; a job still held whose files do not check
        out is handed back to the queue at once.
        """
        root = self.outbox_root
        if not root.is_dir():
            return
        for entry in sorted(root.iterdir(), key=lambda p: p.name):
            if self.stopping.is_set():
                return  # left for the next start
            try:
                pending = outbox.load(entry)
            except (outbox.BadRecord, OSError) as exc:
                self._discard_leftover(entry, str(exc))
                continue
            try:
                expires = self._db(lambda q, j=pending.job: q.heartbeat(j, self.cfg.lease_seconds))
            except db.LeaseLost as exc:
                self._discard_leftover(entry, f"the job is no longer this builder's: {exc}",
                                       hand_back=False)
                continue
            job = replace(pending.job, lease_expires=expires)
            log.info("job %d: resuming the delivery of %s %s (%s, %d file(s)) that the "
                     "agent's previous run built, without rebuilding it", job.job_id,
                     job.package, job.version, pending.status, len(pending.files))
            try:
                self._push_and_report(replace(pending, job=job))
            except db.PinwheelError as exc:  # e.g. the report refused: never a crash
                log.error("job %d: the build left by the previous run could not be "
                          "delivered: %s", job.job_id, exc)
                self._hand_back(job)
            finally:
                shutil.rmtree(entry, ignore_errors=True)

    def _discard_leftover(self, entry: Path, why: str, hand_back: bool = True) -> None:
        job_id = outbox.job_id_of(entry)
        what = f"job {job_id}" if job_id is not None else str(entry)
        log.warning("%s: wiping %s, left by the agent's previous run: %s", what, entry, why)
        job = outbox.job_of(entry) if hand_back else None
        shutil.rmtree(entry, ignore_errors=True)
        if entry.exists() or entry.is_symlink():
            with contextlib.suppress(OSError):
                entry.unlink()
        if job is not None:
            self._hand_back(job)

    def handle(self, job: Job) -> None:
        log.info("job %d: building %s %s for %s (attempt %d)", job.job_id, job.package,
                 job.version, job.abi, job.attempts)
        outbox_dir = outbox.job_dir(self.outbox_root, job.job_id)
        shutil.rmtree(outbox_dir, ignore_errors=True)
        self.notifier.status(f"building {job.package} {job.version} (job {job.job_id})")
        try:
            result = self.sandbox.build(job.package, job.version, job.job_id, outbox_dir,
                                        tick=lambda: self._heartbeat(job),
                                        tick_seconds=self.cfg.heartbeat_seconds,
                                        header=self._log_header(job), poll=self._poll_build)
        except BuildAborted as exc:
            shutil.rmtree(outbox_dir, ignore_errors=True)
            if isinstance(exc.__cause__, db.JobCancelled):
                log.warning("job %d: build of %s %s stopped: %s; nothing is reported, moving "
                            "on", job.job_id, job.package, job.version, exc.__cause__)
                return
            log.warning("job %d: build stopped: %s", job.job_id, exc)
            self._hand_back(job)
            return
        try:
            self._deliver(job, result, outbox_dir)
        finally:
            shutil.rmtree(outbox_dir, ignore_errors=True)

    def _log_header(self, job: Job) -> str:
        return (f"Pinwheel build of {job.package} {job.version} for {job.abi} "
                f"({self.platform}) on {self.registration.builder if self.registration else '?'}"
                f" ({socket.gethostname()}), job {job.job_id}, attempt {job.attempts}\n")

    def _poll_build(self) -> None:
        self.notifier.kick()
        if self.must_hand_back():
            raise BuildAborted("the agent is stopping now")

    def _heartbeat(self, job: Job) -> bool:
        """Extend the job's lease; False when the database could not be reached."""
        if self.must_hand_back():
            raise BuildAborted("the agent is stopping now")
        try:
            self._db(lambda q: q.heartbeat(job, self.cfg.lease_seconds), retry=False)
        except db.JobCancelled as exc:
            raise BuildAborted(f"cancelled by the master: {exc}") from exc
        except db.LeaseLost as exc:
            raise BuildAborted(f"lease lost: {exc}") from exc
        except db.DatabaseUnavailable as exc:
            # Keep going: the lease has time left, and finish will tell.
            log.warning("job %d: heartbeat failed: %s", job.job_id, exc)
            return False
        self._report_disk()
        return True

    def _hand_back(self, job: Job) -> None:
        try:
            self._db(lambda q: q.release(job), retry=False)
            log.info("job %d: handed back to the queue", job.job_id)
        except (db.LeaseLost, db.DatabaseUnavailable) as exc:
            log.info("job %d: not handed back (%s); its lease will expire", job.job_id, exc)

    def _deliver(self, job: Job, result: BuildResult, outbox_dir: Path) -> None:
        log_gz = outbox_dir / f"job-{job.job_id}.log.gz"
        with open(result.log_path, "rb") as src, gzip.open(log_gz, "wb") as dst:
            shutil.copyfileobj(src, dst)
        system = aptdeps.System() if result.status == "success" else None
        files = [report_for(w, system) for w in result.wheels]
        for f in files:
            if f.libraries:
                log.info("job %d: %s needs %s", job.job_id, f.filename, ", ".join(
                    f"{lib.library} ({lib.package or lib.kind}{', base' if lib.base else ''})"
                    for lib in f.libraries))
        pending = outbox.Pending(outbox_dir, job,
                                 self.registration.builder if self.registration else "",
                                 result.status, result.started, result.duration,
                                 report_for(log_gz), files)
        # Recorded before the push: a restarted agent delivers it without a rebuild.
        outbox.record(pending)
        self._push_and_report(pending)

    def _push_and_report(self, pending: outbox.Pending) -> None:
        """Push a recorded build's files, then report it (only after the push succeeded)."""
        job = pending.job
        try:
            self._push(job, pending.paths)
        except BuildAborted as exc:
            log.warning("job %d: %s", job.job_id, exc)
            self._hand_back(job)
            return
        except push.PushFailed as exc:
            log.error("job %d: %s; handing the job back", job.job_id, exc)
            self._hand_back(job)
            return
        except db.LeaseLost as exc:
            log.warning("job %d: result discarded: %s", job.job_id, exc)
            return
        try:
            build_id = self._db(lambda q: q.finish(job, pending.status, pending.started,
                                                   pending.duration, pending.log,
                                                   pending.files))
        except db.JobCancelled as exc:
            log.warning("job %d: the master refused the result (%s): %s; nothing of it is "
                        "published, moving on", job.job_id, pending.status, exc)
            return
        except db.LeaseLost as exc:
            log.warning("job %d: result discarded: %s", job.job_id, exc)
            return
        log.info("job %d: %s in %.1fs (build %d, %d file(s))", job.job_id, pending.status,
                 pending.duration, build_id, len(pending.files))

    def _push(self, job: Job, files: list[Path]) -> None:
        """Push ``files``, retrying with backoff and jitter while the job's lease holds.

        Between attempts the job is heartbeated, so a master away for a while
        costs no rebuild. Raises :class:`push.PushFailed` after
        ``push_attempts`` attempts (0: no limit) or when the lease would run out
        because the database is away too, :class:`db.LeaseLost` when the lease
        is gone, :class:`BuildAborted` when the agent must hand the job back.
        """
        cfg = self.cfg
        lease_until = time.monotonic() + cfg.lease_seconds  # the build heartbeated just now
        attempt = 0
        while True:
            attempt += 1
            self.notifier.status(f"pushing job {job.job_id} (attempt {attempt})")
            error = push.push_once(files, cfg.push_user, cfg.push_host, cfg.push_port,
                                   cfg.ssh_key, cfg.known_hosts, kick=self.notifier.kick)
            if error is None:
                if attempt > 1:
                    log.info("job %d: pushed on attempt %d", job.job_id, attempt)
                return
            if cfg.push_attempts and attempt >= cfg.push_attempts:
                raise push.PushFailed(push.failure_message(cfg.push_user, cfg.push_host,
                                                           cfg.push_port, attempt, error))
            wait = push.backoff(attempt)
            log.warning("job %d: push to %s@%s:%d failed (attempt %d): %s; retrying in %.0fs "
                        "(the build is kept)", job.job_id, cfg.push_user, cfg.push_host,
                        cfg.push_port, attempt, error, wait)
            end = time.monotonic() + wait
            while True:
                if self.must_hand_back():
                    raise BuildAborted("the agent is stopping now")
                try:
                    if self._heartbeat(job):
                        lease_until = time.monotonic() + cfg.lease_seconds
                except BuildAborted as exc:
                    if isinstance(exc.__cause__, db.LeaseLost):
                        raise exc.__cause__ from None
                    raise
                if time.monotonic() + cfg.heartbeat_seconds >= lease_until:
                    raise push.PushFailed(
                        f"could not push to {cfg.push_host} ({error}) and the database is "
                        "away too: the job's lease is about to run out")
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._sleep(min(left, cfg.heartbeat_seconds), self.abort)


def run(cfg: AgentConfig) -> None:
    agent = Agent(cfg)
    agent.install_signal_handlers()
    agent.run()
