-- Pinwheel schema, version 1: the catalogue, the queue, build history and files.
--
-- Applied by `pinwheel db upgrade` as the NOLOGIN owner role `pinwheel_owner`.
-- Group roles (created by `pinwheel db upgrade` before this file runs):
--   pinwheel_master    the master's services and operators: read/write tables
--   pinwheel_builders  builder login roles: no table privileges at all, only
--                      EXECUTE on the SECURITY DEFINER functions below.
-- Every builder function identifies the caller by session_user: a builder's
-- database login role name *is* its builder name.

-- The schema itself and the schema_migrations table are created by
-- `pinwheel db upgrade` (pinwheel/schema.py) before the first migration.
SET LOCAL search_path = pinwheel, pg_temp;

-- ---------------------------------------------------------------- catalogue

CREATE TABLE packages (
    package       text PRIMARY KEY
                  CHECK (package ~ '^[a-z0-9]([a-z0-9-]*[a-z0-9])?$'),
    display_name  text NOT NULL,
    skip_reason   text,
    added_at      timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE packages IS 'Projects, by PEP 503 normalised name';

CREATE TABLE versions (
    package          text NOT NULL REFERENCES packages ON DELETE CASCADE,
    version          text NOT NULL CHECK (version <> '' AND length(version) <= 200),
    released         timestamptz,
    yanked           boolean NOT NULL DEFAULT false,
    yanked_reason    text,
    has_sdist        boolean NOT NULL DEFAULT false,
    requires_python  text,
    skip_reason      text,
    added_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (package, version)
);

CREATE TABLE abis (
    abi          text PRIMARY KEY CHECK (abi ~ '^[a-z0-9_]{1,32}$'),
    skip_reason  text,
    added_at     timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE abis IS 'Build targets (cp39, cp311 ...); a skip_reason disables one';

CREATE TABLE builders (
    builder         text PRIMARY KEY,   -- the builder's database login role
    abi             text REFERENCES abis,
    platform        text CHECK (platform ~ '^[a-z0-9_]{1,64}$'),
    os_release      text,
    python_version  text,
    paused          boolean NOT NULL DEFAULT false,
    registered_at   timestamptz,
    last_seen       timestamptz
);
COMMENT ON COLUMN builders.abi IS 'Pinned by an operator, or set by the first registration; a later registration must match';

-- ---------------------------------------------------------------- the queue

CREATE TABLE jobs (
    job_id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    package        text NOT NULL,
    version        text NOT NULL,
    abi            text NOT NULL REFERENCES abis,
    priority       integer NOT NULL DEFAULT 0,
    queued_at      timestamptz NOT NULL DEFAULT now(),
    state          text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'leased')),
    builder        text REFERENCES builders,
    lease_token    uuid,
    lease_expires  timestamptz,
    claimed_at     timestamptz,
    attempts       integer NOT NULL DEFAULT 0,
    max_attempts   integer NOT NULL DEFAULT 3 CHECK (max_attempts > 0),
    FOREIGN KEY (package, version) REFERENCES versions ON DELETE CASCADE,
    UNIQUE (package, version, abi),
    CHECK ((state = 'leased') = (builder IS NOT NULL AND lease_token IS NOT NULL
                                 AND lease_expires IS NOT NULL))
);
COMMENT ON TABLE jobs IS 'Live work only: a finished job moves to builds';
-- The claim query walks this partial index: queued rows of one ABI, by
-- priority then age.
CREATE INDEX jobs_queued ON jobs (abi, priority DESC, queued_at, job_id)
    WHERE state = 'queued';
CREATE INDEX jobs_leased ON jobs (abi, lease_expires) WHERE state = 'leased';

-- ------------------------------------------------------- history and files

CREATE TABLE builds (
    build_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id        bigint NOT NULL,
    package       text NOT NULL,
    version       text NOT NULL,
    abi           text NOT NULL REFERENCES abis,
    builder       text REFERENCES builders,
    status        text NOT NULL
                  CHECK (status IN ('success', 'failed', 'timeout', 'abandoned')),
    attempts      integer NOT NULL,
    started_at    timestamptz,
    finished_at   timestamptz NOT NULL DEFAULT now(),
    duration      interval,
    -- The gzipped build log as reported by the builder, then as ingested.
    log_name      text,
    log_size      bigint,
    log_sha256    text,
    log_path      text,
    log_reason    text,
    -- 'pending' until the master's ingest has verified (and published or
    -- quarantined) everything this build reported.
    ingest_state  text NOT NULL DEFAULT 'pending' CHECK (ingest_state IN ('pending', 'done')),
    ingested_at   timestamptz,
    FOREIGN KEY (package, version) REFERENCES versions ON DELETE CASCADE
);
CREATE INDEX builds_pending ON builds (build_id) WHERE ingest_state = 'pending';
CREATE INDEX builds_by_release ON builds (package, version, abi);

