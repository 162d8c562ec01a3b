-- Pinwheel schema: operators rebuilding and removing releases
-- (`pinwheel rebuild`, `pinwheel remove`), and the allowlist's dependencies.
--
-- * operator_actions: what an operator did to a project or a release, with the
--   reason given and the database role that did it; one row per command.
-- * rebuilds: a (release, target) an operator asked to build again. While the
--   row exists, the ingest lets that target's next build replace the files an
--   earlier build of it published (the old files' rows become 'removed', the new
--   ones are published under the same or new names); the ingest deletes the row
--   when that build is ingested, whatever its outcome.
-- * watch_projects.dependency_of: in allowlist mode, the project whose runtime
--   dependencies (Requires-Dist of its newest release) brought this one in; it
--   is followed as long as that project is.
-- Depends only on migrations 1 to 6.
SET LOCAL search_path = pinwheel, pg_temp;

CREATE TABLE operator_actions (
    action_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    action       text NOT NULL CHECK (action IN ('rebuild', 'remove')),
    package      text NOT NULL,
    version      text,
    target       text,
    reason       text NOT NULL CHECK (reason <> '' AND length(reason) <= 500),
    detail       text CHECK (length(detail) <= 2000),
    done_by      text NOT NULL DEFAULT session_user,
    done_at      timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE operator_actions IS 'pinwheel rebuild / remove: what, why, who, when';
CREATE INDEX operator_actions_by_package ON operator_actions (package, action_id);

CREATE TABLE rebuilds (
    package       text NOT NULL,
    version       text NOT NULL,
    abi           text NOT NULL,
    platform      text NOT NULL,
    requested_at  timestamptz NOT NULL DEFAULT now(),
    action_id     bigint REFERENCES operator_actions,
    PRIMARY KEY (package, version, abi, platform),
    FOREIGN KEY (package, version) REFERENCES versions ON DELETE CASCADE
);
COMMENT ON TABLE rebuilds IS
    'Release targets an operator asked to rebuild: their next build replaces the published files';

ALTER TABLE watch_projects ADD COLUMN dependency_of text;
COMMENT ON COLUMN watch_projects.dependency_of IS
    'allowlist mode: added as a dependency of this project (NULL: listed by the operator)';

REVOKE ALL ON operator_actions, rebuilds FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON operator_actions, rebuilds TO pinwheel_master;
