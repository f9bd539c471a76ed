-- stepwell schema v12: the runs a run invoked, found by their parent (the runs list and the run
-- page say "waiting for invoked run R"), without scanning every run.
CREATE INDEX runs_by_parent ON runs (parent_run_id) WHERE parent_run_id IS NOT NULL;
