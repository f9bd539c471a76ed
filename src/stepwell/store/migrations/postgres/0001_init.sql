-- stepwell schema v1 (Postgres): the same tables as SQLite v1.
-- Times are UTC epoch milliseconds (BIGINT). JSON documents are TEXT: the store never queries
-- inside them (waits are matched on the precomputed match_key), and TEXT keeps payloads exactly as
-- they were sent (key order, duplicate keys) without a parse on every write.
-- Extra indexes compared to SQLite serve listings ordered by time (events, runs) and the lookup of
-- a batched run's events by run.
CREATE TABLE events (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    data        TEXT NOT NULL,
    user_data   TEXT,
    ts          BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    processed   BOOLEAN NOT NULL DEFAULT false
);
CREATE INDEX events_by_name ON events (name, received_at);
CREATE INDEX events_by_time ON events (received_at);
CREATE INDEX events_unprocessed ON events (received_at) WHERE NOT processed;

CREATE TABLE runs (
    id            TEXT PRIMARY KEY,
    function_id   TEXT NOT NULL,
    status        TEXT NOT NULL,
    event_id      TEXT,
    event_ids     TEXT,
    created_at    BIGINT NOT NULL,
    started_at    BIGINT,
    ended_at      BIGINT,
    output        TEXT,
    error         TEXT,
    warnings      TEXT,
    parent_run_id TEXT,
    parent_step   TEXT
);
CREATE INDEX runs_by_event ON runs (event_id);
CREATE INDEX runs_by_function ON runs (function_id, created_at, id);
CREATE INDEX runs_by_status ON runs (status, created_at, id);
CREATE INDEX runs_by_time ON runs (created_at, id);

CREATE TABLE memos (
    run_id      TEXT NOT NULL,
    hash        TEXT NOT NULL,
    step_id     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    outcome     TEXT,
    fingerprint TEXT NOT NULL DEFAULT '',
    due_at      BIGINT,
    attempts    INTEGER NOT NULL DEFAULT 1,
    started_at  BIGINT NOT NULL,
    ended_at    BIGINT NOT NULL,
    PRIMARY KEY (run_id, hash)
);

CREATE TABLE step_failures (
    run_id  TEXT NOT NULL,
    hash    TEXT NOT NULL,
    step_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    error   TEXT NOT NULL,
    at      BIGINT NOT NULL,
    PRIMARY KEY (run_id, hash, attempt)
);

CREATE TABLE queue (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    unique_key  TEXT NOT NULL UNIQUE,
    kind        TEXT NOT NULL,
    run_id      TEXT,
    due_at      BIGINT NOT NULL,
    payload     TEXT,
    owner       TEXT,
    lease_until BIGINT,
    rerun       BOOLEAN NOT NULL DEFAULT false
);
CREATE INDEX queue_ready ON queue (due_at, id) WHERE owner IS NULL;
CREATE INDEX queue_leases ON queue (lease_until) WHERE owner IS NOT NULL;
CREATE INDEX queue_by_owner ON queue (owner) WHERE owner IS NOT NULL;
CREATE INDEX queue_by_run ON queue (run_id);

CREATE TABLE waits (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id      TEXT NOT NULL,
    kind        TEXT NOT NULL,
    step_hash   TEXT,
    event_name  TEXT NOT NULL,
    match_key   TEXT,
    expr        TEXT,
    event_ctx   TEXT,
    expires_at  BIGINT
);
CREATE INDEX waits_by_event ON waits (event_name, match_key);
CREATE INDEX waits_by_run ON waits (run_id, step_hash);
