-- Pinwheel schema: the order the queue is claimed in, operators bumping and
-- retrying, and cancelling builds that are running when their release goes.
--
-- * jobs.lane: 'bumped' (an operator asked for it: `pinwheel bump`, `pinwheel
--   retry`), 'new' (a release the watcher saw appear on a project it already
--   follows), 'backlog' (everything else: history, `pinwheel add`, unskips).
--   A claim takes the bumped lane first, then the new lane, then the backlog,
--   except that a share of claims (queue_policy.backlog_share percent) tries
--   the backlog before the new lane, so the backlog drains even while new
--   releases keep coming.
-- * jobs.rank: within a lane, the lowest rank is claimed first. rank is the
--   time the job was queued, moved earlier by one hour per point of priority
--   and by the project's popularity boost: a job's effective priority is
--   (now - rank) in hours, which grows by one every hour it waits (ageing: no
--   job starves behind ever newer work of the same lane). Set by a trigger, so
--   every path that queues a job (plan_release, unskip, retry) ranks it alike.
-- * package_popularity: wheel downloads of each project over the last 30
--   days and the boost they give (one day per factor of ten downloads, at most
--   seven days), refreshed by refresh_popularity(), which the master's ingest
--   service calls every minute and which does the work at most once an hour.
--   claim_job never counts downloads.
-- * A build running when its release or project is deleted upstream or
--   skipped is cancelled: its job moves to builds with status 'cancelled' (a
--   trigger on versions and packages), the builder's next heartbeat is told so
--   (SQLSTATE PWL02) and stops the build, and a finish_job for it is refused
--   with the same error: nothing it reports is recorded or published.
-- * bump_jobs() and retry_builds(): the operator commands `pinwheel bump` and
--   `pinwheel retry`.
SET LOCAL search_path = pinwheel, pg_temp;

-- ------------------------------------------------------------------ policy

CREATE TABLE queue_policy (
    id                       boolean PRIMARY KEY DEFAULT true CHECK (id),
    backlog_share            integer NOT NULL DEFAULT 20 CHECK (backlog_share BETWEEN 0 AND 100),
    popularity_refreshed_at  timestamptz
);
COMMENT ON TABLE queue_policy IS
    'How claims are ordered (one row): backlog_share percent of claims try the backlog before '
    'the new releases';
INSERT INTO queue_policy DEFAULT VALUES;

