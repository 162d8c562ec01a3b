"""Whether a verified wheel may serve other build targets than its builder's.

A pure wheel (``py3-none-any``) installs on every target, a stable-ABI wheel
(``cp36-abi3-linux_armv7l``) on every CPython at or above its floor on its
platform: such a release is built once (migration 8: ``wheel_covers`` decides
which targets a wheel's tags fit, ``cover_jobs`` cancels their queued jobs).

The tags are the builder's claim. Before a wheel is allowed to stand in for
other targets' builds, the master looks inside it: a wheel tagged for any
platform must hold no compiled code, and no covering wheel may hold an
extension module built for one Python version (``*.cpython-311-*.so``). Only
the ingest calls this, after ``verify_wheel`` passed, so nothing a builder
reports cancels another target's build by itself. Wheels published before
migration 8 (``files.covers`` NULL) are looked at once, from the master's
published copy, by :func:`assess_published`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from . import db
from .config import MasterConfig
from .verify import Rejected, VerifiedWheel, verify_wheel

log = logging.getLogger("pinwheel.coverage")
MAX_REASON = 2000

# An extension module tied to one interpreter version (PEP 3149 / importlib suffixes).
_VERSIONED_EXTENSION_RE = re.compile(r"\.(cpython-\d+|cp3\d+|pypy\d+)[^/]*\.(so|pyd)$")


@dataclass(frozen=True)
class Coverage:
    covers: bool            # the wheel may stand in for other targets' builds
    refused: str | None     # why a wheel tagged for several targets may not


def _shown(names: list[str]) -> str:
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return ", ".join(n[:200] for n in names[:3]) + more


def assess(wheel: VerifiedWheel) -> Coverage:
    """Whether ``wheel`` (verified, tags fitting its builder) may cover other targets."""
    abis = set(wheel.abi_tag.split("."))
    platforms = set(wheel.platform_tag.split("."))
    tag = f"{wheel.python_tag}-{wheel.abi_tag}-{wheel.platform_tag}"
    if not abis & {"none", "abi3"}:
        return Coverage(False, None)  # one interpreter's wheel: its own target only
    if "any" in platforms and wheel.native:
        return Coverage(False, f"tagged {tag} (any platform) but holds compiled code: "
                               f"{_shown(list(wheel.native))}; each target builds its own")
    versioned = [n for n in wheel.native if _VERSIONED_EXTENSION_RE.search(n)]
    if versioned:
        return Coverage(False, f"tagged {tag} but holds extension modules for one Python "
                               f"version: {_shown(versioned)}; each target builds its own")
    return Coverage(True, None)


def record(cur: Any, file_id: int, wheel: VerifiedWheel, who: str) -> Coverage:
    """Store ``assess``'s verdict on a published file and, if it covers, cancel the queued
    jobs of its release on the targets it covers (``cover_jobs``, each recorded in
    plan_events). Returns the verdict. In the caller's transaction."""
    found = assess(wheel)
    reason = found.refused.replace("\x00", "")[:MAX_REASON] if found.refused else None
    cur.execute("UPDATE files SET covers = %s, covers_refused = %s WHERE file_id = %s",
                (found.covers, reason, file_id))
    if reason:
        log.warning("%s: %s is built for its own target only: %s", who, wheel.filename, reason)
    if not found.covers:
        return found
    cur.execute("SELECT cover_jobs(%s)", (file_id,))
    cancelled = int(cur.fetchone()[0])
    if cancelled:
        log.info("%s covers other targets: %d queued job(s) of %s %s cancelled",
                 wheel.filename, cancelled, wheel.package, wheel.version)
    return found


# Published files never looked at (before migration 8), oldest first.
_UNASSESSED = """
    SELECT f.file_id, f.filename, f.size, f.sha256, f.package, f.version, f.abi_tag,
           b.abi, b.platform, b.build_id
      FROM files f JOIN builds b ON b.build_id = f.build_id
     WHERE f.state = 'published' AND f.covers IS NULL
     ORDER BY f.file_id
     LIMIT %s
       FOR UPDATE OF f SKIP LOCKED
"""


def assess_published(conn: Any, cfg: MasterConfig, batch: int = 100) -> set[str]:
    """Look once at wheels published before migration 8, from the master's own copies in
    ``www_root/packages`` (verified when they were published, and checked again); returns
    the projects with a wheel found to cover other targets (their pages need rewriting).
    An autocommit connection; one transaction per batch."""
    covering: set[str] = set()
    while True:
        with db.transaction(conn) as cur:
            cur.execute(_UNASSESSED, (batch,))
            rows = cur.fetchall()
            for file_id, name, size, sha, package, version, abi_tag, abi, platform, build \
                    in rows:
                if not set((abi_tag or "").split(".")) & {"none", "abi3"}:
                    cur.execute("UPDATE files SET covers = false WHERE file_id = %s",
                                (file_id,))
                    continue
                try:
                    wheel = verify_wheel(cfg.www_root / "packages" / package, name, size, sha,
                                         package, version, abi, platform, cfg.max_wheel_size)
                except Rejected as exc:
                    cur.execute("UPDATE files SET covers = false, covers_refused = %s "
                                "WHERE file_id = %s",
                                (f"the published copy could not be checked: {exc.reason}"
                                 [:MAX_REASON], file_id))
                    continue
                if record(cur, file_id, wheel,
                          f"build {build} (published before planning)").covers:
                    covering.add(package)
        if len(rows) < batch:
            return covering
