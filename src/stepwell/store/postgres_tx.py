"""`Tx` for Postgres: the SQL of every domain operation, inside one open transaction.

`postgres_sql.Pipe` provides the plumbing (pipelining, guessed answers, bulk writes); this
module says, per operation, which tier it uses. In strict mode (reads, and a writer's re-run
after a wrong guess) every operation waits for its true answer.

Writes run under READ COMMITTED with many processes at once, so every read-modify-write is made
safe explicitly (SQLite gets this for free from its single writer):

- compare-and-set updates (`... WHERE status IN (...)`, `owner = %s`, `outcome IS NULL`) and
  insert-once (`ON CONFLICT DO NOTHING`) re-check their condition on the latest row version after
  waiting for a concurrent writer, so exactly one of two racing transactions wins;
- keyed state that is read, decided on in Python, then written (flow-control state, debounce and
  batch items, the count of held concurrency slots, app checksums) is guarded by a
  transaction-scoped advisory lock on the key, taken in a statement of its own *before* the read:
  under READ COMMITTED each statement sees everything committed before it started, so the read
  that follows the lock sees the previous holder's writes;
- claims use `FOR UPDATE SKIP LOCKED`, so workers never wait on each other's candidates.
"""

from __future__ import annotations

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
from stepwell.store.postgres_rows import EVENT_COLUMNS, RUN_STATE_SQL, run_state
from stepwell.store.postgres_slots import SlotsTx
from stepwell.store.postgres_sql import (
    WORK_CHANNEL,
    Conn,
    Misprediction,
    WriterState,
)
from stepwell.store.postgres_streams import StreamsTx
from stepwell.store.postgres_workers import WorkersTx, version_filter
from stepwell.store.queue_rules import (
    CLAIM_ORDER,
    POSTGRES,
    TIMER_ORDER,
    claim_key,
    leased_to,
    rearm_set,
    timer_key,
    upsert_sql,
)

__all__ = ["WORK_CHANNEL", "Conn", "Misprediction", "PostgresTx", "WriterState"]

_WINDOWS = flow_windows.window_sql(mark="%s", function="(q.payload::jsonb ->> 'function_id')")


def _marks(n: int) -> str:
    return ", ".join(["%s"] * n)


_RUN_INSERT = f"INSERT INTO runs ({r.RUN_COLUMNS}) VALUES ({_marks(r.RUN_WIDTH)})"
_MEMO_INSERT = (f"INSERT INTO memos ({r.names(r.MEMOS)}) VALUES ({_marks(len(r.MEMOS))}) "
                "ON CONFLICT DO NOTHING")
# A run's failed attempts stop marking it `retrying` (as in sqlite_tx; bulk: postgres_sql).
_SETTLE_FAILURES = ("UPDATE step_failures SET unresolved=NULL "
                    "WHERE run_id=%s AND unresolved IS NOT NULL")
_ENQUEUE = (f"INSERT INTO queue ({r.names(r.QUEUE)}) VALUES ({_marks(len(r.QUEUE))}) "
            + upsert_sql(POSTGRES))
_REARM = ("UPDATE queue SET " + rearm_set(POSTGRES, due="%s::bigint", now="%s::bigint",
                                          timer="%s::boolean")
          + " WHERE id=%s AND owner=%s RETURNING ck1, ck2, %s::text")

