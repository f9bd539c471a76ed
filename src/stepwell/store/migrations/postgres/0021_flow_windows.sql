-- stepwell schema v21 (postgres): a function's pending batch and debounce windows (the
-- dashboard's "Held back by flow control", `GET /v1/functions/{id}/pending`) are the queue keys
-- under `<kind>:<function>:`, read as a range. The range is compared byte-wise (`COLLATE "C"`),
-- since a database with a language collation does not order those keys by their bytes; this
-- index serves that comparison, over the flow-control items only.
CREATE INDEX queue_flow_windows ON queue ((unique_key COLLATE "C"))
    WHERE kind IN ('batch', 'debounce');
