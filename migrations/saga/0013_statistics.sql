-- No planner statistics for a saga's data document: no statistics on the column could estimate
-- the one filter on it (the console's `data->>'customer_id'`, an expression), and every ANALYZE
-- of `sagas` (autovacuum's) would otherwise sample and sort the JSON documents (see
-- migrations/messaging/0012_outbox_statistics.sql).
ALTER TABLE sagas ALTER COLUMN data SET STATISTICS 0;
