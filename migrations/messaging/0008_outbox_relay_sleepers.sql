-- Issue 15: no NOTIFY per transaction.
--
-- A notifying transaction takes a cluster-wide lock in PreCommit_Notify and holds it until its
-- commit record is flushed, so notifying transactions lose group commit (measured with pgbench
-- on the POST /orders rows: 7 874 tx/s without pg_notify, 3 662 with it). A relay that is busy
-- publishing needs no wake-up: it claims again as soon as a pass ends. So writers notify only
-- while some relay sleeps: a relay registers here when a pass finds nothing, re-checks once
-- (rows committed before its registration was visible), and deregisters when it wakes.
--
-- UNLOGGED: the registrations are a hint, not data — no WAL, no fsync for the relay's writes,
-- and emptied by crash recovery. A relay that died registered only makes writers notify, as
-- every writer did before this migration.
CREATE UNLOGGED TABLE outbox_relay_sleepers (
    relay_id    UUID        PRIMARY KEY,
    since       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM outbox_relay_sleepers) THEN
        PERFORM pg_notify('sagaflow_outbox', '');
    END IF;
    RETURN NULL;
END $$;
