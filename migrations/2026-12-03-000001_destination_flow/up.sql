-- Flow control shared by every worker replica (see README, "Flow control").
--
-- One row per destination that has ever left `closed`: its circuit (closed, open,
-- half_open) or an operator's hold (paused, or disabled after a 410 Gone). Workers
-- read it every second and on NOTIFY relayd_destinations; whoever changes it notifies.
CREATE TABLE destination_states (
    destination    text        PRIMARY KEY,
    state          text        NOT NULL DEFAULT 'closed'
        CONSTRAINT destination_states_state_check
        CHECK (state IN ('closed', 'open', 'half_open', 'paused', 'disabled')),
    -- Why it left `closed` (the last failure, "410 Gone", who paused it).
    reason         text,
    -- While open: the current wait between probes (doubling up to max_probe_interval)
    -- and when the next probe may go.
    probe_interval double precision,
    next_probe_at  timestamptz,
    -- While half_open: the probe's holder has until then to report; after it, another
    -- worker may probe (the holder may have died).
    probe_until    timestamptz,
    changed_at     timestamptz NOT NULL DEFAULT now()
);

-- Attempts answered 429 or 503 with Retry-After: recorded, but they gave their try of
-- the retry schedule back (the next attempt has the same number).
ALTER TABLE delivery_attempts ADD COLUMN throttled boolean NOT NULL DEFAULT false;

-- Live worker processes, each beating every few seconds: a destination's rate_limit is
-- shared between the workers live now. A worker removes its row when it stops.
CREATE TABLE worker_heartbeats (
    id      uuid        PRIMARY KEY,
    beat_at timestamptz NOT NULL DEFAULT now()
);
