-- One payment per order: the record of what the provider was asked and answered, so a charge
-- is made at most once per order and every redelivered command re-emits the recorded outcome.
-- See services/payment/src/handler.rs for the rules.
CREATE TABLE payments (
    order_id        UUID        PRIMARY KEY,
    status          TEXT        NOT NULL
                    CHECK (status IN ('AUTHORIZED', 'DECLINED', 'REFUNDED', 'CANCELLED')),
    -- NULL on a CANCELLED row written by a refund that arrived before any AuthorizePayment.
    customer_id     UUID,
    -- What was charged (AUTHORIZED, REFUNDED) or requested (DECLINED); 0 when CANCELLED.
    amount_cents    BIGINT      NOT NULL CHECK (amount_cents >= 0),
    currency        TEXT,
    payment_method  TEXT,
    charge_id       TEXT        UNIQUE,        -- the provider's charge (ch_…)
    refund_id       TEXT        UNIQUE,        -- the provider's refund (re_…)
    decline_reason  TEXT,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    authorized_at   TIMESTAMPTZ,
    declined_at     TIMESTAMPTZ,
    refunded_at     TIMESTAMPTZ,
    cancelled_at    TIMESTAMPTZ,
    -- A charge id exactly when money moved; a refund id only after that.
    CHECK ((status IN ('AUTHORIZED', 'REFUNDED')) = (charge_id IS NOT NULL)),
    CHECK ((status = 'REFUNDED') = (refund_id IS NOT NULL))
);

CREATE INDEX payments_status ON payments (status, updated_at);

-- Charges whose outcome the service could not learn (a timeout or a lost response after the
-- request reached the provider). Written outside the handler's transaction, because that
-- transaction rolls back when the call fails: a later refund for an order with such a row
-- asks the provider (by idempotency key) whether money was taken, instead of assuming not.
-- The row is deleted in the transaction that records the order's payment outcome.
CREATE TABLE uncertain_charges (
    order_id        UUID        PRIMARY KEY,
    idempotency_key TEXT        NOT NULL,
    amount_cents    BIGINT      NOT NULL,
    currency        TEXT        NOT NULL,
    recorded_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
