-- Pinwheel schema, version 14: projects new upstream go to the queue's new lane.
--
-- * watch_projects.appeared_at: in mirror mode, when the root listing first showed a
--   project, if the watcher had listed the upstream before (so the project was created
--   upstream since, not part of the catalogue the watcher started from). The watcher
--   puts the releases of such a project in the queue's new lane, like a new release of
--   a project it already follows; NULL for everything of the first listing, for an
--   allowlisted project and after the upstream URL changed (all backlog, as before).
SET LOCAL search_path = pinwheel, pg_temp;

ALTER TABLE watch_projects ADD COLUMN appeared_at timestamptz;
COMMENT ON COLUMN watch_projects.appeared_at IS
    'When a later root listing first showed this project (new upstream): its releases are '
    'queued in the new lane; NULL for the first listing''s projects and in allowlist mode';