CREATE TABLE package_popularity (
    package        text PRIMARY KEY,
    downloads_30d  bigint NOT NULL CHECK (downloads_30d >= 0),
    boost_hours    integer NOT NULL CHECK (boost_hours BETWEEN 0 AND 168),
    refreshed_at   timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE package_popularity IS
    'Wheel downloads per project over the last 30 days and the rank boost they give '
    '(refresh_popularity)';

-- The rank of a job: when it was queued, moved earlier by its priority and its
-- project's boost (in hours). Priority is clamped to +-10 years.
CREATE FUNCTION job_rank(p_queued timestamptz, p_priority integer, p_boost_hours integer)
RETURNS timestamptz
LANGUAGE sql STABLE SET search_path = pinwheel, pg_temp AS $$
    SELECT p_queued - make_interval(hours => greatest(-87600, least(87600, p_priority))
                                             + coalesce(p_boost_hours, 0));
$$;

-- ------------------------------------------------------------------ jobs

ALTER TABLE jobs
    ADD COLUMN lane text NOT NULL DEFAULT 'backlog'
        CHECK (lane IN ('bumped', 'new', 'backlog')),
    ADD COLUMN rank timestamptz;
UPDATE jobs SET rank = job_rank(queued_at, priority, 0);
ALTER TABLE jobs ALTER COLUMN rank SET NOT NULL;
COMMENT ON COLUMN jobs.lane IS
    'bumped (an operator), new (a new release upstream) or backlog: claimed in that order, '
    'but for queue_policy.backlog_share';
COMMENT ON COLUMN jobs.rank IS
    'Claimed lowest first within a lane: queued_at minus priority and popularity, in hours';

CREATE FUNCTION jobs_rank() RETURNS trigger
LANGUAGE plpgsql SET search_path = pinwheel, pg_temp AS $$
BEGIN
    NEW.rank := job_rank(NEW.queued_at, NEW.priority,
                         (SELECT p.boost_hours FROM package_popularity p
                           WHERE p.package = NEW.package));
    RETURN NEW;
END $$;

CREATE TRIGGER jobs_rank
    BEFORE INSERT OR UPDATE OF priority, queued_at ON jobs
    FOR EACH ROW EXECUTE FUNCTION jobs_rank();

-- The claim walks this partial index: queued rows of one target and lane, by rank.
DROP INDEX jobs_queued;
CREATE INDEX jobs_queued ON jobs (abi, platform, lane, rank, job_id) WHERE state = 'queued';

-- ---------------------------------------------------------------- builds

ALTER TABLE builds DROP CONSTRAINT builds_status_check,
    ADD CONSTRAINT builds_status_check
        CHECK (status IN ('success', 'failed', 'timeout', 'abandoned', 'cancelled'));
COMMENT ON COLUMN builds.status IS
    'success, failed, timeout, abandoned (its lease expired max_attempts times) or cancelled '
    '(its release went upstream or was skipped while it was being built; log_reason says why)';
CREATE INDEX builds_cancelled ON builds (job_id) WHERE status = 'cancelled';

-- ----------------------------------------------------- cancelling running builds

-- Move the leased jobs of a project (or of one release) to builds as
-- 'cancelled'. Queued jobs are not touched: their callers delete them.
CREATE FUNCTION cancel_leased(p_package text, p_version text, p_reason text)
RETURNS integer
LANGUAGE sql SET search_path = pinwheel, pg_temp AS $$
    WITH gone AS (
        DELETE FROM jobs
         WHERE package = p_package AND (p_version IS NULL OR version = p_version)
           AND state = 'leased'
        RETURNING *
    ), recorded AS (
        INSERT INTO builds (job_id, package, version, abi, platform, builder, status, attempts,
                            started_at, ingest_state, ingested_at, log_reason)
        SELECT g.job_id, g.package, g.version, g.abi, g.platform, g.builder, 'cancelled',
               g.attempts, g.claimed_at, 'done', now(),
               left('cancelled while building: ' || p_reason, 2000)
          FROM gone g
        RETURNING 1
    )
    SELECT count(*)::integer FROM recorded;
$$;

CREATE FUNCTION versions_cancel_running() RETURNS trigger
LANGUAGE plpgsql SET search_path = pinwheel, pg_temp AS $$
BEGIN
    IF OLD.removed_upstream_at IS NULL AND NEW.removed_upstream_at IS NOT NULL THEN
        PERFORM cancel_leased(NEW.package, NEW.version, 'the release was removed upstream');
    ELSIF OLD.skip_reason IS NULL AND NEW.skip_reason IS NOT NULL THEN
        PERFORM cancel_leased(NEW.package, NEW.version, 'skipped: ' || NEW.skip_reason);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER versions_cancel_running
    AFTER UPDATE OF removed_upstream_at, skip_reason ON versions
    FOR EACH ROW EXECUTE FUNCTION versions_cancel_running();

CREATE FUNCTION packages_cancel_running() RETURNS trigger
LANGUAGE plpgsql SET search_path = pinwheel, pg_temp AS $$
BEGIN
    IF OLD.removed_upstream_at IS NULL AND NEW.removed_upstream_at IS NOT NULL THEN
        PERFORM cancel_leased(NEW.package, NULL, 'the project was removed upstream');
    ELSIF OLD.skip_reason IS NULL AND NEW.skip_reason IS NOT NULL THEN
        PERFORM cancel_leased(NEW.package, NULL, 'skipped: ' || NEW.skip_reason);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER packages_cancel_running
    AFTER UPDATE OF removed_upstream_at, skip_reason ON packages
    FOR EACH ROW EXECUTE FUNCTION packages_cancel_running();

-- The job row held by the calling builder under this token, locked; or a
-- clear error saying why it is not held. A job cancelled while this builder
-- built it raises PWL02 with the reason.
CREATE OR REPLACE FUNCTION held_job(p_job_id bigint, p_token uuid) RETURNS jobs
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pinwheel, pg_temp AS $$
DECLARE
    j jobs;
    why text;
BEGIN
    SELECT * INTO j FROM jobs WHERE job_id = p_job_id FOR UPDATE;
    IF NOT FOUND THEN
        SELECT b.log_reason INTO why FROM builds b
         WHERE b.job_id = p_job_id AND b.status = 'cancelled' AND b.builder = session_user
         ORDER BY b.build_id DESC LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'job % was cancelled: %', p_job_id, why
                USING ERRCODE = 'PWL02',
                      HINT = 'Stop the build and report nothing: the master records and '
                             'publishes nothing of it';
        END IF;
        RAISE EXCEPTION 'job % is not in the queue (finished, abandoned or removed)', p_job_id
            USING ERRCODE = 'PWL01';
    ELSIF j.state <> 'leased' OR j.builder IS DISTINCT FROM session_user THEN
        RAISE EXCEPTION 'job % is not held by builder %', p_job_id, session_user
            USING ERRCODE = 'PWL01', HINT = 'Its lease expired and it went back to the queue';
    ELSIF j.lease_token IS DISTINCT FROM p_token THEN
        RAISE EXCEPTION 'stale lease token for job %', p_job_id
            USING ERRCODE = 'PWL01', HINT = 'The job was claimed again after its lease expired';
    END IF;
    RETURN j;
END $$;

-- ------------------------------------------------------------------ claim

CREATE OR REPLACE FUNCTION claim_job(p_lease_seconds integer DEFAULT 300)
RETURNS TABLE (job_id bigint, package text, version text, abi text,
               lease_token uuid, lease_expires timestamptz, attempts integer)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pinwheel, pg_temp AS $$
DECLARE
    b builders := calling_builder();
    lanes text[] := '{bumped,new,backlog}';
    v_lane text;
    picked bigint;
BEGIN
    IF p_lease_seconds NOT BETWEEN 10 AND 86400 THEN
        RAISE EXCEPTION 'lease of % seconds is out of range (10 to 86400)', p_lease_seconds
            USING ERRCODE = 'PWV01';
    END IF;
    UPDATE builders SET last_seen = now() WHERE builder = b.builder;
    IF b.paused THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM jobs j WHERE j.state = 'leased' AND j.abi = b.abi
               AND j.platform = b.platform AND j.lease_expires < now()) THEN
        PERFORM requeue_expired(b.abi, b.platform);
    END IF;
    IF random() * 100 < (SELECT p.backlog_share FROM queue_policy p) THEN
        lanes := '{bumped,backlog,new}';
    END IF;
    FOREACH v_lane IN ARRAY lanes LOOP
        SELECT j.job_id INTO picked FROM jobs j
         WHERE j.state = 'queued' AND j.abi = b.abi AND j.platform = b.platform
           AND j.lane = v_lane
         ORDER BY j.rank, j.job_id
         LIMIT 1
         FOR UPDATE SKIP LOCKED;
        EXIT WHEN picked IS NOT NULL;
    END LOOP;
    IF picked IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
    UPDATE jobs j
       SET state = 'leased', builder = b.builder, lease_token = gen_random_uuid(),
           lease_expires = now() + make_interval(secs => p_lease_seconds),
           claimed_at = now(), attempts = j.attempts + 1
     WHERE j.job_id = picked
    RETURNING j.job_id, j.package, j.version, j.abi, j.lease_token, j.lease_expires,
              j.attempts;
