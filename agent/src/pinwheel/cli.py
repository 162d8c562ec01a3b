"""The ``pinwheel`` command: the agent, the master's services and operator commands.

Exit status: 0 success, 1 an error explained on stderr, 2 a usage error.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__, db
from .config import AgentConfig, ConfigError, MasterConfig

AGENT_CONF = "/etc/pinwheel/agent.conf"
MASTER_CONF = "/etc/pinwheel/master.conf"
log = logging.getLogger("pinwheel")


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain, aligned text table."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _read_password(args: argparse.Namespace) -> str | None:
    if args.password_file:
        return Path(args.password_file).read_text(encoding="utf-8").strip()
    if args.password_env:
        value = os.environ.get(args.password_env)
        if not value:
            raise ConfigError(f"environment variable {args.password_env} is empty or unset")
        return value
    if sys.stdin.isatty():
        return getpass.getpass("password: ")
    return None


# ------------------------------------------------------------------ db

def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from . import schema
    conn = db.connect(args.dsn, application_name="pinwheel-db")
    applied = schema.upgrade(conn)
    if applied:
        for mig in applied:
            print(f"applied migration {mig.version:04d} {mig.name}")
    else:
        print("schema is up to date")
    return 0


def cmd_db_add_login(args: argparse.Namespace, group: str) -> int:
    from . import schema
    conn = db.connect(args.dsn, application_name="pinwheel-db")
    schema.create_login(conn, args.name, group, _read_password(args))
    print(f"login role {args.name} is in {group}")
    return 0


# -------------------------------------------------------------- services

def cmd_agent(args: argparse.Namespace) -> int:
    from . import agent
    agent.run(AgentConfig.load(args.config))
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from . import ingest
    cfg = MasterConfig.load(args.config)
    if args.once:
        conn = db.connect(cfg.dsn, application_name="pinwheel-ingest")
        try:
            n = ingest.process_pending(conn, cfg)
            left = db.call(conn, "SELECT count(*) FROM builds WHERE ingest_state = 'pending'")
        finally:
            conn.close()
        print(f"ingested {n} build(s)")
        if left[0][0]:
            print(f"pinwheel: error: {left[0][0]} build(s) still pending: see the log above",
                  file=sys.stderr)
            return 1
        return 0
    ingest.serve(cfg)
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from . import watch
    cfg = MasterConfig.load(args.config)
    if args.once:
        result = watch.poll_once(cfg)
        print(f"{cfg.watch.mode} mode, {cfg.upstream_url}: {result.due} project(s) due, "
              f"{result.fetched} fetched, {result.unchanged} unchanged, {result.changed} "
              f"changed, {result.removed} removed upstream; {result.events} event(s), "
              f"{result.jobs} job(s) queued, {result.cancelled} cancelled")
        for error in result.errors:
            print(f"pinwheel: error: {error}", file=sys.stderr)
        if result.errors:
            print(f"pinwheel: error: {len(result.errors)} project(s) could not be read; they "
                  "are retried at the next poll (see watch_projects.last_error)", file=sys.stderr)
            return 1
        return 0
    watch.serve(cfg)
    return 0


# ----------------------------------------------------------------- index

def _progress_bar(stream: Any) -> Any:
    """A progress callback drawing a bar on ``stream`` (a terminal), or None."""
    if not stream.isatty():
        return None

    def show(done: int, total: int, package: str) -> None:
        width = 30
        filled = width * done // max(total, 1)
        stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
                     f"{package[:40]:<40}")
        if done == total:
            stream.write("\n")
        stream.flush()
    return show


def cmd_index_rebuild(args: argparse.Namespace) -> int:
    from . import index, ingest
    cfg = MasterConfig.load(args.config)
    conn = db.connect(cfg.dsn, application_name="pinwheel-index")
    try:
        n = index.rebuild(conn, cfg.www_root, ingest.index_options(cfg),
                          progress=_progress_bar(sys.stderr))
    finally:
        conn.close()
    print(f"wrote the pages of {n} project(s) and the root page under {cfg.www_root}")
    return 0


# ------------------------------------------------------------- operators

def cmd_add(args: argparse.Namespace) -> int:
    from . import planner
    cfg = MasterConfig.load(args.config)
    conn = db.connect(cfg.dsn, application_name="pinwheel-add")
    result = planner.add(conn, args.upstream or cfg.upstream_url, args.name, args.version,
                         args.priority, cfg.ca_bundle)
    rows = [(r.version, "yes" if r.has_sdist else "no", "yes" if r.yanked else "", r.jobs, r.note)
            for r in result.releases]
    print(f"{result.display_name} ({result.package}): {len(result.releases)} release(s), "
          f"{result.jobs} job(s) queued for {', '.join(result.active_targets) or '(no targets)'}")
    if rows:
        print(_table(("version", "sdist", "yanked", "jobs", "note"), rows))
    if not result.active_targets:
        print("warning: no builder has registered yet (each builder makes its target, its ABI "
              "on its platform), so nothing was queued; start a builder, then run this again",
              file=sys.stderr)
    return 0


def cmd_pause(args: argparse.Namespace, paused: bool) -> int:
    from . import builder_control
    cfg = MasterConfig.load(args.config)
    conn = db.connect(cfg.dsn, application_name="pinwheel-pause")
    if not (args.builders or args.target or args.all):
        print("name the builders, or give --target ABI-PLATFORM, or --all "
              "(see `pinwheel status` for both)", file=sys.stderr)
        return 2
    try:
        states = builder_control.set_paused(conn, paused, args.builders, args.target)
    except builder_control.NoSuchBuilder as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(_table(("builder", "target", "state", "building"),
                 [(s.builder, s.target, "paused" if s.paused else "active", s.current_job)
                  for s in states]))
    if paused and any(s.current_job for s in states):
        print("A paused builder finishes the build it holds, then claims nothing until resumed.")
    return 0


def cmd_skip(args: argparse.Namespace, skipping: bool) -> int:
    from . import skips
    verb = "skip" if skipping else "unskip"
    if bool(args.name) == bool(args.target) or (args.target and args.version):
        print(f"usage: pinwheel {verb} NAME [VERSION] | --target ABI-PLATFORM "
              "(see `pinwheel status` for the targets)", file=sys.stderr)
        return 2
    cfg = MasterConfig.load(args.config)
    conn = db.connect(cfg.dsn, application_name=f"pinwheel-{verb}")
    if skipping:
        result = skips.skip(conn, args.reason, args.name, args.version, args.target)
        if result.changed:
            print(f"skipped {result.what} ({' '.join(args.reason.split())}): "
                  f"{result.cancelled} queued job(s) cancelled")
        else:
            print(f"{result.what} was already skipped for that reason; "
                  f"{result.cancelled} queued job(s) cancelled")
        running = ("a build already running finishes" if args.target else
                   "a build of it already running is cancelled (its builder stops it)")
        print(f"Nothing is queued for it until `pinwheel unskip`; {running}.")
    else:
        result = skips.unskip(conn, args.name, args.version, args.target)
        state = "unskipped" if result.changed else "was not skipped"
        print(f"{result.what} {state}: {result.queued} job(s) queued")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from . import status
    cfg = MasterConfig.load(args.config)
    conn = db.connect(cfg.dsn, application_name="pinwheel-status")
    try:
        doc = status.collect(conn, recent=args.recent)
    finally:
        conn.close()
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        print()
        return 0
    base = cfg.public_index_url.rstrip("/")
    base = base[:-len("/simple")] if base.endswith("/simple") else ""
    print(status.render_text(doc, base_url=base))
    return 0


def cmd_stats_render(args: argparse.Namespace) -> int:
    from . import stats_pages
    cfg = MasterConfig.load(args.config)
    conn = db.connect(cfg.dsn, application_name="pinwheel-stats")
    try:
        written = stats_pages.render(conn, cfg.www_root, days=args.days)
    finally:
        conn.close()
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    from . import metrics
    cfg = MasterConfig.load(args.config)
    conn = db.connect(cfg.dsn, application_name="pinwheel-metrics")
    try:
        if args.textfile:
            path = Path(args.textfile)
            if not path.parent.is_dir():
                print(f"pinwheel: error: {path.parent} is not a directory: create it (it is "
                      "node_exporter's --collector.textfile.directory) or give another "
                      "--textfile", file=sys.stderr)
                return 1
            metrics.write_textfile(conn, path)
        else:
            sys.stdout.write(metrics.collect(conn))
    finally:
        conn.close()
    return 0


def _queue_scope(args: argparse.Namespace, verb: str) -> tuple[Any, Any] | int:
    """Connect and check what ``args`` names: (connection, scope), or an exit status."""
    from . import operator_queue
    if args.target is not None:
        try:
            operator_queue.split_target(args.target)
        except ValueError as exc:
            print(f"usage: pinwheel {verb} NAME [VERSION] [--target ABI-PLATFORM]: {exc}",
                  file=sys.stderr)
            return 2
    cfg = MasterConfig.load(args.config)
    conn = db.connect(cfg.dsn, application_name=f"pinwheel-{verb}")
    try:
        return conn, operator_queue.resolve(conn, args.name, args.version, args.target)
    except operator_queue.NothingMatched as exc:
        print(f"pinwheel: error: {exc}", file=sys.stderr)
        return 1


def cmd_bump(args: argparse.Namespace) -> int:
    from . import operator_queue
    found = _queue_scope(args, "bump")
    if isinstance(found, int):
        return found
    conn, scope = found
    try:
        jobs = operator_queue.bump(conn, scope)
    except operator_queue.NothingMatched as exc:
        print(f"pinwheel: error: {exc}", file=sys.stderr)
        return 1
    moved = sum(j.outcome == "moved to the front" for j in jobs)
    print(f"{scope.what}: {moved} queued job(s) moved to the front of the queue")
    print(_table(("job", "version", "target", "state", "done"),
                 [(j.job_id, j.version, j.target, j.state, j.outcome) for j in jobs]))
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    from . import operator_queue
    found = _queue_scope(args, "retry")
    if isinstance(found, int):
        return found
    conn, scope = found
    try:
        builds = operator_queue.retry(conn, scope)
    except operator_queue.NothingMatched as exc:
        print(f"pinwheel: error: {exc}", file=sys.stderr)
        return 1
    queued = sum(b.queued for b in builds)
    print(f"{scope.what}: {queued} failed build(s) queued again, at the front of the queue")
    print(_table(("version", "target", "last build", "finished", "job", "done"),
                 [(b.version, b.target, b.last_status, b.finished_at.strftime("%Y-%m-%d %H:%M"),
                   b.job_id or "", b.outcome) for b in builds]))
    if not any(b.queued or b.job_id for b in builds):
        print("pinwheel: error: nothing could be queued again (see the last column: "
              "`pinwheel unskip` what is skipped)", file=sys.stderr)
        return 1
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from . import importer
    cfg = MasterConfig.load(args.config)
    if args.upstream:
        cfg.upstream_url = args.upstream
    if args.workers < 1:
        print("pinwheel import: --workers must be at least 1", file=sys.stderr)
        return 2
    if not args.verbose:
        # One line per new release is the watcher's log; for a whole upstream, the progress
        # (bar, or a line every 5 %) says more.
        logging.getLogger("pinwheel.watch").setLevel(logging.WARNING)
    conn = db.connect(cfg.dsn, application_name="pinwheel-import")
    try:
        result = importer.run(conn, cfg, args.workers, progress=_progress_bar(sys.stderr))
    finally:
        conn.close()
    poll = result.poll
    rate = poll.due / result.seconds if result.seconds > 0 else 0.0
    print(f"{cfg.upstream_url}: {result.listed} project(s) listed, {result.before} imported "
          f"before this run, {poll.due} now ({rate:.0f}/s); {poll.events} event(s), "
          f"{poll.jobs} job(s) queued, {poll.removed} removed upstream")
    if poll.errors:
        for error in poll.errors[:20]:
            print(f"pinwheel: error: {error}", file=sys.stderr)
        print(f"pinwheel: error: {len(poll.errors)} project(s) could not be read (see "
              "watch_projects.last_error); run `pinwheel import` again to retry them, or let "
              "`pinwheel watch` do it", file=sys.stderr)
        return 1
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    from . import operator_release as ops
    cfg = MasterConfig.load(args.config)
    conn = db.connect(cfg.dsn, application_name="pinwheel-rebuild")
    try:
        result = ops.rebuild(conn, args.name, args.version, args.target, args.priority,
                             args.reason)
    except ops.NothingMatched as exc:
        print(f"pinwheel rebuild: {exc}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    print(_table(("version", "target", "last build", "published files", "rebuild"),
                 [(r.version, r.target, r.last_build, r.published,
                   "queued" if r.queued else "a job is queued or running already")
                  for r in result.rows]))
    print(f"{result.package}: {result.queued} build(s) queued. The published wheels stay on "
          "the index until each new build replaces them; a failed rebuild leaves them.")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    from . import ingest
    from . import operator_release as ops
    cfg = MasterConfig.load(args.config)
    conn = db.connect(cfg.dsn, application_name="pinwheel-remove")
    try:
        result = ops.remove(conn, cfg.www_root, ingest.index_options(cfg), args.name,
                            args.version, args.reason)
    except ops.NothingMatched as exc:
        print(f"pinwheel remove: {exc}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    what = f"{result.package} {result.version}" if result.version else result.package
    if result.files:
        print(_table(("unpublished file",), [(f,) for f in result.files]))
    print(f"removed {what}: {len(result.files)} file(s) unpublished, {result.cancelled} "
          f"job(s) cancelled{' (it was removed before)' if result.already else ''}.")
    print(f"It stays skipped ({ops.REMOVED_PREFIX}{' '.join(args.reason.split())}): the "
          f"watcher does not queue it again; `pinwheel unskip {result.package}"
          f"{' ' + result.version if result.version else ''}` builds it again.")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from . import log_import, time_saved
    cfg = MasterConfig.load(args.config)
    logs_cfg = log_import.LogsConfig.load(args.config)
    if args.summary:
        conn = db.connect(cfg.dsn, application_name="pinwheel-logs-summary")
        try:
            total = time_saved.total(conn)
            months = time_saved.per_month(conn, args.months)
            projects = time_saved.per_project(conn, args.top)
            days = time_saved.downloads_per_day(conn, args.days)
            state = time_saved.importer_state(conn)
        finally:
            conn.close()
        print(f"Time saved: {time_saved.human(total.saved)} by {total.downloads} download(s) "
              "of non-pure wheels")
        print("\nPer month (UTC)")
        print(_table(("month", "downloads", "saved"),
                     [(f"{m.key:%Y-%m}", m.downloads, time_saved.human(m.saved))
                      for m in months]) if months else "  (none yet)")
        print(f"\nTop {args.top} projects")
        print(_table(("project", "downloads", "saved"),
                     [(p.key, p.downloads, time_saved.human(p.saved)) for p in projects])
              if projects else "  (none yet)")
        print(f"\nRequests per day, last {args.days} days (UTC)")
        print(_table(("day", "wheels", "requests"), days) if days else "  (none)")
        print("\nImporter")
        print(_table(("log", "lines", "malformed", "rotations", "truncations", "last commit"),
                     state) if state else "  (nothing imported yet)")
        return 0
    if args.once:
        imported, malformed = log_import.import_available(cfg.dsn, logs_cfg)
        print(f"imported {imported} line(s) of {logs_cfg.access_log}; {malformed} malformed "
              "(skipped; a sample is in download_log_malformed)")
        return 0
    log_import.serve(cfg.dsn, logs_cfg)
    return 0


# ----------------------------------------------------------------- parser

def _release_args(p: argparse.ArgumentParser, version: str = "only this release",
                  target: str | None = None) -> None:
    """The project name and optional version every release command takes, and with
    ``target`` (its help) the optional --target."""
    p.add_argument("name", help="project name, any spelling")
    p.add_argument("version", nargs="?", help=version)
    if target is not None:
        p.add_argument("--target", metavar="ABI-PLATFORM", help=target)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pinwheel", description="Pinwheel wheel-building farm")
    p.add_argument("--version", action="version", version=f"pinwheel {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pdb = sub.add_parser("db", help="database administration (run on the database host)")
    dbsub = pdb.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    admin_dsn = os.environ.get("PINWHEEL_ADMIN_DSN", "dbname=pinwheel")
    up = dbsub.add_parser("upgrade", help="create roles and apply pending schema migrations")
    up.add_argument("--dsn", default=admin_dsn,
                    help="superuser connection (default: $PINWHEEL_ADMIN_DSN or dbname=pinwheel)")
    up.set_defaults(func=cmd_db_upgrade)
    for action, group, what in (("add-builder", "pinwheel_builders", "a builder"),
                                ("add-master", "pinwheel_master", "the master's services")):
        a = dbsub.add_parser(action, help=f"create or update the login role of {what}")
        a.add_argument("name", help="role name (for a builder: the builder's name)")
        a.add_argument("--dsn", default=admin_dsn, help="superuser connection")
        a.add_argument("--password-file", help="read the password from this file")
        a.add_argument("--password-env", metavar="VAR", help="read the password from $VAR")
        a.set_defaults(func=lambda args, g=group: cmd_db_add_login(args, g))

    ag = sub.add_parser("agent", help="run the builder agent (pinwheel-agent.service)")
    ag.add_argument("--config", default=AGENT_CONF, help=f"default {AGENT_CONF}")
    ag.set_defaults(func=cmd_agent)

    ing = sub.add_parser("ingest", help="verify and publish finished builds (master service)")
    ing.add_argument("--config", default=MASTER_CONF, help=f"default {MASTER_CONF}")
    ing.add_argument("--once", action="store_true", help="process what is pending, then exit")
    ing.set_defaults(func=cmd_ingest)

    wa = sub.add_parser("watch", help="follow the upstream index: new releases, yanks and "
                                      "deletions become work (master service)")
    wa.add_argument("--config", default=MASTER_CONF, help=f"default {MASTER_CONF}")
    wa.add_argument("--once", action="store_true", help="poll once, then exit (1 on errors)")
    wa.set_defaults(func=cmd_watch)

    idx = sub.add_parser("index", help="the static index nginx serves (master)")
    idxsub = idx.add_subparsers(dest="index_command", required=True, metavar="ACTION")
    rb = idxsub.add_parser("rebuild", help="rewrite every project's pages and the root page")
    rb.add_argument("--config", default=MASTER_CONF, help=f"default {MASTER_CONF}")
    rb.set_defaults(func=cmd_index_rebuild)

    add = sub.add_parser("add", help="queue builds of a project from the upstream index")
    add.add_argument("name", help="project name, any spelling")
    add.add_argument("version", nargs="?", help="only this version (default: every release)")
    add.add_argument("--config", default=MASTER_CONF, help=f"default {MASTER_CONF}")
    add.add_argument("--upstream", help="upstream simple index URL (default: from the config)")
    add.add_argument("--priority", type=int, default=0, help="higher builds sooner (default 0)")
    add.set_defaults(func=cmd_add)

    for verb, paused, what in (("pause", True, "stop builders claiming jobs (no restart)"),
                               ("resume", False, "let paused builders claim jobs again")):
        pz = sub.add_parser(verb, help=what)
        pz.add_argument("builders", nargs="*", metavar="BUILDER", help="builder names")
        pz.add_argument("--target", metavar="ABI-PLATFORM",
                        help="every builder of this target, e.g. cp311-linux_armv7l")
        pz.add_argument("--all", action="store_true", help="every builder")
        pz.add_argument("--config", default=MASTER_CONF, help=f"default {MASTER_CONF}")
        pz.set_defaults(func=lambda args, p=paused: cmd_pause(args, p))

    for verb, skipping, what in (
            ("skip", True, "stop building a project, a release or a target (with a reason); "
                           "cancels its queued jobs"),
            ("unskip", False, "build a skipped project, release or target again")):
        sk = sub.add_parser(verb, help=what)
        sk.add_argument("name", nargs="?", help="project name, any spelling")
        sk.add_argument("version", nargs="?", help="only this release")
        sk.add_argument("--target", metavar="ABI-PLATFORM",
                        help="a build target instead, e.g. cp311-linux_armv7l")
        if skipping:
            sk.add_argument("--reason", required=True,
                            help="why (shown on the project page and in `pinwheel status`)")
        sk.add_argument("--config", default=MASTER_CONF, help=f"default {MASTER_CONF}")
        sk.set_defaults(func=lambda args, s=skipping: cmd_skip(args, s))

    st = sub.add_parser("status", help="the queue, the builders and recent builds")
    st.add_argument("--config", default=MASTER_CONF, help=f"default {MASTER_CONF}")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.add_argument("--recent", type=int, default=10, help="how many recent builds (default 10)")
    st.set_defaults(func=cmd_status)

    lg = sub.add_parser("logs", help="import nginx's access log into downloads (master "
                                     "service); --summary: time saved and downloads")
    lg.add_argument("--config", default=MASTER_CONF, help=f"default {MASTER_CONF}")
    lg.add_argument("--once", action="store_true", help="import what the log holds, then exit")
    lg.add_argument("--summary", action="store_true",
                    help="print time saved (total, per month, per project), requests per day "
                         "and the importer's counters")
    lg.add_argument("--months", type=int, default=12, help="months in --summary (default 12)")
    lg.add_argument("--top", type=int, default=20, help="projects in --summary (default 20)")
    lg.add_argument("--days", type=int, default=14, help="days in --summary (default 14)")
    lg.set_defaults(func=cmd_logs)
    im = sub.add_parser("import", help="record every project of the upstream and queue their "
                                       "builds (mirror mode; resumable: run it again after an "
                                       "interruption)")
    im.add_argument("--config", default=MASTER_CONF, help=f"default {MASTER_CONF}")
    im.add_argument("--upstream", help="upstream simple index URL (default: from the config)")
    im.add_argument("--workers", type=int, default=8,
                    help="projects fetched and recorded at once (default 8)")
    im.set_defaults(func=cmd_import)

    rbd = sub.add_parser("rebuild", help="build releases already built again (after a builder "
                                         "fix); the published wheels stay until replaced")
    _release_args(rbd, version="only this release (default: every one built)",
                  target="only this target")
    rbd.add_argument("--priority", type=int, default=0, help="higher builds sooner (default 0)")
    rbd.add_argument("--reason", default="rebuild requested",
                     help="why (recorded in operator_actions)")
    rbd.add_argument("--config", default=MASTER_CONF, help=f"default {MASTER_CONF}")
    rbd.set_defaults(func=cmd_rebuild)

    rm = sub.add_parser("remove", help="unpublish a project or a release, cancel its jobs and "
                                       "skip it (the watcher does not add it back)")
    _release_args(rm)
    rm.add_argument("--reason", required=True, help="why (recorded, and shown as the skip)")
    rm.add_argument("--config", default=MASTER_CONF, help=f"default {MASTER_CONF}")
    rm.set_defaults(func=cmd_remove)

    sts = sub.add_parser("stats", help="the /stats/ and /builders/ pages (master)")
    stsub = sts.add_subparsers(dest="stats_command", required=True, metavar="ACTION")
    sr = stsub.add_parser("render", help="write /stats/ and /builders/ under the www root "
                                         "(pinwheel-stats.timer)")
    sr.add_argument("--config", default=MASTER_CONF, help=f"default {MASTER_CONF}")
    sr.add_argument("--days", type=int, default=30, help="days shown in the charts (default 30)")
    sr.set_defaults(func=cmd_stats_render)

    me = sub.add_parser("metrics", help="the farm's metrics in Prometheus' text format")
    me.add_argument("--config", default=MASTER_CONF, help=f"default {MASTER_CONF}")
    me.add_argument("--textfile", metavar="PATH",
                    help="write them atomically to PATH (node_exporter's textfile collector, "
                         "e.g. /var/lib/prometheus/node-exporter/pinwheel.prom) instead of "
                         "printing them")
    me.set_defaults(func=cmd_metrics)

    for verb, func, what in (
            ("bump", cmd_bump, "move the queued jobs of a project, a release or one target of "
                               "it to the front of the queue"),
            ("retry", cmd_retry, "queue again, at the front, the failed or timed-out builds of a "
                                 "project, a release or one target of it")):
        bq = sub.add_parser(verb, help=what)
        _release_args(bq, target="only this build target, e.g. cp311-linux_armv7l")
        bq.add_argument("--config", default=MASTER_CONF, help=f"default {MASTER_CONF}")
        bq.set_defaults(func=func)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ConfigError, db.PinwheelError, ValueError, OSError) as exc:
        print(f"pinwheel: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        # Errors of our own modules carry a message meant for the operator.
        if type(exc).__module__.startswith("pinwheel."):
            print(f"pinwheel: error: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
