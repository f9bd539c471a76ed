-- stepwell schema v19 (sqlite): durable streams (`step.publish`). Items are appended per channel with
-- offsets 1, 2, 3...; `publish_key` (a handler's publish: run id and its sequence number) makes
-- a replayed publish a no-op. Deleted with their run by retention.
CREATE TABLE stream_items (
    channel TEXT NOT NULL,
    seq BIGINT NOT NULL,
    topic TEXT NOT NULL,
    data TEXT NOT NULL,
    run_id TEXT,
    step_id TEXT,
    attempt INTEGER,
    publish_key TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (channel, seq)
);
CREATE UNIQUE INDEX stream_items_key ON stream_items (publish_key) WHERE publish_key IS NOT NULL;
CREATE INDEX stream_items_run ON stream_items (run_id, step_id, attempt);
