"""Schema migrations: idempotent, and an upgraded database equals a fresh one."""

from __future__ import annotations

import subprocess

from pinwheel import schema


def dump_schema(pg, dbname: str) -> str:
    out = subprocess.run([str(pg.bindir / "pg_dump"), "--schema-only", "--schema=pinwheel",
                          "-h", str(pg.socket_dir), "-p", str(pg.port), "-U", "postgres",
                          dbname], check=True, capture_output=True, text=True).stdout
    # Comments and pg_dump's per-run \restrict key differ between any two dumps.
    return "\n".join(line for line in out.splitlines()
                     if not line.startswith(("--", "\\restrict", "\\unrestrict")))


def test_upgrade_twice_applies_nothing_the_second_time(pg, database):
    conn = pg.admin(database)
    assert schema.upgrade(conn) == []
    conn.close()


def test_database_upgraded_step_by_step_equals_a_fresh_one(pg):
    for name in ("pinwheel_fresh", "pinwheel_stepwise"):
        pg.drop_database(name)
        conn = pg.admin()
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name}")
        conn.close()
    fresh = pg.admin("pinwheel_fresh")
    assert [m.version for m in schema.upgrade(fresh)] == [m.version for m in schema.migrations()]
    fresh.close()
    stepwise = pg.admin("pinwheel_stepwise")
    first = schema.upgrade(stepwise, target=1)
    assert [m.version for m in first] == [1]
    rest = schema.upgrade(stepwise)
    assert [m.version for m in rest] == [m.version for m in schema.migrations()][1:]
    stepwise.close()
    assert dump_schema(pg, "pinwheel_stepwise") == dump_schema(pg, "pinwheel_fresh")
    for name in ("pinwheel_fresh", "pinwheel_stepwise"):
        pg.drop_database(name)


def test_migrations_are_numbered_without_gaps():
    versions = [m.version for m in schema.migrations()]
    assert versions == list(range(1, len(versions) + 1))


def test_migration_4_gives_each_platform_of_an_abi_its_own_queued_jobs(pg):
    """Queued cp311 work from before build targets is kept for each cp311 platform."""
    name = "pinwheel_targets"
    pg.drop_database(name)
    conn = pg.admin()
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    conn.close()
    conn = pg.admin(name)
    schema.upgrade(conn, target=3)
    with conn.cursor() as cur:
        cur.execute("SET search_path = pinwheel")
        cur.execute("INSERT INTO abis (abi) VALUES ('cp311'), ('cp27')")
        cur.execute("INSERT INTO builders (builder, abi, platform) VALUES "
                    "('x86', 'cp311', 'linux_x86_64'), ('arm', 'cp311', 'linux_armv7l')")
        cur.execute("INSERT INTO packages (package, display_name) VALUES ('foo', 'foo')")
        cur.execute("INSERT INTO versions (package, version, has_sdist) "
                    "VALUES ('foo', '1.0', true)")
        cur.execute("INSERT INTO jobs (package, version, abi, priority) VALUES "
                    "('foo', '1.0', 'cp311', 5), ('foo', '1.0', 'cp27', 0)")
    assert [m.version for m in schema.upgrade(conn)] == [m.version for m in schema.migrations()][3:]
    with conn.cursor() as cur:
        cur.execute("SELECT abi, platform, priority FROM pinwheel.jobs ORDER BY platform")
        # Both cp311 platforms keep the job (and its priority); cp27, which no
        # builder ever registered, could never be claimed and is gone.
        assert cur.fetchall() == [("cp311", "linux_armv7l", 5), ("cp311", "linux_x86_64", 5)]
        cur.execute("SELECT abi, platform FROM pinwheel.targets ORDER BY platform")
        assert cur.fetchall() == [("cp311", "linux_armv7l"), ("cp311", "linux_x86_64")]
    conn.close()
    pg.drop_database(name)
