-- When the live consumer wrote each timeline row. The query service keeps no inbox row per
-- event (its projections are idempotent by construction), so this is what the console shows
-- as "applied since" for a redriven query-service dead letter. A replay rebuilds the rows and
-- stamps them with the rebuild's time; checksums leave the column out, so a live view and its
-- rebuild still compare equal. `now()` is stable: existing rows get the migration's time
-- without a table rewrite.
ALTER TABLE order_timeline ADD COLUMN applied_at TIMESTAMPTZ NOT NULL DEFAULT now();
