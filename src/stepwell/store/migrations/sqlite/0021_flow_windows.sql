-- stepwell schema v21 (SQLite): a function's pending batch and debounce windows (the
-- dashboard's "Held back by flow control", `GET /v1/functions/{id}/pending`) are the queue keys
-- under `<kind>:<function>:`, read as a range. SQLite compares text byte-wise, so the unique key
-- index could serve it too; this one holds the flow-control items only (as on Postgres, where
-- the range needs an index of its own: `COLLATE "C"`).
CREATE INDEX queue_flow_windows ON queue (unique_key) WHERE kind IN ('batch', 'debounce');
