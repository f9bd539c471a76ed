"""Rows: each table's columns and every conversion between a row and a domain object.

One module for both backends and for the Postgres bulk writes, so that a column is added in one
place: its name and Postgres type in the table's column list, its value in the encoder and the
decoder next to it. The backends only say *which* rows (their SQL); what a row *is* lives here.
Values are compact JSON in text columns (`codec.dumps` / `codec.loads`). Pure: no I/O.

Column lists are tuples of (name, Postgres type): the type is what a bulk write's `unnest`
array is cast to (SQLite ignores it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from stepwell.core.models import Event, Memo, stored_data_json
from stepwell.store.base import QueueItem, RunRow, RunState, StreamItem, UsageRow, WaitRow
from stepwell.store.codec import dumps, loads

Row = Sequence[Any]
Columns = tuple[tuple[str, str], ...]


def names(columns: Columns, prefix: str = "") -> str:
    """The columns as a SQL list, e.g. for `SELECT` or `INSERT INTO t (...)`."""
    return ", ".join(prefix + name for name, _ in columns)


# --- runs --------------------------------------------------------------------------------------

# A run of one event keeps it in `event_id`; a batched run lists all its events in `event_ids`
# (and in the run_events table, so runs are found by any of them).
RUNS: Columns = (
    ("id", "text"), ("function_id", "text"), ("status", "text"), ("event_id", "text"),
    ("event_ids", "text"), ("created_at", "bigint"), ("started_at", "bigint"),
    ("ended_at", "bigint"), ("output", "text"), ("error", "text"), ("warnings", "text"),
    ("parent_run_id", "text"), ("parent_step", "text"), ("replay_of", "text"),
    ("version", "text"),
)
RUN_COLUMNS = names(RUNS)


def run_values(run: RunRow) -> tuple[Any, ...]:
    """A run as the row `insert_run` writes (in `RUNS` order)."""
    return (run.id, run.function_id, run.status, run.event_ids[0] if run.event_ids else None,
            dumps(run.event_ids) if len(run.event_ids) > 1 else None, run.created_at,
            run.started_at, run.ended_at, None if run.output is None else dumps(run.output),
            dumps(run.error) if run.error else None,
            dumps(run.warnings) if run.warnings else None, run.parent_run_id, run.parent_step,
            run.replay_of, run.version)


def run_from_row(row: Row) -> RunRow:
    """A row selected with `RUN_COLUMNS` (further columns are ignored)."""
    event_ids = loads(row[4]) or ([row[3]] if row[3] else [])
    return RunRow(id=row[0], function_id=row[1], status=row[2], event_ids=event_ids,
                  created_at=row[5], started_at=row[6], ended_at=row[7], output=loads(row[8]),
                  error=loads(row[9]), warnings=loads(row[10]) or [], parent_run_id=row[11],
                  parent_step=row[12], replay_of=row[13], version=row[14])


RUN_WIDTH = len(RUNS)      # where the columns after a run's (Postgres' run state) begin


# --- events ------------------------------------------------------------------------------------

def events_table(user_column: str) -> Columns:
    """The events table. `user` is a reserved word in Postgres, where the column is
    `user_data`; the order and meaning are the same."""
    return (("id", "text"), ("name", "text"), ("data", "text"), (user_column, "text"),
            ("ts", "bigint"), ("received_at", "bigint"), ("processed", "boolean"),
            ("generation", "integer"))


def event_read_columns(user_column: str, prefix: str = "") -> str:
    """What `event_from_row` decodes (the event, without its arrival and processed flag)."""
    return names(events_table(user_column)[:5], prefix)


def event_values(event: Event, received_at: int, processed: bool,
                 generation: int = 0) -> tuple[Any, ...]:
    """An event as stored; `generation` counts the runs it descends from (see
    `Tx.insert_event`)."""
    data = stored_data_json(event)       # the text written when it was validated, if any
    return (event.id, event.name, dumps(event.data) if data is None else data,
            dumps(event.user) if event.user else None,
            event.ts, received_at, processed, generation)


def event_from_row(row: Row) -> Event:
    return Event(name=row[1], data=loads(row[2]), id=row[0], ts=row[4], user=loads(row[3]) or {})


# --- memos and step failures -----------------------------------------------------------------

MEMOS: Columns = (
    ("run_id", "text"), ("hash", "text"), ("step_id", "text"), ("kind", "text"), ("seq", "int"),
    ("outcome", "text"), ("fingerprint", "text"), ("due_at", "bigint"), ("attempts", "int"),
    ("started_at", "bigint"), ("ended_at", "bigint"),
)
MEMO_READ = MEMOS[1:]        # what `memo_from_row` decodes (the run is the caller's key)


def outcome(memo: Memo) -> dict[str, Any] | None:
    """A step's outcome as stored: `{"data": ...}` or `{"error": ...}`, None while pending.
    The same wrapper `Tx.resolve_memo` is given (`resolved`), so a memo reads back the same
    whether it was inserted resolved or resolved later."""
    if memo.pending:
        return None
    return {"error": memo.error} if memo.error is not None else {"data": memo.data}


def resolved(*, data: Any = None, error: dict[str, Any] | None = None) -> dict[str, Any]:
    """The outcome that resolves a pending step (a wait's event, an invoked run's result)."""
    return {"error": error} if error is not None else {"data": data}


def memo_values(run_id: str, memo: Memo) -> tuple[Any, ...]:
    stored = outcome(memo)
    return (run_id, memo.hash, memo.step_id, memo.kind, memo.seq,
            None if stored is None else dumps(stored), memo.fingerprint, memo.due_at,
            memo.attempts, memo.started_at, memo.ended_at)


def memo_from_row(row: Row) -> Memo:
    """A row of `MEMO_READ` columns. The outcome is text (SQLite, Postgres columns) or already
    inside a JSON aggregate as text (Postgres' run state): both decode the same."""
    stored = loads(row[4])
    return Memo(hash=row[0], step_id=row[1], kind=row[2], seq=row[3],
                data=None if stored is None else stored.get("data"),
                error=None if stored is None else stored.get("error"), fingerprint=row[5],
                due_at=row[6], attempts=row[7], started_at=row[8], ended_at=row[9],
                pending=stored is None)


FAILURES: Columns = (("run_id", "text"), ("hash", "text"), ("step_id", "text"),
                     ("attempt", "int"), ("error", "text"), ("at", "bigint"))
FAILURE_READ: Columns = (("hash", "text"), ("attempt", "int"), ("error", "text"),
                         ("at", "bigint"), ("step_id", "text"))


def settles_failures(memo: Memo) -> bool:
    """Whether this memo ends its step's failed attempts (a retry that succeeded, or the final
    failure), so they stop marking the run `retrying` (schema v22): a memo of a step that
    never failed, the common case, costs no statement."""
    return memo.attempts > 1 or memo.error is not None


def failure_values(run_id: str, step_hash: str, step_id: str, attempt: int,
                   error: dict[str, Any], at: int) -> tuple[Any, ...]:
    return (run_id, step_hash, step_id, attempt, dumps(error), at)


USAGE: Columns = (("run_id", "text"), ("step_hash", "text"), ("attempt", "int"),
                  ("model", "text"), ("step_id", "text"), ("input_tokens", "bigint"),
                  ("output_tokens", "bigint"), ("calls", "int"), ("at", "bigint"))


def usage_values(row: UsageRow) -> tuple[Any, ...]:
    return (row.run_id, row.step_hash, row.attempt, row.model, row.step_id,
            int(row.input_tokens), int(row.output_tokens), int(row.calls), row.at)


def usage_from_row(row: Row) -> UsageRow:
    """A row of `USAGE` columns."""
    return UsageRow(str(row[0]), str(row[1]), int(row[2]), str(row[3]), str(row[4]),
                    int(row[5]), int(row[6]), int(row[7]), int(row[8]))


def failure_from_row(row: Row) -> tuple[str, dict[str, Any]]:
    """A row of `FAILURE_READ` columns: (step hash, the failed attempt as runs show it)."""
    return row[0], {"attempt": row[1], "error": loads(row[2]), "at": row[3], "step_id": row[4]}


def run_state(run: RunRow, events: Iterable[Event], memos: Iterable[Row],
              failures: Iterable[Row]) -> RunState:
    """A run's state from its row, the events found for it (any order), its memo rows and its
    failure rows in attempt order."""
    by_id = {e.id: e for e in events}
    state = RunState(run=run, events=[by_id[i] for i in run.event_ids if i in by_id])
    for row in memos:
        memo = memo_from_row(row)
        state.memos[memo.hash] = memo
    for row in failures:
        step_hash, failure = failure_from_row(row)
        state.failures.setdefault(step_hash, []).append(failure)
    return state


# --- queue -------------------------------------------------------------------------------------

# Up to two concurrency keys an item holds while leased, each with its limit: (ck1, cl1) and
# (ck2, cl2). Two columns each rather than a list so "items holding key K" is an index lookup.
QUEUE: Columns = (
    ("unique_key", "text"), ("kind", "text"), ("run_id", "text"), ("due_at", "bigint"),
    ("payload", "text"), ("owner", "text"), ("lease_until", "bigint"),
    ("priority_at", "bigint"), ("ck1", "text"), ("cl1", "int"), ("ck2", "text"),
    ("cl2", "int"), ("event_id", "text"),
)
QUEUE_READ: Columns = (
    ("id", "bigint"), ("kind", "text"), ("unique_key", "text"), ("due_at", "bigint"),
    ("run_id", "text"), ("payload", "text"), ("priority_at", "bigint"), ("ck1", "text"),
    ("cl1", "int"), ("ck2", "text"), ("cl2", "int"), ("owner", "text"), ("event_id", "text"),
)
QUEUE_COLUMNS = names(QUEUE_READ)
MAX_KEYS = 2


def pack_concurrency(concurrency: Sequence[tuple[str, int]]
                     ) -> tuple[str | None, int | None, str | None, int | None]:
    """(key, limit) pairs as (ck1, cl1, ck2, cl2); a function declares at most two."""
    if len(concurrency) > MAX_KEYS:
        raise ValueError(f"a queue item holds at most {MAX_KEYS} concurrency keys, "
                         f"got {len(concurrency)}")
    (ck1, cl1), (ck2, cl2) = [*concurrency, (None, None), (None, None)][:MAX_KEYS]
    return ck1, cl1, ck2, cl2


def unpack_concurrency(ck1: str | None, cl1: int | None, ck2: str | None,
                       cl2: int | None) -> list[tuple[str, int]]:
    return [(k, int(n)) for k, n in ((ck1, cl1), (ck2, cl2)) if k is not None and n is not None]


def queue_values(kind: str, unique_key: str, due_at: int, run_id: str | None,
                 payload: dict[str, Any] | None, owner: str | None, lease_until: int | None,
                 priority_at: int | None, concurrency: Sequence[tuple[str, int]],
                 event_id: str | None) -> tuple[Any, ...]:
    """A new item as the row `enqueue` inserts (in `QUEUE` order); its priority defaults to
    its due time."""
    return (unique_key, kind, run_id, due_at, None if payload is None else dumps(payload), owner,
            lease_until, due_at if priority_at is None else priority_at,
            *pack_concurrency(concurrency), event_id)


def item_from_row(row: Row) -> QueueItem:
    """A row selected (or returned) with `QUEUE_COLUMNS`."""
    return QueueItem(row[0], row[1], row[2], row[3], row[4], loads(row[5]), priority_at=row[6],
                     concurrency=unpack_concurrency(row[7], row[8], row[9], row[10]),
                     owner=row[11], event_id=row[12])


# --- waits -------------------------------------------------------------------------------------

WAITS: Columns = (("run_id", "text"), ("kind", "text"), ("step_hash", "text"),
                  ("event_name", "text"), ("match_key", "text"), ("expr", "text"),
                  ("event_ctx", "text"), ("expires_at", "bigint"))
WAIT_COLUMNS = "id, " + names(WAITS)


def wait_values(wait: WaitRow) -> tuple[Any, ...]:
    return (wait.run_id, wait.kind, wait.step_hash, wait.event_name, wait.match_key, wait.expr,
            None if wait.event_ctx is None else dumps(wait.event_ctx), wait.expires_at)


def wait_from_row(row: Row) -> WaitRow:
    """A row selected with `WAIT_COLUMNS`."""
    return WaitRow(id=row[0], run_id=row[1], kind=row[2], step_hash=row[3], event_name=row[4],
                   match_key=row[5], expr=row[6], event_ctx=loads(row[7]), expires_at=row[8])


# --- stream_items -----------------------------------------------------------------------------
STREAM: Columns = (("channel", "text"), ("seq", "bigint"), ("topic", "text"), ("data", "text"),
                   ("run_id", "text"), ("step_id", "text"), ("attempt", "int"),
                   ("created_at", "bigint"))


def stream_values(item: StreamItem, offset: int) -> tuple[Any, ...]:
    return (item.channel, offset, item.topic, dumps(item.data), item.run_id, item.step_id,
            item.attempt, item.created_at)


def stream_from_row(row: Sequence[Any]) -> StreamItem:
    channel, seq, topic, data, run_id, step_id, attempt, created_at = row
    return StreamItem(channel, int(seq), topic, loads(data), run_id, step_id,
                      None if attempt is None else int(attempt), int(created_at))
