-- A source's dedup rule (`dedup = { key = [...], window = "10m" }`): the key of each
-- event it stored (the SHA-256 of the values at the rule's pointers) until the window
-- expires. A new event whose key is here and unexpired is a duplicate. Ingest claims a
-- key with INSERT … ON CONFLICT DO UPDATE … WHERE expires_at <= now(), so of two
-- concurrent arrivals with one key exactly one is stored. `event_id` is the event that
-- claimed it (no foreign key: a claim whose event was a duplicate by id points nowhere,
-- and retention drops events without looking here). Retention deletes expired keys.
CREATE TABLE dedup_keys (
    source text NOT NULL,
    key bytea NOT NULL,
    event_id uuid NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (source, key)
);
CREATE INDEX dedup_keys_expires_at ON dedup_keys (expires_at);
