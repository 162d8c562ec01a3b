-- Pinwheel schema, version 4: a build target is an ABI *on a platform*.
--
-- Until now a job was keyed by ABI alone (cp311), so an x86-64 bookworm
-- builder and an armhf bookworm builder (both cp311) shared one queue: each
-- release was built for whichever claimed it first, and the other platform
-- never got its wheel. The table `abis` becomes `targets` (abi, platform),
-- and jobs and builds carry the platform too.
--
-- Existing data: a target is made for every (ABI, platform) a builder has
-- registered; an ABI's queued jobs are copied to each of its platforms. An ABI
-- no builder ever registered for (only an operator could have made one) gets
-- no target, and its queued jobs are dropped: nothing could claim them, and
-- `pinwheel add` queues them again once a builder of that ABI registers.
-- Builds keep their history, with the platform of the builder that ran them.
SET LOCAL search_path = pinwheel, pg_temp;

ALTER TABLE builders DROP CONSTRAINT builders_abi_fkey;
ALTER TABLE jobs DROP CONSTRAINT jobs_abi_fkey;
ALTER TABLE builds DROP CONSTRAINT builds_abi_fkey;

CREATE TABLE targets (
    abi          text NOT NULL CHECK (abi ~ '^[a-z0-9_]{1,32}$'),
    platform     text NOT NULL CHECK (platform ~ '^[a-z0-9_]{1,64}$'),
    skip_reason  text,
    added_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (abi, platform)
);
COMMENT ON TABLE targets IS
    'Build targets: an ABI (cp311) on a platform (linux_armv7l); made when a builder of it '
    'registers; a skip_reason disables one';

INSERT INTO targets (abi, platform, skip_reason, added_at)
SELECT DISTINCT ON (b.abi, b.platform) b.abi, b.platform, a.skip_reason, a.added_at
  FROM builders b JOIN abis a USING (abi)
 WHERE b.platform IS NOT NULL;
DROP TABLE abis;

-- The queue: the platform joins the ABI in every key and index.
ALTER TABLE jobs ADD COLUMN platform text,
                 DROP CONSTRAINT jobs_package_version_abi_key;
INSERT INTO jobs (package, version, abi, platform, priority, queued_at, max_attempts)
SELECT j.package, j.version, j.abi, t.platform, j.priority, j.queued_at, j.max_attempts
  FROM jobs j JOIN targets t USING (abi)
 WHERE t.platform <> (SELECT min(t2.platform) FROM targets t2 WHERE t2.abi = j.abi);
UPDATE jobs j SET platform = (SELECT min(t.platform) FROM targets t WHERE t.abi = j.abi)
 WHERE j.platform IS NULL;
DELETE FROM jobs WHERE platform IS NULL;
ALTER TABLE jobs
    ALTER COLUMN platform SET NOT NULL,
    ADD CONSTRAINT jobs_target_key UNIQUE (package, version, abi, platform),
    ADD CONSTRAINT jobs_target_fkey FOREIGN KEY (abi, platform) REFERENCES targets;
DROP INDEX jobs_queued;
DROP INDEX jobs_leased;
-- The claim query walks this partial index: queued rows of one target, by
-- priority then age.
CREATE INDEX jobs_queued ON jobs (abi, platform, priority DESC, queued_at, job_id)
    WHERE state = 'queued';
CREATE INDEX jobs_leased ON jobs (abi, platform, lease_expires) WHERE state = 'leased';

ALTER TABLE builders
    ADD CONSTRAINT builders_target_fkey FOREIGN KEY (abi, platform) REFERENCES targets;

-- History: the platform of the builder that ran the build.
ALTER TABLE builds ADD COLUMN platform text;
UPDATE builds b SET platform = coalesce(
    (SELECT r.platform FROM builders r WHERE r.builder = b.builder),
    (SELECT min(t.platform) FROM targets t WHERE t.abi = b.abi),
    'unknown');
ALTER TABLE builds ALTER COLUMN platform SET NOT NULL;
DROP INDEX builds_by_release;
CREATE INDEX builds_by_release ON builds (package, version, abi, platform);

-- ---------------------------------------------------------------- functions

-- Wake idle agents of a target when work for it is queued
-- (payload: '<abi>-<platform>', e.g. 'cp311-linux_armv7l').
CREATE OR REPLACE FUNCTION jobs_notify() RETURNS trigger
LANGUAGE plpgsql SET search_path = pinwheel, pg_temp AS $$
BEGIN
    PERFORM pg_notify('pinwheel_jobs', NEW.abi || '-' || NEW.platform);
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION builder_register(p_abi text, p_platform text, p_os_release text,
                                            p_python_version text)
