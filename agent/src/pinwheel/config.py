"""Configuration files for the agent (``agent.conf``) and the master (``master.conf``).

Both are INI files (readable by Python 3.9's standard library). Every setting
has a default here except the ones that identify the farm. The templates the
Ansible roles install document each setting.
"""

from __future__ import annotations

import configparser
import re
from dataclasses import dataclass, field
from pathlib import Path

from .limits import BuildLimits


class ConfigError(Exception):
    """The configuration file is missing, unreadable or wrong."""


def _read(path: str | Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as fh:
            parser.read_file(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {path}: {exc.strerror}") from exc
    except configparser.Error as exc:
        raise ConfigError(f"invalid configuration {path}: {exc}") from exc
    return parser


def _get(parser: configparser.ConfigParser, section: str, key: str, path: str | Path,
         default: str | None = None) -> str:
    value = parser.get(section, key, fallback=default)
    if value is None or value == "":
        raise ConfigError(f"{path}: [{section}] {key} is required")
    return value


def _int(parser: configparser.ConfigParser, section: str, key: str, path: str | Path,
         default: int) -> int:
    raw = parser.get(section, key, fallback=str(default))
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(
            f"{path}: [{section}] {key} must be a whole number, not {raw!r}") from None


def _count(parser: configparser.ConfigParser, section: str, key: str, path: str | Path,
           default: int) -> int:
    """A whole number >= 0 (for limits, 0 means none)."""
    value = _int(parser, section, key, path, default)
    if value < 0:
        raise ConfigError(f"{path}: [{section}] {key} must be 0 or more, not {value}")
    return value


@dataclass
class AgentConfig:
    """Settings of one builder's agent."""

    dsn: str                       # libpq connection string; the user is the builder's name
    build_user: str                # the unprivileged user builds run as (not the agent's)
    work_dir: Path                 # scratch space: one fresh directory per build, plus the outbox
    index_url: str                 # the upstream index builds fetch sdists and build deps from
    # further indexes for build dependencies, e.g. the farm's own index
    extra_index_urls: list[str] = field(default_factory=list)
    python: str = "/usr/bin/python3"  # the interpreter whose ABI this builder builds for
    build_timeout: int = 3600      # seconds before the whole build tree is killed
    lease_seconds: int = 300       # how long a claim lasts without a heartbeat
    heartbeat_seconds: int = 30    # how often the lease is extended while building
    poll_seconds: int = 60         # slow poll when no NOTIFY arrives
    push_host: str = "localhost"   # the master, as reachable over SSH
    push_port: int = 22
    push_user: str = "pinwheel-upload"
    ssh_key: Path = Path("/var/lib/pinwheel-agent/.ssh/id_ed25519")
    known_hosts: Path = Path("/var/lib/pinwheel-agent/.ssh/known_hosts")
    # rsync attempts (with backoff) before the job is handed back; 0: keep trying (heartbeating
    # meanwhile) for as long as the job's lease is held
    push_attempts: int = 0
    ca_bundle: str = ""            # CA bundle for HTTPS indexes (pip --cert); "" = system default
    # Limits of each build (pinwheel.limits; 0 = no limit)
    build_memory_mb: int = 2048    # address space of each process of a build
    build_max_processes: int = 256  # processes of the build user
    build_max_file_mb: int = 2048  # any one file a build writes
    build_max_disk_mb: int = 8192  # the build's whole directory
    build_max_log_mb: int = 16     # the build's log: beyond it, the middle is cut out
    # Free space (MiB) the work directory's file system must keep: under it no
    # job is claimed; under half of it a running build is stopped.
    min_free_disk_mb: int = 1024
    # Seconds a SIGTERM'd agent may spend finishing its job before handing it back
    drain_seconds: int = 3900
    # "restricted": builds reach the network only through build_proxy (a firewall rule of the
    # builder role confines the build user; the agent checks it); "open": anywhere
    build_network: str = "open"
    build_proxy: str = ""          # http://127.0.0.1:8888: the proxy builds go through

    @classmethod
    def load(cls, path: str | Path) -> AgentConfig:
        p = _read(path)
        s = "agent"
        if not p.has_section(s):
            raise ConfigError(f"{path}: missing [agent] section")
        extras = p.get(s, "extra_index_urls", fallback="").split()
        network = p.get(s, "build_network", fallback="open").strip() or "open"
        proxy = p.get(s, "build_proxy", fallback="").strip()
        if network not in ("open", "restricted"):
            raise ConfigError(f"{path}: [agent] build_network must be open or restricted, "
                              f"not {network!r}")
        if network == "restricted" and not proxy.startswith("http://"):
            raise ConfigError(f"{path}: [agent] build_network = restricted needs build_proxy, "
                              f"the proxy builds go through (http://host:port), not {proxy!r}")
        return cls(
            dsn=_get(p, s, "dsn", path),
            build_user=_get(p, s, "build_user", path),
            work_dir=Path(_get(p, s, "work_dir", path, "/var/lib/pinwheel-agent/work")),
            index_url=_get(p, s, "index_url", path, "https://pypi.org/simple/"),
            extra_index_urls=extras,
            python=_get(p, s, "python", path, "/usr/bin/python3"),
            build_timeout=_int(p, s, "build_timeout", path, 3600),
            lease_seconds=_int(p, s, "lease_seconds", path, 300),
            heartbeat_seconds=_int(p, s, "heartbeat_seconds", path, 30),
            poll_seconds=_int(p, s, "poll_seconds", path, 60),
            push_host=_get(p, "push", "host", path) if p.has_section("push") else "localhost",
            push_port=_int(p, "push", "port", path, 22),
            push_user=p.get("push", "user", fallback="pinwheel-upload"),
            ssh_key=Path(p.get("push", "key", fallback=str(cls.ssh_key))),
            known_hosts=Path(p.get("push", "known_hosts", fallback=str(cls.known_hosts))),
            push_attempts=_count(p, "push", "attempts", path, 0),
            ca_bundle=p.get(s, "ca_bundle", fallback=""),
            build_memory_mb=_count(p, s, "build_memory_mb", path, 2048),
            build_max_processes=_count(p, s, "build_max_processes", path, 256),
            build_max_file_mb=_count(p, s, "build_max_file_mb", path, 2048),
            build_max_disk_mb=_count(p, s, "build_max_disk_mb", path, 8192),
            build_max_log_mb=_count(p, s, "build_max_log_mb", path, 16),
            min_free_disk_mb=_count(p, s, "min_free_disk_mb", path, 1024),
            drain_seconds=_count(p, s, "drain_seconds", path, 3900),
            build_network=network,
            build_proxy=proxy if network == "restricted" else "",
        )

    def build_limits(self) -> BuildLimits:
        return BuildLimits(timeout=self.build_timeout, memory_mb=self.build_memory_mb,
                           max_processes=self.build_max_processes,
                           max_file_mb=self.build_max_file_mb,
                           max_disk_mb=self.build_max_disk_mb, max_log_mb=self.build_max_log_mb,
                           min_free_mb=self.min_free_disk_mb // 2)


def _bool(parser: configparser.ConfigParser, section: str, key: str, path: str | Path,
          default: bool) -> bool:
    try:
        return parser.getboolean(section, key, fallback=default)
    except ValueError:
        raw = parser.get(section, key)
        raise ConfigError(f"{path}: [{section}] {key} must be true or false, not {raw!r}") from None


WATCH_MODES = ("mirror", "allowlist")
REMOVAL_POLICIES = ("keep", "remove")
HISTORIES = ("all", "latest")
_REQUIREMENT_NAME_RE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def allowlist_names(text: str) -> list[str]:
    """Project names from an allowlist file: one a line, or requirements-file lines
    (``name[extra]>=1.0 ; marker``: the name is taken); ``#`` comments and pip options
    (``-r``, ``--index-url`` ...) are ignored."""
    found = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        m = _REQUIREMENT_NAME_RE.match(line)
        if m:
            found.append(m.group(1))
    return found


@dataclass
class WatchConfig:
    """The ``[watch]`` section: how ``pinwheel watch`` follows the upstream."""

    # mirror: every project upstream; allowlist: only ``projects`` (and ``projects_file``)
    mode: str = "allowlist"
    projects: list[str] = field(default_factory=list)
    projects_file: str = ""           # one name a line, or a requirements file
    poll_seconds: int = 60            # between two polls of the upstream
    # A release or project deleted upstream: keep its wheels (marked removed upstream) or
    # remove them from the index.
    on_removal: str = "keep"
    # A project seen for the first time: queue every release (all), or only its newest
    # final release with an sdist (latest; the others are recorded, `pinwheel add` builds them).
    history: str = "all"
    max_backoff_seconds: int = 900    # the longest wait after errors or rate limits
    priority: int = 0                 # priority of the jobs the watcher queues
    timeout: int = 60                 # seconds per HTTP request

    @classmethod
    def load(cls, p: configparser.ConfigParser, path: str | Path) -> WatchConfig:
        s = "watch"
        if not p.has_section(s):
            return cls()
        mode = p.get(s, "mode", fallback="allowlist").strip()
        if mode not in WATCH_MODES:
            raise ConfigError(f"{path}: [watch] mode must be mirror or allowlist, not {mode!r}")
        removal = p.get(s, "on_removal", fallback="keep").strip()
        if removal not in REMOVAL_POLICIES:
            raise ConfigError(f"{path}: [watch] on_removal must be keep or remove, "
                              f"not {removal!r}")
        history = p.get(s, "history", fallback="all").strip()
        if history not in HISTORIES:
            raise ConfigError(f"{path}: [watch] history must be all or latest, not {history!r}")
        poll = _count(p, s, "poll_seconds", path, 60)
        if poll < 1:
            raise ConfigError(f"{path}: [watch] poll_seconds must be at least 1")
        return cls(mode=mode, projects=p.get(s, "projects", fallback="").split(),
                   projects_file=p.get(s, "projects_file", fallback="").strip(),
                   poll_seconds=poll, on_removal=removal, history=history,
                   max_backoff_seconds=max(1, _count(p, s, "max_backoff_seconds", path, 900)),
                   priority=_int(p, s, "priority", path, 0),
                   timeout=max(1, _count(p, s, "timeout", path, 60)))

    def allowlist(self) -> list[str]:
        """The listed projects (``projects`` then ``projects_file``), as written."""
        listed = list(self.projects)
        if self.projects_file:
            try:
                text = Path(self.projects_file).read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"cannot read the watch allowlist {self.projects_file}: "
                                  f"{exc.strerror}") from exc
            listed += allowlist_names(text)
        return listed


@dataclass
class MasterConfig:
    """Settings of the master's services and operator commands."""

    dsn: str                     # libpq connection string of a pinwheel_master login
    www_root: Path               # what nginx serves: simple/, packages/, logs/
    incoming_root: Path          # incoming/<builder>/, written by builders over rsync
    quarantine_root: Path        # refused files, kept for inspection
    upstream_url: str = "https://pypi.org/simple/"
    max_wheel_size: int = 1 << 30   # bytes; a larger upload is refused unread
    max_log_size: int = 64 << 20    # bytes of gzipped log
    ca_bundle: str = ""             # CA bundle for an HTTPS upstream; "" = system default
    # The farm's index as users reach it, for the install line of project pages ("": unknown).
    public_index_url: str = ""
    # Also list linux_armv7l wheels as linux_armv6l (Pi Zero / Pi 1). Off by default: a wheel
    # built on armv7 may use instructions an armv6 CPU does not have (docs/index.md).
    armv6l_alias: bool = False
    watch: WatchConfig = field(default_factory=lambda: WatchConfig())

    @classmethod
    def load(cls, path: str | Path) -> MasterConfig:
        p = _read(path)
        s = "master"
        if not p.has_section(s):
            raise ConfigError(f"{path}: missing [master] section")
        return cls(
            dsn=_get(p, s, "dsn", path),
            www_root=Path(_get(p, s, "www_root", path, "/var/www/pinwheel")),
            incoming_root=Path(_get(p, s, "incoming_root", path, "/srv/pinwheel/incoming")),
            quarantine_root=Path(_get(p, s, "quarantine_root", path, "/srv/pinwheel/quarantine")),
            upstream_url=_get(p, s, "upstream_url", path, "https://pypi.org/simple/"),
            max_wheel_size=_int(p, s, "max_wheel_size", path, 1 << 30),
            max_log_size=_int(p, s, "max_log_size", path, 64 << 20),
            ca_bundle=p.get(s, "ca_bundle", fallback=""),
            public_index_url=p.get(s, "public_index_url", fallback=""),
            armv6l_alias=_bool(p, s, "armv6l_alias", path, False),
            watch=WatchConfig.load(p, path),
        )
