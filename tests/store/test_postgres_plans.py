"""The hot queries use indexes on Postgres: nothing scans all runs, queue items, waits or memos.

The tables get tens of thousands of rows with realistic shapes (most queue items sleeping or
leased, a few ready or blocked; waits spread over many event names) and are ANALYZEd, so a
sequential scan would be the planner's honest choice only if no index served the query. Every
statement each hot `Tx` method issues (strict and guessing, including the bulk writes) is
recorded and EXPLAINed twice: with its parameters (the custom plan) and as a prepared statement
under `plan_cache_mode = force_generic_plan` (the plan psycopg's prepared statements may settle
on). No plan may contain a Seq Scan of a hot table.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from contextlib import closing
from typing import Any

import psycopg
import pytest
from psycopg import sql

from stepwell.core.models import Event, Memo
from stepwell.store.base import RunQuery, RunRow, WaitRow
from stepwell.store.postgres_tx import PostgresTx, WriterState

HOT_TABLES = {"runs", "queue", "waits", "memos", "step_failures", "events", "run_events",
              "batch_events", "flow_state"}
N = 20_000
TEST_DB_PREFIX = f"sw_test_{os.getpid()}_"
NOW = 10_000_000


@pytest.fixture(scope="module")
def database(pg_databases: Callable[[str], str]) -> str:
    """One populated database for the module (filling it takes a few seconds)."""
    url = pg_databases(f"{TEST_DB_PREFIX}plans")
    with closing(psycopg.connect(url, autocommit=True)) as conn:
        populate(conn)
    return url


def populate(conn: psycopg.Connection[Any]) -> None:
    conn.execute(f"""
        INSERT INTO events (id, name, data, ts, received_at, processed)
        SELECT 'ev' || i, 'e/' || (i % 50), '{{}}', i, i, i % 100 <> 0
        FROM generate_series(1, {N}) i;
        INSERT INTO runs (id, function_id, status, event_id, created_at, started_at)
        SELECT 'run' || i, 'app/fn' || (i % 20),
               (ARRAY['queued', 'running', 'completed', 'failed'])[1 + i % 4], 'ev' || i, i, i
        FROM generate_series(1, {N}) i;
        INSERT INTO memos (run_id, hash, step_id, kind, seq, outcome, started_at, ended_at)
        SELECT 'run' || i, 'h' || s, 's' || s, 'run', s, '{{"data":1}}', i, i
        FROM generate_series(1, {N}) i, generate_series(1, 3) s;
        INSERT INTO memos (run_id, hash, step_id, kind, seq, outcome, due_at, started_at,
                           ended_at)
        SELECT 'run' || i, 'z', 'nap', CASE WHEN i % 2 = 0 THEN 'sleep' ELSE 'wait' END, 4,
               CASE WHEN i % 2 = 0 THEN '{{"data":null}}' END, {NOW} - 5000 + i, i, i
        FROM generate_series(1, {N}, 5) i;
        INSERT INTO step_failures (run_id, hash, step_id, attempt, error, at)
        SELECT 'run' || (i * 10), 'h1', 's1', 0, '{{}}', i FROM generate_series(1, 2000) i;
        INSERT INTO step_failures (run_id, hash, step_id, attempt, error, at, unresolved)
        SELECT 'run' || i, 'hf', 'sf', 0, '{{}}', i, CASE WHEN i % 200 = 0 THEN 1 END
        FROM generate_series(1, {N}) i;     -- most settled (retried, or their run ended)
        INSERT INTO queue (unique_key, kind, run_id, due_at, priority_at, owner, lease_until,
                           ck1, cl1, blocked)
        SELECT 'exec:run' || i, 'exec', 'run' || i,
               CASE WHEN i % 10 = 0 THEN {NOW} - i ELSE {NOW} + i END,
               CASE WHEN i % 10 = 0 THEN {NOW} - i ELSE {NOW} + i END,
               CASE WHEN i % 10 = 1 THEN 'w' || (i % 4) END,
               CASE WHEN i % 10 = 1 THEN {NOW} + 30000 END,
               CASE WHEN i % 25 = 2 THEN 'c:fn:' || (i % 7) END,
               CASE WHEN i % 25 = 2 THEN 2 END, i % 50 = 2
        FROM generate_series(1, {N}) i;
        INSERT INTO queue (unique_key, kind, due_at, priority_at, payload, event_id)
        SELECT (ARRAY['batch', 'debounce'])[1 + i % 2] || ':app/fn' || (i % 20) || ':' || i,
               (ARRAY['batch', 'debounce'])[1 + i % 2], {NOW} + i, {NOW} + i,
               '{{"function_id":"app/fn' || (i % 20) || '","first_at":1}}',
               CASE WHEN i % 2 = 1 THEN 'ev' || i END
        FROM generate_series(1, 20000) i;
        INSERT INTO waits (run_id, kind, step_hash, event_name, match_key, expires_at)
        SELECT 'run' || i, 'wait', 'h9', 'e/' || (i % 50),
               CASE WHEN i % 3 = 0 THEN NULL ELSE 'data.id=' || i END, {NOW} + i
        FROM generate_series(1, {N}) i;
        INSERT INTO flow_state (key, text) SELECT 'throttle:fn:' || i, '1'
        FROM generate_series(1, 5000) i;
        INSERT INTO batch_events (batch_key, event_id) SELECT 'batch:fn:' || (i % 500), 'ev' || i
        FROM generate_series(1, 5000) i;
        INSERT INTO run_events (event_id, run_id) SELECT 'ev' || i, 'run' || (i / 3)
        FROM generate_series(1, 5000) i;
        ANALYZE;
    """.encode())


class Recorder:
    """Stands in for the connection: records each statement and forwards it."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.statements: list[tuple[str, Any]] = []

    def execute(self, query: str, args: Any = None) -> Any:
        self.statements.append((query, args))
        return self.conn.execute(query, args)


