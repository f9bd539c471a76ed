"""`Tx` for SQLite: the SQL of every domain operation, inside one open transaction."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from stepwell.core.models import Event, Memo, RunStatus
from stepwell.store import run_search
from stepwell.store.base import (
    NewRun,
    QueueItem,
    RunQuery,
    RunRow,
    RunState,
    RunWork,
    WaitRow,
)
from stepwell.store.codec import dumps, loads

_RUN_COLUMNS = ("id, function_id, status, event_ids, created_at, started_at, ended_at, output, "
                "error, warnings, parent_run_id, parent_step, event_id, replay_of")
_MEMO_COLUMNS = ("run_id, hash, step_id, kind, seq, outcome, fingerprint, due_at, attempts, "
                 "started_at, ended_at")
_CHUNK = 500        # ids per IN (...) list, well under SQLite's variable limit


def _run_row(row: sqlite3.Row | tuple[Any, ...]) -> RunRow:
    # Runs of one event keep it in event_id; batched runs list all theirs in event_ids.
    event_ids = loads(row[3]) or ([row[12]] if row[12] else [])
    return RunRow(id=row[0], function_id=row[1], status=row[2], event_ids=event_ids,
                  created_at=row[4], started_at=row[5], ended_at=row[6], output=loads(row[7]),
                  error=loads(row[8]), warnings=loads(row[9]) or [], parent_run_id=row[10],
                  parent_step=row[11], replay_of=row[13])


def _event(row: tuple[Any, ...]) -> Event:
    return Event(name=row[1], data=loads(row[2]), id=row[0], ts=row[4], user=loads(row[3]) or {})


class SqliteTx:
    """`Tx` over one SQLite connection inside an open transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.c = conn

    # --- events ------------------------------------------------------------------------------
    def insert_event(self, event: Event, received_at: int, dedupe_after: int,
                     processed: bool) -> bool:
        cur = self.c.execute(
            "INSERT INTO events (id, name, data, user, ts, received_at, processed) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET name=excluded.name, "
            "data=excluded.data, user=excluded.user, ts=excluded.ts, "
            "received_at=excluded.received_at, processed=excluded.processed "
            "WHERE events.received_at <= ?",
            (event.id, event.name, dumps(event.data), dumps(event.user) if event.user else None,
             event.ts, received_at, int(processed), dedupe_after))
        return cur.rowcount == 1

    def mark_event_processed(self, event_id: str) -> bool:
        cur = self.c.execute("UPDATE events SET processed=1 WHERE id=? AND processed=0",
                             (event_id,))
        return cur.rowcount == 1

    def unprocessed_events(self, received_before: int, limit: int) -> list[Event]:
        rows = self.c.execute(
            "SELECT id, name, data, user, ts FROM events WHERE processed=0 AND received_at < ? "
            "ORDER BY received_at LIMIT ?", (received_before, limit)).fetchall()
        return [_event(r) for r in rows]

    def get_events(self, ids: Sequence[str]) -> list[Event]:
        by_id: dict[str, Event] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = tuple(ids[start:start + _CHUNK])
            marks = ",".join("?" * len(chunk))
            for r in self.c.execute(
                    f"SELECT id, name, data, user, ts FROM events WHERE id IN ({marks})", chunk):
                by_id[r[0]] = _event(r)
        return [by_id[i] for i in ids if i in by_id]

    def list_events(self, name: str | None, limit: int) -> list[tuple[Event, int]]:
        sql = "SELECT id, name, data, user, ts, received_at FROM events"
        args: tuple[Any, ...] = ()
        if name:
            sql += " WHERE name = ?"
            args = (name,)
        sql += " ORDER BY received_at DESC LIMIT ?"
        return [(_event(r), r[5]) for r in self.c.execute(sql, (*args, limit))]

    # --- runs --------------------------------------------------------------------------------
    def insert_run(self, run: NewRun) -> None:
        self.c.execute(
            "INSERT INTO runs (id, function_id, status, event_id, event_ids, created_at, "
            "started_at, parent_run_id, parent_step, error, ended_at, replay_of) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (run.id, run.function_id, run.status, run.event_ids[0] if run.event_ids else None,
             dumps(run.event_ids) if len(run.event_ids) > 1 else None, run.created_at,
             run.started_at, run.parent_run_id, run.parent_step,
             dumps(run.error) if run.error else None,
             run.created_at if run.status in ("skipped", "failed") else None, run.replay_of))
        if len(run.event_ids) > 1:
            self.c.executemany("INSERT OR IGNORE INTO run_events (event_id, run_id) VALUES (?, ?)",
                               [(event_id, run.id) for event_id in run.event_ids])

    def start_run(self, run_id: str, now: int) -> bool:
        cur = self.c.execute(
            "UPDATE runs SET status='running', started_at=coalesce(started_at, ?) "
            "WHERE id=? AND status IN ('queued', 'running')", (now, run_id))
        return cur.rowcount == 1

    def finish_run(self, run_id: str, status: RunStatus, now: int, *, output: Any = None,
                   error: dict[str, Any] | None = None) -> bool:
        cur = self.c.execute(
            "UPDATE runs SET status=?, ended_at=?, output=?, error=? "
            "WHERE id=? AND status IN ('queued', 'running')",
            (status, now, None if output is None else dumps(output),
             None if error is None else dumps(error), run_id))
        return cur.rowcount == 1

    def add_run_warning(self, run_id: str, warning: str) -> None:
        row = self.c.execute("SELECT warnings FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            return
        warnings = loads(row[0]) or []
        if warning not in warnings:
            warnings.append(warning)
            self.c.execute("UPDATE runs SET warnings=? WHERE id=?", (dumps(warnings), run_id))

    def get_run(self, run_id: str) -> RunRow | None:
        row = self.c.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id=?", (run_id,)).fetchone()
        return None if row is None else _run_row(row)

    def list_runs(self, *, event_id: str | None = None, function_id: str | None = None,
                  status: str | None = None, limit: int = 100) -> list[RunRow]:
        where: list[str] = []
        args: list[Any] = []
        for column, value in (("function_id", function_id), ("status", status)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        columns = ", ".join(f"runs.{c.strip()}" for c in _RUN_COLUMNS.split(","))
        if event_id is None:
            branches = [("runs", where, args)]
        else:
            # Batched runs list all their events in run_events; others only in runs.event_id.
            branches = [("runs", ["event_id = ?", *where], [event_id, *args]),
                        ("run_events JOIN runs ON runs.id = run_events.run_id",
                         ["run_events.event_id = ?", *where], [event_id, *args])]
        rows: dict[str, tuple[Any, ...]] = {}
        for source, conditions, values in branches:
            sql = f"SELECT {columns} FROM {source}"
            if conditions:
                sql += " WHERE " + " AND ".join(conditions)
            sql += " ORDER BY runs.created_at DESC, runs.id DESC LIMIT ?"
            for row in self.c.execute(sql, (*values, limit)):
                rows[row[0]] = row
        ordered = sorted(rows.values(), key=lambda r: (r[4], r[0]), reverse=True)[:limit]
        return [_run_row(r) for r in ordered]

    def search_runs(self, query: RunQuery) -> list[RunRow]:
        sql, args = run_search.search_sql(query, _RUN_COLUMNS, "?")
        return [_run_row(r) for r in self.c.execute(sql, args)]

    def run_work(self, run_ids: Sequence[str]) -> dict[str, RunWork]:
        out: dict[str, RunWork] = {}
        for start in range(0, len(run_ids), _CHUNK):
            chunk = tuple(run_ids[start:start + _CHUNK])
            items, waits, children = run_search.work_sql(chunk, "?")
            out |= run_search.collect_work(
                chunk, self.c.execute(items, chunk).fetchall(),
                self.c.execute(waits, chunk).fetchall(),
                self.c.execute(children, chunk).fetchall())
        return out

    def load_run_state(self, run_id: str) -> RunState | None:
        return self.load_run_states([run_id]).get(run_id)

    def load_run_states(self, run_ids: Sequence[str]) -> dict[str, RunState]:
        states: dict[str, RunState] = {}
        for start in range(0, len(run_ids), _CHUNK):
            chunk = tuple(run_ids[start:start + _CHUNK])
            marks = ",".join("?" * len(chunk))
            runs = [_run_row(r) for r in self.c.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE id IN ({marks})", chunk)]
            events = {e.id: e for e in self.get_events(
                list({i: None for run in runs for i in run.event_ids}))}
            for run in runs:
                states[run.id] = RunState(run=run, events=[events[i] for i in run.event_ids
                                                           if i in events])
            for r in self.c.execute(
                    f"SELECT {_MEMO_COLUMNS} FROM memos WHERE run_id IN ({marks})", chunk):
                outcome = loads(r[5])
                states[r[0]].memos[r[1]] = Memo(
                    hash=r[1], step_id=r[2], kind=r[3], seq=r[4],
                    data=None if outcome is None else outcome.get("data"),
                    error=None if outcome is None else outcome.get("error"), fingerprint=r[6],
                    due_at=r[7], attempts=r[8], started_at=r[9], ended_at=r[10],
                    pending=outcome is None)
            for run_id, h, attempt, error, at, step_id in self.c.execute(
                    "SELECT run_id, hash, attempt, error, at, step_id FROM step_failures "
                    f"WHERE run_id IN ({marks}) ORDER BY attempt", chunk):
                states[run_id].failures.setdefault(h, []).append(
                    {"attempt": attempt, "error": loads(error), "at": at, "step_id": step_id})
        return states

    # --- steps -------------------------------------------------------------------------------
    def insert_memo(self, run_id: str, memo: Memo) -> bool:
        outcome = None if memo.pending else (
            {"error": memo.error} if memo.error is not None else {"data": memo.data})
        cur = self.c.execute(
            "INSERT INTO memos (run_id, hash, step_id, kind, seq, outcome, fingerprint, due_at, "
            "attempts, started_at, ended_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (run_id, memo.hash, memo.step_id, memo.kind, memo.seq,
             None if outcome is None else dumps(outcome),
             memo.fingerprint, memo.due_at, memo.attempts, memo.started_at, memo.ended_at))
        return cur.rowcount == 1

    def resolve_memo(self, run_id: str, step_hash: str, outcome: dict[str, Any],
                     now: int) -> bool:
        cur = self.c.execute(
            "UPDATE memos SET outcome=?, ended_at=? WHERE run_id=? AND hash=? AND outcome IS NULL",
            (dumps(outcome), now, run_id, step_hash))
        return cur.rowcount == 1

    def insert_step_failure(self, run_id: str, step_hash: str, step_id: str, attempt: int,
                            error: dict[str, Any], at: int) -> None:
        self.c.execute(
            "INSERT INTO step_failures (run_id, hash, step_id, attempt, error, at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (run_id, step_hash, step_id, attempt, dumps(error), at))

    # --- queue -------------------------------------------------------------------------------
    def enqueue(self, kind: str, unique_key: str, due_at: int, *, run_id: str | None = None,
                payload: dict[str, Any] | None = None, owner: str | None = None,
                lease_until: int | None = None, priority_at: int | None = None,
                concurrency: Sequence[tuple[str, int]] = ()) -> int | None:
        (ck1, cl1), (ck2, cl2) = [*concurrency, (None, None), (None, None)][:2]
        row = self.c.execute(
            "INSERT INTO queue (unique_key, kind, run_id, due_at, payload, owner, lease_until, "
            "priority_at, ck1, cl1, ck2, cl2) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (unique_key) DO UPDATE SET "
            "due_at = min(queue.due_at, excluded.due_at), "
            "priority_at = min(queue.priority_at, excluded.priority_at), "
            "rerun = CASE WHEN queue.owner IS NULL THEN queue.rerun ELSE 1 END, timer = 0, "
            "lease_until = CASE WHEN queue.owner IS NULL AND queue.blocked = 0 "
            "AND queue.ck1 IS NULL THEN excluded.lease_until ELSE queue.lease_until END, "
            "owner = CASE WHEN queue.blocked = 1 THEN NULL WHEN queue.owner IS NOT NULL "
            "THEN queue.owner WHEN queue.ck1 IS NULL THEN excluded.owner END "
            "RETURNING id, owner",
            (unique_key, kind, run_id, due_at, None if payload is None else dumps(payload),
             owner, lease_until, due_at if priority_at is None else priority_at,
             ck1, cl1, ck2, cl2)).fetchone()
        return row[0] if owner is not None and row[1] == owner else None

    def claim_due(self, now: int, owner: str, lease_until: int, limit: int) -> list[QueueItem]:
        rows = self.c.execute(
            "UPDATE queue SET owner=?, lease_until=? WHERE id IN (SELECT id FROM queue "
            "WHERE owner IS NULL AND blocked = 0 AND due_at <= ? ORDER BY priority_at, id "
            "LIMIT ?) RETURNING id, kind, unique_key, due_at, run_id, payload, priority_at, "
            "ck1, cl1, ck2, cl2",
            (owner, lease_until, now, limit)).fetchall()
        items = [QueueItem(r[0], r[1], r[2], r[3], r[4], loads(r[5]), priority_at=r[6],
                           concurrency=[(k, n) for k, n in ((r[7], r[8]), (r[9], r[10]))
                                        if k is not None])
                 for r in rows]
        items.sort(key=lambda i: (i.priority_at if i.priority_at is not None else i.due_at, i.id))
        return items

    def claim_timers(self, until: int, owner: str, lease_until: int,
                     limit: int) -> list[QueueItem]:
        rows = self.c.execute(
            "UPDATE queue SET owner=?, lease_until=? WHERE id IN (SELECT id FROM queue "
            "WHERE owner IS NULL AND blocked = 0 AND timer = 1 AND due_at <= ? "
            "ORDER BY due_at LIMIT ?) RETURNING id, kind, unique_key, due_at, run_id, payload, "
            "priority_at", (owner, lease_until, until, limit)).fetchall()
        items = [QueueItem(r[0], r[1], r[2], r[3], r[4], loads(r[5]), priority_at=r[6])
                 for r in rows]
        items.sort(key=lambda i: (i.due_at, i.id))
        return items

    def next_timer_at(self) -> int | None:
        row = self.c.execute(
            "SELECT due_at FROM queue WHERE owner IS NULL AND blocked = 0 AND timer = 1 "
            "ORDER BY due_at LIMIT 1").fetchone()
        return None if row is None else int(row[0])

    def count_held(self, key: str) -> int:
        row = self.c.execute(
            "SELECT (SELECT count(*) FROM queue WHERE owner IS NOT NULL AND ck1 = ?) + "
            "(SELECT count(*) FROM queue WHERE owner IS NOT NULL AND ck2 = ?)",
            (key, key)).fetchone()
        return int(row[0])

    def block_item(self, item_id: int, owner: str) -> None:
        self.c.execute("UPDATE queue SET owner=NULL, lease_until=NULL, blocked=1 "
                       "WHERE id=? AND owner=?", (item_id, owner))

    def unblock_all(self) -> int:
        return self.c.execute("UPDATE queue SET blocked=0 WHERE blocked=1").rowcount

    def _held_keys(self, where: str, args: tuple[Any, ...]) -> list[str]:
        keys: list[str] = []
        for ck1, ck2 in self.c.execute(
                f"SELECT ck1, ck2 FROM queue WHERE owner IS NOT NULL AND {where} "
                "AND (ck1 IS NOT NULL OR ck2 IS NOT NULL)", args):
            keys += [k for k in (ck1, ck2) if k is not None]
        return keys

    def _wake(self, keys: list[str]) -> None:
        """A slot freed for each key: let the oldest item blocked on it compete again."""
        for key in keys:
            row = self.c.execute(
                "SELECT id FROM (SELECT id, priority_at FROM queue WHERE blocked=1 AND ck1=? "
                "UNION ALL SELECT id, priority_at FROM queue WHERE blocked=1 AND ck2=?) "
                "ORDER BY priority_at, id LIMIT 1", (key, key)).fetchone()
            if row is not None:
                self.c.execute("UPDATE queue SET blocked=0 WHERE id=?", (row[0],))

    def renew_lease(self, item_id: int, owner: str, lease_until: int) -> bool:
        cur = self.c.execute("UPDATE queue SET lease_until=? WHERE id=? AND owner=?",
                             (lease_until, item_id, owner))
        return cur.rowcount == 1

    def renew_leases(self, owner: str, lease_until: int, item_ids: Sequence[int]) -> int:
        return self.c.execute(
            "UPDATE queue SET lease_until=? WHERE id IN (SELECT value FROM json_each(?)) "
            "AND owner=?", (lease_until, json.dumps(list(item_ids)), owner)).rowcount

    def release_item(self, item_id: int, owner: str, due_at: int | None, now: int, *,
                     timer: bool = False) -> bool:
        freed = self._held_keys("id=? AND owner=?", (item_id, owner))
        if due_at is None:
            cur = self.c.execute("DELETE FROM queue WHERE id=? AND owner=? AND rerun=0",
                                 (item_id, owner))
            if cur.rowcount == 1:
                self._wake(freed)
                return True
            due_at = now
        cur = self.c.execute(
            "UPDATE queue SET owner=NULL, lease_until=NULL, "
            "due_at = CASE WHEN rerun=1 THEN min(?, ?) ELSE ? END, "
            "priority_at = CASE WHEN rerun=1 THEN min(?, ?) ELSE ? END, "
            "timer = (? AND rerun=0 AND kind='exec' AND ck1 IS NULL AND ck2 IS NULL), rerun=0 "
            "WHERE id=? AND owner=?",
            (due_at, now, due_at, due_at, now, due_at, int(timer), item_id, owner))
        self._wake(freed)
        return cur.rowcount == 1

    def delete_items(self, *, run_id: str) -> None:
        freed = self._held_keys("run_id=?", (run_id,))
        self.c.execute("DELETE FROM queue WHERE run_id=?", (run_id,))
        self._wake(freed)

    def release_expired_leases(self, wall_now: int) -> int:
        freed = self._held_keys("lease_until < ?", (wall_now,))
        count = self.c.execute(
            "UPDATE queue SET owner=NULL, lease_until=NULL WHERE owner IS NOT NULL "
            "AND lease_until < ?", (wall_now,)).rowcount
        self._wake(freed)
        return count

    def lease_owners(self) -> list[str]:
        rows = self.c.execute("SELECT DISTINCT owner FROM queue WHERE owner IS NOT NULL")
        return [r[0] for r in rows]

    def release_leases_of(self, owner: str) -> int:
        freed = self._held_keys("owner=?", (owner,))
        count = self.c.execute("UPDATE queue SET owner=NULL, lease_until=NULL WHERE owner=?",
                               (owner,)).rowcount
        self._wake(freed)
        return count

    def next_due_at(self) -> int | None:
        row = self.c.execute(
            "SELECT due_at FROM queue WHERE owner IS NULL AND blocked = 0 "
            "ORDER BY due_at LIMIT 1").fetchone()
        return None if row is None else int(row[0])

    def count_ready(self, now: int) -> int:
        row = self.c.execute(
            "SELECT count(*) FROM queue WHERE owner IS NULL AND blocked = 0 AND due_at <= ?",
            (now,)).fetchone()
        return int(row[0])

    def get_item(self, unique_key: str) -> QueueItem | None:
        row = self.c.execute(
            "SELECT id, kind, unique_key, due_at, run_id, payload, priority_at, owner "
            "FROM queue WHERE unique_key=?", (unique_key,)).fetchone()
        if row is None:
            return None
        return QueueItem(row[0], row[1], row[2], row[3], row[4], loads(row[5]),
                         priority_at=row[6], owner=row[7])

    def delete_item(self, item_id: int) -> None:
        freed = self._held_keys("id=?", (item_id,))
        self.c.execute("DELETE FROM queue WHERE id=?", (item_id,))
        self._wake(freed)

    def update_item(self, item_id: int, due_at: int, payload: dict[str, Any]) -> None:
        self.c.execute("UPDATE queue SET due_at=?, priority_at=?, payload=? WHERE id=?",
                       (due_at, due_at, dumps(payload), item_id))

    # --- flow-control state --------------------------------------------------------------------
    def get_flow(self, key: str) -> tuple[str | None, int | None] | None:
        row = self.c.execute("SELECT text, expires_at FROM flow_state WHERE key=?",
                             (key,)).fetchone()
        return None if row is None else (row[0], row[1])

    def put_flow(self, key: str, *, text: str | None = None,
                 expires_at: int | None = None) -> None:
        self.c.execute(
            "INSERT INTO flow_state (key, text, expires_at) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET text=excluded.text, "
            "expires_at=excluded.expires_at", (key, text, expires_at))

    def add_batch_event(self, batch_key: str, event_id: str) -> int:
        self.c.execute("INSERT INTO batch_events (batch_key, event_id) VALUES (?, ?)",
                       (batch_key, event_id))
        row = self.c.execute("SELECT count(*) FROM batch_events WHERE batch_key=?",
                             (batch_key,)).fetchone()
        return int(row[0])

    def take_batch(self, batch_key: str) -> list[str]:
        rows = self.c.execute("DELETE FROM batch_events WHERE batch_key=? RETURNING seq, event_id",
                              (batch_key,)).fetchall()
        return [event_id for _, event_id in sorted(rows)]

    def count_runs(self, function_id: str, status: RunStatus, cap: int) -> int:
        row = self.c.execute(
            "SELECT count(*) FROM (SELECT 1 FROM runs WHERE function_id=? AND status=? LIMIT ?)",
            (function_id, status, cap)).fetchone()
        return int(row[0])

    # --- retention -------------------------------------------------------------------------------
    def prune(self, ended_before: int, now: int, limit: int) -> tuple[int, int, int]:
        runs = 0
        ids = tuple(r[0] for r in self.c.execute(
            "SELECT id FROM runs WHERE ended_at < ? AND status IN "
            "('completed', 'failed', 'cancelled', 'skipped') ORDER BY ended_at LIMIT ?",
            (ended_before, min(limit, _CHUNK))))
        if ids:
            marks = ",".join("?" * len(ids))      # a list, so each table is probed by index
            for table in ("memos", "step_failures", "run_events", "waits", "queue"):
                self.c.execute(f"DELETE FROM {table} WHERE run_id IN ({marks})", ids)
            runs = self.c.execute(f"DELETE FROM runs WHERE id IN ({marks})", ids).rowcount
        events = self.c.execute(
            "DELETE FROM events WHERE id IN (SELECT e.id FROM events e "
            "WHERE e.received_at < ? AND e.processed = 1 "
            "AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.event_id = e.id) "
            "AND NOT EXISTS (SELECT 1 FROM run_events x WHERE x.event_id = e.id) "
            "AND NOT EXISTS (SELECT 1 FROM batch_events b WHERE b.event_id = e.id) "
            "AND e.id NOT IN (SELECT json_extract(payload, '$.event_id') FROM queue "
            "WHERE kind = 'debounce' AND json_extract(payload, '$.event_id') IS NOT NULL) "
            "ORDER BY e.received_at LIMIT ?)", (ended_before, limit)).rowcount
        flows = self.c.execute(
            "DELETE FROM flow_state WHERE key IN (SELECT key FROM flow_state "
            "WHERE expires_at IS NOT NULL AND expires_at < ? LIMIT ?)", (now, limit)).rowcount
        return runs, events, flows

    # --- apps (official-SDK apps) ---------------------------------------------------------------
    def save_app(self, app_id: str, url: str, config: dict[str, Any], checksum: str,
                 now: int) -> bool:
        row = self.c.execute("SELECT checksum FROM apps WHERE app_id=?", (app_id,)).fetchone()
        self.c.execute(
            "INSERT INTO apps (app_id, url, config, checksum, synced_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (app_id) DO UPDATE SET url=excluded.url, config=excluded.config, "
            "checksum=excluded.checksum, synced_at=excluded.synced_at",
            (app_id, url, dumps(config), checksum, now))
        return row is None or row[0] != checksum

    def list_apps(self) -> list[tuple[str, str, dict[str, Any], str]]:
        rows = self.c.execute("SELECT app_id, url, config, checksum FROM apps ORDER BY app_id")
        return [(r[0], r[1], loads(r[2]), r[3]) for r in rows]

    # --- waits -------------------------------------------------------------------------------
    def insert_wait(self, wait: WaitRow) -> None:
        self.c.execute(
            "INSERT INTO waits (run_id, kind, step_hash, event_name, match_key, expr, event_ctx, "
            "expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (wait.run_id, wait.kind, wait.step_hash, wait.event_name, wait.match_key, wait.expr,
             None if wait.event_ctx is None else dumps(wait.event_ctx), wait.expires_at))

    def match_paths(self, event_name: str) -> list[str]:
        rows = self.c.execute(
            "SELECT DISTINCT substr(match_key, 1, instr(match_key, '=') - 1) FROM waits "
            "WHERE event_name=? AND match_key IS NOT NULL", (event_name,))
        return [r[0] for r in rows]

    def find_waits(self, event_name: str, match_keys: Sequence[str]) -> list[WaitRow]:
        marks = ",".join("?" * len(match_keys))
        cond = f"(match_key IS NULL OR match_key IN ({marks}))" if match_keys else (
            "match_key IS NULL")
        rows = self.c.execute(
            "SELECT id, run_id, kind, step_hash, event_name, match_key, expr, event_ctx, "
            f"expires_at FROM waits WHERE event_name=? AND {cond} ORDER BY id",
            (event_name, *match_keys))
        return [WaitRow(id=r[0], run_id=r[1], kind=r[2], step_hash=r[3], event_name=r[4],
                        match_key=r[5], expr=r[6], event_ctx=loads(r[7]), expires_at=r[8])
                for r in rows]

    def delete_wait(self, wait_id: int) -> bool:
        return self.c.execute("DELETE FROM waits WHERE id=?", (wait_id,)).rowcount == 1

    def delete_step_wait(self, run_id: str, step_hash: str) -> bool:
        return self.c.execute("DELETE FROM waits WHERE run_id=? AND step_hash=?",
                              (run_id, step_hash)).rowcount > 0

    def delete_run_waits(self, run_id: str) -> None:
        self.c.execute("DELETE FROM waits WHERE run_id=?", (run_id,))
