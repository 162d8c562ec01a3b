"""Operators pausing and resuming builders (``pinwheel pause`` / ``pinwheel resume``).

A paused builder claims nothing (``claim_job`` returns no row for it) but
keeps heartbeating and finishes the build it holds; its agent needs no
restart. Resuming wakes the agents of the builders' targets at once with the
same NOTIFY that new work sends, instead of waiting for their next poll.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import db


class NoSuchBuilder(Exception):
    """Nothing matched what the operator named; the message says what exists."""


@dataclass(frozen=True)
class BuilderState:
    builder: str
    target: str
    paused: bool
    current_job: str


_SELECT = """
    SELECT b.builder, coalesce(b.abi || '-' || b.platform, '(not registered)'), b.paused,
           coalesce((SELECT j.package || ' ' || j.version FROM jobs j
                     WHERE j.builder = b.builder AND j.state = 'leased' LIMIT 1), '')
      FROM builders b
"""


def set_paused(conn: Any, paused: bool, builders: list[str] | None = None,
               target: str | None = None) -> list[BuilderState]:
    """Pause (or resume) the named builders, or every builder of ``target``
    (``<abi>-<platform>``), or every builder when neither is given.

    Returns the builders changed or already in that state. Raises
    NoSuchBuilder when a name or the target matches no builder.
    """
    with db.transaction(conn) as cur:
        cur.execute(_SELECT + " ORDER BY b.builder")
        known = [BuilderState(*row) for row in cur.fetchall()]
        chosen = known
        if builders:
            missing = sorted(set(builders) - {b.builder for b in known})
            if missing:
                raise NoSuchBuilder(
                    f"no builder named {', '.join(missing)}; known builders: "
                    f"{', '.join(b.builder for b in known) or '(none registered)'}")
            chosen = [b for b in known if b.builder in builders]
        if target:
            chosen = [b for b in chosen if b.target == target]
            if not chosen:
                targets = sorted({b.target for b in known})
                raise NoSuchBuilder(f"no builder builds for {target}; targets: "
                                    f"{', '.join(targets) or '(none registered)'}")
        if not chosen:
            raise NoSuchBuilder("no builder has registered yet")
        names = [b.builder for b in chosen]
        cur.execute("UPDATE builders SET paused = %s WHERE builder = ANY(%s)", (paused, names))
        if not paused:
            cur.execute("SELECT pg_notify('pinwheel_jobs', t.target) FROM "
                        "(SELECT DISTINCT abi || '-' || platform AS target FROM builders "
                        " WHERE builder = ANY(%s) AND abi IS NOT NULL) AS t", (names,))
        cur.execute(_SELECT + " WHERE b.builder = ANY(%s) ORDER BY b.builder", (names,))
        return [BuilderState(*row) for row in cur.fetchall()]