def record(url: str, call: Callable[[PostgresTx], Any], *, optimistic: bool
           ) -> list[tuple[str, Any]]:
    """The statements `call` issues in a (rolled back) write transaction."""
    with closing(psycopg.connect(url, autocommit=True)) as conn:
        recorder = Recorder(conn)
        try:
            with conn.pipeline() as pipeline:
                conn.execute("BEGIN")
                tx = PostgresTx(conn, pipeline, writable=True, optimistic=optimistic,
                                state=WriterState())
                tx.c = recorder  # type: ignore[assignment]
                call(tx)
                tx.finish()
        except Exception as exc:   # a wrong guess is fine: the statements were issued
            if type(exc).__name__ != "Misprediction":
                raise
        finally:
            conn.execute("ROLLBACK")
    return [(q, a) for q, a in recorder.statements
            if re.match(r"[\s(]*(SELECT|UPDATE|DELETE|INSERT|WITH)\b", q)
            and "pg_current_xact_id" not in q and "nextval" not in q]


def seq_scans(plan: Any) -> list[str]:
    found = []
    stack = [plan]
    while stack:
        node = stack.pop()
        if node.get("Node Type") == "Seq Scan" and node.get("Relation Name") in HOT_TABLES:
            found.append(node["Relation Name"])
        stack.extend(node.get("Plans", []))
    return found


def explain(url: str, query: str, args: Any) -> dict[str, Any]:
    """Custom and generic plans of one statement, by name."""
    plans: dict[str, Any] = {}
    with closing(psycopg.connect(url, autocommit=True)) as conn:
        conn.execute("BEGIN")
        try:
            row = conn.execute(f"EXPLAIN (FORMAT JSON) {query}", args).fetchone()
            assert row is not None
            plans["custom"] = row[0][0]["Plan"]
            numbered = iter(range(1, 100_000))
            positional = re.sub(r"%s", lambda _: f"${next(numbered)}", query)
            conn.execute(f"PREPARE hot AS {positional}".encode())
            conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            values = sql.SQL(", ").join(sql.Literal(a) for a in (args or ()))
            statement = sql.SQL("EXPLAIN (FORMAT JSON) EXECUTE hot{}").format(
                sql.SQL("({})").format(values) if args else sql.SQL(""))
            row = conn.execute(statement).fetchone()
            assert row is not None
            plans["generic"] = row[0][0]["Plan"]
        finally:
            conn.execute("ROLLBACK")
            conn.execute("DEALLOCATE ALL")
    return plans


