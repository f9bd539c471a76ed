-- stepwell schema v10 (Postgres): as SQLite v10, a queue item names the event it holds back (a
-- debounce's latest event) in a column of its own, for pruning to keep by an index lookup.
ALTER TABLE queue ADD COLUMN event_id TEXT;
UPDATE queue SET event_id = payload::json->>'event_id' WHERE kind = 'debounce';
DROP INDEX queue_debounce;
CREATE INDEX queue_by_event ON queue (event_id) WHERE event_id IS NOT NULL;
