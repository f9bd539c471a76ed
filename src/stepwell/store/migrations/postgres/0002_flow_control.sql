-- stepwell schema v2 (Postgres): flow control, as SQLite v2.
-- Queue items gain an ordering key (priority), concurrency keys with their limits, and a
-- `blocked` flag for items waiting on a full concurrency key (woken FIFO when a slot frees).
ALTER TABLE queue ADD COLUMN priority_at BIGINT;
ALTER TABLE queue ADD COLUMN ck1 TEXT;
ALTER TABLE queue ADD COLUMN cl1 INTEGER;
ALTER TABLE queue ADD COLUMN ck2 TEXT;
ALTER TABLE queue ADD COLUMN cl2 INTEGER;
ALTER TABLE queue ADD COLUMN blocked BOOLEAN NOT NULL DEFAULT false;
UPDATE queue SET priority_at = due_at;
DROP INDEX queue_ready;
CREATE INDEX queue_ready ON queue (due_at) WHERE owner IS NULL AND NOT blocked;
CREATE INDEX queue_order ON queue (priority_at, id) WHERE owner IS NULL AND NOT blocked;
CREATE INDEX queue_held_1 ON queue (ck1) WHERE owner IS NOT NULL AND ck1 IS NOT NULL;
CREATE INDEX queue_held_2 ON queue (ck2) WHERE owner IS NOT NULL AND ck2 IS NOT NULL;
CREATE INDEX queue_blocked_1 ON queue (ck1, priority_at, id) WHERE blocked;
CREATE INDEX queue_blocked_2 ON queue (ck2, priority_at, id) WHERE blocked;

-- Small keyed state: GCRA arrival times (throttle, rate limit), idempotency expiries,
-- singleton holders. Read-modify-write under an advisory lock on the key (see postgres_tx.py).
CREATE TABLE flow_state (
    key        TEXT PRIMARY KEY,
    num        DOUBLE PRECISION,
    text       TEXT,
    expires_at BIGINT
);

-- Events collected for a batch, in arrival order.
CREATE TABLE batch_events (
    batch_key TEXT NOT NULL,
    seq       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id  TEXT NOT NULL
);
CREATE INDEX batch_events_by_key ON batch_events (batch_key, seq);

-- Runs started by several events (batches); single-event runs use runs.event_id only.
CREATE TABLE run_events (
    event_id TEXT NOT NULL,
    run_id   TEXT NOT NULL,
    PRIMARY KEY (event_id, run_id)
);
