-- PLACEHOLDER on the `watch` branch only: migrations must be numbered without
-- gaps, and 0005 belongs to the apt-dependency work (another branch). Drop
-- this file when merging `watch` after that branch; 0006 does not depend on it.
SET LOCAL search_path = pinwheel, pg_temp;
