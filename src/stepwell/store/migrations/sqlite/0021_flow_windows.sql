-- stepwell schema v21 (SQLite): a function's pending batch and debounce windows (the
-- dashboard's "Held back by flow control", `GET /v1/functions/{id}/pending`): the flow-control
-- items by the function in their payload, then key, so one probe walks a function's windows in
-- key order and stops at the page's limit (`store.flow_windows`).
CREATE INDEX queue_flow_windows ON queue (json_extract(payload, '$.function_id'), unique_key)
    WHERE kind IN ('batch', 'debounce');
