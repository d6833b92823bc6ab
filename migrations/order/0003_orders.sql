CREATE TABLE orders (
    id              UUID        PRIMARY KEY,
    customer_id     UUID        NOT NULL,
    status          TEXT        NOT NULL CHECK (status IN ('PENDING', 'APPROVED', 'REJECTED')),
    reason          TEXT,
    items           JSONB       NOT NULL,
    total_cents     BIGINT      NOT NULL CHECK (total_cents >= 0),
    currency        TEXT        NOT NULL,
    payment_method  TEXT        NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX orders_customer ON orders (customer_id, created_at DESC);

-- Idempotency-Key of POST /orders: the first request with a key wins (unique index), a
-- concurrent duplicate waits for it and then answers with the same order.
CREATE TABLE idempotency_keys (
    key             TEXT        PRIMARY KEY,
    request_hash    TEXT        NOT NULL,
    order_id        UUID        NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
