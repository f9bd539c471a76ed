"""Postgres' one-statement read of run states, built from `rows`' column lists and decoded
with `rows`' decoders (kept apart so `postgres_tx` reads as the operations)."""

from __future__ import annotations

from stepwell.store.base import RunState
from stepwell.store.postgres_sql import Row
from stepwell.store.rows import (
    FAILURE_READ,
    MEMO_READ,
    RUN_WIDTH,
    RUNS,
    event_from_row,
    event_read_columns,
    names,
    run_from_row,
)
from stepwell.store.rows import run_state as assemble

EVENT_COLUMNS = event_read_columns("user_data")
# A run's row, then its events, memos and failures as JSON arrays of rows (each in the column
# order `rows` decodes): one round trip and one snapshot for any number of runs.
RUN_STATE_SQL = (
    f"SELECT {names(RUNS, 'r.')}, "
    f"(SELECT json_agg(json_build_array({event_read_columns('user_data', 'e.')})) "
    " FROM events e WHERE e.id = ANY(CASE WHEN r.event_ids IS NULL THEN ARRAY[r.event_id] "
    "  ELSE ARRAY(SELECT json_array_elements_text(r.event_ids::json)) END)), "
    f"(SELECT json_agg(json_build_array({names(MEMO_READ, 'm.')})) "
    " FROM memos m WHERE m.run_id = r.id), "
    f"(SELECT json_agg(json_build_array({names(FAILURE_READ, 'f.')}) "
    "  ORDER BY f.hash, f.attempt) FROM step_failures f WHERE f.run_id = r.id) "
    "FROM runs r WHERE r.id = ANY(%s)")


def run_state(row: Row) -> RunState:
    """A row of `RUN_STATE_SQL`."""
    events, memos, failures = row[RUN_WIDTH:RUN_WIDTH + 3]
    return assemble(run_from_row(row), (event_from_row(e) for e in events or []), memos or [],
                    failures or [])