def _memo(n: int) -> Memo:
    return Memo(f"hn{n}", "s", "run", 9, data=n)


def _release_many(tx: PostgresTx) -> None:
    for i in range(1, 60, 10):
        tx.release_item(i, "w1", None, NOW)


HOT_CALLS: list[tuple[str, Callable[[PostgresTx], Any]]] = [
    ("claim_due", lambda t: t.claim_due(NOW, "w", NOW + 30_000, 50)),
    ("prune", lambda t: t.prune(NOW, NOW, 500)),
    ("count_runs", lambda t: t.count_runs("app/fn1", "queued", 1001)),
    ("claim_timers", lambda t: t.claim_timers(NOW + 5_000, "w", NOW + 30_000, 50)),
    ("next_timer_at", lambda t: t.next_timer_at()),
    ("release_item (timer)", lambda t: t.release_item(11, "w1", NOW + 5, NOW, timer=True)),
    ("load_run_states", lambda t: t.load_run_states(["run3", "run4", "run5"])),
    ("count_held", lambda t: t.count_held("c:fn:3")),
    ("slots_free_now", lambda t: t.slots_free_now([("c:fn:3", 5), ("c:x", 2)], 100)),
    ("renew_lease", lambda t: t.renew_lease(11, "w1", NOW + 60_000)),
    ("renew_leases", lambda t: t.renew_leases("w1", NOW + 60_000, [11, 12, 13])),
    ("release_item", lambda t: t.release_item(11, "w1", None, NOW)),
    ("release_item (re-arm)", lambda t: t.release_item(11, "w1", NOW + 5, NOW)),
    ("release_item x6", _release_many),
    ("release_expired_leases", lambda t: t.release_expired_leases(NOW + 1)),
    ("release_leases_of", lambda t: t.release_leases_of("w1")),
    ("next_due_at", lambda t: t.next_due_at()),
    ("count_ready", lambda t: t.count_ready(NOW)),
    ("lease_owners", lambda t: t.lease_owners()),
    ("unblock_all", lambda t: t.unblock_all()),
    ("enqueue", lambda t: t.enqueue("exec", "exec:run5", NOW, run_id="run5", owner="w",
                                    lease_until=NOW + 1)),
    ("get_item", lambda t: t.get_item("exec:run7")),
    ("delete_item", lambda t: t.delete_item(52)),
    ("delete_items", lambda t: t.delete_items(run_id="run52")),
    ("block_item", lambda t: t.block_item(11, "w1")),
    ("new run", lambda t: (t.insert_run(RunRow("fresh", "app/fn1", ["ev3"], NOW)),
                           t.enqueue("exec", "exec:fresh", NOW, run_id="fresh", owner="w",
                                     lease_until=NOW + 1))),
    ("start_run", lambda t: t.start_run("run8", NOW)),
    ("finish_run", lambda t: t.finish_run("run9", "completed", NOW, output=1)),
    ("get_run", lambda t: t.get_run("run3")),
    ("add_run_warning", lambda t: t.add_run_warning("run3", "careful")),
    ("load_run_state", lambda t: t.load_run_state("run3")),
    ("runs by event", lambda t: t.list_runs(event_id="ev3")),
    ("runs by function", lambda t: t.list_runs(function_id="app/fn3", limit=5)),
    ("runs by status", lambda t: t.list_runs(status="queued", limit=5)),
    ("runs sleeping", lambda t: t.search_runs(RunQuery(doing="sleeping", now=NOW))),
    ("runs waiting", lambda t: t.search_runs(RunQuery(doing="waiting", now=NOW))),
    ("runs invoking", lambda t: t.search_runs(RunQuery(doing="invoking", now=NOW))),
    ("runs retrying", lambda t: t.search_runs(RunQuery(doing="retrying", now=NOW))),
    ("runs orphaned", lambda t: t.search_runs(RunQuery(doing="orphaned", now=NOW))),
    ("recent runs", lambda t: t.list_runs(limit=5)),
    ("insert_memo", lambda t: t.insert_memo("run3", _memo(1))),
    ("resolve_memo", lambda t: t.resolve_memo("run3", "h1", {"data": 1}, NOW)),
    ("insert_step_failure", lambda t: t.insert_step_failure("run3", "h1", "s", 1, {}, NOW)),
    ("run_model_usage", lambda t: t.run_model_usage("run3")),
    ("insert_wait", lambda t: t.insert_wait(WaitRow("run3", "wait", "e/3", NOW, "h",
                                                    "data.id=3", None, {}))),
    ("find_waits", lambda t: t.find_waits("e/1", ["data.id=51", "data.id=52"])),
    ("match_paths", lambda t: t.match_paths("e/1")),
    ("delete_wait", lambda t: t.delete_wait(5)),
    ("delete_step_wait", lambda t: t.delete_step_wait("run3", "h9")),
    ("delete_run_waits", lambda t: t.delete_run_waits("run4")),
    ("insert_event", lambda t: t.insert_event(Event("e/1", {}, id="ev5", ts=1), NOW, 0,
                                              processed=True)),
    ("mark_event_processed", lambda t: t.mark_event_processed("ev100")),
    ("unprocessed_events", lambda t: t.unprocessed_events(NOW, 10)),
    ("get_events", lambda t: t.get_events(["ev1", "ev2"])),
    ("event_generation", lambda t: t.event_generation(["ev1", "ev2"])),
    ("events by name", lambda t: t.list_events("e/3", 10)),
    ("recent events", lambda t: t.list_events(None, 10)),
    ("flow state", lambda t: (t.get_flow("throttle:fn:9"),
                              t.put_flow("throttle:fn:9", text="2"))),
    ("batch", lambda t: (t.add_batch_event("batch:fn:7", "ev9"), t.take_batch("batch:fn:7"))),
    ("held_windows", lambda t: t.held_windows("app/fn3", 100)),
]


