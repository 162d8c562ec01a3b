"""Schema migrations: idempotent, and an upgraded database equals a fresh one."""

from __future__ import annotations

import subprocess

from harness.download_days import assert_summaries_match
from pinwheel import schema
from pinwheel.schema import BUILDER_GROUP, MASTER_GROUP


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


def empty_database(pg, name: str):  # type: ignore[no-untyped-def]
    """A new database without any migration (to upgrade step by step); its admin connection."""
    pg.drop_database(name)
    conn = pg.admin()
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    conn.close()
    return pg.admin(name)


def test_migration_4_gives_each_platform_of_an_abi_its_own_queued_jobs(pg):
    """Queued cp311 work from before build targets is kept for each cp311 platform."""
    name = "pinwheel_targets"
    conn = empty_database(pg, name)
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


def test_migration_13_sums_the_downloads_already_imported_into_the_daily_summary(pg):
    """The summary is backfilled from the raw rows, then kept by each insert; only the master
    reads and writes it."""
    name = "pinwheel_download_days"
    conn = empty_database(pg, name)
    schema.upgrade(conn, target=12)
    conn.close()
    raw = ("INSERT INTO downloads (accessed_at, kind, path, status, package, filename, file_id, "
           "installer_name, python_version) VALUES "
           "('2026-05-31 23:59:59+00', 'wheel', '/p/a.whl', 200, 'a', 'a.whl', 7, 'pip', "
           "'3.11.2'), "
           "('2026-05-31 20:30:00-05', 'wheel', '/p/a.whl', 200, 'a', 'a.whl', 7, 'pip', "
           "'3.11.9'), "
           "('2026-05-31 12:00:00+00', 'wheel', '/p/a.whl', 304, 'a', 'a.whl', 7, 'pip', '3.11'), "
           "('2026-05-31 12:00:00+00', 'wheel', '/p/b.whl', 404, 'b', 'b.whl', NULL, 'uv', "
           "'3.12'), "
           "('2026-05-31 12:00:00+00', 'wheel', '/p/c.whl', 200, 'c', 'c.whl', NULL, NULL, "
           "'cpython'), "
           "('2026-05-31 12:00:00+00', 'simple', '/simple/a/', 200, 'a', NULL, NULL, 'pip', "
           "'3.11.2')")
    for at in ("2026-05-01", "2026-06-01"):
        pg.query(name, "SELECT downloads_partition(%s)", (at,))
    pg.query(name, raw)
    conn = pg.admin(name)
    assert [m.version for m in schema.upgrade(conn)] == [
        m.version for m in schema.migrations()][12:]
    conn.close()
    assert pg.query(name, "SELECT day::text, package, file_id, installer_name, python_minor, "
                          "downloads FROM download_days ORDER BY 1, 2") == [
        ("2026-05-31", "a", 7, "pip", "3.11", 1),
        ("2026-05-31", "c", 0, "", "", 1),
        ("2026-06-01", "a", 7, "pip", "3.11", 1)]
    assert assert_summaries_match(pg, name) == 3
    pg.query(name, raw)  # the same rows again, after the migration: summed by the trigger
    assert assert_summaries_match(pg, name) == 6
    assert pg.query(name, "SELECT day::text, requests FROM download_request_days "
                          "ORDER BY 1") == [("2026-05-31", 10), ("2026-06-01", 2)]
    for table in ("download_days", "download_request_days", "download_days_saved"):
        privileges = {role: pg.query(name, "SELECT has_table_privilege(%s, %s, 'SELECT'), "
                                           "has_table_privilege(%s, %s, 'INSERT')",
                                     (role, f"pinwheel.{table}", role, f"pinwheel.{table}"))[0]
                      for role in (MASTER_GROUP, BUILDER_GROUP, "public")}
        assert privileges == {MASTER_GROUP: (True, table != "download_days_saved"),
                              BUILDER_GROUP: (False, False), "public": (False, False)}, table
    pg.drop_database(name)
