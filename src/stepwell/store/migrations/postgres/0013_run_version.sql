-- stepwell schema v13 (Postgres): the version of its function's code a run started on (an
-- explicit `version=`, an SDK app's `appVersion`, or a fingerprint of the handler's code).
ALTER TABLE runs ADD COLUMN version TEXT;
