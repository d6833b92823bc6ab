-- The transactional outbox: rows are written in the same transaction as the state change
-- they announce, and published by the relay (outbox-relay/). See outbox-relay/src/lib.rs.
CREATE TABLE outbox (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id      UUID        NOT NULL UNIQUE,
    message_type    TEXT        NOT NULL,
    topic           TEXT        NOT NULL,      -- logical topic; the relay adds its prefix
    msg_key         TEXT        NOT NULL,      -- aggregate (order) id: Kafka key, ordering unit
    payload         BYTEA       NOT NULL,      -- Avro datum
    headers         JSONB       NOT NULL,      -- envelope headers, name -> value
    created_at      TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    published_at    TIMESTAMPTZ,
    attempts        INT         NOT NULL DEFAULT 0,
    last_error      TEXT,
    parked_at       TIMESTAMPTZ,               -- set when the row can never be published
    parked_reason   TEXT
);

-- The relay reads only pending rows; per-key heads are found through (msg_key, id).
CREATE INDEX outbox_pending ON outbox (id) WHERE published_at IS NULL AND parked_at IS NULL;
CREATE INDEX outbox_pending_by_key ON outbox (msg_key, id) WHERE published_at IS NULL AND parked_at IS NULL;
CREATE INDEX outbox_published_at ON outbox (published_at) WHERE published_at IS NOT NULL;

-- Wake relays at commit (notifications are delivered only when the transaction commits).
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('sagaflow_outbox', '');
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

