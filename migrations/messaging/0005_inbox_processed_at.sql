-- Inbox retention (issue 16): rows older than SAGAFLOW_INBOX_RETENTION_SECS (7 days by default)
-- are deleted by their consumer in batches; this index finds them without scanning the inbox.
-- A redelivery older than the retention would be applied again, so the retention must stay far
-- above any redelivery window (offsets are committed within seconds of the commit).
CREATE INDEX inbox_processed_at ON inbox (processed_at);
