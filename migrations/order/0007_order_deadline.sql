-- The order deadline (issue 16): an order still PENDING ORDER_DEADLINE_SECS (2 h by default)
-- after its created_at is REJECTED by the order service and OrderRejected announced, saga or no
-- saga (services/order/src/deadline.rs). The deadline is created_at + ORDER_DEADLINE_SECS,
-- computed at each sweep: orders placed before this migration have one too, without a
-- backfill, and a replica still on the previous version keeps inserting orders unchanged during
-- a rolling upgrade.
--
-- The sweep reads PENDING orders oldest first; this index holds only those.
CREATE INDEX orders_pending_created_at ON orders (created_at) WHERE status = 'PENDING';

-- An order whose expiry failed (a row that does not decode, …) is tried again at this time
-- instead of being the first row of every sweep; NULL for every other order.
ALTER TABLE orders ADD COLUMN deadline_retry_at TIMESTAMPTZ;
