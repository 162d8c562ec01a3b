-- Placeholder on the `order` branch: keeps the migrations numbered without gaps
-- until the migration of this number from another branch is merged (then this
-- file is dropped and the next one renumbered).
SELECT 1;
