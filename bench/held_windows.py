"""What flow control holds back: `Tx.held_windows` (a function page's "Held back by flow
control", `GET /v1/functions/{id}/pending`) next to a large queue, on SQLite or Postgres.

A fresh database (stepwell's own migrations) gets `--exec` exec items and `--windows` flow
windows over 20 functions (half batches of 3 events each, half debounces), inserted with SQL;
then `--calls` reads of 100 windows of one function (each function in turn) through the store,
p50 / p95 in ms. The read should not grow with the number of windows of a function (it walks
`queue_flow_windows` in key order and stops at the limit) nor with the exec items.

    .venv/bin/python bench/held_windows.py                          # SQLite, in a temp dir
    .venv/bin/python bench/held_windows.py --db postgresql://postgres@127.0.0.1:5432/EMPTY_DB

JSON on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from stepwell.store import open_store

FUNCTIONS = 20
KIND = "(CASE WHEN value % 2 = 0 THEN 'batch' ELSE 'debounce' END)"


def fill_sql(exec_items: int, windows: int) -> list[tuple[int, str]]:
    """(rows, INSERT ... FROM s) over a series `s(value)` of 1..rows."""
    return [
        (exec_items, "INSERT INTO queue (unique_key, kind, run_id, due_at, priority_at) "
                     "SELECT 'exec:run' || value, 'exec', 'run' || value, value, value FROM s"),
        (windows, f"INSERT INTO queue (unique_key, kind, due_at, priority_at, payload, event_id) "
                  f"SELECT {KIND} || ':app/fn' || (value % {FUNCTIONS}) || ':' || value, {KIND}, "
                  f"value, value, '{{\"function_id\":\"app/fn' || (value % {FUNCTIONS}) || "
                  f"'\",\"first_at\":1}}', 'ev' || value FROM s"),
        (windows * 3, f"INSERT INTO batch_events (batch_key, event_id) SELECT 'batch:app/fn' || "
                      f"((value % {windows}) % {FUNCTIONS}) || ':' || (value % {windows}), "
                      "'ev' || value FROM s"),
    ]


def fill(url: str, exec_items: int, windows: int) -> None:
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        for rows, sql in fill_sql(exec_items, windows):
            conn.execute("WITH RECURSIVE s(value) AS (SELECT 1 UNION ALL SELECT value + 1 "
                         f"FROM s WHERE value < {rows}) {sql}")
        conn.commit()
        conn.execute("ANALYZE")
        conn.close()
        return
    with psycopg.connect(url, autocommit=True) as pg:
        for rows, sql in fill_sql(exec_items, windows):
            pg.execute(f"WITH s(value) AS (SELECT generate_series(1, {rows})) {sql}".encode())
        pg.execute("ANALYZE")


async def measure(url: str, calls: int) -> list[float]:
    store = open_store(url)
    await store.open()
    times: list[float] = []
    try:
        for n in range(calls):
            function_id = f"app/fn{n % FUNCTIONS}"
            start = time.perf_counter()
            found = await store.read(lambda tx, fn=function_id: tx.held_windows(fn, 100))
            times.append((time.perf_counter() - start) * 1000)
            assert len(found) == 100, f"{function_id}: {len(found)} windows"
    finally:
        await store.close()
    return sorted(times)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    url = args.db or f"sqlite:///{Path(tempfile.mkdtemp(prefix='held-')) / 'held.db'}"
    store = open_store(url)          # stepwell's migrations
    await store.open()
    await store.close()
    fill(url, args.exec, args.windows)
    times = await measure(url, args.calls)
    return {"backend": url.split(":", 1)[0], "exec_items": args.exec, "windows": args.windows,
            "windows_per_function": args.windows // FUNCTIONS, "calls": args.calls,
            "p50_ms": round(statistics.median(times), 3),
            "p95_ms": round(times[int(len(times) * 0.95)], 3)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default=None, help="an empty database (default: a SQLite file)")
    parser.add_argument("--exec", type=int, default=1_000_000, help="exec items")
    parser.add_argument("--windows", type=int, default=100_000, help="batch and debounce windows")
    parser.add_argument("--calls", type=int, default=200)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
