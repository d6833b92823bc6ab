-- Issue 18: the operator console's audit log — every redrive of dead letters and every retry
-- of parked outbox rows: who (the token's sub), when, what, the result. Rows older than
-- CONSOLE_AUDIT_RETENTION_DAYS (90) are deleted by each new entry's transaction.
CREATE TABLE console_audit (
    id          BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    operator    TEXT        NOT NULL,
    action      TEXT        NOT NULL,      -- redrive | retry-parked
    target      TEXT        NOT NULL,      -- the topic, or the outbox database
    items       TEXT[]      NOT NULL,      -- message ids, or outbox row ids
    outcome     TEXT        NOT NULL,      -- ok | failed
    detail      TEXT        NOT NULL
);
CREATE INDEX console_audit_at ON console_audit (at);
