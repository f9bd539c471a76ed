-- stepwell schema v4 (SQLite): timer items. An exec item handed back by a run that only sleeps
-- (or waits out a retry backoff) can become due earlier only through a rerun, which clears the
-- flag; so a worker may lease it a few seconds ahead, load and replay the run, and resume it in
-- memory at the exact instant (see Engine.prefetch_seconds). Only items without concurrency
-- keys are flagged: a sleeping run must not hold a concurrency slot.
ALTER TABLE queue ADD COLUMN timer INTEGER NOT NULL DEFAULT 0;
CREATE INDEX queue_timers ON queue (due_at) WHERE owner IS NULL AND blocked = 0 AND timer = 1;
