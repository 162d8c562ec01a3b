-- Pinwheel schema, version 15: planning one release costs the same in a catalogue of any size.
--
-- plan_due (migration 8) was a SQL function with SET search_path, which PostgreSQL never
-- inlines: its statement ran with the arguments as parameters, so "p_package IS NULL OR
-- v.package = p_package" could not use the versions key and every plan_release (the watcher,
-- `pinwheel add`, `pinwheel import`) read the whole versions table. At 100,000 releases one
-- call took about 30 ms unloaded, and an import slowed as it went. The same statement in
-- PL/pgSQL with plan_cache_mode = force_custom_plan is planned for the arguments of each
-- call: the NULL tests fold away and one release is found by its key. Same arguments, same
-- rule, same result; a call with NULLs (a new target, unskip of a whole target) still reads
-- everything it must.
SET LOCAL search_path = pinwheel, pg_temp;

CREATE OR REPLACE FUNCTION plan_due(p_package text DEFAULT NULL, p_version text DEFAULT NULL,
                                    p_abi text DEFAULT NULL, p_platform text DEFAULT NULL,
                                    p_yanked boolean DEFAULT false)
RETURNS TABLE (package text, version text, abi text, platform text)
LANGUAGE plpgsql STABLE
SET search_path = pinwheel, pg_temp
SET plan_cache_mode = force_custom_plan AS $$
BEGIN
    RETURN QUERY
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
END
$$;
COMMENT ON FUNCTION plan_due(text, text, text, text, boolean) IS
    'Each (release, target) that needs a job and has none (NULL arguments match anything); '
    'planned per call, so one release is found by its key';
