-- Search by payload and the live event stream (the admin API's `match`, `where` and
-- `/events/stream`).
--
-- `body`: the payload as jsonb when it is JSON that PostgreSQL can hold (no `\u0000`),
-- NULL otherwise; `payload` stays the raw bytes, byte for byte. Its GIN index
-- (jsonb_path_ops: containment `@>` only, a third the size of the default opclass)
-- answers `match`. Events stored before this migration have no `body`: they are found
-- by their other fields only.
--
-- `txid`: the id of the transaction that stored the event (one per group commit). The
-- stream reads events in (txid, id) order, and only below the oldest transaction still
-- running, so an event committed late can never fall behind a stream's position: no gap.
--
-- Both columns are added nullable and the default is set afterwards, so nothing is
-- rewritten, and a release that does not know them keeps working.
ALTER TABLE events ADD COLUMN body jsonb;
ALTER TABLE events ADD COLUMN txid bigint;
ALTER TABLE events ALTER COLUMN txid SET DEFAULT (pg_current_xact_id()::text::bigint);
CREATE INDEX events_body_idx ON events USING gin (body jsonb_path_ops);
CREATE INDEX events_txid_idx ON events (txid, id);
-- A search's page shows each event's deliveries, and its status and destination
-- conditions ask whether an event has one: found by the event, not by scanning.
CREATE INDEX deliveries_event_id_idx ON deliveries (event_id);
