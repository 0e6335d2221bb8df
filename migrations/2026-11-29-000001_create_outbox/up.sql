-- The outbox: events exactly once per provider id, and one narrow delivery row per
-- (event, destination). Payloads live only in `events`, so the hot UPDATEs of delivery
-- state never rewrite them.

CREATE TABLE events (
    id           uuid        PRIMARY KEY,
    source       text        NOT NULL,
    -- The provider's own id: the idempotency key together with `source`.
    event_id     text        NOT NULL,
    event_type   text        NOT NULL,
    -- The raw request body, byte for byte: it is what the signature covered and what
    -- destinations receive.
    payload      bytea       NOT NULL,
    content_type text        NOT NULL,
    -- Provider headers worth keeping for operators (never signature headers).
    headers      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    received_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_source_event_id_key UNIQUE (source, event_id)
);

CREATE INDEX events_received_at_idx ON events (received_at);

CREATE TABLE deliveries (
    id               uuid        PRIMARY KEY,
    event_id         uuid        NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    destination      text        NOT NULL,
    status           text        NOT NULL DEFAULT 'pending'
        CONSTRAINT deliveries_status_check
        CHECK (status IN ('pending', 'queued', 'delivering', 'retrying', 'delivered', 'dead')),
    attempts         integer     NOT NULL DEFAULT 0,
    -- When the relay must next look at this row: now for `pending`, the retry time for
    -- `retrying`.
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    -- Until when the worker that claimed the row (`delivering`) owns it.
    lease_until      timestamptz,
    last_error       text,
    last_status_code integer,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    CONSTRAINT deliveries_event_id_destination_key UNIQUE (event_id, destination)
);

-- Only rows the relay may still have to act on; delivered and dead rows (the vast
-- majority over time) stay out of this index, so finding due work stays cheap.
CREATE INDEX deliveries_due_idx ON deliveries (next_attempt_at)
    WHERE status IN ('pending', 'queued', 'delivering', 'retrying');

CREATE INDEX deliveries_destination_status_idx ON deliveries (destination, status);

CREATE TABLE delivery_attempts (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id      uuid        NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempt          integer     NOT NULL,
    started_at       timestamptz NOT NULL,
    duration_ms      integer     NOT NULL,
    -- Exactly one of status_code (an HTTP answer) or error (no answer) is set.
    status_code      integer,
    error            text,
    -- The first KiB of the response body, for operators.
    response_snippet text,
    CONSTRAINT delivery_attempts_outcome_check CHECK ((status_code IS NULL) <> (error IS NULL))
);

CREATE INDEX delivery_attempts_delivery_id_idx ON delivery_attempts (delivery_id);
CREATE INDEX delivery_attempts_started_at_idx ON delivery_attempts (started_at);
