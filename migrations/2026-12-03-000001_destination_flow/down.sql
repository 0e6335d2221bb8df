DROP TABLE worker_heartbeats;
ALTER TABLE delivery_attempts DROP COLUMN throttled;
DROP TABLE destination_states;
