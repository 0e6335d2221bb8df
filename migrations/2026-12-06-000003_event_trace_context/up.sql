-- The W3C trace context of the ingest request that stored the event (`traceparent`,
-- 55 characters), so that the relay and the worker continue its trace; NULL when
-- traces are off. Nullable without a default: adding it rewrites nothing.
ALTER TABLE events ADD COLUMN traceparent text;
