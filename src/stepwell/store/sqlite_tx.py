"""`Tx` for SQLite: the SQL of every domain operation, inside one open transaction."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from stepwell.core.models import Event, Memo, RunStatus
from stepwell.store import flow_windows, run_search
from stepwell.store import rows as r
from stepwell.store.base import (
    ClaimVersions,
    HeldWindow,
    QueueItem,
    RunQuery,
    RunRow,
    RunState,
    RunWork,
    UsageRow,
    WaitRow,
)
from stepwell.store.codec import dumps, loads
from stepwell.store.queue_rules import (
    CLAIM_ORDER,
    SQLITE,
    TIMER_ORDER,
    WAKE_ORDER,
    claim_key,
    held_sql,
    leased_to,
    rearm_set,
    timer_key,
    upsert_sql,
)
from stepwell.store.sqlite_streams import SqliteStreams
from stepwell.store.sqlite_workers import SqliteWorkers, version_filter

_CHUNK = 500        # ids per IN (...) list, well under SQLite's variable limit
_MAX_PAGES_GIVEN_BACK = 20_000   # per prune transaction (80 MB of 4 KiB pages), to bound it
_EVENTS = r.event_read_columns("user")
_RUN_INSERT = (f"INSERT INTO runs ({r.RUN_COLUMNS}) VALUES ({', '.join('?' * r.RUN_WIDTH)})")
_MEMO_INSERT = (f"INSERT INTO memos ({r.names(r.MEMOS)}) "
                f"VALUES ({', '.join('?' * len(r.MEMOS))}) ON CONFLICT DO NOTHING")
# A run's failed attempts stop marking it `retrying` (`run_search.MARKED`): all of them when
# it ends; one step's (`AND hash=?`) once that step records a memo.
_SETTLE_FAILURES = ("UPDATE step_failures SET unresolved=NULL "
                    "WHERE run_id=? AND unresolved IS NOT NULL")
_ENQUEUE = (f"INSERT INTO queue ({r.names(r.QUEUE)}) VALUES ({', '.join('?' * len(r.QUEUE))}) "
            + upsert_sql(SQLITE))
_WINDOWS = flow_windows.window_sql(mark="?", function="json_extract(q.payload, '$.function_id')")
_REARM = f"UPDATE queue SET {rearm_set(SQLITE, due='?', now='?', timer='?')} WHERE id=? AND owner=?"


# Held slots of a key, and whether an unleased item on it is due (`queue_held_*`,
# `queue_waiting_*`: one probe each).
_SLOT_STATE = (
    f"SELECT {held_sql('?')}, "
    "EXISTS (SELECT 1 FROM queue WHERE owner IS NULL AND ck1 = ? AND due_at <= ?) OR "
    "EXISTS (SELECT 1 FROM queue WHERE owner IS NULL AND ck2 = ? AND due_at <= ?)")


class SqliteTx(SqliteStreams, SqliteWorkers):
    """`Tx` over one SQLite connection inside an open transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.c = conn

    # --- events ------------------------------------------------------------------------------
    def insert_event(self, event: Event, received_at: int, dedupe_after: int,
                     processed: bool, generation: int = 0) -> bool:
        cur = self.c.execute(
            "INSERT INTO events (id, name, data, user, ts, received_at, processed, generation) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET name=excluded.name, "
            "data=excluded.data, user=excluded.user, ts=excluded.ts, "
            "received_at=excluded.received_at, processed=excluded.processed, "
            "generation=excluded.generation WHERE events.received_at <= ?",
            (*r.event_values(event, received_at, processed, generation), dedupe_after))
        return cur.rowcount == 1

    def event_generation(self, ids: Sequence[str]) -> int:
        best = 0
        for start in range(0, len(ids), _CHUNK):
            chunk = tuple(ids[start:start + _CHUNK])
            row = self.c.execute("SELECT MAX(generation) FROM events WHERE id IN "
                                 f"({','.join('?' * len(chunk))})", chunk).fetchone()
            best = max(best, row[0] or 0)
        return best

    def mark_event_processed(self, event_id: str) -> bool:
        cur = self.c.execute("UPDATE events SET processed=1 WHERE id=? AND processed=0",
                             (event_id,))
        return cur.rowcount == 1

    def unprocessed_events(self, received_before: int, limit: int) -> list[Event]:
        rows = self.c.execute(
            f"SELECT {_EVENTS} FROM events WHERE processed=0 AND received_at < ? "
            "ORDER BY received_at LIMIT ?", (received_before, limit)).fetchall()
        return [r.event_from_row(row) for row in rows]

    def get_events(self, ids: Sequence[str]) -> list[Event]:
        by_id: dict[str, Event] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = tuple(ids[start:start + _CHUNK])
            marks = ",".join("?" * len(chunk))
            for row in self.c.execute(
                    f"SELECT {_EVENTS} FROM events WHERE id IN ({marks})", chunk):
                by_id[row[0]] = r.event_from_row(row)
        return [by_id[i] for i in ids if i in by_id]

    def list_events(self, name: str | None, limit: int) -> list[tuple[Event, int]]:
        sql = f"SELECT {_EVENTS}, received_at FROM events"
        args: tuple[Any, ...] = ()
        if name:
            sql += " WHERE name = ?"
            args = (name,)
        sql += " ORDER BY received_at DESC LIMIT ?"
        return [(r.event_from_row(row), row[5]) for row in self.c.execute(sql, (*args, limit))]

    # --- runs --------------------------------------------------------------------------------
    def insert_run(self, run: RunRow) -> None:
        self.c.execute(_RUN_INSERT, r.run_values(run))
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
        if cur.rowcount != 1:
            return False
        self.c.execute(_SETTLE_FAILURES, (run_id,))
        return True

    def add_run_warning(self, run_id: str, warning: str) -> None:
        row = self.c.execute("SELECT warnings FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            return
        warnings = loads(row[0]) or []
        if warning not in warnings:
            warnings.append(warning)
            self.c.execute("UPDATE runs SET warnings=? WHERE id=?", (dumps(warnings), run_id))

    def get_run(self, run_id: str) -> RunRow | None:
        row = self.c.execute(f"SELECT {r.RUN_COLUMNS} FROM runs WHERE id=?",
                             (run_id,)).fetchone()
        return None if row is None else r.run_from_row(row)

    def list_runs(self, *, event_id: str | None = None, function_id: str | None = None,
                  status: str | None = None, limit: int = 100) -> list[RunRow]:
        where: list[str] = []
        args: list[Any] = []
        for column, value in (("function_id", function_id), ("status", status)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        columns = r.names(r.RUNS, "runs.")
        if event_id is None:
            branches = [("runs", where, args)]
        else:
            # Batched runs list all their events in run_events; others only in runs.event_id.
            branches = [("runs", ["event_id = ?", *where], [event_id, *args]),
                        ("run_events JOIN runs ON runs.id = run_events.run_id",
                         ["run_events.event_id = ?", *where], [event_id, *args])]
        runs: dict[str, RunRow] = {}
        for source, conditions, values in branches:
            sql = f"SELECT {columns} FROM {source}"
            if conditions:
                sql += " WHERE " + " AND ".join(conditions)
            sql += " ORDER BY runs.created_at DESC, runs.id DESC LIMIT ?"
            for row in self.c.execute(sql, (*values, limit)):
                runs[row[0]] = r.run_from_row(row)
        return sorted(runs.values(), key=lambda run: (run.created_at, run.id),
                      reverse=True)[:limit]

    def search_runs(self, query: RunQuery) -> list[RunRow]:
        return run_search.search(query, r.RUN_COLUMNS, "?",
                                 lambda sql, args: self.c.execute(sql, args).fetchall())

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
            runs = [r.run_from_row(row) for row in self.c.execute(
                f"SELECT {r.RUN_COLUMNS} FROM runs WHERE id IN ({marks})", chunk)]
            events = self.get_events(list({i: None for run in runs for i in run.event_ids}))
            memos: dict[str, list[tuple[Any, ...]]] = {run.id: [] for run in runs}
            for row in self.c.execute(
                    f"SELECT {r.names(r.MEMOS)} FROM memos WHERE run_id IN ({marks})", chunk):
                memos[row[0]].append(row[1:])
            failures: dict[str, list[tuple[Any, ...]]] = {run.id: [] for run in runs}
            for row in self.c.execute(
                    f"SELECT run_id, {r.names(r.FAILURE_READ)} FROM step_failures "
                    f"WHERE run_id IN ({marks}) ORDER BY attempt", chunk):
                failures[row[0]].append(row[1:])
            for run in runs:
                states[run.id] = r.run_state(run, events, memos[run.id], failures[run.id])
        return states

    # --- steps -------------------------------------------------------------------------------
    def insert_memo(self, run_id: str, memo: Memo) -> bool:
        inserted = self.c.execute(_MEMO_INSERT, r.memo_values(run_id, memo)).rowcount == 1
        if inserted and r.settles_failures(memo):
            self.c.execute(_SETTLE_FAILURES + " AND hash=?", (run_id, memo.hash))
        return inserted

    def resolve_memo(self, run_id: str, step_hash: str, outcome: dict[str, Any],
                     now: int) -> bool:
        cur = self.c.execute(
            "UPDATE memos SET outcome=?, ended_at=? WHERE run_id=? AND hash=? AND outcome IS NULL",
            (dumps(outcome), now, run_id, step_hash))
        return cur.rowcount == 1

    def insert_step_failure(self, run_id: str, step_hash: str, step_id: str, attempt: int,
                            error: dict[str, Any], at: int) -> None:
        self.c.execute(
            f"INSERT INTO step_failures ({r.names(r.FAILURES)}) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            r.failure_values(run_id, step_hash, step_id, attempt, error, at))

    def insert_model_usage(self, rows: Sequence[UsageRow]) -> None:
        if rows:
            self.c.executemany(
                f"INSERT INTO model_usage ({r.names(r.USAGE)}) "
                f"VALUES ({', '.join('?' * len(r.USAGE))}) ON CONFLICT DO NOTHING",
                [r.usage_values(row) for row in rows])

    def run_model_usage(self, run_id: str) -> list[UsageRow]:
        return [r.usage_from_row(row) for row in self.c.execute(
            f"SELECT {r.names(r.USAGE)} FROM model_usage WHERE run_id=? "
            "ORDER BY at, step_hash, attempt, model", (run_id,))]

    # --- queue -------------------------------------------------------------------------------
    def enqueue(self, kind: str, unique_key: str, due_at: int, *, run_id: str | None = None,
                payload: dict[str, Any] | None = None, owner: str | None = None,
                lease_until: int | None = None, priority_at: int | None = None,
                concurrency: Sequence[tuple[str, int]] = (),
                event_id: str | None = None) -> int | None:
        row = self.c.execute(_ENQUEUE, r.queue_values(
            kind, unique_key, due_at, run_id, payload, owner, lease_until, priority_at,
            concurrency, event_id)).fetchone()
        return leased_to(row, owner)

    def claim_due(self, now: int, owner: str, lease_until: int, limit: int, *,
                  versions: ClaimVersions | None = None) -> list[QueueItem]:
        where, args = version_filter(versions)
        rows = self.c.execute(
            "UPDATE queue SET owner=?, lease_until=? WHERE id IN (SELECT id FROM queue "
            f"WHERE owner IS NULL AND blocked = 0 AND due_at <= ?{where} ORDER BY {CLAIM_ORDER} "
            f"LIMIT ?) RETURNING {r.QUEUE_COLUMNS}",
            (owner, lease_until, now, *args, limit)).fetchall()
        return sorted(map(r.item_from_row, rows), key=claim_key)

    def claim_timers(self, until: int, owner: str, lease_until: int,
                     limit: int, *, versions: ClaimVersions | None = None) -> list[QueueItem]:
        where, args = version_filter(versions)
        rows = self.c.execute(
            "UPDATE queue SET owner=?, lease_until=? WHERE id IN (SELECT id FROM queue "
            f"WHERE owner IS NULL AND blocked = 0 AND timer = 1 AND due_at <= ?{where} "
            f"ORDER BY {TIMER_ORDER} LIMIT ?) RETURNING {r.QUEUE_COLUMNS}",
            (owner, lease_until, until, *args, limit)).fetchall()
        return sorted(map(r.item_from_row, rows), key=timer_key)

    def next_timer_at(self) -> int | None:
        row = self.c.execute(
            "SELECT due_at FROM queue WHERE owner IS NULL AND blocked = 0 AND timer = 1 "
            "ORDER BY due_at LIMIT 1").fetchone()
        return None if row is None else int(row[0])

    def count_held(self, key: str) -> int:
        row = self.c.execute(f"SELECT {held_sql('?')}", (key, key)).fetchone()
        return int(row[0])

    def slots_free_now(self, concurrency: Sequence[tuple[str, int]], now: int) -> bool:
        # One writer at a time: the transaction itself makes this and the insert atomic.
        for key, limit in concurrency:
            held, waiting = self.c.execute(_SLOT_STATE, (key, key, key, now, key, now)).fetchone()
            if waiting or held >= limit:
                return False
        return True

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
                f"ORDER BY {WAKE_ORDER} LIMIT 1", (key, key)).fetchone()
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
        cur = self.c.execute(_REARM, (due_at, now, due_at, due_at, now, due_at, int(timer),
                                      item_id, owner))
        self._wake(freed)
        return cur.rowcount == 1

    def delete_items(self, *, run_id: str) -> None:
        # One statement (every run's end comes here): the freed keys are those of the deleted
        # items that were leased.
        rows = self.c.execute("DELETE FROM queue WHERE run_id=? RETURNING ck1, ck2, owner",
                              (run_id,)).fetchall()
        self._wake([k for ck1, ck2, owner in rows if owner is not None
                    for k in (ck1, ck2) if k is not None])

    def release_expired_leases(self, wall_now: int) -> int:
        freed = self._held_keys("lease_until < ?", (wall_now,))
        count = self.c.execute(
            "UPDATE queue SET owner=NULL, lease_until=NULL WHERE owner IS NOT NULL "
            "AND lease_until < ?", (wall_now,)).rowcount
        self._wake(freed)
        return count

    def lease_owners(self) -> list[str]:
        rows = self.c.execute("SELECT DISTINCT owner FROM queue WHERE owner IS NOT NULL")
        return [row[0] for row in rows]

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

    def run_backlog(self, now: int) -> list[tuple[str, str | None, int, int]]:
        rows = self.c.execute(
            "SELECT r.function_id, q.ck1, count(*), min(q.due_at) FROM queue q "
            "JOIN runs r ON r.id = q.run_id WHERE q.kind = 'exec' AND q.owner IS NULL "
            "AND q.due_at <= ? GROUP BY r.function_id, q.ck1", (now,)).fetchall()
        return [(r[0], r[1], int(r[2]), int(r[3])) for r in rows]

    def get_item(self, unique_key: str) -> QueueItem | None:
        row = self.c.execute(f"SELECT {r.QUEUE_COLUMNS} FROM queue WHERE unique_key=?",
                             (unique_key,)).fetchone()
        return None if row is None else r.item_from_row(row)

    def delete_item(self, item_id: int) -> None:
        freed = self._held_keys("id=?", (item_id,))
        self.c.execute("DELETE FROM queue WHERE id=?", (item_id,))
        self._wake(freed)

    def update_item(self, item_id: int, due_at: int, payload: dict[str, Any],
                    event_id: str | None = None) -> None:
        self.c.execute(
            "UPDATE queue SET due_at=?, priority_at=?, payload=?, event_id=? WHERE id=?",
            (due_at, due_at, dumps(payload), event_id, item_id))

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

    def held_windows(self, function_id: str, limit: int) -> list[HeldWindow]:
        rows = self.c.execute(_WINDOWS, (function_id, limit)).fetchall()
        return flow_windows.read_windows(rows, function_id)

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
        ids = tuple(row[0] for row in self.c.execute(
            "SELECT id FROM runs WHERE ended_at < ? AND status IN "
            "('completed', 'failed', 'cancelled', 'skipped') ORDER BY ended_at LIMIT ?",
            (ended_before, min(limit, _CHUNK))))
        if ids:
            marks = ",".join("?" * len(ids))      # a list, so each table is probed by index
            for table in ("memos", "step_failures", "run_events", "waits", "queue",
                          "model_usage", "stream_items"):
                self.c.execute(f"DELETE FROM {table} WHERE run_id IN ({marks})", ids)
            runs = self.c.execute(f"DELETE FROM runs WHERE id IN ({marks})", ids).rowcount
        events = self.c.execute(
            "DELETE FROM events WHERE id IN (SELECT e.id FROM events e "
            "WHERE e.received_at < ? AND e.processed = 1 "
            "AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.event_id = e.id) "
            "AND NOT EXISTS (SELECT 1 FROM run_events x WHERE x.event_id = e.id) "
            "AND NOT EXISTS (SELECT 1 FROM batch_events b WHERE b.event_id = e.id) "
            "AND NOT EXISTS (SELECT 1 FROM queue q WHERE q.event_id = e.id) "
            # No more than the runs deleted above (a chunk): asked for more than are
            # deletable, the sweep would walk every older event still referenced (bench/README).
            "ORDER BY e.received_at LIMIT ?)", (ended_before, min(limit, _CHUNK))).rowcount
        flows = self.c.execute(
            "DELETE FROM flow_state WHERE key IN (SELECT key FROM flow_state "
            "WHERE expires_at IS NOT NULL AND expires_at < ? LIMIT ?)", (now, limit)).rowcount
        if runs or events or flows:
            self._give_back_free_pages()
        return runs, events, flows

    def _give_back_free_pages(self) -> None:
        """Truncate the pages this prune freed off the file (a database created with
        `auto_vacuum=INCREMENTAL`, see sqlite._connect; others keep them for reuse). One page
        per statement: Python's sqlite3 steps a PRAGMA that returns no rows once, and one step
        of `incremental_vacuum` moves one page."""
        if self.c.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
            return
        free = int(self.c.execute("PRAGMA freelist_count").fetchone()[0])
        for _ in range(min(free, _MAX_PAGES_GIVEN_BACK)):
            self.c.execute("PRAGMA incremental_vacuum(1)")

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
        return [(row[0], row[1], loads(row[2]), row[3]) for row in rows]

    # --- waits -------------------------------------------------------------------------------
    def insert_wait(self, wait: WaitRow) -> None:
        self.c.execute(f"INSERT INTO waits ({r.names(r.WAITS)}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       r.wait_values(wait))

    def match_paths(self, event_name: str) -> list[str]:
        rows = self.c.execute(
            "SELECT DISTINCT substr(match_key, 1, instr(match_key, '=') - 1) FROM waits "
            "WHERE event_name=? AND match_key IS NOT NULL", (event_name,))
        return [row[0] for row in rows]

    def find_waits(self, event_name: str, match_keys: Sequence[str]) -> list[WaitRow]:
        marks = ",".join("?" * len(match_keys))
        cond = f"(match_key IS NULL OR match_key IN ({marks}))" if match_keys else (
            "match_key IS NULL")
        rows = self.c.execute(
            f"SELECT {r.WAIT_COLUMNS} FROM waits WHERE event_name=? AND {cond} ORDER BY id",
            (event_name, *match_keys))
        return [r.wait_from_row(row) for row in rows]

    def delete_wait(self, wait_id: int) -> bool:
        return self.c.execute("DELETE FROM waits WHERE id=?", (wait_id,)).rowcount == 1

    def delete_step_wait(self, run_id: str, step_hash: str) -> bool:
        return self.c.execute("DELETE FROM waits WHERE run_id=? AND step_hash=?",
                              (run_id, step_hash)).rowcount > 0

    def delete_run_waits(self, run_id: str) -> None:
        self.c.execute("DELETE FROM waits WHERE run_id=?", (run_id,))


def _marks(n: int) -> str:
    return ", ".join("?" * n)
