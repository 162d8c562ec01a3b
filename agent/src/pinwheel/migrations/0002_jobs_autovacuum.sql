-- Vacuum the queue often. Every claim leaves a dead index entry at the head
-- of jobs_queued that later claims step over until a vacuum; with the default
-- scale factor a backlog of 1M jobs is vacuumed only after ~200,000 claims,
-- when a claim reads ~1,200 index pages instead of ~5 (docs/benchmarks.md).
SET LOCAL search_path = pinwheel, pg_temp;

ALTER TABLE jobs SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0
);
