DROP INDEX deliveries_dead_updated_idx;
DROP TABLE operator_watch;
