-- Issue 15: one round trip per relay pass.
--
-- A relay used to claim heads with row locks held across the send, in a transaction of four
-- round trips (BEGIN, claim, mark, COMMIT). It now claims with a lease instead — a statement of
-- its own, which also marks the previous pass's acknowledged rows — so a pass is one round trip.
--
-- A leased row is not claimed by another relay while its lease holds: `leased_until` is in the
-- future and the backend that leased it (`leased_by`, its pid) is still connected. A relay that
-- dies drops its connection, so its leases lapse at once, as its row locks did; a relay that
-- hangs connected holds them until `leased_until` (RelayConfig::lease, longer than any send).
-- Per-key order is unchanged: only the head of a key is ever claimed, and a leased head is
-- still unpublished, so the next row of its key is not a head.
ALTER TABLE outbox
    ADD COLUMN leased_until TIMESTAMPTZ,
    ADD COLUMN leased_by    INT;
