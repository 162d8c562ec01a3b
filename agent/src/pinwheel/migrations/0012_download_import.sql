-- Pinwheel schema: the state of `pinwheel logs`, the importer of nginx's JSON access log
-- into downloads (docs/downloads.md).
--
-- * download_log_position: where the importer is in each log it follows: the file
--   (device, inode and a fingerprint of its first line, so a recycled inode is not taken for
--   the old file) and the byte offset after the last imported line. It is updated in the
--   same transaction as the rows those lines made: after a crash or a restart the importer
--   resumes exactly there, nothing counted twice, nothing lost. It also counts what was
--   imported and what was skipped.
-- * download_log_malformed: a sample of the lines that could not be read (kept small: the
--   newest few hundred), with the reason; they are counted and skipped, never fatal.
SET LOCAL search_path = pinwheel, pg_temp;

CREATE TABLE download_log_position (
    log_path         text PRIMARY KEY CHECK (length(log_path) BETWEEN 1 AND 4096),
    device           bigint NOT NULL,
    inode            bigint NOT NULL,
    byte_offset      bigint NOT NULL CHECK (byte_offset >= 0),
    fingerprint      text NOT NULL,    -- sha256 (hex) of the file's first line; '' before one
    lines_imported   bigint NOT NULL DEFAULT 0,
    lines_malformed  bigint NOT NULL DEFAULT 0,
    files_done       bigint NOT NULL DEFAULT 0,   -- files finished after a rotation
    truncations      bigint NOT NULL DEFAULT 0,   -- times the file was found truncated
    updated_at       timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE download_log_position IS
    'Where pinwheel logs is in each access log: committed with the rows it imported';

CREATE TABLE download_log_malformed (
    malformed_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    log_path         text NOT NULL,
    byte_offset      bigint NOT NULL,   -- where the line starts in its file
    seen_at          timestamptz NOT NULL DEFAULT now(),
    error            text NOT NULL CHECK (length(error) <= 500),
    line             text NOT NULL CHECK (length(line) <= 2000)  -- cut to 2000 characters
);
COMMENT ON TABLE download_log_malformed IS
    'A sample of the access log lines pinwheel logs could not read, with the reason';

COMMENT ON TABLE downloads IS
    'Requests to the master''s index, imported from nginx''s access log by pinwheel logs (docs/downloads.md)';
COMMENT ON COLUMN downloads.client IS
    'Keyed hash of the client''s /24 (IPv4) or /48 (IPv6) network under a key of the month, '
    'the keys deleted after a while: countable, not identifiable (docs/downloads.md)';

REVOKE ALL ON download_log_position, download_log_malformed FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE ON download_log_position TO pinwheel_master;
GRANT SELECT, INSERT, DELETE ON download_log_malformed TO pinwheel_master;
