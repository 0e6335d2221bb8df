DROP TABLE dedup_keys;
