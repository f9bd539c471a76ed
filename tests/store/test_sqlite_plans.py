"""The hot queries use indexes: nothing scans all runs, queue items or waits.

Each Tx method on the hot path is called against a real SQLite file with tracing on; every
statement it issues is then run through EXPLAIN QUERY PLAN.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stepwell.core.models import Event, Memo
from stepwell.store.base import RunQuery, RunRow, WaitRow
from stepwell.store.sqlite import migrate
from stepwell.store.sqlite_tx import SqliteTx

HOT_TABLES = ("runs", "queue", "waits", "memos", "step_failures", "events")


@pytest.fixture
def tx(tmp_path: Path) -> SqliteTx:
    conn = sqlite3.connect(tmp_path / "plans.db", isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")  # test data only; the plans don't depend on it
    migrate(conn)
    t = SqliteTx(conn)
    for i in range(50):  # some rows, so the planner has statistics to work with
        t.insert_event(Event(f"e/{i % 5}", {"i": i}, id=f"ev{i}", ts=i), i, 0, processed=True)
        t.insert_run(RunRow(f"run{i}", "app/fn", [f"ev{i}"], i))
        t.enqueue("exec", f"exec:run{i}", i, run_id=f"run{i}")
        t.insert_wait(WaitRow(f"run{i}", "wait", "e/1", 10**12, "h", f"data.id={i}", None, {}))
        t.insert_memo(f"run{i}", Memo("h", "s", "run", 0, data=i))
        if i % 5 == 0:      # sleeps, past and future, and unresolved waits
            t.insert_memo(f"run{i}", Memo("z", "nap", "sleep", 1, due_at=i * 10))
        if i % 7 == 0:
            t.insert_memo(f"run{i}", Memo("w", "wait", "wait", 1, due_at=10**12, pending=True))
        kind = ("batch", "debounce")[i % 2]
        t.enqueue(kind, f"{kind}:app/fn{i % 5}:{i}", i, event_id=f"ev{i}",
                  payload={"function_id": f"app/fn{i % 5}", "first_at": i})
        t.add_batch_event(f"{kind}:app/fn{i % 5}:{i}", f"ev{i}")
    conn.execute("ANALYZE")
    return t


HOT_CALLS: list[tuple[str, Callable[[SqliteTx], Any]]] = [
    ("claim_due", lambda t: t.claim_due(100, "w", 10**12, 10)),
    ("prune", lambda t: t.prune(100, 100, 500)),
    ("count_runs", lambda t: t.count_runs("app/fn", "queued", 1001)),
    ("claim_timers", lambda t: t.claim_timers(100, "w", 10**12, 10)),
    ("next_timer_at", lambda t: t.next_timer_at()),
    ("release_item (timer)", lambda t: t.release_item(1, "w", 200, 100, timer=True)),
    ("load_run_states", lambda t: t.load_run_states(["run3", "run4", "run5"])),
    ("renew_lease", lambda t: t.renew_lease(1, "w", 10**12)),
    ("renew_leases", lambda t: t.renew_leases("w", 10**12, [1, 2, 3])),
    ("release_item", lambda t: t.release_item(1, "w", 200, 100)),
    ("release_expired_leases", lambda t: t.release_expired_leases(10)),
    ("next_due_at", lambda t: t.next_due_at()),
    ("count_ready", lambda t: t.count_ready(100)),
    ("slots_free_now", lambda t: t.slots_free_now([("c:fn:3", 5), ("c:x", 2)], 100)),
    ("enqueue", lambda t: t.enqueue("exec", "exec:run3", 5, run_id="run3")),
    ("find_waits", lambda t: t.find_waits("e/1", ["data.id=3", "name=\"e/1\""])),
    ("delete_step_wait", lambda t: t.delete_step_wait("run3", "h")),
    ("load_run_state", lambda t: t.load_run_state("run3")),
    ("runs by event", lambda t: t.list_runs(event_id="ev3")),
    ("runs by function", lambda t: t.list_runs(function_id="app/fn", limit=5)),
    ("runs by status", lambda t: t.list_runs(status="queued", limit=5)),
    ("runs sleeping", lambda t: t.search_runs(RunQuery(doing="sleeping", now=100))),
    ("runs waiting", lambda t: t.search_runs(RunQuery(doing="waiting", now=100))),
    ("runs invoking", lambda t: t.search_runs(RunQuery(doing="invoking", now=100))),
    ("runs retrying", lambda t: t.search_runs(RunQuery(doing="retrying", now=100))),
    ("runs orphaned", lambda t: t.search_runs(RunQuery(doing="orphaned", now=100))),
    ("insert_memo", lambda t: t.insert_memo("run3", Memo("h2", "s", "run", 1, data=1))),
    ("resolve_memo", lambda t: t.resolve_memo("run3", "h", {"data": 1}, 5)),
    ("start_run", lambda t: t.start_run("run3", 5)),
    ("finish_run", lambda t: t.finish_run("run3", "completed", 6, output=1)),
    ("delete_items", lambda t: t.delete_items(run_id="run3")),
    ("delete_run_waits", lambda t: t.delete_run_waits("run4")),
    ("unprocessed_events", lambda t: t.unprocessed_events(100, 10)),
    ("mark_event_processed", lambda t: t.mark_event_processed("ev3")),
    ("event_generation", lambda t: t.event_generation(["ev3", "ev4"])),
    ("held_windows", lambda t: t.held_windows("app/fn3", 100)),
]


@pytest.mark.parametrize(("name", "call"), HOT_CALLS, ids=[n for n, _ in HOT_CALLS])
def test_hot_query_uses_an_index(tx: SqliteTx, name: str, call: Callable[[SqliteTx], Any]
                                 ) -> None:
    statements: list[str] = []
    tx.c.set_trace_callback(statements.append)
    call(tx)
    tx.c.set_trace_callback(None)
    assert statements, f"{name} issued no SQL"
    for sql in statements:
        head = sql.lstrip().split()[0].upper()
        if head not in ("SELECT", "UPDATE", "DELETE", "INSERT"):
            continue
        plan = [row[3] for row in tx.c.execute(f"EXPLAIN QUERY PLAN {sql}")]
        # An ordered walk of an index under LIMIT reads only the first rows: that is fine.
        limited = " LIMIT " in sql.upper()
        scans = [p for p in plan if p.startswith("SCAN ") and
                 any(p.split()[1] == table for table in HOT_TABLES) and
                 not (limited and "INDEX" in p)]
        assert not scans, f"{name}: full scan {scans} in plan {plan} for {sql}"


LIST_CALLS: list[tuple[str, Callable[[SqliteTx], Any]]] = [
    ("first page", lambda t: t.list_runs(limit=100)),
    ("by function", lambda t: t.list_runs(function_id="app/fn", limit=100)),
    ("by status", lambda t: t.list_runs(status="queued", limit=100)),
    ("by function and status", lambda t: t.list_runs(function_id="app/fn", status="queued",
                                                     limit=100)),
]


@pytest.mark.parametrize(("name", "call"), LIST_CALLS, ids=[n for n, _ in LIST_CALLS])
def test_runs_list_walks_an_index_in_its_order(tx: SqliteTx, name: str,
                                               call: Callable[[SqliteTx], Any]) -> None:
    """The runs list (newest first) reads only its page: an index in the list's order, no
    sort of every matching run (at 1,000,000 runs that sort took ~270 ms; bench/growth.py)."""
    statements: list[str] = []
    tx.c.set_trace_callback(statements.append)
    call(tx)
    tx.c.set_trace_callback(None)
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert selects, f"{name} issued no SELECT"
    for sql in selects:
        plan = [row[3] for row in tx.c.execute(f"EXPLAIN QUERY PLAN {sql}")]
        assert any("USING INDEX" in p or "USING COVERING INDEX" in p for p in plan), plan
        assert not [p for p in plan if "TEMP B-TREE" in p], f"{name}: sorts: {plan}"


def test_held_windows_walk_one_functions_entries_in_key_order(tx: SqliteTx) -> None:
    """A function's batch and debounce windows are read in the order of `queue_flow_windows`,
    stopping at the limit: no sort of all of the function's windows."""
    statements: list[str] = []
    tx.c.set_trace_callback(statements.append)
    found = tx.held_windows("app/fn3", 3)
    tx.c.set_trace_callback(None)
    assert [w.key for w in found] == ["18", "28", "38"]    # batches (even i), in key order
    [sql] = statements
    plan = [row[3] for row in tx.c.execute(f"EXPLAIN QUERY PLAN {sql}")]
    assert any("USING INDEX queue_flow_windows" in p for p in plan), plan
    assert not [p for p in plan if "TEMP B-TREE" in p], plan
