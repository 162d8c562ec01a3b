"""`pinwheel db upgrade`: the group roles, then the versioned SQL migrations.

Migrations are the files ``migrations/NNNN_name.sql`` shipped in this package.
Each is applied once, in order, in its own transaction, as the NOLOGIN owner
role ``pinwheel_owner``; ``pinwheel.schema_migrations`` records which ran. A
transaction-level advisory lock serialises concurrent upgrades, so running it
twice (or from two hosts at once) is harmless.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

from psycopg2 import sql

OWNER = "pinwheel_owner"
MASTER_GROUP = "pinwheel_master"
BUILDER_GROUP = "pinwheel_builders"
GROUP_ROLES = (OWNER, MASTER_GROUP, BUILDER_GROUP)
_LOCK_KEY = 0x70696E77  # "pinw"
_MIGRATION_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
ROLE_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """Every migration shipped with this package, in order."""
    found = []
    for entry in resources.files("pinwheel").joinpath("migrations").iterdir():
        m = _MIGRATION_RE.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations are not numbered 1..n without gaps: {versions}")
    return found


def _ensure_roles(cur: Any) -> None:
    for role in GROUP_ROLES:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
        if cur.fetchone() is None:
            cur.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))


def applied_versions(cur: Any) -> set[int]:
    cur.execute("SELECT to_regclass('pinwheel.schema_migrations') IS NOT NULL")
    if not cur.fetchone()[0]:
        return set()
    cur.execute("SELECT version FROM pinwheel.schema_migrations")
    return {row[0] for row in cur.fetchall()}


def upgrade(conn: Any, target: int | None = None) -> list[Migration]:
    """Apply pending migrations (up to ``target``, default all); return those applied.

    ``conn`` must belong to a role that can create roles and SET ROLE to the
    owner (the PostgreSQL superuser, in practice).
    """
    conn.autocommit = False
    applied: list[Migration] = []
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        _ensure_roles(cur)
        cur.execute("SELECT current_database()")
        database = sql.Identifier(cur.fetchone()[0])
        cur.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(database))
        cur.execute(sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}, {}").format(
            database, sql.Identifier(MASTER_GROUP), sql.Identifier(BUILDER_GROUP)))
        cur.execute(sql.SQL("GRANT CONNECT, CREATE ON DATABASE {} TO {}").format(
            database, sql.Identifier(OWNER)))
        cur.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(OWNER)))
        cur.execute("CREATE SCHEMA IF NOT EXISTS pinwheel")
        cur.execute("""
            CREATE TABLE IF NOT EXISTS pinwheel.schema_migrations (
                version     integer PRIMARY KEY,
                name        text NOT NULL,
                applied_at  timestamptz NOT NULL DEFAULT now()
            )""")
        conn.commit()
    for mig in migrations():
        if target is not None and mig.version > target:
            break
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            if mig.version in applied_versions(cur):
                conn.rollback()
                continue
            cur.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(OWNER)))
            cur.execute(mig.sql)
            cur.execute("INSERT INTO pinwheel.schema_migrations (version, name) VALUES (%s, %s)",
                        (mig.version, mig.name))
        conn.commit()
        applied.append(mig)
    conn.autocommit = True
    return applied


def create_login(conn: Any, role: str, group: str, password: str | None) -> None:
    """Create (or update) a login role in one of Pinwheel's group roles.

    A builder's login role name is its builder name. Idempotent: an existing
    role gets the password (when given) and the membership.
    """
    if not ROLE_NAME_RE.match(role):
        raise ValueError(f"invalid role name {role!r}: use lowercase letters, digits and _, "
                         "starting with a letter (at most 63 characters)")
    if role in GROUP_ROLES:
        raise ValueError(f"{role!r} is one of Pinwheel's group roles")
    if group not in (MASTER_GROUP, BUILDER_GROUP):
        raise ValueError(f"unknown group {group!r}")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
        ident = sql.Identifier(role)
        if cur.fetchone() is None:
            cur.execute(sql.SQL("CREATE ROLE {} LOGIN").format(ident))
        if password is not None:
            cur.execute("SET password_encryption = 'scram-sha-256'")
            cur.execute(sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(
                ident, sql.Literal(password)))
        cur.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), ident))