CREATE TABLE files (
    file_id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    build_id         bigint NOT NULL REFERENCES builds ON DELETE CASCADE,
    filename         text NOT NULL,   -- as reported: untrusted until verified
    size             bigint NOT NULL,
    sha256           text NOT NULL,
    state            text NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'published', 'quarantined')),
    reason           text,            -- why a file was quarantined
    package          text,
    version          text,
    python_tag       text,
    abi_tag          text,
    platform_tag     text,
    requires_python  text,
    metadata_sha256  text,
    published_at     timestamptz,
    CHECK (state <> 'quarantined' OR reason IS NOT NULL)
);
CREATE UNIQUE INDEX files_published_name ON files (filename) WHERE state = 'published';
CREATE INDEX files_published_package ON files (package) WHERE state = 'published';
CREATE INDEX files_by_build ON files (build_id);

-- ------------------------------------------------------------ notifications

-- Wake idle agents of an ABI when work for it is queued (payload: the ABI).
CREATE FUNCTION jobs_notify() RETURNS trigger
LANGUAGE plpgsql SET search_path = pinwheel, pg_temp AS $$
BEGIN
    PERFORM pg_notify('pinwheel_jobs', NEW.abi);
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_queued_notify
    AFTER INSERT OR UPDATE OF state ON jobs
    FOR EACH ROW WHEN (NEW.state = 'queued') EXECUTE FUNCTION jobs_notify();

-- ------------------------------------------------- the builders' interface