END $$;

-- ------------------------------------------------------------ popularity

-- Recount wheel downloads per project over the last 30 days and re-rank the
-- queued jobs of projects whose boost changed. Does nothing (returns NULL)
-- when the last refresh is younger than p_min_age; otherwise returns how many
-- projects' boost changed.
CREATE FUNCTION refresh_popularity(p_min_age interval DEFAULT '1 hour') RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pinwheel, pg_temp AS $$
DECLARE
    v_last timestamptz;
    n integer;
BEGIN
    SELECT popularity_refreshed_at INTO v_last FROM queue_policy FOR UPDATE;
    IF v_last IS NOT NULL AND v_last > now() - p_min_age THEN
        RETURN NULL;
    END IF;
    UPDATE queue_policy SET popularity_refreshed_at = now();
    WITH counts AS (
        SELECT d.package, count(*) AS n
          FROM downloads d
         WHERE d.kind = 'wheel' AND d.status BETWEEN 200 AND 299
           AND d.accessed_at >= now() - interval '30 days'
           AND d.package IN (SELECT p.package FROM packages p)
         GROUP BY d.package
    ), fresh AS (
        -- one day per factor of ten: 9 downloads 1 day, 99 2 days ... at most 7 days
        SELECT c.package, c.n, least(168, 24 * (length((c.n + 1)::text) - 1)) AS boost
          FROM counts c
    ), changed AS (
        SELECT coalesce(f.package, o.package) AS package, coalesce(f.boost, 0) AS boost
          FROM fresh f FULL JOIN package_popularity o USING (package)
         WHERE coalesce(f.boost, 0) <> coalesce(o.boost_hours, 0)
    ), upserted AS (
        INSERT INTO package_popularity (package, downloads_30d, boost_hours, refreshed_at)
        SELECT f.package, f.n, f.boost, now() FROM fresh f
        ON CONFLICT (package) DO UPDATE
           SET downloads_30d = EXCLUDED.downloads_30d, boost_hours = EXCLUDED.boost_hours,
               refreshed_at = EXCLUDED.refreshed_at
        RETURNING 1
    ), dropped AS (
        DELETE FROM package_popularity o
         WHERE NOT EXISTS (SELECT 1 FROM fresh f WHERE f.package = o.package)
        RETURNING 1
    ), reranked AS (
        UPDATE jobs j SET rank = job_rank(j.queued_at, j.priority, c.boost)
          FROM changed c
         WHERE j.package = c.package
        RETURNING 1
    )
    SELECT count(*)::integer INTO n FROM changed;
    RETURN n;
