"""The builder agent: claim a job, build it in the sandbox, push, report.

    register (name = database role; ABI and platform from the build Python)
    loop:  claim ─▶ build as the build user (heartbeat meanwhile)
                 ─▶ gzip the log ─▶ rsync wheels + log to the master
                 ─▶ finish (only after the push succeeded)
           nothing to do ─▶ LISTEN until work for our ABI is queued, or poll

A failed build is a result like any other (reported with its log). SIGTERM or
SIGINT asks the agent to stop after the current job; a second one hands the
job back to the queue at once. Lost database connections are retried with
backoff and jitter.
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
from pathlib import Path
from types import FrameType
from typing import Callable, TypeVar

from . import db, names, push
from .config import AgentConfig
from .queue import BuilderQueue, Job, Registration, ReportedFile
from .sandbox import BuildAborted, BuildResult, Sandbox, probe_interpreter

log = logging.getLogger("pinwheel.agent")
T = TypeVar("T")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def report_for(path: Path) -> ReportedFile:
    return ReportedFile(path.name, path.stat().st_size, sha256_of(path))


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
                               cfg.extra_index_urls, cfg.build_timeout, cfg.ca_bundle)

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
            log.info("%s: stopping after the current job (send it again to hand the job back)",
                     signal.Signals(signum).name)
            self.stopping.set()

    # ----------------------------------------------------------- database

    def _connect(self) -> BuilderQueue:
        delay = 1.0
        while not self.stopping.is_set():
            try:
                queue = BuilderQueue(db.connect(self.cfg.dsn, application_name="pinwheel-agent"))
                self.registration = queue.register(self.abi, self.platform, names.os_release(),
                                                   self.python_version)
                log.info("registered as builder %s (%s, %s, Python %s)%s",
                         self.registration.builder, self.abi, self.platform,
                         self.python_version, " [paused]" if self.registration.paused else "")
                return queue
            except db.DatabaseUnavailable as exc:
                wait = delay * random.uniform(0.5, 1.0)  # noqa: S311
                log.warning("%s; retrying in %.0fs", exc, wait)
                self.stopping.wait(wait)
                delay = min(delay * 2, 60.0)
        raise SystemExit(0)

    def _db(self, fn: Callable[[BuilderQueue], T], retry: bool = True) -> T:
        """Run ``fn`` on the queue, reconnecting (with backoff) when the database is lost."""
        delay = 1.0
        while True:
            if self.queue is None:
                self.queue = self._connect()
            try:
                return fn(self.queue)
            except db.DatabaseUnavailable as exc:
                self._drop_connection()
                if not retry or self.abort.is_set():
                    raise
                wait = delay * random.uniform(0.5, 1.0)  # noqa: S311
                log.warning("%s; retrying in %.0fs", exc, wait)
                self.abort.wait(wait)
                delay = min(delay * 2, 60.0)

    def _drop_connection(self) -> None:
        if self.queue is not None:
            with contextlib.suppress(Exception):  # the connection is already broken
                self.queue.conn.close()
        self.queue = None

    # --------------------------------------------------------------- loop

    def run(self) -> None:
        self.cfg.work_dir.mkdir(parents=True, exist_ok=True)
        self.sandbox.kill_build_processes()  # a crashed predecessor's leftovers
        self.queue = self._connect()
        while not self.stopping.is_set():
            job = self._db(lambda q: q.claim(self.cfg.lease_seconds))
            if job is None:
                try:
                    self._db(self._wait_for_work, retry=False)
                except db.DatabaseUnavailable as exc:
                    log.warning("%s; reconnecting", exc)
                    self.stopping.wait(1 + random.random())  # noqa: S311
                self._drain_wake_pipe()
                continue
            self.handle(job)
        log.info("agent stopped")

    def _wait_for_work(self, queue: BuilderQueue) -> bool:
        wake = (self._wake_r,) if self._wake_r is not None else ()
        return queue.wait_for_work(names.target(self.abi, self.platform), self.cfg.poll_seconds,
                                   wake)

    def handle(self, job: Job) -> None:
        log.info("job %d: building %s %s for %s (attempt %d)", job.job_id, job.package,
                 job.version, job.abi, job.attempts)
        outbox = self.cfg.work_dir / "outbox" / f"job-{job.job_id}"
        shutil.rmtree(outbox, ignore_errors=True)
        try:
            result = self.sandbox.build(job.package, job.version, job.job_id, outbox,
                                        tick=lambda: self._heartbeat(job),
                                        tick_seconds=self.cfg.heartbeat_seconds,
                                        header=self._log_header(job))
        except BuildAborted as exc:
            log.warning("job %d: build stopped: %s", job.job_id, exc)
            self._hand_back(job)
            shutil.rmtree(outbox, ignore_errors=True)
            return
        try:
            self._deliver(job, result, outbox)
        finally:
            shutil.rmtree(outbox, ignore_errors=True)

    def _log_header(self, job: Job) -> str:
        return (f"Pinwheel build of {job.package} {job.version} for {job.abi} "
                f"({self.platform}) on {self.registration.builder if self.registration else '?'}"
                f" ({socket.gethostname()}), job {job.job_id}, attempt {job.attempts}\n")

    def _heartbeat(self, job: Job) -> None:
        if self.abort.is_set():
            raise BuildAborted("the agent is stopping now")
        try:
            self._db(lambda q: q.heartbeat(job, self.cfg.lease_seconds), retry=False)
        except db.LeaseLost as exc:
            raise BuildAborted(f"lease lost: {exc}") from exc
        except db.DatabaseUnavailable as exc:
            # Keep building: the lease has time left, and finish will tell.
            log.warning("job %d: heartbeat failed: %s", job.job_id, exc)

    def _hand_back(self, job: Job) -> None:
        try:
            self._db(lambda q: q.release(job), retry=False)
            log.info("job %d: handed back to the queue", job.job_id)
        except (db.LeaseLost, db.DatabaseUnavailable) as exc:
            log.info("job %d: not handed back (%s); its lease will expire", job.job_id, exc)

    def _deliver(self, job: Job, result: BuildResult, outbox: Path) -> None:
        log_gz = outbox / f"job-{job.job_id}.log.gz"
        with open(result.log_path, "rb") as src, gzip.open(log_gz, "wb") as dst:
            shutil.copyfileobj(src, dst)
        files = [report_for(w) for w in result.wheels]
        log_report = report_for(log_gz)
        try:
            push.push([*result.wheels, log_gz], self.cfg.push_user, self.cfg.push_host,
                      self.cfg.push_port, self.cfg.ssh_key, self.cfg.known_hosts,
                      attempts=self.cfg.push_attempts)
        except push.PushFailed as exc:
            log.error("job %d: %s; handing the job back", job.job_id, exc)
            self._hand_back(job)
            return
        try:
            build_id = self._db(lambda q: q.finish(job, result.status, result.started,
                                                   result.duration, log_report, files))
        except db.LeaseLost as exc:
            log.warning("job %d: result discarded: %s", job.job_id, exc)
            return
        log.info("job %d: %s in %.1fs (build %d, %d file(s))", job.job_id, result.status,
                 result.duration, build_id, len(files))


def run(cfg: AgentConfig) -> None:
    agent = Agent(cfg)
    agent.install_signal_handlers()
    agent.run()
