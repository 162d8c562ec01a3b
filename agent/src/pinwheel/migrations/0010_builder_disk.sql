-- Pinwheel schema: builders report the free disk space of their work directory,
-- and builds are indexed by finish time (issue 7: the /stats/ and /builders/
-- pages, `pinwheel status`, the metrics).
--
-- builds_finished_at: the stats read builds by finish time (per day, the last
-- hour per target, today per builder, recent failures).
--
-- builder_ping(p_disk_free_mb) is the idle ping with a measurement: the agent
-- calls it about once a minute, idle or building. The value comes from a
-- possibly compromised builder, so it is validated (a whole number of MiB,
-- 0 to 2^40) and only ever stored on the caller's own row.
SET LOCAL search_path = pinwheel, pg_temp;

ALTER TABLE builders
    ADD COLUMN disk_free_mb bigint CHECK (disk_free_mb BETWEEN 0 AND 1099511627776),
    ADD COLUMN disk_reported_at timestamptz;
COMMENT ON COLUMN builders.disk_free_mb IS
    'MiB free on the file system of the builder''s work directory, as it last reported';

CREATE FUNCTION builder_ping(p_disk_free_mb bigint) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pinwheel, pg_temp AS $$
DECLARE
    b builders := calling_builder();
BEGIN
    IF p_disk_free_mb IS NULL OR p_disk_free_mb NOT BETWEEN 0 AND 1099511627776 THEN
        RAISE EXCEPTION 'invalid free disk space % MiB', p_disk_free_mb
            USING ERRCODE = 'PWV01', HINT = 'A whole number of MiB between 0 and 2^40';
    END IF;
    UPDATE builders SET last_seen = now(), disk_free_mb = p_disk_free_mb,
                        disk_reported_at = now()
     WHERE builder = b.builder;
    RETURN b.paused;
END $$;
COMMENT ON FUNCTION builder_ping(bigint) IS
    'A builder says it is alive and how much disk it has free; returns whether it is paused';

CREATE INDEX builds_finished_at ON builds (finished_at);

REVOKE ALL ON FUNCTION builder_ping(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION builder_ping(bigint) TO pinwheel_builders;
