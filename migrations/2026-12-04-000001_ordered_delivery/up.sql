-- Per-key ordered delivery (see README, "Ordered delivery").
--
-- A destination with `ordering` gives each delivery a key (its `ordering_key`) and,
-- within (destination, key), a sequence number in commit order. At most one delivery of
-- a key is live (pending, queued, delivering, retrying, or dead while `on_dead =
-- "block"`): the key's `head`. The others are `waiting`, out of the due index, until
-- the head is delivered, dead or skipped; then the lowest-numbered waiting one becomes
-- pending in the same transaction. Unordered deliveries leave both columns NULL.
ALTER TABLE deliveries ADD COLUMN ordering_key text;
ALTER TABLE deliveries ADD COLUMN ordering_seq bigint;

ALTER TABLE deliveries DROP CONSTRAINT deliveries_status_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_status_check
    CHECK (status IN ('pending', 'queued', 'delivering', 'retrying', 'delivered', 'dead',
                      'quarantined', 'waiting', 'skipped'));

-- The next waiting delivery of a key: one index probe.
CREATE INDEX deliveries_waiting_idx ON deliveries (destination, ordering_key, ordering_seq)
    WHERE status = 'waiting';

-- An operator's "where are this key's deliveries" (GET /admin/api/deliveries?key=),
-- newest first; unordered rows stay out of it.
CREATE INDEX deliveries_ordering_key_idx ON deliveries (ordering_key, id)
    WHERE ordering_key IS NOT NULL;

-- One row per (destination, key) seen. Its row lock orders concurrent writers of one
-- key (ingest, the worker recording an outcome, an operator's skip or replay); the
-- UPDATE of a row that another transaction holds sees that transaction's committed
-- version, so sequence numbers follow commit order.
CREATE TABLE ordering_keys (
    destination text        NOT NULL,
    key         text        NOT NULL,
    -- The last sequence number given out.
    last_seq    bigint      NOT NULL,
    -- The key's live delivery; NULL when the key is idle (then no delivery of it waits,
    -- and retention may delete the row: numbering starts again, which only ever
    -- compares the waiting ones).
    head        uuid,
    changed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (destination, key)
);
