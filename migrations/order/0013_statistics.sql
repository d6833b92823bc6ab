-- No planner statistics for an order's lines: no query filters on them, and every ANALYZE of the
-- table (autovacuum's) would otherwise sample and sort the JSON documents (see
-- migrations/messaging/0012_outbox_statistics.sql).
ALTER TABLE orders ALTER COLUMN items SET STATISTICS 0;
