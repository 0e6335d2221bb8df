DROP INDEX deliveries_event_id_idx;
DROP INDEX events_txid_idx;
DROP INDEX events_body_idx;
ALTER TABLE events DROP COLUMN txid;
ALTER TABLE events DROP COLUMN body;
