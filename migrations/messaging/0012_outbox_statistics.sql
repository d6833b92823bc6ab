-- No planner statistics for the columns no query filters, joins or sorts on: the message
-- itself. Every ANALYZE of the outbox — autovacuum's, and the relay's refresh after a burst —
-- samples its rows, and computing statistics over the Avro payloads and the JSON headers was
-- about half of it: 170 → 95 ms for a 26 MB outbox at the default statistics target, CPU taken
-- in one burst from the commits and passes that share the cores (docs/benchmarks.md). The
-- planner uses default estimates for a column without statistics; the relay's queries filter on
-- id, msg_key, published_at, parked_at and retry_at, which keep theirs.
ALTER TABLE outbox
    ALTER COLUMN payload SET STATISTICS 0,
    ALTER COLUMN headers SET STATISTICS 0;
