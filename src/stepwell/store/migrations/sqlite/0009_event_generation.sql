-- stepwell schema v9 (SQLite): each event's generation. An event a run sends (`step.send_event`, its
-- lifecycle events) is one generation past the run's triggering event; ingested events are 0.
-- Sending past the limit fails the step (runtime/driver.py, MAX_EVENT_GENERATION), so no loop
-- of functions sending each other's events runs without end.
ALTER TABLE events ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
