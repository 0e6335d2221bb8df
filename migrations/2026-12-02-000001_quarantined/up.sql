-- A delivery set aside because no broker message can carry it (see README, "Relay"):
-- out of the due index, visible and replayable by an operator.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_status_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_status_check
    CHECK (status IN ('pending', 'queued', 'delivering', 'retrying', 'delivered', 'dead', 'quarantined'));
