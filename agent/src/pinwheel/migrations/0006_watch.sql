-- Pinwheel schema, version 6: following the upstream index (`pinwheel watch`).
--
-- * watch_state: the upstream being followed and its root page's validators
--   (one row). A different upstream URL resets every stored serial.
-- * watch_projects: per project, the last upstream serial (PEP 691 JSON
--   `_last-serial`, PyPI) and the HTTP validators (ETag, Last-Modified) and
--   content hash of the page last processed, and whether its index pages
--   still need rewriting. A project's new serial is committed in the same
--   transaction as the catalogue rows, jobs and events its change caused, so
--   a restart neither misses nor repeats a change.
-- * upstream_events: what the watcher saw happen upstream (a new release, a
--   yank, a deletion ...), one row per change.
-- * A release or project deleted upstream is kept and marked
--   (removed_upstream_at); with `on_removal = remove` its files are also
--   unpublished: files.state 'removed'.
-- Depends only on migrations 1 to 4.
SET LOCAL search_path = pinwheel, pg_temp;

CREATE TABLE watch_state (
    id                  boolean PRIMARY KEY DEFAULT true CHECK (id),
    upstream_url        text NOT NULL,
    root_etag           text,
    root_last_modified  text,
    root_serial         bigint,
    polled_at           timestamptz
);
COMMENT ON TABLE watch_state IS 'The upstream pinwheel watch follows (one row)';

CREATE TABLE watch_projects (
    package         text PRIMARY KEY CHECK (package ~ '^[a-z0-9]([a-z0-9-]*[a-z0-9])?$'),
    -- in the root listing (mirror) or the allowlist (allowlist) at the last poll
    listed          boolean NOT NULL DEFAULT true,
    upstream_serial bigint,      -- the serial the root listing gives (PyPI), not yet processed
    last_serial     bigint,      -- the serial of the page last processed
    etag            text,
    last_modified   text,
    content_sha256  text CHECK (content_sha256 ~ '^[0-9a-f]{64}$'),
    checked_at      timestamptz,
    changed_at      timestamptz,
    removed_at      timestamptz,
    pages_dirty     boolean NOT NULL DEFAULT false,
    last_error      text CHECK (length(last_error) <= 2000)
);
COMMENT ON TABLE watch_projects IS
    'Per project: the upstream serial and HTTP validators pinwheel watch last processed';
CREATE INDEX watch_projects_dirty ON watch_projects (package) WHERE pages_dirty;
CREATE INDEX watch_projects_due ON watch_projects (upstream_serial)
    WHERE upstream_serial > last_serial OR last_serial IS NULL;

CREATE TABLE upstream_events (
    event_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    package      text NOT NULL,
    version      text,
    kind         text NOT NULL CHECK (kind IN (
                     'new-release', 'binary-only', 'sdist-added', 'yanked', 'unyanked',
                     'release-removed', 'release-returned', 'project-removed',
                     'project-returned')),
    detail       text CHECK (length(detail) <= 2000),
    serial       bigint,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE upstream_events IS 'Changes pinwheel watch saw upstream, one row each';
CREATE INDEX upstream_events_by_package ON upstream_events (package, event_id);

ALTER TABLE packages ADD COLUMN removed_upstream_at timestamptz;
ALTER TABLE versions ADD COLUMN removed_upstream_at timestamptz;
COMMENT ON COLUMN versions.removed_upstream_at IS
    'When pinwheel watch found the release deleted upstream (kept, or its files removed)';

ALTER TABLE files DROP CONSTRAINT files_state_check,
    ADD CONSTRAINT files_state_check
        CHECK (state IN ('pending', 'published', 'quarantined', 'removed'));
COMMENT ON COLUMN files.state IS
    'pending, published, quarantined, or removed (deleted upstream, with on_removal = remove)';

REVOKE ALL ON watch_state, watch_projects, upstream_events FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON watch_state, watch_projects, upstream_events
    TO pinwheel_master;
