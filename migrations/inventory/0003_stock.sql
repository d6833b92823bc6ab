-- Stock per SKU and one reservation per order.
--
-- Invariants (enforced here, not only in code):
-- - quantities are never negative;
-- - an order has at most one reservation row, whatever happens to it, so a duplicate or late
--   ReserveStock can never reserve twice, nor after the order's stock was released.
-- For every SKU, available + reserved changes only through PUT /inventory (restocking);
-- reserving and releasing move quantity between the two columns.

CREATE TABLE stock (
    sku         TEXT        PRIMARY KEY CHECK (sku ~ '^[A-Za-z0-9._-]{1,64}$'),
    available   INT         NOT NULL CHECK (available >= 0),
    reserved    INT         NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE reservations (
    order_id    UUID        PRIMARY KEY,
    status      TEXT        NOT NULL CHECK (status IN ('RESERVED', 'RELEASED', 'REJECTED')),
    -- What is (or was) held: merged per SKU, sorted by SKU. Empty for rejections and for
    -- tombstones (a release that arrived before any reservation).
    lines       JSONB       NOT NULL DEFAULT '[]',
    -- Why it was rejected or released.
    reason      TEXT,
    -- When the first outcome was decided: the reserved_at / rejected_at that is re-announced
    -- to a duplicate ReserveStock.
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    released_at TIMESTAMPTZ,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((status = 'RELEASED') = (released_at IS NOT NULL)),
    CHECK (status <> 'REJECTED' OR lines = '[]'::jsonb)
);

-- Operators look for what is still held.
CREATE INDEX reservations_reserved ON reservations (created_at) WHERE status = 'RESERVED';
