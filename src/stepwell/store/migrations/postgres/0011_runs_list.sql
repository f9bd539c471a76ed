-- The runs list filtered by function and status walks one index in its order (newest first)
-- under its LIMIT; (function_id, status) is a prefix of it (run counts still use it). The
-- other orderings had their indexes from 0001 (SQLite gets the same ones in its 0011).
DROP INDEX IF EXISTS runs_by_function_status;
CREATE INDEX IF NOT EXISTS runs_by_function_status_time ON runs (function_id, status, created_at, id);
