-- stepwell schema v20 (Postgres, as SQLite v20): the runs list filtered by what running runs are doing
-- (`run_search.DOING`) reads the few runs in that state, not every running run: future
-- sleeps by wake time (past ones are skipped by the range), unresolved waits and invokes
-- (a resolved memo leaves the index), and runs carrying warnings (orphaned runs are marked by one).
CREATE INDEX memos_sleeps ON memos (due_at, run_id) WHERE kind = 'sleep';
CREATE INDEX memos_pending ON memos (kind, run_id) WHERE outcome IS NULL;
CREATE INDEX runs_warned ON runs (created_at, id) WHERE warnings IS NOT NULL;
