-- stepwell schema v3 (Postgres): apps served by official Inngest SDKs, as last synced (as SQLite
-- v3). Every process rebuilds its remote functions from here, so a sync reaches all workers.
CREATE TABLE apps (
    app_id    TEXT PRIMARY KEY,
    url       TEXT NOT NULL,
    config    TEXT NOT NULL,
    checksum  TEXT NOT NULL,
    synced_at BIGINT NOT NULL
);
