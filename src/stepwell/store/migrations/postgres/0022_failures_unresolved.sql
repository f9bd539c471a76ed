-- stepwell schema v22 (Postgres, as SQLite v22): a failed attempt is marked `unresolved` until its step
-- records a memo or its run ends, so `status=retrying` reads the few runs with such a mark
-- (`run_search.MARKED`) instead of probing every running run. New failures get the mark by
-- default; existing ones keep it only if still unresolved.
ALTER TABLE step_failures ADD COLUMN unresolved SMALLINT DEFAULT 1;
UPDATE step_failures SET unresolved = NULL
WHERE EXISTS (SELECT 1 FROM memos m WHERE m.run_id = step_failures.run_id
                                      AND m.hash = step_failures.hash)
   OR NOT EXISTS (SELECT 1 FROM runs WHERE runs.id = step_failures.run_id
                                       AND runs.status IN ('queued', 'running'));
CREATE INDEX step_failures_unresolved ON step_failures (run_id) WHERE unresolved IS NOT NULL;
