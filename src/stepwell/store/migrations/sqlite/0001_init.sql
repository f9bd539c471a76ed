-- stepwell schema v1 (SQLite). Times are UTC epoch milliseconds.
CREATE TABLE events (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    data        TEXT NOT NULL,
    user        TEXT,
    ts          INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    processed   INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX events_by_name ON events (name, received_at);
CREATE INDEX events_unprocessed ON events (received_at) WHERE processed = 0;

CREATE TABLE runs (
    id            TEXT PRIMARY KEY,
    function_id   TEXT NOT NULL,
    status        TEXT NOT NULL,
    event_id      TEXT,
    event_ids     TEXT,
    created_at    INTEGER NOT NULL,
    started_at    INTEGER,
    ended_at      INTEGER,
    output        TEXT,
    error         TEXT,
    warnings      TEXT,
    parent_run_id TEXT,
    parent_step   TEXT
);
CREATE INDEX runs_by_event ON runs (event_id);
CREATE INDEX runs_by_function ON runs (function_id, created_at);
CREATE INDEX runs_by_status ON runs (status, created_at);

CREATE TABLE memos (
    run_id      TEXT NOT NULL,
    hash        TEXT NOT NULL,
    step_id     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    outcome     TEXT,
    fingerprint TEXT NOT NULL DEFAULT '',
    due_at      INTEGER,
    attempts    INTEGER NOT NULL DEFAULT 1,
    started_at  INTEGER NOT NULL,
    ended_at    INTEGER NOT NULL,
    PRIMARY KEY (run_id, hash)
) WITHOUT ROWID;

CREATE TABLE step_failures (
    run_id  TEXT NOT NULL,
    hash    TEXT NOT NULL,
    step_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    error   TEXT NOT NULL,
    at      INTEGER NOT NULL,
    PRIMARY KEY (run_id, hash, attempt)
) WITHOUT ROWID;

CREATE TABLE queue (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    unique_key  TEXT NOT NULL UNIQUE,
    kind        TEXT NOT NULL,
    run_id      TEXT,
    due_at      INTEGER NOT NULL,
    payload     TEXT,
    owner       TEXT,
    lease_until INTEGER,
    rerun       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX queue_ready ON queue (due_at, id) WHERE owner IS NULL;
CREATE INDEX queue_leases ON queue (lease_until) WHERE owner IS NOT NULL;
CREATE INDEX queue_by_owner ON queue (owner) WHERE owner IS NOT NULL;
CREATE INDEX queue_by_run ON queue (run_id);

CREATE TABLE waits (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id      TEXT NOT NULL,
    kind        TEXT NOT NULL,
    step_hash   TEXT,
    event_name  TEXT NOT NULL,
    match_key   TEXT,
    expr        TEXT,
    event_ctx   TEXT,
    expires_at  INTEGER
);
CREATE INDEX waits_by_event ON waits (event_name, match_key);
CREATE INDEX waits_by_run ON waits (run_id, step_hash);
