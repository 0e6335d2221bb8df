ALTER TABLE events DROP COLUMN filtered;
