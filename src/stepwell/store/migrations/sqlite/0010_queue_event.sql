-- stepwell schema v10 (SQLite): a queue item names the event it holds back (a debounce's latest
-- event) in a column of its own, so that pruning keeps that event by an index lookup instead of
-- reading the runtime's JSON payload of every debounce item.
ALTER TABLE queue ADD COLUMN event_id TEXT;
UPDATE queue SET event_id = json_extract(payload, '$.event_id') WHERE kind = 'debounce';
DROP INDEX queue_debounce;
CREATE INDEX queue_by_event ON queue (event_id) WHERE event_id IS NOT NULL;
