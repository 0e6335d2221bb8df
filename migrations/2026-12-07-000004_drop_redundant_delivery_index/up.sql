-- `deliveries_event_id_idx` (added with the event search) repeats what the unique
-- index `deliveries_event_id_destination_key` (event_id, destination) already answers:
-- a lookup by event uses that index's leading column. One btree fewer for every
-- delivery ingest writes.
DROP INDEX IF EXISTS deliveries_event_id_idx;
