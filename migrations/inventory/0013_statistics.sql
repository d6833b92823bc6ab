-- No planner statistics for a reservation's lines: no query filters on them, and every ANALYZE
-- of the table (autovacuum's) would otherwise sample and sort the JSON documents (see
-- migrations/messaging/0012_outbox_statistics.sql).
ALTER TABLE reservations ALTER COLUMN lines SET STATISTICS 0;
