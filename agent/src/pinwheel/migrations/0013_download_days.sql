-- Pinwheel schema: daily download aggregates, so the stats stay cheap at hundreds of
-- millions of downloads (issue 7, docs/downloads.md).
--
-- * download_days: successful wheel downloads (kind 'wheel', status 2xx) per UTC day,
--   project, file, installer and Python major.minor. Unknown values are '' (text) and 0
--   (file_id: file ids start at 1) so the grouping columns are NOT NULL and the primary key
--   holds them (PostgreSQL 13 has no NULLS NOT DISTINCT).
-- * download_request_days: every request per UTC day (whatever its kind and status).
-- * Both are kept by a statement-level trigger on downloads: the rows an INSERT or COPY
--   adds are summed into them by that same statement, so they commit, or roll back, with
--   the rows (the importer's batch, its per-row fallback, any other writer). Deleting or
--   detaching raw rows does not touch them: old month partitions can be dropped and the
--   stats stay.
-- * download_days_saved: download_time_saved over the summary: per row, the downloads times
--   the build time of that file (non-pure wheels only).
-- * Backfilled here from the downloads already imported, with downloads locked against
--   writers until this migration commits (an importer waits, then the trigger counts it).
SET LOCAL search_path = pinwheel, pg_temp;

LOCK TABLE downloads IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE download_days (
    day             date NOT NULL,
    package         text NOT NULL,             -- '' when the path named none
    file_id         bigint NOT NULL,           -- 0 when no published file had that name
    installer_name  text NOT NULL,             -- '' when unknown
    python_minor    text NOT NULL,             -- '3.11'; '' when unknown
    downloads       bigint NOT NULL CHECK (downloads > 0),
    PRIMARY KEY (day, package, file_id, installer_name, python_minor)
);
COMMENT ON TABLE download_days IS
    'Successful wheel downloads per UTC day, project, file, installer and Python major.minor, '
    'kept by a trigger on downloads in the importing transaction (docs/downloads.md)';
COMMENT ON COLUMN download_days.day IS 'The UTC day of downloads.accessed_at';
COMMENT ON COLUMN download_days.package IS 'downloads.package; '''' when NULL';
COMMENT ON COLUMN download_days.file_id IS
    'downloads.file_id (the published file of that name when imported); 0 when NULL';
COMMENT ON COLUMN download_days.installer_name IS 'downloads.installer_name; '''' when NULL';
COMMENT ON COLUMN download_days.python_minor IS
    'major.minor of downloads.python_version (3.11); '''' when NULL or not a version';
COMMENT ON COLUMN download_days.downloads IS 'How many such downloads that day';
-- The primary key serves queries by day; this one a project's days.
CREATE INDEX download_days_package ON download_days (package, day);

CREATE TABLE download_request_days (
    day       date PRIMARY KEY,
    requests  bigint NOT NULL CHECK (requests > 0)
);
COMMENT ON TABLE download_request_days IS
    'Requests of every kind and status per UTC day, kept by a trigger on downloads';
COMMENT ON COLUMN download_request_days.day IS 'The UTC day of downloads.accessed_at';
COMMENT ON COLUMN download_request_days.requests IS 'How many rows of downloads that day';

-- Rows are summed in key order, so two importers (two logs) lock the rows they share in the
-- same order and cannot deadlock.
CREATE FUNCTION downloads_sum_days() RETURNS trigger
LANGUAGE plpgsql SET search_path = pinwheel, pg_temp AS $$
BEGIN
    INSERT INTO download_days AS s (day, package, file_id, installer_name, python_minor,
                                    downloads)
    SELECT (n.accessed_at AT TIME ZONE 'UTC')::date, coalesce(n.package, ''),
           coalesce(n.file_id, 0), coalesce(n.installer_name, ''),
           coalesce(substring(n.python_version FROM '^[0-9]+[.][0-9]+'), ''), count(*)
      FROM new_rows n
     WHERE n.kind = 'wheel' AND n.status BETWEEN 200 AND 299
     GROUP BY 1, 2, 3, 4, 5
     ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (day, package, file_id, installer_name, python_minor)
    DO UPDATE SET downloads = s.downloads + EXCLUDED.downloads;
    INSERT INTO download_request_days AS s (day, requests)
    SELECT (n.accessed_at AT TIME ZONE 'UTC')::date, count(*)
      FROM new_rows n
     GROUP BY 1
     ORDER BY 1
    ON CONFLICT (day) DO UPDATE SET requests = s.requests + EXCLUDED.requests;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION downloads_sum_days() IS
    'Trigger: add the rows a statement inserted into downloads to download_days and '
    'download_request_days';

CREATE TRIGGER downloads_sum_days
    AFTER INSERT ON downloads REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION downloads_sum_days();

-- The downloads imported before this migration.
INSERT INTO download_days (day, package, file_id, installer_name, python_minor, downloads)
SELECT (accessed_at AT TIME ZONE 'UTC')::date, coalesce(package, ''), coalesce(file_id, 0),
       coalesce(installer_name, ''),
       coalesce(substring(python_version FROM '^[0-9]+[.][0-9]+'), ''), count(*)
  FROM downloads
 WHERE kind = 'wheel' AND status BETWEEN 200 AND 299
 GROUP BY 1, 2, 3, 4, 5;
INSERT INTO download_request_days (day, requests)
SELECT (accessed_at AT TIME ZONE 'UTC')::date, count(*) FROM downloads GROUP BY 1;

CREATE VIEW download_days_saved AS
SELECT s.day, nullif(s.package, '') AS package, s.file_id, s.downloads,
       b.duration * s.downloads AS saved
  FROM download_days s
  JOIN files f ON f.file_id = s.file_id
  JOIN builds b ON b.build_id = f.build_id
 WHERE b.duration IS NOT NULL
   AND NOT (f.abi_tag = 'none' AND f.platform_tag = 'any');
COMMENT ON VIEW download_days_saved IS
    'download_time_saved per row of download_days: its downloads of a non-pure wheel times '
    'the build time of that file';

REVOKE ALL ON download_days, download_request_days, download_days_saved FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON download_days, download_request_days
    TO pinwheel_master;
GRANT SELECT ON download_days_saved TO pinwheel_master;
REVOKE ALL ON FUNCTION downloads_sum_days() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION downloads_sum_days() TO pinwheel_master;
