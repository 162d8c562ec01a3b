-- Pinwheel schema, version 7: downloads, the table the stats are drawn from (issue 7).
--
-- * downloads: one row per request nginx logged on the master (wheel downloads,
--   simple and project pages, JSON), imported by `pinwheel logs`. Partitioned by
--   month of accessed_at (UTC) so it stays cheap at hundreds of millions of
--   rows: old months can be detached or dropped whole, and queries over a
--   period read only its partitions. downloads_partition() makes a month's
--   partition when the importer first meets it.
-- * client is never the address: see docs/downloads.md (a keyed hash of the
--   client's network, the key rotated, so a client is countable but not
--   identifiable).
-- * download_time_saved: for each download of a wheel that is not pure Python,
--   the build time the client did not spend (the duration of the build that
--   made that file).
SET LOCAL search_path = pinwheel, pg_temp;

CREATE TABLE downloads (
    accessed_at          timestamptz NOT NULL,
    kind                 text NOT NULL
                         CHECK (kind IN ('wheel', 'simple', 'project', 'json', 'other')),
    path                 text NOT NULL CHECK (length(path) <= 1024),
    status               smallint NOT NULL,
    bytes                bigint NOT NULL DEFAULT 0 CHECK (bytes >= 0),
    package              text,     -- the normalised project name the path names, if any
    filename             text,     -- a wheel download's file name
    file_id              bigint,   -- that file's files.file_id when known (no foreign key:
                                   -- a download stays counted when its file is removed)
    installer_name       text,     -- from pip's / uv's JSON user agent
    installer_version    text,
    python_version       text,
    implementation_name  text,
    distro_name          text,
    distro_version       text,
    system_name          text,
    cpu                  text,
    client               text      -- privacy-protected client id (docs/downloads.md)
) PARTITION BY RANGE (accessed_at);
COMMENT ON TABLE downloads IS 'Requests to the master''s index, imported from nginx''s access log by pinwheel logs';

CREATE INDEX downloads_accessed_at ON downloads USING brin (accessed_at);
CREATE INDEX downloads_package ON downloads (package, accessed_at) WHERE kind = 'wheel';

CREATE FUNCTION downloads_partition(p_at timestamptz) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pinwheel, pg_temp AS $$
DECLARE
    v_month date := date_trunc('month', p_at AT TIME ZONE 'UTC')::date;
    v_name text := 'downloads_' || to_char(v_month, 'YYYY_MM');
BEGIN
    IF p_at IS NULL THEN
        RAISE EXCEPTION 'downloads_partition: no time given' USING ERRCODE = 'PWV01';
    END IF;
    IF to_regclass('pinwheel.' || v_name) IS NULL THEN
        EXECUTE format('CREATE TABLE IF NOT EXISTS pinwheel.%I PARTITION OF pinwheel.downloads '
                       'FOR VALUES FROM (%L) TO (%L)', v_name,
                       v_month::timestamp AT TIME ZONE 'UTC',
                       (v_month + interval '1 month')::timestamp AT TIME ZONE 'UTC');
    END IF;
    RETURN v_name;
END
$$;
COMMENT ON FUNCTION downloads_partition(timestamptz) IS
    'Make (if missing) the month''s partition of downloads that holds the given time; returns its name';

CREATE VIEW download_time_saved AS
SELECT d.accessed_at, d.package, d.filename, d.file_id, b.duration AS saved
  FROM downloads d
  JOIN files f ON f.file_id = d.file_id
  JOIN builds b ON b.build_id = f.build_id
 WHERE d.kind = 'wheel'
   AND d.status BETWEEN 200 AND 299
   AND b.duration IS NOT NULL
   AND NOT (f.abi_tag = 'none' AND f.platform_tag = 'any');
COMMENT ON VIEW download_time_saved IS
    'Each download of a non-pure wheel with the build time it saved its user';

REVOKE ALL ON downloads, download_time_saved FROM PUBLIC;
GRANT SELECT, INSERT, DELETE ON downloads TO pinwheel_master;
GRANT SELECT ON download_time_saved TO pinwheel_master;
REVOKE ALL ON FUNCTION downloads_partition(timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION downloads_partition(timestamptz) TO pinwheel_master;
