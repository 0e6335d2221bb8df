-- delivery_attempts keeps its delivery_id index but loses the foreign key. An attempt
-- row is only ever written together with its delivery's outcome, in one statement, by
-- the worker holding that delivery's claim, so its delivery exists; and retention
-- deletes an event's attempts together with the event (see src/retention.rs), which
-- the ON DELETE CASCADE used to do. The key's check — one internal query per attempt
-- row — was 29 % of the worker's outcome statement and took 8–15 % off the 100,000
-- backlog drain in three paired relayd-bench runs.
ALTER TABLE delivery_attempts DROP CONSTRAINT delivery_attempts_delivery_id_fkey;
