-- Pinwheel schema: planning. A wheel that fits several build targets is built
-- once, a new build target gets the catalogue planned for it, and one
-- function decides what is due.
--
-- * files.covers: the master's ingest verified that this published wheel
--   serves other targets than its builder's (a pure wheel: no compiled code; a
--   stable-ABI wheel: no extension module tied to one Python version). NULL:
--   not looked at yet (published before this migration: the ingest looks at
--   the published copy once, pinwheel.coverage.assess_published); false with
--   covers_refused: tagged to serve several targets, but its content does not
--   fit the tag. A builder's report is never enough: only the ingest sets it.
-- * wheel_covers(): whether a wheel's tags install on a target (pip's rules,
--   for CPython targets): py3-none-any everywhere; pyXY-none-* on CPython 3.Y
--   and newer; cpXY-abi3-<platform> on CPython 3.Y and newer on that platform.
-- * plan_due(): the one rule for what is due (used by plan_release, unskip
--   and the planning of a new target); plan_jobs() queues it.
-- * cover_jobs(): when the ingest publishes a covering wheel, the release's
--   queued jobs of the targets it covers are cancelled (leased ones finish).
-- * targets.planned_at: when the catalogue was planned for a new target (by
--   the master's ingest janitor); NULL: not yet.
-- * plan_events: what planning decided on its own, one row each ('covered':
--   a job cancelled because a wheel covers its target; 'target-planned': a
--   new target got the catalogue planned).
SET LOCAL search_path = pinwheel, pg_temp;

ALTER TABLE files
    ADD COLUMN covers boolean,
    ADD COLUMN covers_refused text CHECK (length(covers_refused) <= 2000);
COMMENT ON COLUMN files.covers IS
    'Verified by the ingest to serve other build targets than its builder''s (pure or abi3); '
    'NULL: not looked at';
COMMENT ON COLUMN files.covers_refused IS
    'Why a wheel tagged for several targets was found to fit only its own';
CREATE INDEX files_covering ON files (package, version) WHERE state = 'published' AND covers;
-- Published wheels not looked at yet (before this migration): the ingest looks once.
CREATE INDEX files_unassessed ON files (file_id) WHERE state = 'published' AND covers IS NULL;

ALTER TABLE targets ADD COLUMN planned_at timestamptz;
UPDATE targets SET planned_at = added_at;
COMMENT ON COLUMN targets.planned_at IS
    'When the releases already in the catalogue were planned for this target; NULL: not yet';

CREATE TABLE plan_events (
    event_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind         text NOT NULL CHECK (kind IN ('covered', 'target-planned')),
    package      text,
    version      text,
    abi          text NOT NULL,
    platform     text NOT NULL,
    file_id      bigint REFERENCES files ON DELETE SET NULL,
    jobs         integer NOT NULL DEFAULT 0,
    detail       text CHECK (length(detail) <= 2000),
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE plan_events IS
    'Decisions planning took by itself: jobs covered by a wheel, a new target planned';
CREATE INDEX plan_events_by_package ON plan_events (package, version) WHERE package IS NOT NULL;

-- The minor version of a CPython 3 interpreter or ABI tag (cp311, py39 -> 11, 9).
CREATE FUNCTION python3_minor(p_tag text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT substring(p_tag FROM '^(?:cp|py)3([0-9]{1,3})$')::integer;
$$;

-- Whether a wheel with these (possibly compressed, dot-separated) tags
-- installs on the target (p_abi, p_platform).
CREATE FUNCTION wheel_covers(p_python_tag text, p_abi_tag text, p_platform_tag text,
                             p_abi text, p_platform text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT EXISTS (
        SELECT 1
          FROM unnest(string_to_array(p_python_tag, '.')) AS py,
               unnest(string_to_array(p_abi_tag, '.')) AS a,
               unnest(string_to_array(p_platform_tag, '.')) AS pl
         WHERE CASE
               WHEN a = 'abi3' THEN
                    pl = p_platform AND p_abi ~ '^cp3[0-9]+$' AND py ~ '^cp3[0-9]+$'
                    AND python3_minor(py) <= python3_minor(p_abi)
               WHEN a = 'none' THEN
                    pl IN (p_platform, 'any')
                    AND (py = 'py3' OR py = p_abi
                         OR (py ~ '^py3[0-9]+$' AND p_abi ~ '^cp3[0-9]+$'
                             AND python3_minor(py) <= python3_minor(p_abi)))
               ELSE pl = p_platform AND a = p_abi AND py = p_abi
               END);
$$;

-- What is due: each (release, target) that needs a job and has none. A
-- release is due when it has an sdist, is not deleted upstream, is not
-- yanked (unless p_yanked: an operator named it), and neither it, its
-- project nor the target is skipped; a target is due when it has no
-- successful build and no verified wheel of a successful build covers it.
-- NULL arguments match anything.
CREATE FUNCTION plan_due(p_package text DEFAULT NULL, p_version text DEFAULT NULL,
                         p_abi text DEFAULT NULL, p_platform text DEFAULT NULL,
                         p_yanked boolean DEFAULT false)
RETURNS TABLE (package text, version text, abi text, platform text)
LANGUAGE sql STABLE SET search_path = pinwheel, pg_temp AS $$
    SELECT v.package, v.version, t.abi, t.platform
      FROM versions v
      JOIN packages p ON p.package = v.package
     CROSS JOIN targets t
     WHERE (p_package IS NULL OR v.package = p_package)
       AND (p_version IS NULL OR v.version = p_version)
       AND (p_abi IS NULL OR t.abi = p_abi)
       AND (p_platform IS NULL OR t.platform = p_platform)
       AND v.has_sdist AND (p_yanked OR NOT v.yanked) AND v.removed_upstream_at IS NULL
       AND v.skip_reason IS NULL AND p.skip_reason IS NULL AND t.skip_reason IS NULL
       AND NOT EXISTS (SELECT 1 FROM jobs j
                        WHERE j.package = v.package AND j.version = v.version
                          AND j.abi = t.abi AND j.platform = t.platform)
       AND NOT EXISTS (SELECT 1 FROM builds b
                        WHERE b.package = v.package AND b.version = v.version
                          AND b.abi = t.abi AND b.platform = t.platform
                          AND b.status = 'success')
       AND NOT EXISTS (SELECT 1 FROM files f JOIN builds b ON b.build_id = f.build_id
                        WHERE f.package = v.package AND f.version = v.version
                          AND f.state = 'published' AND f.covers AND b.status = 'success'
                          AND wheel_covers(f.python_tag, f.abi_tag, f.platform_tag,
                                           t.abi, t.platform));
$$;

-- Queue what plan_due says; returns the number of jobs queued.
CREATE FUNCTION plan_jobs(p_package text, p_version text, p_abi text, p_platform text,
                          p_priority integer DEFAULT 0, p_yanked boolean DEFAULT false)
RETURNS integer
LANGUAGE sql SET search_path = pinwheel, pg_temp AS $$
    WITH queued AS (
        INSERT INTO jobs (package, version, abi, platform, priority)
        SELECT d.package, d.version, d.abi, d.platform, p_priority
          FROM plan_due(p_package, p_version, p_abi, p_platform, p_yanked) AS d
        ON CONFLICT (package, version, abi, platform) DO NOTHING
        RETURNING 1
    )
    SELECT count(*)::integer FROM queued;
$$;

-- Queue a release for every target it is due on (p_yanked: even if yanked,
-- because an operator named it). Returns the number of jobs queued.
DROP FUNCTION plan_release(text, text, integer);
CREATE FUNCTION plan_release(p_package text, p_version text, p_priority integer DEFAULT 0,
                             p_yanked boolean DEFAULT false)
RETURNS integer
LANGUAGE sql SET search_path = pinwheel, pg_temp AS $$
    SELECT plan_jobs(p_package, p_version, NULL, NULL, p_priority, p_yanked);
$$;

-- The ingest verified and published p_file_id: cancel the queued jobs of its
-- release on every target the wheel covers, each recorded in plan_events.
-- Jobs already claimed are left to finish. Returns the number cancelled.
CREATE FUNCTION cover_jobs(p_file_id bigint) RETURNS integer
LANGUAGE sql SET search_path = pinwheel, pg_temp AS $$
    WITH f AS (
        SELECT f.file_id, f.filename, f.package, f.version, f.python_tag, f.abi_tag,
               f.platform_tag, b.build_id, b.abi || '-' || b.platform AS built_on
          FROM files f JOIN builds b ON b.build_id = f.build_id
         WHERE f.file_id = p_file_id AND f.state = 'published' AND f.covers
           AND b.status = 'success'
    ), gone AS (
        DELETE FROM jobs j USING f
         WHERE j.package = f.package AND j.version = f.version AND j.state = 'queued'
           AND wheel_covers(f.python_tag, f.abi_tag, f.platform_tag, j.abi, j.platform)
        RETURNING j.package, j.version, j.abi, j.platform, f.file_id, f.filename, f.build_id,
                  f.built_on
    ), recorded AS (
        INSERT INTO plan_events (kind, package, version, abi, platform, file_id, jobs, detail)
        SELECT 'covered', g.package, g.version, g.abi, g.platform, g.file_id, 1,
               left(format('covered by %s (build %s on %s)', g.filename, g.build_id,
                           g.built_on), 2000)
          FROM gone g
        RETURNING 1
    )
    SELECT count(*)::integer FROM recorded;
$$;

REVOKE ALL ON plan_events FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON plan_events TO pinwheel_master;
REVOKE ALL ON FUNCTION python3_minor(text),
                       wheel_covers(text, text, text, text, text),
                       plan_due(text, text, text, text, boolean),
                       plan_jobs(text, text, text, text, integer, boolean),
                       plan_release(text, text, integer, boolean),
                       cover_jobs(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION python3_minor(text),
                          wheel_covers(text, text, text, text, text),
                          plan_due(text, text, text, text, boolean),
                          plan_jobs(text, text, text, text, integer, boolean),
                          plan_release(text, text, integer, boolean),
                          cover_jobs(bigint)
    TO pinwheel_master;
