-- Idempotency keys are scoped to the caller and expire (issue 17).
--
-- - A key belongs to a principal: the token's `sub`, or 'anonymous' when the API is open. The
--   same key from another client creates that client's own order and never reveals another
--   client's (Stripe scopes its keys per account the same way).
-- - A key is remembered for ORDER_IDEMPOTENCY_KEY_TTL_SECS (24 h by default): an older row
--   counts as absent, and the order service deletes such rows periodically (created_at index).
--
-- Existing keys were used before principals existed; they become the anonymous principal's.
ALTER TABLE idempotency_keys ADD COLUMN principal TEXT NOT NULL DEFAULT 'anonymous';
ALTER TABLE idempotency_keys ALTER COLUMN principal DROP DEFAULT;
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE idempotency_keys ADD PRIMARY KEY (principal, key);
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
