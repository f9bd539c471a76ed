-- stepwell schema v18 (SQLite): unleased items per concurrency key.
-- A run whose concurrency keys have a free slot is leased in the transaction that creates it
-- (the fast path) only if nothing is waiting on those keys (FIFO kept): these answer "is an
-- unleased item, blocked or ready, due by now on this key?" with one index probe.
CREATE INDEX queue_waiting_1 ON queue (ck1, due_at) WHERE owner IS NULL AND ck1 IS NOT NULL;
CREATE INDEX queue_waiting_2 ON queue (ck2, due_at) WHERE owner IS NULL AND ck2 IS NOT NULL;
