-- The inbox: one row per (consumer, message) applied, written in the same transaction as
-- the effect, so a redelivered message is recognised and skipped.
CREATE TABLE inbox (
    consumer        TEXT        NOT NULL,
    message_id      UUID        NOT NULL,
    message_type    TEXT        NOT NULL,
    topic           TEXT        NOT NULL,
    kafka_partition INT         NOT NULL,
    kafka_offset    BIGINT      NOT NULL,
    processed_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);

