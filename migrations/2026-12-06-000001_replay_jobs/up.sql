-- Bulk replays as background jobs: the filter, how far the job has come (a keyset
-- cursor over deliveries.id) and what it did. Any relay works a running job a page at
-- a time, holding its row's lock for the page (FOR UPDATE SKIP LOCKED).
CREATE TABLE replay_jobs (
    id uuid PRIMARY KEY,
    filter jsonb NOT NULL,
    max_rate integer CHECK (max_rate IS NULL OR max_rate > 0),
    status text NOT NULL CHECK (status IN ('running', 'done', 'cancelled')),
    matching bigint NOT NULL,
    replayed bigint NOT NULL DEFAULT 0,
    cursor uuid,
    -- Pages are paced to max_rate across every process working the job.
    next_page_at timestamptz NOT NULL DEFAULT now(),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);

CREATE INDEX replay_jobs_running_idx ON replay_jobs (created_at) WHERE status = 'running';