RETURNS TABLE (builder text, abi text, platform text, paused boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pinwheel, pg_temp AS $$
DECLARE
    b builders;
BEGIN
    IF p_abi IS NULL OR p_abi !~ '^[a-z0-9_]{1,32}$' THEN
        RAISE EXCEPTION 'invalid ABI tag %', quote_literal(p_abi) USING ERRCODE = 'PWV01';
    END IF;
    IF p_platform IS NULL OR p_platform !~ '^[a-z0-9_]{1,64}$' THEN
        RAISE EXCEPTION 'invalid platform tag %', quote_literal(p_platform) USING ERRCODE = 'PWV01';
    END IF;
    SELECT * INTO b FROM builders WHERE builders.builder = session_user FOR UPDATE;
    IF FOUND AND (b.abi IS DISTINCT FROM p_abi AND b.abi IS NOT NULL
                  OR b.platform IS DISTINCT FROM p_platform AND b.platform IS NOT NULL) THEN
        RAISE EXCEPTION 'builder % is registered for %/% but reports %/%',
            session_user, b.abi, b.platform, p_abi, p_platform
            USING ERRCODE = 'PWB02',
                  HINT = 'Fix the builder''s configuration, or ask an operator to change its ABI';
    END IF;
    INSERT INTO targets (abi, platform) VALUES (p_abi, p_platform) ON CONFLICT DO NOTHING;
    INSERT INTO builders AS t (builder, abi, platform, os_release, python_version,
                               registered_at, last_seen)
    VALUES (session_user, p_abi, p_platform, left(p_os_release, 100),
            left(p_python_version, 50), now(), now())
    ON CONFLICT ON CONSTRAINT builders_pkey DO UPDATE
        SET abi = EXCLUDED.abi, platform = EXCLUDED.platform,
            os_release = EXCLUDED.os_release, python_version = EXCLUDED.python_version,
            registered_at = now(), last_seen = now();
    RETURN QUERY SELECT t.builder, t.abi, t.platform, t.paused
                 FROM builders t WHERE t.builder = session_user;
END $$;

-- Return expired leases of one target (or all) to the queue, or give up on
-- jobs that used all their attempts (recorded in builds as 'abandoned').
DROP FUNCTION requeue_expired(text);
CREATE FUNCTION requeue_expired(p_abi text DEFAULT NULL, p_platform text DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pinwheel, pg_temp AS $$
DECLARE
    n integer := 0;
    j jobs;
BEGIN
    FOR j IN
        SELECT * FROM jobs
        WHERE state = 'leased' AND lease_expires < now()
          AND (p_abi IS NULL OR abi = p_abi)
          AND (p_platform IS NULL OR platform = p_platform)
        FOR UPDATE SKIP LOCKED
    LOOP
        IF j.attempts >= j.max_attempts THEN
            INSERT INTO builds (job_id, package, version, abi, platform, builder, status,
                                attempts, started_at, ingest_state, ingested_at, log_reason)
            VALUES (j.job_id, j.package, j.version, j.abi, j.platform, j.builder, 'abandoned',
                    j.attempts, j.claimed_at, 'done', now(),
                    format('lease expired %s times', j.attempts));
            DELETE FROM jobs WHERE job_id = j.job_id;
        ELSE
            UPDATE jobs SET state = 'queued', builder = NULL, lease_token = NULL,
                            lease_expires = NULL
            WHERE job_id = j.job_id;
        END IF;
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;

-- Claim the next job for the calling builder's target. One short transaction;
-- returns no row when there is nothing to do (or the builder is paused).
CREATE OR REPLACE FUNCTION claim_job(p_lease_seconds integer DEFAULT 300)
RETURNS TABLE (job_id bigint, package text, version text, abi text,
               lease_token uuid, lease_expires timestamptz, attempts integer)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pinwheel, pg_temp AS $$
DECLARE
    b builders := calling_builder();
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
    RETURN QUERY
    WITH next AS (
        SELECT j.job_id FROM jobs j
        WHERE j.state = 'queued' AND j.abi = b.abi AND j.platform = b.platform
        ORDER BY j.priority DESC, j.queued_at, j.job_id
        LIMIT 1
        FOR UPDATE SKIP LOCKED
    )
    UPDATE jobs j
       SET state = 'leased', builder = b.builder, lease_token = gen_random_uuid(),
           lease_expires = now() + make_interval(secs => p_lease_seconds),
           claimed_at = now(), attempts = j.attempts + 1
      FROM next
     WHERE j.job_id = next.job_id
    RETURNING j.job_id, j.package, j.version, j.abi, j.lease_token, j.lease_expires,
              j.attempts;
END $$;

CREATE OR REPLACE FUNCTION finish_job(p_job_id bigint, p_token uuid, p_status text,
                                      p_started timestamptz, p_duration_seconds double precision,
                                      p_log jsonb, p_files jsonb)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pinwheel, pg_temp AS $$
DECLARE
    j jobs := held_job(p_job_id, p_token);
    f jsonb;
    new_build bigint;
BEGIN
    IF p_status IS NULL OR p_status NOT IN ('success', 'failed', 'timeout') THEN
        RAISE EXCEPTION 'invalid build status %', quote_literal(p_status)
            USING ERRCODE = 'PWV01', HINT = 'One of success, failed, timeout';
    END IF;
    IF p_duration_seconds IS NULL OR p_duration_seconds < 0 OR p_duration_seconds > 1e7 THEN
        RAISE EXCEPTION 'invalid build duration %', p_duration_seconds USING ERRCODE = 'PWV01';
    END IF;
    IF jsonb_typeof(coalesce(p_files, '[]')) <> 'array' OR jsonb_array_length(coalesce(p_files, '[]')) > 100 THEN
        RAISE EXCEPTION 'files must be a JSON array of at most 100 entries' USING ERRCODE = 'PWV01';
    END IF;
    IF p_status = 'success' AND jsonb_array_length(coalesce(p_files, '[]')) = 0 THEN
        RAISE EXCEPTION 'a successful build must report at least one file' USING ERRCODE = 'PWV01';
    END IF;
    FOR f IN SELECT * FROM jsonb_array_elements(coalesce(p_files, '[]')) UNION ALL
             SELECT p_log WHERE p_log IS NOT NULL AND p_log <> 'null'
    LOOP
        IF jsonb_typeof(f) <> 'object' OR jsonb_typeof(f->'filename') <> 'string'
           OR length(f->>'filename') NOT BETWEEN 1 AND 255
           OR jsonb_typeof(f->'size') <> 'number' OR (f->>'size')::numeric NOT BETWEEN 0 AND 1e12
           OR (f->>'size')::numeric <> trunc((f->>'size')::numeric)
           OR coalesce(f->>'sha256', '') !~ '^[0-9a-f]{64}$' THEN
            RAISE EXCEPTION 'malformed file report: %', left(f::text, 300)
                USING ERRCODE = 'PWV01',
                      HINT = 'Each file needs a filename (1-255 chars), an integer size and a lowercase hex sha256';
        END IF;
    END LOOP;

    INSERT INTO builds (job_id, package, version, abi, platform, builder, status, attempts,
                        started_at, duration, log_name, log_size, log_sha256)
    VALUES (j.job_id, j.package, j.version, j.abi, j.platform, j.builder, p_status, j.attempts,
            p_started, make_interval(secs => p_duration_seconds),
            p_log->>'filename', (p_log->>'size')::bigint, p_log->>'sha256')
    RETURNING build_id INTO new_build;

    INSERT INTO files (build_id, filename, size, sha256)
    SELECT new_build, e->>'filename', (e->>'size')::bigint, e->>'sha256'
    FROM jsonb_array_elements(coalesce(p_files, '[]')) AS e;

    DELETE FROM jobs WHERE job_id = j.job_id;
    UPDATE builders SET last_seen = now() WHERE builder = session_user;
    PERFORM pg_notify('pinwheel_ingest', new_build::text);
    RETURN new_build;
END $$;

-- Queue a release for every active target that has neither a job nor a
-- successful build for it. Returns the number of jobs queued.
CREATE OR REPLACE FUNCTION plan_release(p_package text, p_version text,
                                        p_priority integer DEFAULT 0)
RETURNS integer
LANGUAGE sql SET search_path = pinwheel, pg_temp AS $$
    WITH queued AS (
        INSERT INTO jobs (package, version, abi, platform, priority)
        SELECT v.package, v.version, t.abi, t.platform, p_priority
        FROM versions v
        JOIN packages p USING (package)
        CROSS JOIN targets t
        WHERE v.package = p_package AND v.version = p_version
          AND v.has_sdist AND v.skip_reason IS NULL AND p.skip_reason IS NULL
          AND t.skip_reason IS NULL
          AND NOT EXISTS (SELECT 1 FROM builds b
                          WHERE b.package = v.package AND b.version = v.version
                            AND b.abi = t.abi AND b.platform = t.platform
                            AND b.status = 'success')
        ON CONFLICT (package, version, abi, platform) DO NOTHING
        RETURNING 1
    )
    SELECT count(*)::integer FROM queued;
$$;

-- ------------------------------------------------------------- privileges

REVOKE ALL ON targets FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON targets TO pinwheel_master;
REVOKE ALL ON FUNCTION requeue_expired(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION requeue_expired(text, text) TO pinwheel_master;