class PostgresTx(WorkersTx, StreamsTx, SlotsTx):
    """`Tx` over one connection in pipeline mode, inside an open transaction."""

    # --- events ------------------------------------------------------------------------------
    def insert_event(self, event: Event, received_at: int, dedupe_after: int,
                     processed: bool, generation: int = 0) -> bool:
        row = r.event_values(event, received_at, processed, generation)
        if self.optimistic:
            self._buffer("event", row)
            return True
        return self._count(
            "INSERT INTO events (id, name, data, user_data, ts, received_at, processed, "
            "generation) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE "
            "SET name=excluded.name, data=excluded.data, user_data=excluded.user_data, "
            "ts=excluded.ts, received_at=excluded.received_at, processed=excluded.processed, "
            "generation=excluded.generation WHERE events.received_at <= %s",
            (*row, dedupe_after), tables=("events",)) == 1

    def event_generation(self, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        rows = self._rows("SELECT MAX(generation) FROM events WHERE id = ANY(%s)",
                          (list(ids),), tables=("events",))
        return int(rows[0][0] or 0) if rows else 0

    def mark_event_processed(self, event_id: str) -> bool:
        return self._affects_one("UPDATE events SET processed=true WHERE id=%s AND NOT processed",
                                 (event_id,), "event processed", tables=("events",))

    def unprocessed_events(self, received_before: int, limit: int) -> list[Event]:
        rows = self._rows(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE NOT processed AND received_at < %s "
            "ORDER BY received_at LIMIT %s", (received_before, limit), tables=("events",))
        return [r.event_from_row(row) for row in rows]

    def get_events(self, ids: Sequence[str]) -> list[Event]:
        if not ids:
            return []
        rows = self._rows(f"SELECT {EVENT_COLUMNS} FROM events WHERE id = ANY(%s)",
                          (list(ids),), tables=("events",))
        by_id = {row[0]: r.event_from_row(row) for row in rows}
        return [by_id[i] for i in ids if i in by_id]

    def list_events(self, name: str | None, limit: int) -> list[tuple[Event, int]]:
        where, args = ("WHERE name = %s ", [name]) if name else ("", [])
        rows = self._rows(f"SELECT {EVENT_COLUMNS}, received_at FROM events {where}"
                          "ORDER BY received_at DESC LIMIT %s", (*args, limit),
                          tables=("events",))
        return [(r.event_from_row(row), row[5]) for row in rows]

    # --- runs --------------------------------------------------------------------------------
    def insert_run(self, run: RunRow) -> None:
        row = r.run_values(run)
        if self.optimistic:
            self._buffer("run", row)
            self.new_runs.add(run.id)
        else:
            self._send(_RUN_INSERT, row)
        if len(run.event_ids) > 1:
            self._send("INSERT INTO run_events (event_id, run_id) "
                       "SELECT e, %s FROM unnest(%s::text[]) AS e ON CONFLICT DO NOTHING",
                       (run.id, run.event_ids), tables=("run_events",))

    def start_run(self, run_id: str, now: int) -> bool:
        if self.optimistic:
            self._buffer("start", (run_id, now))
            return True
        return self._count(
            "UPDATE runs SET status='running', started_at=coalesce(started_at, %s) "
            "WHERE id=%s AND status IN ('queued', 'running')", (now, run_id)) == 1

    def finish_run(self, run_id: str, status: RunStatus, now: int, *, output: Any = None,
                   error: dict[str, Any] | None = None) -> bool:
        row = (run_id, status, now, None if output is None else dumps(output),
               None if error is None else dumps(error))
        if self.optimistic:
            self._buffer("finish", row)
            self._buffer("settle_run", (run_id,))
            return True
        if self._count(
                "UPDATE runs SET status=%s, ended_at=%s, output=%s, error=%s "
                "WHERE id=%s AND status IN ('queued', 'running')", (*row[1:], run_id)) != 1:
            return False
        self._send(_SETTLE_FAILURES, (run_id,))
        return True

    def add_run_warning(self, run_id: str, warning: str) -> None:
        lock = " FOR UPDATE" if self.writable else ""
        row = self._one(f"SELECT warnings FROM runs WHERE id=%s{lock}", (run_id,))
        if row is None:
            return
        warnings = loads(row[0]) or []
        if warning not in warnings:
            warnings.append(warning)
            self._send("UPDATE runs SET warnings=%s WHERE id=%s", (dumps(warnings), run_id))

    def get_run(self, run_id: str) -> RunRow | None:
        row = self._one(f"SELECT {r.RUN_COLUMNS} FROM runs WHERE id=%s", (run_id,),
                        tables=("runs",))
        return None if row is None else r.run_from_row(row)

    def list_runs(self, *, event_id: str | None = None, function_id: str | None = None,
                  status: str | None = None, limit: int = 100) -> list[RunRow]:
        where: list[str] = []
        args: list[Any] = []
        for column, value in (("function_id", function_id), ("status", status)):
            if value is not None:
                where.append(f"runs.{column} = %s")
                args.append(value)
        columns = r.names(r.RUNS, "runs.")
        if event_id is None:
            branches = [("runs", where, args)]
        else:
            # Batched runs list all their events in run_events; others only in runs.event_id.
            branches = [("runs", ["runs.event_id = %s", *where], [event_id, *args]),
                        ("run_events JOIN runs ON runs.id = run_events.run_id",
                         ["run_events.event_id = %s", *where], [event_id, *args])]
        parts, values = [], []
        for source, conditions, branch_values in branches:
            sql = f"SELECT {columns} FROM {source}"
            if conditions:
                sql += " WHERE " + " AND ".join(conditions)
            parts.append(f"{sql} ORDER BY runs.created_at DESC, runs.id DESC LIMIT %s")
            values += [*branch_values, limit]
        if len(parts) > 1:      # one statement, so it needs no transaction (see Pipe)
            parts = [" UNION ".join(f"({part})" for part in parts)
                     + " ORDER BY created_at DESC, id DESC LIMIT %s"]
            values.append(limit)
        rows = self._rows(parts[0], values, tables=("runs", "run_events"))
        return [r.run_from_row(row) for row in rows]

    def search_runs(self, query: RunQuery) -> list[RunRow]:
        tables = ("runs", "run_events", "memos", "step_failures")
        return run_search.search(query, r.RUN_COLUMNS, "%s",
                                 lambda sql, args: self._rows(sql, args, tables=tables))

    def run_work(self, run_ids: Sequence[str]) -> dict[str, RunWork]:
        if not run_ids:
            return {}
        ids = list(run_ids)
        items, waits, children = run_search.work_sql(ids, "%s")
        return run_search.collect_work(
            ids, self._rows(items, ids, tables=("queue",)),
            self._rows(waits, ids, tables=("waits",)),
            self._rows(children, ids, tables=("runs",)))

    def load_run_state(self, run_id: str) -> RunState | None:
        return self.load_run_states([run_id]).get(run_id)

    def load_run_states(self, run_ids: Sequence[str]) -> dict[str, RunState]:
        # One statement (runs, events, memos and failures as JSON arrays): one round trip, one
        # snapshot, and a fraction of the client's per-statement cost of four queries per run.
        rows = self._rows(RUN_STATE_SQL, (list(run_ids),),
                          tables=("runs", "events", "memos", "step_failures"))
        return {state.run.id: state for state in map(run_state, rows)}

    # --- steps -------------------------------------------------------------------------------
    def insert_memo(self, run_id: str, memo: Memo) -> bool:
        row = r.memo_values(run_id, memo)
        settles = r.settles_failures(memo)
        if self.optimistic:
            self._buffer("memo", row)
            if settles:
                self._buffer("settle_step", (run_id, memo.hash))
            return True
        inserted = self._count(_MEMO_INSERT, row) == 1
        if inserted and settles:
            self._send(_SETTLE_FAILURES + " AND hash=%s", (run_id, memo.hash))
        return inserted

    def resolve_memo(self, run_id: str, step_hash: str, outcome: dict[str, Any],
                     now: int) -> bool:
        if self.optimistic:
            self._buffer("resolve", (run_id, step_hash, dumps(outcome), now))
            return True
        return self._count(
            "UPDATE memos SET outcome=%s, ended_at=%s "
            "WHERE run_id=%s AND hash=%s AND outcome IS NULL",
            (dumps(outcome), now, run_id, step_hash)) == 1

    def insert_step_failure(self, run_id: str, step_hash: str, step_id: str, attempt: int,
                            error: dict[str, Any], at: int) -> None:
        row = r.failure_values(run_id, step_hash, step_id, attempt, error, at)
        if self.optimistic:
            self._buffer("failure", row)
            return
        self._send(f"INSERT INTO step_failures ({r.names(r.FAILURES)}) "
                   "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING", row)

    def insert_model_usage(self, rows: Sequence[UsageRow]) -> None:
        for row in rows:     # a handful per step: one statement each, pipelined
            self._send(f"INSERT INTO model_usage ({r.names(r.USAGE)}) "
                       f"VALUES ({_marks(len(r.USAGE))}) ON CONFLICT DO NOTHING",
                       r.usage_values(row), tables=("model_usage",))

    def run_model_usage(self, run_id: str) -> list[UsageRow]:
        return [r.usage_from_row(row) for row in self._rows(
            f"SELECT {r.names(r.USAGE)} FROM model_usage WHERE run_id=%s "
            "ORDER BY at, step_hash, attempt, model", (run_id,), tables=("model_usage",))]

    # --- queue -------------------------------------------------------------------------------
    def enqueue(self, kind: str, unique_key: str, due_at: int, *, run_id: str | None = None,
                payload: dict[str, Any] | None = None, owner: str | None = None,
                lease_until: int | None = None, priority_at: int | None = None,
                concurrency: Sequence[tuple[str, int]] = (),
                event_id: str | None = None) -> int | None:
        values = r.queue_values(kind, unique_key, due_at, run_id, payload, owner, lease_until,
                                priority_at, concurrency, event_id)
        if self.optimistic and self.state is not None and run_id in self.new_runs:
            # The exec item of a run this transaction inserted: its key cannot exist yet, so
            # the insert creates it, with an id reserved in advance (checked in finish()).
            item_id = self.state.take_id(self)
            self._buffer("new_item", (item_id, *values))
            if owner is None:
                self.notify = True
                return None
            return item_id
        row = self._one(_ENQUEUE, values)
        assert row is not None
        leased = leased_to(row, owner)
        if leased is None:
            self.notify = True
        return leased

    def claim_due(self, now: int, owner: str, lease_until: int, limit: int, *,
                  versions: ClaimVersions | None = None) -> list[QueueItem]:
        where, args = version_filter(versions)
        rows = self._rows(
            # The candidates as an array (one index probe each), whatever the planner guesses
            # of their number from a generic plan.
            "UPDATE queue SET owner=%s, lease_until=%s WHERE id = ANY(ARRAY("
            f"SELECT id FROM queue WHERE owner IS NULL AND NOT blocked AND due_at <= %s{where} "
            f"ORDER BY {CLAIM_ORDER} LIMIT %s FOR UPDATE SKIP LOCKED)) "
            f"RETURNING {r.QUEUE_COLUMNS}", (owner, lease_until, now, *args, limit))
        items = sorted(map(r.item_from_row, rows), key=claim_key)
        # Lock every concurrency key the claim touches at once, in order (see count_held).
        self.lock(*(f"c:{key}" for item in items for key, _ in item.concurrency))
        return self.yield_to_woken(items, owner, now, (where, args))

    def claim_timers(self, until: int, owner: str, lease_until: int,
                     limit: int, *, versions: ClaimVersions | None = None) -> list[QueueItem]:
        where, args = version_filter(versions)
        rows = self._rows(
            "UPDATE queue SET owner=%s, lease_until=%s WHERE id = ANY(ARRAY("
            "SELECT id FROM queue WHERE owner IS NULL AND NOT blocked AND timer AND due_at <= %s"
            f"{where} ORDER BY {TIMER_ORDER} LIMIT %s FOR UPDATE SKIP LOCKED)) "
            f"RETURNING {r.QUEUE_COLUMNS}", (owner, lease_until, until, *args, limit))
        return sorted(map(r.item_from_row, rows), key=timer_key)

    def next_timer_at(self) -> int | None:
        row = self._one("SELECT due_at FROM queue WHERE owner IS NULL AND NOT blocked AND timer "
                        "ORDER BY due_at LIMIT 1")
        return None if row is None else int(row[0])

    def renew_lease(self, item_id: int, owner: str, lease_until: int) -> bool:
        if self.optimistic:
            self._buffer("lease", (item_id, owner, lease_until))
            return True
        return self._count("UPDATE queue SET lease_until=%s WHERE id=%s AND owner=%s",
                           (lease_until, item_id, owner)) == 1

    def renew_leases(self, owner: str, lease_until: int, item_ids: Sequence[int]) -> int:
        return self._count("UPDATE queue SET lease_until=%s WHERE id = ANY(%s) AND owner=%s",
                           (lease_until, list(item_ids), owner))

    def release_item(self, item_id: int, owner: str, due_at: int | None, now: int, *,
                     timer: bool = False) -> bool:
        if self.optimistic:
            # Guessed: deleted (or re-armed) as asked; if it was flagged to run again, the
            # delete misses and the strict re-run re-arms it instead.
            if due_at is None:
                self._buffer("release", (item_id, owner))
            else:
                self.notify = True
                self._buffer("rearm", (item_id, owner, due_at, now, timer))
            return True
        if due_at is None:
            row = self._one("DELETE FROM queue WHERE id=%s AND owner=%s AND NOT rerun "
                            "RETURNING ck1, ck2, owner", (item_id, owner))
            if row is not None:
                self._wake([row])
                return True
            due_at = now
        row = self._one(_REARM, (due_at, now, due_at, due_at, now, due_at, timer, item_id,
                                 owner, owner))
        if row is None:
            return False
        self.notify = True
        self._wake([row])
        return True

    def delete_items(self, *, run_id: str) -> None:
        if self.optimistic:
            self._buffer("drop_items", (run_id,))
            return
        self._wake(self._rows("DELETE FROM queue WHERE run_id=%s RETURNING ck1, ck2, owner",
                              (run_id,)))

    def release_expired_leases(self, wall_now: int) -> int:
        rows = self._rows(
            "UPDATE queue SET owner=NULL, lease_until=NULL WHERE owner IS NOT NULL "
            "AND lease_until < %s RETURNING ck1, ck2, 'expired'", (wall_now,))
        self.notify = self.notify or bool(rows)
        self._wake(rows)
        return len(rows)

    def lease_owners(self) -> list[str]:
        rows = self._rows("SELECT DISTINCT owner FROM queue WHERE owner IS NOT NULL")
        return [row[0] for row in rows]

    def release_leases_of(self, owner: str) -> int:
        rows = self._rows("UPDATE queue SET owner=NULL, lease_until=NULL WHERE owner=%s "
                          "RETURNING ck1, ck2, %s::text", (owner, owner))
        self.notify = self.notify or bool(rows)
        self._wake(rows)
        return len(rows)

    def next_due_at(self) -> int | None:
        row = self._one("SELECT due_at FROM queue WHERE owner IS NULL AND NOT blocked "
                        "ORDER BY due_at LIMIT 1")
        return None if row is None else int(row[0])

    def count_ready(self, now: int) -> int:
        row = self._one("SELECT count(*) FROM queue WHERE owner IS NULL AND NOT blocked "
                        "AND due_at <= %s", (now,))
        return 0 if row is None else int(row[0])

    def run_backlog(self, now: int) -> list[tuple[str, str | None, int, int]]:
        rows = self._rows(
            "SELECT r.function_id, q.ck1, count(*), min(q.due_at) FROM queue q "
            "JOIN runs r ON r.id = q.run_id WHERE q.kind = 'exec' AND q.owner IS NULL "
            "AND q.due_at <= %s GROUP BY r.function_id, q.ck1", (now,))
        return [(r[0], r[1], int(r[2]), int(r[3])) for r in rows]

    def active_versions(self) -> list[tuple[str, str | None, int, int]]:
        rows = self._rows(
            "SELECT function_id, version, count(*), min(created_at) FROM runs "
            "WHERE status IN ('queued', 'running') GROUP BY function_id, version "
            "ORDER BY function_id, version", tables=("runs",))
        return [(r[0], r[1], int(r[2]), int(r[3])) for r in rows]

    def get_item(self, unique_key: str) -> QueueItem | None:
        # Debounce and batch items are read, then updated from what was read: serialize that.
        self.lock(unique_key)
        row = self._one(f"SELECT {r.QUEUE_COLUMNS} FROM queue WHERE unique_key=%s",
                        (unique_key,))
        return None if row is None else r.item_from_row(row)

    def delete_item(self, item_id: int) -> None:
        self._then("DELETE FROM queue WHERE id=%s RETURNING ck1, ck2, owner", (item_id,),
                   self._wake)

    def update_item(self, item_id: int, due_at: int, payload: dict[str, Any],
                    event_id: str | None = None) -> None:
        self.notify = True
        self._send(
            "UPDATE queue SET due_at=%s, priority_at=%s, payload=%s, event_id=%s WHERE id=%s",
            (due_at, due_at, dumps(payload), event_id, item_id))

    # --- flow-control state --------------------------------------------------------------------
    def get_flow(self, key: str) -> tuple[str | None, int | None] | None:
        # Every caller decides from this value and then calls put_flow: lock the key first.
        self.lock(key)
        row = self._one("SELECT text, expires_at FROM flow_state WHERE key=%s", (key,),
                        tables=("flow_state",))
        return None if row is None else (row[0], row[1])

    def put_flow(self, key: str, *, text: str | None = None,
                 expires_at: int | None = None) -> None:
        self._send(
            "INSERT INTO flow_state (key, text, expires_at) VALUES (%s, %s, %s) "
            "ON CONFLICT (key) DO UPDATE SET text=excluded.text, "
            "expires_at=excluded.expires_at", (key, text, expires_at),
            tables=("flow_state",))

    def held_windows(self, function_id: str, limit: int) -> list[HeldWindow]:
        rows = self._rows(_WINDOWS, (function_id, limit), tables=("queue", "batch_events"))
        return flow_windows.read_windows(rows, function_id)

    def add_batch_event(self, batch_key: str, event_id: str) -> int:
        # Same lock as the batch's timer item (get_item): size checks and flushes serialize.
        self.lock(batch_key)
        self._send("INSERT INTO batch_events (batch_key, event_id) VALUES (%s, %s)",
                   (batch_key, event_id), tables=("batch_events",))
        row = self._one("SELECT count(*) FROM batch_events WHERE batch_key=%s", (batch_key,),
                        tables=("batch_events",))
        return 0 if row is None else int(row[0])

    def take_batch(self, batch_key: str) -> list[str]:
        self.lock(batch_key)
        rows = self._rows("DELETE FROM batch_events WHERE batch_key=%s RETURNING seq, event_id",
                          (batch_key,), tables=("batch_events",))
        return [event_id for _, event_id in sorted(rows)]

    def count_runs(self, function_id: str, status: RunStatus, cap: int) -> int:
        row = self._one("SELECT count(*) FROM (SELECT 1 FROM runs WHERE function_id=%s "
                        "AND status=%s LIMIT %s) AS capped", (function_id, status, cap))
        return 0 if row is None else int(row[0])

    # --- retention -------------------------------------------------------------------------------
    def prune(self, ended_before: int, now: int, limit: int) -> tuple[int, int, int]:
        # SKIP LOCKED: workers pruning at the same time take different rows.
        ids = [row[0] for row in self._rows(
            "SELECT id FROM runs WHERE ended_at < %s AND status IN "
            "('completed', 'failed', 'cancelled', 'skipped') ORDER BY ended_at LIMIT %s "
            "FOR UPDATE SKIP LOCKED", (ended_before, limit))]
        runs = 0
        if ids:
            for table in ("memos", "step_failures", "run_events", "waits", "queue",
                          "model_usage", "stream_items"):
                self._send(f"DELETE FROM {table} WHERE run_id = ANY(%s)", (ids,))
            runs = self._count("DELETE FROM runs WHERE id = ANY(%s)", (ids,))
        # Scalar subqueries, not NOT EXISTS: the planner would turn those into anti-joins that
        # scan whole tables, where walking the oldest events and probing indexes stops early.
        events = self._count(
            "DELETE FROM events WHERE id = ANY(ARRAY(SELECT e.id FROM events e "
            "WHERE e.received_at < %s AND e.processed "
            "AND (SELECT 1 FROM runs r WHERE r.event_id = e.id LIMIT 1) IS NULL "
            "AND (SELECT 1 FROM run_events x WHERE x.event_id = e.id LIMIT 1) IS NULL "
            "AND (SELECT 1 FROM batch_events b WHERE b.event_id = e.id LIMIT 1) IS NULL "
            "AND (SELECT 1 FROM queue q WHERE q.event_id = e.id LIMIT 1) IS NULL "
            "ORDER BY e.received_at LIMIT %s FOR UPDATE OF e SKIP LOCKED))",
            (ended_before, limit))
        flows = self._count(
            "DELETE FROM flow_state WHERE key = ANY(ARRAY(SELECT key FROM flow_state "
            "WHERE expires_at IS NOT NULL AND expires_at < %s LIMIT %s "
            "FOR UPDATE SKIP LOCKED))", (now, limit))
        return runs, events, flows

    # --- apps (official-SDK apps) -------------------------------------------------------------
    def save_app(self, app_id: str, url: str, config: dict[str, Any], checksum: str,
                 now: int) -> bool:
        self.lock(f"app:{app_id}")     # "changed?" is decided from the row read here
        row = self._one("SELECT checksum FROM apps WHERE app_id=%s", (app_id,), tables=("apps",))
        self._send(
            "INSERT INTO apps (app_id, url, config, checksum, synced_at) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (app_id) DO UPDATE SET url=excluded.url, "
            "config=excluded.config, checksum=excluded.checksum, synced_at=excluded.synced_at",
            (app_id, url, dumps(config), checksum, now), tables=("apps",))
        return row is None or row[0] != checksum

    def list_apps(self) -> list[tuple[str, str, dict[str, Any], str]]:
        rows = self._rows("SELECT app_id, url, config, checksum FROM apps ORDER BY app_id",
                          tables=("apps",))
        return [(row[0], row[1], loads(row[2]), row[3]) for row in rows]

    # --- waits -------------------------------------------------------------------------------
    def insert_wait(self, wait: WaitRow) -> None:
        row = r.wait_values(wait)
        if self.optimistic:
            self._buffer("wait", row)
            return
        self._send(f"INSERT INTO waits ({r.names(r.WAITS)}) VALUES ({_marks(len(r.WAITS))})",
                   row)

    def match_paths(self, event_name: str) -> list[str]:
        rows = self._rows(
            "SELECT DISTINCT split_part(match_key, '=', 1) FROM waits "
            "WHERE event_name=%s AND match_key IS NOT NULL", (event_name,), tables=("waits",))
        return [row[0] for row in rows]

    def find_waits(self, event_name: str, match_keys: Sequence[str]) -> list[WaitRow]:
        sql = (f"SELECT {r.WAIT_COLUMNS} FROM waits WHERE event_name=%s AND match_key IS NULL "
               f"UNION ALL SELECT {r.WAIT_COLUMNS} FROM waits "
               "WHERE event_name=%s AND match_key = ANY(%s) ORDER BY id")
        args = (event_name, event_name, list(match_keys))
        state = self.state
        if self.optimistic and state is not None and state.quiet(event_name):
            # Nothing waited for this name lately: guess that nothing does now either (checked
            # in finish(), for all such names at once: any pending wait for one of them).
            self._quiet_names.add(event_name)
            return []
        rows = self._rows(sql, args, tables=("waits",))
        if state is not None:
            state.looked_up(event_name, bool(rows))
        return [r.wait_from_row(row) for row in rows]

    def delete_wait(self, wait_id: int) -> bool:
        if self.optimistic:
            self._buffer("take_wait", (wait_id,))
            return True
        return self._count("DELETE FROM waits WHERE id=%s", (wait_id,)) == 1

    def delete_step_wait(self, run_id: str, step_hash: str) -> bool:
        return self._count("DELETE FROM waits WHERE run_id=%s AND step_hash=%s",
                           (run_id, step_hash), tables=("waits",)) > 0

    def delete_run_waits(self, run_id: str) -> None:
        if self.optimistic:
            self._buffer("drop_waits", (run_id,))
            return
        self._send("DELETE FROM waits WHERE run_id=%s", (run_id,))
