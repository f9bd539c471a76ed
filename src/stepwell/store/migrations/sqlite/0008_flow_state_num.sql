-- stepwell schema v8 (SQLite): flow-control state keeps its value as text (GCRA arrival times are
-- exact integers, a singleton's run id); the numeric column was never written.
ALTER TABLE flow_state DROP COLUMN num;
