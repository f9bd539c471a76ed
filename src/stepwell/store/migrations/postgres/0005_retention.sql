-- stepwell schema v5 (Postgres): retention, as SQLite v5. Finished runs are pruned oldest first
-- by the time they ended; events by the time they arrived (events_by_time, from v1), once
-- nothing refers to them; flow-control state once it has expired.
CREATE INDEX runs_ended ON runs (ended_at) WHERE ended_at IS NOT NULL;
CREATE INDEX run_events_by_run ON run_events (run_id);
CREATE INDEX batch_events_by_event ON batch_events (event_id);
CREATE INDEX flow_state_expiry ON flow_state (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX queue_debounce ON queue (id) WHERE kind = 'debounce';
