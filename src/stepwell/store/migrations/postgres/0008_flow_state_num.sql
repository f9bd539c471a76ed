-- stepwell schema v8 (Postgres), as SQLite v8: flow-control state keeps its value as text; the
-- numeric column was never written.
ALTER TABLE flow_state DROP COLUMN num;
