"""Postgres SQL shared by the `Tx` operations: column lists, the bigger statements and the
decoders from rows to domain objects (kept apart so `postgres_tx` reads as the operations)."""

from __future__ import annotations

from stepwell.core.models import Event, Memo
from stepwell.store.base import QueueItem, RunRow, RunState
from stepwell.store.codec import loads
from stepwell.store.postgres_sql import Row

RUN_COLUMNS = ("id, function_id, status, event_id, event_ids, created_at, started_at, ended_at, "
               "output, error, warnings, parent_run_id, parent_step, replay_of")
_RUN_WIDTH = len(RUN_COLUMNS.split(","))      # RUN_STATE_SQL's aggregates follow the run
EVENT_COLUMNS = "id, name, data, user_data, ts"
QUEUE_COLUMNS = ("id, kind, unique_key, due_at, run_id, payload, priority_at, ck1, cl1, ck2, "
                 "cl2")
# Whether a released item stays a timer (see Tx.release_item); `{}` is the caller's flag.
TIMER = ("({} AND NOT queue.rerun AND queue.kind = 'exec' AND queue.ck1 IS NULL "
         "AND queue.ck2 IS NULL)")
RUN_STATE_SQL = (
    f"SELECT {', '.join('r.' + c.strip() for c in RUN_COLUMNS.split(','))}, "
    "(SELECT json_agg(json_build_array(e.id, e.name, e.data, e.user_data, e.ts)) "
    " FROM events e WHERE e.id = ANY(CASE WHEN r.event_ids IS NULL THEN ARRAY[r.event_id] "
    "  ELSE ARRAY(SELECT json_array_elements_text(r.event_ids::json)) END)), "
    "(SELECT json_agg(json_build_array(m.hash, m.step_id, m.kind, m.seq, m.outcome, "
    "  m.fingerprint, m.due_at, m.attempts, m.started_at, m.ended_at)) "
    " FROM memos m WHERE m.run_id = r.id), "
    "(SELECT json_agg(json_build_array(f.hash, f.attempt, f.error, f.at, f.step_id) "
    "  ORDER BY f.hash, f.attempt) FROM step_failures f WHERE f.run_id = r.id) "
    "FROM runs r WHERE r.id = ANY(%s)")
# The enqueue upsert: an existing item keeps its id; its due time only moves earlier; if it is
# leased, it is flagged to run again on release; a free, unblocked one is leased to the caller
# unless it holds concurrency slots (those are claimed, so the slots are checked).
UPSERT = (
    "ON CONFLICT (unique_key) DO UPDATE SET "
    "due_at = least(queue.due_at, excluded.due_at), "
    "priority_at = least(queue.priority_at, excluded.priority_at), "
    "rerun = CASE WHEN queue.owner IS NULL THEN queue.rerun ELSE true END, timer = false, "
    "lease_until = CASE WHEN queue.owner IS NULL AND NOT queue.blocked "
    "AND queue.ck1 IS NULL THEN excluded.lease_until ELSE queue.lease_until END, "
    "owner = CASE WHEN queue.blocked THEN NULL WHEN queue.owner IS NOT NULL "
    "THEN queue.owner WHEN queue.ck1 IS NULL THEN excluded.owner END "
    "RETURNING id, owner")


def run_row(row: Row) -> RunRow:
    event_ids = loads(row[4]) or ([row[3]] if row[3] else [])
    return RunRow(id=row[0], function_id=row[1], status=row[2], event_ids=event_ids,
                  created_at=row[5], started_at=row[6], ended_at=row[7], output=loads(row[8]),
                  error=loads(row[9]), warnings=loads(row[10]) or [], parent_run_id=row[11],
                  parent_step=row[12], replay_of=row[13])


def event_row(row: Row) -> Event:
    return Event(name=row[1], data=loads(row[2]), id=row[0], ts=row[4], user=loads(row[3]) or {})


def queue_item(r: Row) -> QueueItem:
    return QueueItem(r[0], r[1], r[2], r[3], r[4], loads(r[5]), priority_at=r[6],
                     concurrency=[(k, n) for k, n in ((r[7], r[8]), (r[9], r[10]))
                                  if k is not None])


def run_state(row: Row) -> RunState:
    run = run_row(row)
    events, memos, failures = row[_RUN_WIDTH:_RUN_WIDTH + 3]
    by_id = {e[0]: event_row(tuple(e)) for e in events or []}
    state = RunState(run=run, events=[by_id[i] for i in run.event_ids if i in by_id])
    for r in memos or []:
        outcome = loads(r[4])
        state.memos[r[0]] = Memo(
            hash=r[0], step_id=r[1], kind=r[2], seq=r[3],
            data=None if outcome is None else outcome.get("data"),
            error=None if outcome is None else outcome.get("error"), fingerprint=r[5],
            due_at=r[6], attempts=r[7], started_at=r[8], ended_at=r[9],
            pending=outcome is None)
    for h, attempt, error, at, step_id in failures or []:
        state.failures.setdefault(h, []).append(
            {"attempt": attempt, "error": loads(error), "at": at, "step_id": step_id})
    return state
