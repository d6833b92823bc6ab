CREATE TABLE sagas (
    order_id        UUID        PRIMARY KEY,
    state           TEXT        NOT NULL,
    data            JSONB       NOT NULL,
    deadline        TIMESTAMPTZ,               -- NULL exactly in terminal states
    attempts        INT         NOT NULL DEFAULT 0,
    traceparent     TEXT,                      -- the order's trace, continued by deadline steps
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX sagas_deadline ON sagas (deadline) WHERE deadline IS NOT NULL;
CREATE INDEX sagas_state ON sagas (state);

CREATE TABLE saga_history (
    id              BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id        UUID        NOT NULL REFERENCES sagas (order_id),
    at              TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    from_state      TEXT,
    to_state        TEXT        NOT NULL,
    trigger         TEXT        NOT NULL,      -- message type, or DEADLINE
    message_id      UUID,
    note            TEXT        NOT NULL,
    commands        TEXT[]      NOT NULL DEFAULT '{}'
);
CREATE INDEX saga_history_order ON saga_history (order_id, id);
