-- Operator notices: what the watcher last saw (a destination's state, the outbox's,
-- how far it has looked for dead deliveries), so that each change is noticed once,
-- across restarts and replicas.
CREATE TABLE operator_watch (
    key text PRIMARY KEY,
    state text NOT NULL,
    seen_at timestamptz NOT NULL DEFAULT now()
);

-- Newly dead deliveries, found by when they died; only dead rows are in it.
CREATE INDEX deliveries_dead_updated_idx ON deliveries (updated_at) WHERE status = 'dead';
