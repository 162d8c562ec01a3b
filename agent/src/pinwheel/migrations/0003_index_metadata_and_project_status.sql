-- Pinwheel schema, version 3: what the Simple API 1.4 index needs from the database.
--
-- * Every published wheel has the SHA-256 of its METADATA (PEP 658/714: the
--   index links <wheel>.metadata with data-core-metadata="sha256=..."), and
--   its size and publish time are known (PEP 700 size / upload-time).
-- * A project has a PEP 792 status (active, archived, quarantined,
--   deprecated) with an optional reason, set only through project_set_status.
SET LOCAL search_path = pinwheel, pg_temp;

ALTER TABLE files
    ADD CONSTRAINT files_metadata_sha256_hex
        CHECK (metadata_sha256 IS NULL OR metadata_sha256 ~ '^[0-9a-f]{64}$'),
    ADD CONSTRAINT files_published_complete
        CHECK (state <> 'published'
               OR (metadata_sha256 IS NOT NULL AND published_at IS NOT NULL
                   AND package IS NOT NULL AND version IS NOT NULL));
COMMENT ON COLUMN files.metadata_sha256 IS
    'SHA-256 of the wheel''s *.dist-info/METADATA, served as <wheel>.metadata (PEP 658/714)';

ALTER TABLE packages
    ADD COLUMN status text NOT NULL DEFAULT 'active'
        CHECK (status IN ('active', 'archived', 'quarantined', 'deprecated')),
    ADD COLUMN status_reason text CHECK (length(status_reason) <= 2000);
COMMENT ON COLUMN packages.status IS
    'PEP 792 project status shown by the index; quarantined projects list no files';

-- Set a project's PEP 792 status (the master's operator commands). Returns
-- false when the project is unknown. The caller rewrites the project's pages.
CREATE FUNCTION project_set_status(p_package text, p_status text, p_reason text DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pinwheel, pg_temp AS $$
BEGIN
    IF p_status IS NULL OR p_status NOT IN ('active', 'archived', 'quarantined', 'deprecated') THEN
        RAISE EXCEPTION 'invalid project status %', quote_literal(p_status)
            USING ERRCODE = 'PWV01', HINT = 'One of active, archived, quarantined, deprecated';
    END IF;
    IF length(p_reason) > 2000 THEN
        RAISE EXCEPTION 'status reason is longer than 2000 characters' USING ERRCODE = 'PWV01';
    END IF;
    UPDATE packages SET status = p_status,
                        status_reason = CASE WHEN p_status = 'active' THEN NULL ELSE p_reason END
     WHERE package = p_package;
    RETURN FOUND;
END $$;

REVOKE ALL ON FUNCTION project_set_status(text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION project_set_status(text, text, text) TO pinwheel_master;
