-- stepwell schema v4 (Postgres): timer items, as SQLite v4. An exec item handed back by a run
-- that only sleeps (or waits out a retry backoff) can become due earlier only through a rerun,
-- which clears the flag; so a worker may lease it a few seconds ahead, load and replay the run,
-- and resume it in memory at the exact instant (see Engine.prefetch_seconds). Only items
-- without concurrency keys are flagged: a sleeping run must not hold a concurrency slot.
ALTER TABLE queue ADD COLUMN timer BOOLEAN NOT NULL DEFAULT false;
CREATE INDEX queue_timers ON queue (due_at) WHERE owner IS NULL AND NOT blocked AND timer;
