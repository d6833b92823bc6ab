-- Issue 15: no foreign-key check on the hot path. Every saga transition inserts a history row
-- in the very transaction that inserts or updates its saga row (store::record), so the row it
-- would reference always exists; the check only cost a lookup in `sagas` (and a share lock
-- on the saga row) per transition.
ALTER TABLE saga_history DROP CONSTRAINT saga_history_order_id_fkey;
