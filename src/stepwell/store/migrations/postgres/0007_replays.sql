-- stepwell schema v7 (Postgres), as SQLite v7: a replayed run names the run it replays.
ALTER TABLE runs ADD COLUMN replay_of TEXT;
