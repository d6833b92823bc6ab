-- Read models, fed only by Kafka events. Every table is written idempotently and order-safely
-- by query-service's projection code, so the live consumer and a replay build the same rows.

-- One row per order. Facts of OrderPlaced never change; the status only moves forward by
-- (status_rank, status_at, status_event_id), so an older event never overwrites a newer one.
CREATE TABLE orders_view (
    order_id        UUID        PRIMARY KEY,
    customer_id     UUID,
    status          TEXT        NOT NULL DEFAULT 'UNKNOWN',
    status_rank     INT         NOT NULL DEFAULT 0,
    status_at       TIMESTAMPTZ NOT NULL DEFAULT '-infinity',
    status_event_id UUID        NOT NULL DEFAULT '00000000-0000-0000-0000-000000000000',
    reason          TEXT,
    items           JSONB,
    total_cents     BIGINT,
    currency        TEXT,
    minor_units     INT,
    placed_at       TIMESTAMPTZ,
    last_event_at   TIMESTAMPTZ NOT NULL DEFAULT '-infinity'
);
CREATE INDEX orders_view_by_customer ON orders_view (customer_id, placed_at DESC, order_id DESC);

-- Every saga step of an order, keyed by message id: a redelivery inserts nothing.
CREATE TABLE order_timeline (
    message_id UUID        PRIMARY KEY,
    order_id   UUID        NOT NULL,
    step       TEXT        NOT NULL,
    source     TEXT        NOT NULL,
    at         TIMESTAMPTZ NOT NULL,
    detail     JSONB       NOT NULL
);
CREATE INDEX order_timeline_by_order ON order_timeline (order_id, at, message_id);

-- Each order reserves and releases a SKU at most once: the key absorbs duplicates, and the
-- counters in stock_view are sums, so the order of arrival does not matter.
CREATE TABLE stock_movements (
    order_id UUID        NOT NULL,
    sku      TEXT        NOT NULL,
    kind     TEXT        NOT NULL CHECK (kind IN ('reserved', 'released')),
    quantity INT         NOT NULL,
    at       TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (order_id, sku, kind)
);

CREATE TABLE stock_view (
    sku            TEXT        PRIMARY KEY,
    reserved       BIGINT      NOT NULL DEFAULT 0,
    reserved_total BIGINT      NOT NULL DEFAULT 0,
    released_total BIGINT      NOT NULL DEFAULT 0,
    last_event_at  TIMESTAMPTZ NOT NULL DEFAULT '-infinity'
);

-- How far the live consumer has applied each partition (written in the effect's transaction).
CREATE TABLE projection_positions (
    topic           TEXT        NOT NULL,
    kafka_partition INT         NOT NULL,
    next_offset     BIGINT      NOT NULL,
    last_event_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (topic, kafka_partition)
);

-- The latest watermarks seen by the lag sampler, and query-service's committed offset (it
-- also moves past duplicates and dead-lettered messages, which leave no position):
-- lag = high_watermark - GREATEST(next_offset, committed_offset, low_watermark).
CREATE TABLE topic_watermarks (
    topic            TEXT        NOT NULL,
    kafka_partition  INT         NOT NULL,
    low_watermark    BIGINT      NOT NULL,
    high_watermark   BIGINT      NOT NULL,
    committed_offset BIGINT,
    sampled_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (topic, kafka_partition)
);

-- A replay in progress: where it has read each partition, committed with the rebuilt rows,
-- so an interrupted replay resumes there.
CREATE TABLE replay_positions (
    projection      TEXT   NOT NULL,
    topic           TEXT   NOT NULL,
    kafka_partition INT    NOT NULL,
    next_offset     BIGINT NOT NULL,
    end_offset      BIGINT NOT NULL,
    PRIMARY KEY (projection, topic, kafka_partition)
);
