-- stepwell schema v7 (SQLite): a replayed run names the run it replays (`stepwell runs replay`).
ALTER TABLE runs ADD COLUMN replay_of TEXT;
