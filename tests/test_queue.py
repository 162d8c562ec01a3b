"""The queue on a real PostgreSQL: claim, heartbeat, expiry, finish, refusals, concurrency."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import psycopg2
import pytest

from pinwheel import builder_control, db, names
from pinwheel.aptdeps import Library
from pinwheel.queue import BuilderQueue, ReportedFile
from pinwheel.schema import BUILDER_GROUP, MASTER_GROUP

SHA = "0" * 64


def builder(pg, database, name: str, abi: str = "cp311",
            platform: str = "linux_x86_64") -> BuilderQueue:
    dsn = pg.create_login(database, name, BUILDER_GROUP, f"pw-{name}")
    q = BuilderQueue(db.connect(dsn))
    q.register(abi, platform, "debian bookworm", "3.11.2")
    return q


def enqueue(pg, database, package: str, versions: list[str], priority: int = 0) -> int:
    conn = pg.admin(database)
    queued = 0
    with conn.cursor() as cur:
        cur.execute("SET search_path = pinwheel")
        cur.execute("INSERT INTO packages (package, display_name) VALUES (%s, %s) "
                    "ON CONFLICT DO NOTHING", (package, package))
        for v in versions:
            cur.execute("INSERT INTO versions (package, version, has_sdist) VALUES (%s, %s, true)",
                        (package, v))
            cur.execute("SELECT plan_release(%s, %s, %s)", (package, v, priority))
            queued += cur.fetchone()[0]
    conn.close()
    return queued


def scalar(pg, database, query: str, params=()):
    conn = pg.admin(database)
    with conn.cursor() as cur:
        cur.execute("SET search_path = pinwheel")
        cur.execute(query, params)
        value = cur.fetchone()[0]
    conn.close()
    return value


def test_claim_heartbeat_finish_moves_job_to_builds(pg, database):
    q = builder(pg, database, "qb_one")
    assert enqueue(pg, database, "foo", ["1.0"]) == 1
    job = q.claim()
    assert job is not None and (job.package, job.version, job.abi) == ("foo", "1.0", "cp311")
    assert q.claim() is None, "the only job is leased: nothing else to claim"
    before = job.lease_expires
    time.sleep(0.01)
    assert q.heartbeat(job, 600) > before
    started = scalar(pg, database, "SELECT now()")
    build_id = q.finish(job, "success", started, 1.5, None,
                        [ReportedFile("foo-1.0-cp311-cp311-linux_x86_64.whl", 10, SHA)])
    assert scalar(pg, database, "SELECT count(*) FROM jobs") == 0
    assert scalar(pg, database, "SELECT status FROM builds WHERE build_id = %s",
                  (build_id,)) == "success"
    assert scalar(pg, database, "SELECT count(*) FROM files WHERE build_id = %s AND "
                  "state = 'pending'", (build_id,)) == 1


def test_jobs_are_claimed_by_priority_then_age(pg, database):
    q = builder(pg, database, "qb_prio")
    enqueue(pg, database, "old", ["1"])
    enqueue(pg, database, "new", ["1"], priority=10)
    enqueue(pg, database, "older", ["1"])
    order = [q.claim().package for _ in range(3)]
    assert order == ["new", "old", "older"]


def test_claims_only_jobs_of_the_builders_abi(pg, database):
    arm = builder(pg, database, "qb_arm", abi="cp39", platform="linux_armv7l")
    x86 = builder(pg, database, "qb_x86")
    enqueue(pg, database, "foo", ["1.0"])  # one job per registered ABI: cp39 and cp311
    assert scalar(pg, database, "SELECT count(*) FROM jobs") == 2
    assert arm.claim().abi == "cp39"
    assert x86.claim().abi == "cp311"
    assert arm.claim() is None


def test_builders_of_one_abi_on_two_platforms_each_get_their_own_job(pg, database):
    # An x86-64 and an armhf bookworm builder are both cp311: each platform
    # needs its own wheel, so each is its own build target with its own queue.
    arm = builder(pg, database, "qb_arm311", platform="linux_armv7l")
    x86 = builder(pg, database, "qb_x86311")
    enqueue(pg, database, "foo", ["1.0"])
    assert scalar(pg, database, "SELECT count(*) FROM jobs") == 2
    arm_job, x86_job = arm.claim(), x86.claim()
    assert arm_job is not None and x86_job is not None
    assert arm_job.job_id != x86_job.job_id
    assert (arm_job.abi, x86_job.abi) == ("cp311", "cp311")
    platforms = scalar(pg, database, "SELECT string_agg(builder || ' ' || platform, ', ' "
                                     "ORDER BY builder) FROM jobs")
    assert platforms == "qb_arm311 linux_armv7l, qb_x86311 linux_x86_64"
    assert arm.claim() is None and x86.claim() is None


def test_expired_lease_returns_job_to_queue_and_stale_token_is_refused(pg, database):
    q1 = builder(pg, database, "qb_slow")
    q2 = builder(pg, database, "qb_fast")
    enqueue(pg, database, "foo", ["1.0"])
    stale = q1.claim(lease_seconds=10)
    conn = pg.admin(database)
    with conn.cursor() as cur:  # let the lease run out without waiting ten seconds
        cur.execute("UPDATE pinwheel.jobs SET lease_expires = now() - interval '1 second'")
    conn.close()
    fresh = q2.claim()
    assert fresh is not None and fresh.job_id == stale.job_id and fresh.attempts == 2
    with pytest.raises(db.LeaseLost, match="not held by builder qb_slow"):
        q1.finish(stale, "success", fresh.lease_expires, 1.0, None,
                  [ReportedFile("foo-1.0-py3-none-any.whl", 1, SHA)])
    with pytest.raises(db.LeaseLost):
        q1.heartbeat(stale)
    q2.finish(fresh, "failed", fresh.lease_expires, 1.0, None, [])
    assert scalar(pg, database, "SELECT count(*) FROM builds") == 1


def test_finish_with_wrong_token_is_refused(pg, database):
    q = builder(pg, database, "qb_tok")
    enqueue(pg, database, "foo", ["1.0"])
    job = q.claim()
    forged = type(job)(job.job_id, job.package, job.version, job.abi,
                       "00000000-0000-0000-0000-000000000000", job.lease_expires, job.attempts)
    with pytest.raises(db.LeaseLost, match="stale lease token"):
        q.finish(forged, "failed", job.lease_expires, 1.0, None, [])
    assert scalar(pg, database, "SELECT count(*) FROM jobs WHERE state = 'leased'") == 1


def test_a_builder_cannot_finish_another_builders_job(pg, database):
    owner = builder(pg, database, "qb_owner")
    thief = builder(pg, database, "qb_thief")
    enqueue(pg, database, "foo", ["1.0"])
    job = owner.claim()
    with pytest.raises(db.LeaseLost, match="not held by builder qb_thief"):
        thief.finish(job, "success", job.lease_expires, 1.0, None,
                     [ReportedFile("foo-1.0-py3-none-any.whl", 1, SHA)])
    with pytest.raises(db.LeaseLost):
        thief.release(job)
    owner.finish(job, "failed", job.lease_expires, 1.0, None, [])


def test_attempt_limit_abandons_a_job(pg, database):
    q = builder(pg, database, "qb_lim")
    enqueue(pg, database, "foo", ["1.0"])
    conn = pg.admin(database)
    for _ in range(3):
        assert q.claim() is not None
        with conn.cursor() as cur:
            cur.execute("UPDATE pinwheel.jobs SET lease_expires = now() - interval '1 second'")
    assert q.claim() is None
    conn.close()
    assert scalar(pg, database, "SELECT count(*) FROM jobs") == 0
    assert scalar(pg, database, "SELECT status FROM builds") == "abandoned"


def test_release_hands_the_job_back_without_counting_the_attempt(pg, database):
    q = builder(pg, database, "qb_rel")
    enqueue(pg, database, "foo", ["1.0"])
    job = q.claim()
    q.release(job)
    again = q.claim()
    assert again.job_id == job.job_id and again.attempts == 1


def test_paused_builder_claims_nothing(pg, database):
    q = builder(pg, database, "qb_pause")
    enqueue(pg, database, "foo", ["1.0"])
    conn = pg.admin(database)
    with conn.cursor() as cur:
        cur.execute("UPDATE pinwheel.builders SET paused = true WHERE builder = 'qb_pause'")
    assert q.ping() is True
    assert q.claim() is None
    with conn.cursor() as cur:
        cur.execute("UPDATE pinwheel.builders SET paused = false WHERE builder = 'qb_pause'")
    conn.close()
    assert q.claim() is not None


def test_registration_with_another_abi_is_refused(pg, database):
    q = builder(pg, database, "qb_abi")
    with pytest.raises(db.RegistrationMismatch, match="registered for cp311/linux_x86_64"):
        q.register("cp39", "linux_armv7l", "debian bullseye", "3.9.2")


def test_malformed_file_reports_are_refused_with_a_clear_error(pg, database):
    q = builder(pg, database, "qb_bad")
    enqueue(pg, database, "foo", ["1.0"])
    job = q.claim()
    with pytest.raises(db.InvalidReport, match="malformed file report"):
        q.finish(job, "success", job.lease_expires, 1.0, None,
                 [ReportedFile("foo.whl", 1, "not-a-hash")])
    with pytest.raises(db.InvalidReport, match="at least one file"):
        q.finish(job, "success", job.lease_expires, 1.0, None, [])
    with pytest.raises(db.InvalidReport, match="invalid build status"):
        q.finish(job, "great", job.lease_expires, 1.0, None, [])


def test_apt_dependencies_are_stored_with_each_file(pg, database):
    q = builder(pg, database, "qb_apt")
    enqueue(pg, database, "foo", ["1.0"])
    job = q.claim()
    libs = (Library("libc.so.6", "debian", "libc6", True),
            Library("libffi.so.8", "debian", "libffi8"),
            Library("libfoo-1a2b3c4d.so.1", "bundled"),
            Library("libbar.so.2", "unpackaged"),
            Library("libgone.so.3", "missing"))
    build_id = q.finish(job, "success", job.lease_expires, 1.0, None, [
        ReportedFile("foo-1.0-cp311-cp311-linux_x86_64.whl", 10, SHA, libs),
        ReportedFile("foo-1.0-py3-none-any.whl", 10, SHA, ()),
        ReportedFile("foo-1.0.tar.gz", 10, SHA)])
    rows = scalar(pg, database, """
        SELECT json_agg(json_build_array(f.filename, f.libraries_checked, f.libraries_refused,
                                         l.library, l.kind, l.package, l.base)
                        ORDER BY f.filename, l.library)
          FROM files f LEFT JOIN file_libraries l USING (file_id) WHERE f.build_id = %s""",
                  (build_id,))
    assert rows == [
        ["foo-1.0-cp311-cp311-linux_x86_64.whl", True, None, "libbar.so.2", "unpackaged", None,
         False],
        ["foo-1.0-cp311-cp311-linux_x86_64.whl", True, None, "libc.so.6", "debian", "libc6",
         True],
        ["foo-1.0-cp311-cp311-linux_x86_64.whl", True, None, "libffi.so.8", "debian", "libffi8",
         False],
        ["foo-1.0-cp311-cp311-linux_x86_64.whl", True, None, "libfoo-1a2b3c4d.so.1", "bundled",
         None, False],
        ["foo-1.0-cp311-cp311-linux_x86_64.whl", True, None, "libgone.so.3", "missing", None,
         False],
        ["foo-1.0-py3-none-any.whl", True, None, None, None, None, None],
        ["foo-1.0.tar.gz", False, None, None, None, None, None],
    ]


@pytest.mark.parametrize(("libraries", "reason"), [
    ([{"library": "libz.so.1", "kind": "debian", "package": "zlib1g; rm -rf /"}],
     "invalid Debian package name 'zlib1g; rm -rf /' for libz.so.1"),
    ([{"library": "libz.so.1", "kind": "debian", "package": "Zlib1g"}],
     "invalid Debian package name 'Zlib1g'"),
    ([{"library": "../../etc/passwd", "kind": "missing"}], "invalid library name"),
    ([{"library": "<script>.so", "kind": "missing"}], "invalid library name"),
    ([{"library": f"libx{i}.so.1", "kind": "missing"} for i in range(5000)],
     "5000 libraries reported, at most 200 are accepted"),
    ([{"library": "libz.so.1", "kind": "evil"}], "invalid kind 'evil' for libz.so.1"),
    ([{"library": "libz.so.1", "kind": "bundled", "package": "zlib1g"}],
     "a package for libz.so.1, which is bundled"),
    ([{"library": "libz.so.1", "kind": "missing"}] * 2, "library libz.so.1 reported twice"),
    ({"libz.so.1": "zlib1g"}, "libraries must be a JSON array"),
    (["libz.so.1"], "each library must be an object"),
])
def test_a_hostile_list_of_libraries_is_refused_and_the_refusal_recorded(pg, database,
                                                                          libraries, reason):
    q = builder(pg, database, "qb_apt_hostile")
    enqueue(pg, database, "foo", ["1.0"])
    job = q.claim()
    wheel = {"filename": "foo-1.0-cp311-cp311-linux_x86_64.whl", "size": 10, "sha256": SHA,
             "libraries": libraries}
    build_id = db.call(q.conn, "SELECT finish_job(%s, %s, 'success', now(), 1, NULL, %s::jsonb)",
                       (job.job_id, job.lease_token, json.dumps([wheel])))[0][0]
    checked, refused, stored = scalar(pg, database, """
        SELECT json_build_array(f.libraries_checked, f.libraries_refused,
                                (SELECT count(*) FROM file_libraries l
                                  WHERE l.file_id = f.file_id))
          FROM files f WHERE f.build_id = %s""", (build_id,))
    assert (checked, stored) == (False, 0)
    assert refused.startswith("refused the builder's list of shared libraries: ")
    assert reason in refused
    # The build and its file are recorded as usual, for the master to verify.
    assert scalar(pg, database, "SELECT status FROM builds WHERE build_id = %s",
                  (build_id,)) == "success"


def test_notify_wakes_an_idle_builder(pg, database):
    q = builder(pg, database, "qb_wait")
    target = names.target("cp311", "linux_x86_64")
    assert q.wait_for_work(target, 0.1) is False
    woke: list[bool] = []
    t = threading.Thread(target=lambda: woke.append(q.wait_for_work(target, 20)))
    t.start()
    time.sleep(0.3)
    enqueue(pg, database, "foo", ["1.0"])
    t.join(25)
    assert woke == [True]


def test_many_concurrent_claimers_never_share_a_job(pg, database):
    names = [f"qb_c{i}" for i in range(12)]
    queues = [builder(pg, database, n) for n in names]
    enqueue(pg, database, "many", [f"1.{i}" for i in range(300)])
    claimed: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(len(queues))

    def worker(q: BuilderQueue) -> None:
        start.wait()
        while True:
            job = q.claim()
            if job is None:
                return
            with lock:
                claimed.append(job.job_id)
            q.finish(job, "failed", job.lease_expires, 0.1, None, [])

    threads = [threading.Thread(target=worker, args=(q,)) for q in queues]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    counts = Counter(claimed)
    assert len(counts) == 300 and set(counts.values()) == {1}
    assert scalar(pg, database, "SELECT count(DISTINCT job_id) FROM builds") == 300
    assert scalar(pg, database, "SELECT count(*) FROM jobs") == 0


def test_builder_role_has_no_table_privileges(pg, database):
    builder(pg, database, "qb_priv")
    conn = psycopg2.connect(pg.tcp_dsn("qb_priv", "pw-qb_priv", database))
    conn.autocommit = True
    admin = pg.admin(database)
    with admin.cursor() as cur:
        cur.execute("SELECT table_name, min(column_name) FROM information_schema.columns "
                    "WHERE table_schema = 'pinwheel' GROUP BY table_name")
        columns = dict(cur.fetchall())
        tables = sorted(columns)
        cur.execute("SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = 'pinwheel' AND table_type = 'VIEW'")
        views = {r[0] for r in cur.fetchall()}
    admin.close()
    assert {"jobs", "builds", "files", "builders", "packages"} <= set(tables)
    for table in tables:
        for stmt in (f"SELECT * FROM pinwheel.{table}",
                     f"INSERT INTO pinwheel.{table} DEFAULT VALUES",
                     f"UPDATE pinwheel.{table} SET {columns[table]} = NULL",
                     f"DELETE FROM pinwheel.{table}"):
            # A view that is not automatically updatable (download_time_saved) refuses
            # writes before privileges are checked; reading it is a privilege error.
            refused: tuple[type[Exception], ...] = (psycopg2.errors.InsufficientPrivilege,)
            if table in views and not stmt.startswith("SELECT"):
                refused += (psycopg2.errors.ObjectNotInPrerequisiteState,)
            with pytest.raises(refused), conn.cursor() as cur:
                cur.execute(stmt)
    admin = pg.admin(database)
    with admin.cursor() as cur:
        for view in sorted(views):
            cur.execute("SELECT has_table_privilege('qb_priv', %s, "
                        "'SELECT, INSERT, UPDATE, DELETE')", (f"pinwheel.{view}",))
            assert cur.fetchone()[0] is False, f"builders hold a privilege on the view {view}"
    admin.close()
    for fn in ("SELECT pinwheel.plan_release('x', '1')", "SELECT pinwheel.requeue_expired()",
               "SELECT pinwheel.held_job(1, gen_random_uuid())"):
        with pytest.raises(psycopg2.errors.InsufficientPrivilege), conn.cursor() as cur:
            cur.execute(fn)
    conn.close()


def test_master_role_reads_and_writes_tables(pg, database):
    dsn = pg.create_login(database, "qm_master", MASTER_GROUP, "pw-master")
    conn = db.connect(dsn)
    db.call(conn, "INSERT INTO packages (package, display_name) VALUES ('bar', 'Bar')")
    assert db.call(conn, "SELECT count(*) FROM packages")[0][0] == 1
    conn.close()


def test_an_operator_pauses_and_resumes_builders_without_restarting_them(pg, database):
    arm = builder(pg, database, "qb_parm", platform="linux_armv7l")
    x86 = builder(pg, database, "qb_px86")
    master = db.connect(pg.create_login(database, "qb_pmaster", MASTER_GROUP, "m-pw"))
    enqueue(pg, database, "foo", ["1.0", "2.0"])
    paused = builder_control.set_paused(master, True, target="cp311-linux_armv7l")
    assert [(s.builder, s.target, s.paused) for s in paused] == \
        [("qb_parm", "cp311-linux_armv7l", True)]
    assert arm.claim() is None          # paused: its agent, still running, claims nothing
    assert x86.claim() is not None      # the other target's builder is unaffected
    # Resuming wakes the idle agent at once (the NOTIFY new work sends).
    woke: list[bool] = []
    target = names.target("cp311", "linux_armv7l")
    t = threading.Thread(target=lambda: woke.append(arm.wait_for_work(target, 20)))
    t.start()
    time.sleep(0.3)
    resumed = builder_control.set_paused(master, False, ["qb_parm"])
    t.join(25)
    assert woke == [True] and [s.paused for s in resumed] == [False]
    assert arm.claim() is not None
    with pytest.raises(builder_control.NoSuchBuilder, match="no builder named nope"):
        builder_control.set_paused(master, True, ["nope"])
    with pytest.raises(builder_control.NoSuchBuilder, match="no builder builds for cp27-x"):
        builder_control.set_paused(master, True, target="cp27-x")
    master.close()