CREATE FUNCTION builder_register(p_abi text, p_platform text, p_os_release text,
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
    INSERT INTO abis (abi) VALUES (p_abi) ON CONFLICT DO NOTHING;
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

-- Look up the calling builder; raise if it never registered.
CREATE FUNCTION calling_builder() RETURNS builders
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pinwheel, pg_temp AS $$
DECLARE
    b builders;
BEGIN
    SELECT * INTO b FROM builders WHERE builder = session_user;
    IF NOT FOUND OR b.abi IS NULL THEN
        RAISE EXCEPTION 'builder % is not registered', session_user
            USING ERRCODE = 'PWB01', HINT = 'The agent registers itself when it starts';
    END IF;
    RETURN b;
END $$;

-- Return expired leases of one ABI to the queue, or give up on jobs that
-- used all their attempts (recorded in builds as 'abandoned').
CREATE FUNCTION requeue_expired(p_abi text DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pinwheel, pg_temp AS $$
DECLARE
    n integer := 0;
    j jobs;
BEGIN
    FOR j IN
        SELECT * FROM jobs
        WHERE state = 'leased' AND lease_expires < now()
          AND (p_abi IS NULL OR abi = p_abi)
        FOR UPDATE SKIP LOCKED
    LOOP
        IF j.attempts >= j.max_attempts THEN
            INSERT INTO builds (job_id, package, version, abi, builder, status, attempts,
                                started_at, ingest_state, ingested_at, log_reason)
            VALUES (j.job_id, j.package, j.version, j.abi, j.builder, 'abandoned',
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

-- Claim the next job for the calling builder's ABI. One short transaction;
-- returns no row when there is nothing to do (or the builder is paused).
CREATE FUNCTION claim_job(p_lease_seconds integer DEFAULT 300)
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
               AND j.lease_expires < now()) THEN
        PERFORM requeue_expired(b.abi);
    END IF;
    RETURN QUERY
    WITH next AS (
        SELECT j.job_id FROM jobs j
        WHERE j.state = 'queued' AND j.abi = b.abi
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

-- The job row held by the calling builder under this token, locked; or a
-- clear error saying why it is not held.
CREATE FUNCTION held_job(p_job_id bigint, p_token uuid) RETURNS jobs
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pinwheel, pg_temp AS $$
DECLARE
    j jobs;
BEGIN
    SELECT * INTO j FROM jobs WHERE job_id = p_job_id FOR UPDATE;
    IF NOT FOUND THEN
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

-- Extend the lease on a held job; returns the new expiry.
CREATE FUNCTION heartbeat(p_job_id bigint, p_token uuid, p_lease_seconds integer DEFAULT 300)
RETURNS timestamptz
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pinwheel, pg_temp AS $$
DECLARE
    j jobs := held_job(p_job_id, p_token);
    expires timestamptz := now() + make_interval(secs => least(greatest(p_lease_seconds, 10), 86400));
BEGIN
    UPDATE jobs SET lease_expires = expires WHERE job_id = j.job_id;
    UPDATE builders SET last_seen = now() WHERE builder = session_user;
    RETURN expires;
END $$;

-- An idle builder says it is alive; returns whether it is paused.
CREATE FUNCTION builder_ping() RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pinwheel, pg_temp AS $$
DECLARE
    b builders := calling_builder();
BEGIN
    UPDATE builders SET last_seen = now() WHERE builder = b.builder;
    RETURN b.paused;
END $$;

-- Hand a held job back to the queue (the agent is stopping); the attempt
-- is not counted against the job.
CREATE FUNCTION release_job(p_job_id bigint, p_token uuid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pinwheel, pg_temp AS $$
DECLARE
    j jobs := held_job(p_job_id, p_token);
BEGIN
    UPDATE jobs SET state = 'queued', builder = NULL, lease_token = NULL,
                    lease_expires = NULL, attempts = greatest(j.attempts - 1, 0)
    WHERE job_id = j.job_id;
END $$;

-- Report the result of a held job. p_files is a JSON array of
-- {"filename": text, "size": int, "sha256": hex}; p_log is
-- {"filename": text, "size": int, "sha256": hex} or null. Everything reported
-- is untrusted: the master's ingest verifies it before anything is published.
CREATE FUNCTION finish_job(p_job_id bigint, p_token uuid, p_status text,
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

    INSERT INTO builds (job_id, package, version, abi, builder, status, attempts,
                        started_at, duration, log_name, log_size, log_sha256)
    VALUES (j.job_id, j.package, j.version, j.abi, j.builder, p_status, j.attempts,
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

-- ------------------------------------------------------ the master's side

-- Queue a release for every active ABI that has neither a job nor a
-- successful build for it. Returns the number of jobs queued.
CREATE FUNCTION plan_release(p_package text, p_version text, p_priority integer DEFAULT 0)
RETURNS integer
LANGUAGE sql SET search_path = pinwheel, pg_temp AS $$
    WITH queued AS (
        INSERT INTO jobs (package, version, abi, priority)
        SELECT v.package, v.version, a.abi, p_priority
        FROM versions v
        JOIN packages p USING (package)
        CROSS JOIN abis a
        WHERE v.package = p_package AND v.version = p_version
          AND v.has_sdist AND v.skip_reason IS NULL AND p.skip_reason IS NULL
          AND a.skip_reason IS NULL
          AND NOT EXISTS (SELECT 1 FROM builds b
                          WHERE b.package = v.package AND b.version = v.version
                            AND b.abi = a.abi AND b.status = 'success')
        ON CONFLICT (package, version, abi) DO NOTHING
        RETURNING 1
    )
    SELECT count(*)::integer FROM queued;
$$;

-- ------------------------------------------------------------- privileges

REVOKE ALL ON SCHEMA pinwheel FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA pinwheel FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA pinwheel FROM PUBLIC;
ALTER DEFAULT PRIVILEGES IN SCHEMA pinwheel REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;

GRANT USAGE ON SCHEMA pinwheel TO pinwheel_master, pinwheel_builders;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA pinwheel TO pinwheel_master;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA pinwheel TO pinwheel_master;
GRANT EXECUTE ON FUNCTION plan_release(text, text, integer),
                          requeue_expired(text)
    TO pinwheel_master;
GRANT EXECUTE ON FUNCTION builder_register(text, text, text, text),
                          claim_job(integer),
                          heartbeat(bigint, uuid, integer),
                          builder_ping(),
                          release_job(bigint, uuid),
                          finish_job(bigint, uuid, text, timestamptz, double precision, jsonb, jsonb)
    TO pinwheel_builders;
