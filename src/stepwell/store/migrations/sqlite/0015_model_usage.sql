-- stepwell schema v15 (sqlite): tokens spent by steps that call models (a Pydantic AI agent's
-- model requests, `step.ai.infer`, or `stepwell.record_model_usage` in a step), one row per
-- (run, step, attempt, model), written in the transaction that records the attempt, so a replay
-- or a script run again never counts it twice. Deleted with its run.
CREATE TABLE model_usage (
    run_id TEXT NOT NULL,
    step_hash TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    model TEXT NOT NULL,
    step_id TEXT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    calls INTEGER NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (run_id, step_hash, attempt, model)
);
