-- stepwell schema v17 (SQLite): the worker registry. Each running worker (an Engine that claims
-- work) keeps one row per (app, version) it serves, renewed by its maintenance loop (heartbeat_at,
-- wall-clock ms); rows not renewed for long are expired. Versioned claims read it to tell a
-- version that still has live workers (its runs wait for them) from one that has none (its
-- `upgrade="auto"` runs may move to newer code). The claim itself needs no new column: it checks
-- the run's version (runs.version, v13) by primary key, and only in versioned workers.
CREATE TABLE workers (
    id           TEXT NOT NULL,
    app_id       TEXT NOT NULL,
    version      TEXT NOT NULL,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL,
    PRIMARY KEY (id, app_id, version)
);
CREATE INDEX workers_by_heartbeat ON workers (heartbeat_at);
