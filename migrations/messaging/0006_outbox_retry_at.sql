-- Issue 16 item 7: a parked row keeps its place, and configuration errors are retried.
--
-- A row the broker refused for a reason the configuration can fix (no ACL for the topic, the
-- topic not created, an invalid topic name from a wrong prefix) is retried with a per-row
-- backoff: the relay sets `retry_at` and does not try the row again before it. Only a row
-- that can never be published as it is (larger than the broker accepts, …) is parked.
--
-- Per-key order: an unpublished row — pending, waiting for `retry_at`, or parked — is the
-- head of its key, so no later row of the key is published before it. `sagaflow outbox
-- parked` lists parked rows and `sagaflow outbox retry` hands them back to the relay.
ALTER TABLE outbox ADD COLUMN retry_at TIMESTAMPTZ;   -- not tried again before this time

-- The head query asks "is there an earlier unpublished row of this key?", parked rows
-- included, so the per-key index covers every unpublished row.
DROP INDEX outbox_pending_by_key;
CREATE INDEX outbox_unpublished_by_key ON outbox (msg_key, id) WHERE published_at IS NULL;