@pytest.mark.parametrize("optimistic", [False, True], ids=["strict", "guessing"])
@pytest.mark.parametrize(("name", "call"), HOT_CALLS, ids=[n for n, _ in HOT_CALLS])
def test_hot_query_uses_an_index(database: str, name: str, call: Callable[[PostgresTx], Any],
                                 optimistic: bool) -> None:
    statements = record(database, call, optimistic=optimistic)
    assert statements, f"{name} issued no SQL"
    for query, args in statements:
        for mode, plan in explain(database, query, args).items():
            scans = seq_scans(plan)
            assert not scans, (f"{name}: {mode} plan scans {scans}:\n{query}\n"
                               f"{json.dumps(plan, indent=1)[:3000]}")


def sorts(plan: Any) -> list[str]:
    found, stack = [], [plan]
    while stack:
        node = stack.pop()
        if node.get("Node Type") in ("Sort", "Incremental Sort", "Bitmap Heap Scan") and \
                node.get("Relation Name", "queue") == "queue":
            found.append(node["Node Type"])
        stack.extend(node.get("Plans", []))
    return found


def test_held_windows_walk_one_functions_entries_in_key_order(database: str) -> None:
    """A function's windows are read in the order of `queue_flow_windows` and the read stops at
    the limit: no sort, or bitmap read, of every window of the function (a filter the planner
    misjudged once made it read and sort them all: 15 ms for a function with 5,000 windows)."""
    statements = record(database, lambda t: t.held_windows("app/fn3", 10), optimistic=False)
    [(query, args)] = statements
    for mode, plan in explain(database, query, args).items():
        assert plan["Node Type"] == "Limit", (mode, plan)
        assert not sorts(plan["Plans"][0]), f"{mode}: {json.dumps(plan, indent=1)[:3000]}"
