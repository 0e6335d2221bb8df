UPDATE deliveries SET status = 'dead' WHERE status = 'quarantined';
ALTER TABLE deliveries DROP CONSTRAINT deliveries_status_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_status_check
    CHECK (status IN ('pending', 'queued', 'delivering', 'retrying', 'delivered', 'dead'));
