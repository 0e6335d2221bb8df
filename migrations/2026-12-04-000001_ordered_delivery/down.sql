DROP TABLE ordering_keys;
DROP INDEX deliveries_waiting_idx;
DROP INDEX deliveries_ordering_key_idx;
UPDATE deliveries SET status = 'pending', next_attempt_at = now() WHERE status = 'waiting';
UPDATE deliveries SET status = 'dead' WHERE status = 'skipped';
ALTER TABLE deliveries DROP CONSTRAINT deliveries_status_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_status_check
    CHECK (status IN ('pending', 'queued', 'delivering', 'retrying', 'delivered', 'dead', 'quarantined'));
ALTER TABLE deliveries DROP COLUMN ordering_seq;
ALTER TABLE deliveries DROP COLUMN ordering_key;
