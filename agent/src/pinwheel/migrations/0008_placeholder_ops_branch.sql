-- Placeholder on the ops branch only: keeps the migrations numbered without gaps until
-- the lead renumbers this branch's migration at merge. Drop it then.
SELECT 1;
