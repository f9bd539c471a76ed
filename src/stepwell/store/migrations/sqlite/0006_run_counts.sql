-- stepwell schema v6 (SQLite): counting a function's runs by status (the dashboard) reads at most
-- the capped number of entries of this index, never the run rows.
CREATE INDEX runs_by_function_status ON runs (function_id, status);
