-- Customer notifications: exactly one per (order, template). The inbox absorbs redeliveries
-- of one message; the unique key also absorbs a second message announcing the same outcome
-- under a new message id (a re-announcement, a replay), so a customer is never told twice.
CREATE TABLE notifications (
    id          UUID        PRIMARY KEY,
    order_id    UUID        NOT NULL,
    customer_id UUID        NOT NULL,
    template    TEXT        NOT NULL,
    subject     TEXT        NOT NULL,
    body        TEXT        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (order_id, template)
);

CREATE INDEX notifications_customer ON notifications (customer_id, created_at);