END $$;

-- ------------------------------------------------------- operator commands

-- Move the queued jobs of a project (or one release, or one target of it) to
-- the front: the bumped lane. Returns the matching jobs, queued and leased,
-- with what was done to each.
CREATE FUNCTION bump_jobs(p_package text, p_version text DEFAULT NULL,
                          p_abi text DEFAULT NULL, p_platform text DEFAULT NULL)
RETURNS TABLE (job_id bigint, version text, abi text, platform text, state text,
               outcome text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pinwheel, pg_temp AS $$
#variable_conflict use_column
BEGIN
    IF (p_abi IS NULL) <> (p_platform IS NULL) THEN
        RAISE EXCEPTION 'a target needs both an ABI and a platform' USING ERRCODE = 'PWV01';
    END IF;
    RETURN QUERY
    WITH matching AS (
        SELECT j.job_id, j.state, j.lane FROM jobs j
         WHERE j.package = p_package AND (p_version IS NULL OR j.version = p_version)
           AND (p_abi IS NULL OR (j.abi = p_abi AND j.platform = p_platform))
         FOR UPDATE
    ), bumped AS (
        UPDATE jobs j SET lane = 'bumped'
          FROM matching m
         WHERE j.job_id = m.job_id AND m.state = 'queued' AND m.lane <> 'bumped'
        RETURNING j.job_id
    )
    SELECT j.job_id, j.version, j.abi, j.platform, j.state,
           CASE WHEN j.state = 'leased' THEN 'building now'
                WHEN j.job_id IN (SELECT b.job_id FROM bumped b) THEN 'moved to the front'
                ELSE 'already at the front' END
      FROM jobs j JOIN matching m USING (job_id)
     ORDER BY j.version, j.abi, j.platform;
END $$;

-- Queue again, at the front, the releases of a project (or one release, or
-- one target) whose latest build failed, timed out or was abandoned. Returns
-- one row per such build with what was done: 'queued at the front', or why
-- not (already queued, building, skipped, removed upstream, unknown target).
CREATE FUNCTION retry_builds(p_package text, p_version text DEFAULT NULL,
                             p_abi text DEFAULT NULL, p_platform text DEFAULT NULL)
RETURNS TABLE (version text, abi text, platform text, last_status text,
               finished_at timestamptz, job_id bigint, outcome text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pinwheel, pg_temp AS $$
#variable_conflict use_column
DECLARE
    r record;
    why text;
    existing jobs;
    new_job bigint;
BEGIN
    IF (p_abi IS NULL) <> (p_platform IS NULL) THEN
        RAISE EXCEPTION 'a target needs both an ABI and a platform' USING ERRCODE = 'PWV01';
    END IF;
    FOR r IN
        SELECT * FROM (
            SELECT DISTINCT ON (b.version, b.abi, b.platform)
                   b.version, b.abi, b.platform, b.status, b.finished_at
              FROM builds b
             WHERE b.package = p_package AND (p_version IS NULL OR b.version = p_version)
               AND (p_abi IS NULL OR (b.abi = p_abi AND b.platform = p_platform))
             ORDER BY b.version, b.abi, b.platform, b.build_id DESC
        ) latest
         WHERE latest.status IN ('failed', 'timeout', 'abandoned')
         ORDER BY latest.version, latest.abi, latest.platform
    LOOP
        new_job := NULL;
        SELECT * INTO existing FROM jobs j
         WHERE j.package = p_package AND j.version = r.version AND j.abi = r.abi
           AND j.platform = r.platform;
        SELECT CASE
                 WHEN existing.job_id IS NOT NULL AND existing.state = 'leased' THEN 'building now'
                 WHEN existing.job_id IS NOT NULL THEN 'already queued'
                 WHEN p.skip_reason IS NOT NULL THEN 'skipped: ' || p.skip_reason
                 WHEN v.skip_reason IS NOT NULL THEN 'skipped: ' || v.skip_reason
                 WHEN v.removed_upstream_at IS NOT NULL THEN 'removed upstream'
                 WHEN t.abi IS NULL THEN 'no such target any more'
                 WHEN t.skip_reason IS NOT NULL THEN 'target skipped: ' || t.skip_reason
               END
          INTO why
          FROM packages p
          JOIN versions v ON v.package = p.package AND v.version = r.version
          LEFT JOIN targets t ON t.abi = r.abi AND t.platform = r.platform
         WHERE p.package = p_package;
        IF why IS NULL THEN
            INSERT INTO jobs (package, version, abi, platform, lane)
            VALUES (p_package, r.version, r.abi, r.platform, 'bumped')
            RETURNING jobs.job_id INTO new_job;
            why := 'queued at the front';
        END IF;
        RETURN QUERY SELECT r.version, r.abi, r.platform, r.status, r.finished_at,
                            coalesce(new_job, existing.job_id), why;
    END LOOP;
END $$;

-- ------------------------------------------------------------- privileges

REVOKE ALL ON queue_policy, package_popularity FROM PUBLIC;
GRANT SELECT, UPDATE ON queue_policy TO pinwheel_master;
GRANT SELECT ON package_popularity TO pinwheel_master;
REVOKE ALL ON FUNCTION job_rank(timestamptz, integer, integer),
                       cancel_leased(text, text, text),
                       refresh_popularity(interval),
                       bump_jobs(text, text, text, text),
                       retry_builds(text, text, text, text) FROM PUBLIC;
-- Called by the triggers, in the master's own name.
GRANT EXECUTE ON FUNCTION job_rank(timestamptz, integer, integer),
                          cancel_leased(text, text, text)
    TO pinwheel_master;
GRANT EXECUTE ON FUNCTION refresh_popularity(interval),
                          bump_jobs(text, text, text, text),
                          retry_builds(text, text, text, text)
    TO pinwheel_master;
