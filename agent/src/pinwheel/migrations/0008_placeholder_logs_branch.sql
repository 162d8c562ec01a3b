-- PLACEHOLDER on the `logs` branch only: migrations must be numbered without
-- gaps, and 0008 belongs to another helper's branch. Drop this file when merging
-- `logs`; 0011 does not depend on it.
SET LOCAL search_path = pinwheel, pg_temp;
