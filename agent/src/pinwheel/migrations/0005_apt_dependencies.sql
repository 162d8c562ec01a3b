-- Pinwheel schema, version 5: apt dependencies of each file.
--
-- After a successful build the agent lists, for each wheel, the shared
-- libraries its ELF files need and where each comes from (pinwheel.aptdeps):
-- a Debian package (and whether every Debian system has it: "base"), the
-- wheel itself ("bundled"), a file owned by no package ("unpackaged"), or
-- nowhere on the builder ("missing"). finish_job stores them per file in
-- file_libraries. A builder may lie: a malformed list (bad names, too many
-- entries) is not stored, and files.libraries_refused says why; the build and
-- its files are recorded as usual.
SET LOCAL search_path = pinwheel, pg_temp;

ALTER TABLE files
    ADD COLUMN libraries_checked boolean NOT NULL DEFAULT false,
    ADD COLUMN libraries_refused text;
COMMENT ON COLUMN files.libraries_checked IS
    'The builder reported the file''s shared libraries (possibly none) and they were stored';
COMMENT ON COLUMN files.libraries_refused IS
    'Why the builder''s list of shared libraries for this file was not stored';

CREATE TABLE file_libraries (
    file_id  bigint NOT NULL REFERENCES files ON DELETE CASCADE,
    library  text NOT NULL CHECK (library ~ '^[A-Za-z0-9_+][A-Za-z0-9._+-]{0,199}$'),
    kind     text NOT NULL CHECK (kind IN ('debian', 'bundled', 'unpackaged', 'missing')),
    package  text CHECK (package ~ '^[a-z0-9][a-z0-9+.-]{1,99}$'),
    base     boolean NOT NULL DEFAULT false,
    PRIMARY KEY (file_id, library),
    CHECK ((kind = 'debian') = (package IS NOT NULL)),
    CHECK (kind = 'debian' OR NOT base)
);
COMMENT ON TABLE file_libraries IS
    'Shared libraries a file''s ELF files need, as its builder found them; base: the Debian '
    'package is on every Debian system (Essential, or needed by an Essential package)';
CREATE INDEX file_libraries_by_package ON file_libraries (package) WHERE package IS NOT NULL;

-- Why a reported list of libraries cannot be stored (NULL: it can).
CREATE FUNCTION libraries_problem(p jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pinwheel, pg_temp AS $$
DECLARE
    e jsonb;
    seen text[] := '{}';
BEGIN
    IF jsonb_typeof(p) <> 'array' THEN
        RETURN 'libraries must be a JSON array';
    END IF;
    IF jsonb_array_length(p) > 200 THEN
        RETURN format('%s libraries reported, at most 200 are accepted', jsonb_array_length(p));
    END IF;
    FOR e IN SELECT * FROM jsonb_array_elements(p) LOOP
        IF jsonb_typeof(e) <> 'object' OR jsonb_typeof(e->'library') <> 'string'
           OR jsonb_typeof(e->'kind') <> 'string' THEN
            RETURN 'each library must be an object with a library name and a kind: '
                   || left(e::text, 100);
        END IF;
        IF length(e->>'library') > 200
           OR e->>'library' !~ '^[A-Za-z0-9_+][A-Za-z0-9._+-]{0,199}$' THEN
            RETURN 'invalid library name ' || quote_literal(left(e->>'library', 100));
        END IF;
        IF e->>'kind' NOT IN ('debian', 'bundled', 'unpackaged', 'missing') THEN
            RETURN 'invalid kind ' || quote_literal(left(e->>'kind', 50)) || ' for '
                   || (e->>'library');
        END IF;
        IF e->>'kind' = 'debian' AND (jsonb_typeof(e->'package') <> 'string'
               OR length(e->>'package') > 100
               OR e->>'package' !~ '^[a-z0-9][a-z0-9+.-]{1,99}$') THEN
            RETURN 'invalid Debian package name ' || quote_literal(left(e->>'package', 100))
                   || ' for ' || (e->>'library');
        END IF;
        IF e->>'kind' <> 'debian' AND coalesce(jsonb_typeof(e->'package'), 'null') <> 'null' THEN
            RETURN 'a package for ' || (e->>'library') || ', which is ' || (e->>'kind');
        END IF;
        IF coalesce(jsonb_typeof(e->'base'), 'boolean') <> 'boolean' THEN
            RETURN 'base must be true or false for ' || (e->>'library');
        END IF;
        IF (e->>'library') = ANY (seen) THEN
            RETURN 'library ' || (e->>'library') || ' reported twice';
        END IF;
        seen := seen || (e->>'library');
    END LOOP;
    RETURN NULL;
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
    new_file bigint;
    problem text;
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

    FOR f IN SELECT * FROM jsonb_array_elements(coalesce(p_files, '[]')) LOOP
        problem := CASE WHEN f ? 'libraries' AND f->'libraries' <> 'null'
                        THEN libraries_problem(f->'libraries') END;
        INSERT INTO files (build_id, filename, size, sha256, libraries_checked, libraries_refused)
        VALUES (new_build, f->>'filename', (f->>'size')::bigint, f->>'sha256',
                f ? 'libraries' AND f->'libraries' <> 'null' AND problem IS NULL,
                'refused the builder''s list of shared libraries: ' || problem)
        RETURNING file_id INTO new_file;
        IF problem IS NULL AND f ? 'libraries' AND f->'libraries' <> 'null' THEN
            INSERT INTO file_libraries (file_id, library, kind, package, base)
            SELECT new_file, e->>'library', e->>'kind',
                   CASE WHEN e->>'kind' = 'debian' THEN e->>'package' END,
                   e->>'kind' = 'debian' AND coalesce((e->>'base')::boolean, false)
              FROM jsonb_array_elements(f->'libraries') AS e;
        END IF;
    END LOOP;

    DELETE FROM jobs WHERE job_id = j.job_id;
    UPDATE builders SET last_seen = now() WHERE builder = session_user;
    PERFORM pg_notify('pinwheel_ingest', new_build::text);
    RETURN new_build;
END $$;

REVOKE ALL ON file_libraries FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON file_libraries TO pinwheel_master;
REVOKE ALL ON FUNCTION libraries_problem(jsonb) FROM PUBLIC;
