-- The destinations an event's payload filters kept it from, each with why
-- (`{"billing": "no match", "audit": "no such key: amount"}`); NULL when no filter
-- refused it (the common case: nothing more is written). Nullable without a default:
-- adding it rewrites nothing, and a release that does not know it keeps working.
ALTER TABLE events ADD COLUMN filtered jsonb;
