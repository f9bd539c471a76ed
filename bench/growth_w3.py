"""Growth on Postgres: W3 and event-to-start with a million finished runs vs an empty database,
bytes per finished run, and what retention gives back.

    .venv/bin/python bench/growth_w3.py                  # 1,000,000 runs, Postgres
    .venv/bin/python bench/growth_w3.py --runs 100000 --repeat 2

1. A fresh Postgres database (stepwell's migrations) gets a few real runs of 3-step functions
   from the engine (`bench/growth.py`'s app); their rows (event, run, 3 memos) are the
   templates. `--runs` copies with new ids, times spread over 30 days, 5 functions, 1% failed,
   go in with COPY (setup, not measured), then VACUUM ANALYZE (what autovacuum does after a
   bulk load).
2. Bytes per finished run: `pg_database_size` after the fill minus before, over the runs.
3. W3 (`bench/w3.py`'s child: 200 senders, 3 async steps, --w3 runs) and event-to-start
   (--latency single sends one after another, each waiting for its run to start), each in a
   fresh process, on an empty database and on the full one, interleaved, --repeat times.
4. Retention: `Tx.prune` in the engine's batches (`upkeep.PRUNE_BATCH`) deletes the oldest
   --prune runs (5%); the table sizes after it, after a plain VACUUM (what autovacuum runs:
   the space becomes reusable, the files do not shrink), and after inserting as many runs
   again (they reuse it).

JSON on stdout and in bench/results/growth-w3-latest.json. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import growth  # noqa: E402
import sw_bench  # noqa: E402

import stepwell  # noqa: E402
from stepwell.runtime import upkeep  # noqa: E402

PG_BASE = "postgresql://postgres@127.0.0.1:5432"
TABLES = ("events", "runs", "memos", "queue", "waits")


def columns(conn: psycopg.Connection[Any], table: str) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = %s "
        "AND is_generated = 'NEVER' AND is_identity = 'NO' ORDER BY ordinal_position",
        (table,))]


def fill(url: str, count: int, start_ms: int, rng: random.Random) -> float:
    """COPY `count` finished runs cloned from the seeded ones (`growth.clone_batches`); seconds
    taken."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        cols = (columns(conn, "events"), columns(conn, "runs"), columns(conn, "memos"))
        began = time.perf_counter()
        for batch in growth.clone_batches(conn, cols, count, start_ms, rng):
            with conn.transaction():
                for table, names, rows in batch:
                    with conn.cursor().copy(
                            f"COPY {table} ({', '.join(names)}) FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
        return time.perf_counter() - began


def sizes(url: str) -> dict[str, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        out = {t: int(conn.execute("SELECT pg_total_relation_size(%s)", (t,)).fetchone()[0])
               for t in TABLES}
        out["database"] = int(conn.execute(
            "SELECT pg_database_size(current_database())").fetchone()[0])
    return out


def vacuum(url: str, analyze: bool = True) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)" if analyze else "VACUUM")


def measure(url: str | None, w3: int, latency: int) -> dict[str, Any]:
    cmd = [sys.executable, str(HERE / "w3.py"), "--child", "postgres", "--runs", str(w3),
           "--latency", str(latency)]
    if url is not None:
        cmd += ["--url", url]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


async def seed(url: str) -> None:
    await growth.seed(url)


def main(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(11)
    name = "stepwell_bench_growth_w3"
    url = f"{PG_BASE}/{name}"
    out: dict[str, Any] = {"runs": args.runs, "load_before": os.getloadavg()}
    sw_bench._fresh_postgres(PG_BASE, name)
    try:
        asyncio.run(seed(url))
        vacuum(url)
        before = sizes(url)
        start = int(time.time() * 1000) - 31 * growth.DAY_MS
        out["fill_seconds"] = round(fill(url, args.runs, start, rng), 1)
        vacuum(url)
        full = sizes(url)
        out["sizes_full"] = full
        out["bytes_per_run"] = round((full["database"] - before["database"]) / args.runs)
        out["bytes_per_run_by_table"] = {
            t: round((full[t] - before[t]) / args.runs) for t in ("events", "runs", "memos")}
        print(json.dumps({k: out[k] for k in ("fill_seconds", "bytes_per_run")}), flush=True)
        # The dashboard's pages at this size (issue 16): the runs list as growth.py times it
        # on SQLite, and one run's page (the REST run view).
        out["dashboard"] = asyncio.run(growth.list_timings(url, args.list_calls))
        out["dashboard"]["run page"] = asyncio.run(run_page_timing(url, args.list_calls))
        print(json.dumps({"dashboard": out["dashboard"]}), flush=True)
        if args.list_only:
            return out
        cells: dict[str, list[dict[str, Any]]] = {"empty": [], "full": []}
        for _ in range(args.repeat):
            cells["empty"].append(measure(None, args.w3, args.latency))
            cells["full"].append(measure(url, args.w3, args.latency))
            print(json.dumps({k: v[-1] for k, v in cells.items()}), flush=True)
        out["measurements"] = cells
        out["medians"] = {k: {m: round(statistics.median(c[m] for c in v), 3)
                              for m in ("runs_per_s", "cpu_ms_per_run", "start_p50_ms")}
                          for k, v in cells.items()}
        out["full_vs_empty"] = {m: round(out["medians"]["full"][m] / out["medians"]["empty"][m],
                                         3) for m in ("runs_per_s", "cpu_ms_per_run",
                                                      "start_p50_ms")}
        out["prune"] = asyncio.run(prune(url, start, args.prune or args.runs // 20))
        out["after_prune"] = sizes(url)
        vacuum(url, analyze=False)
        out["after_vacuum"] = sizes(url)
        fill(url, out["prune"]["runs_deleted"], start + 31 * growth.DAY_MS, rng)
        out["after_refill"] = sizes(url)
    finally:
        sw_bench._drop_postgres(PG_BASE, name)
    out["load_after"] = os.getloadavg()
    return out


async def run_page_timing(url: str, calls: int) -> dict[str, float]:
    """`GET /v1/runs/{id}`'s data (Service.get_run) for runs picked across the table."""
    with psycopg.connect(url) as conn:
        ids = [r[0] for r in conn.execute(
            "SELECT id FROM runs TABLESAMPLE SYSTEM (1) LIMIT %s", (calls,))]
    times = []
    async with stepwell.Engine(growth.make_app(), db=url, retention=None) as engine:
        service = growth.Service(engine)
        for run_id in ids:
            began = time.perf_counter()
            await service.get_run(run_id)
            times.append((time.perf_counter() - began) * 1000)
    times.sort()
    return {"p50_ms": round(statistics.median(times), 2),
            "p95_ms": round(times[int(0.95 * (len(times) - 1))], 2), "rows": len(times)}


async def prune(url: str, start: int, target: int) -> dict[str, Any]:
    store = stepwell.Engine(growth.make_app(), db=url, retention=None)._worker.store
    await store.open()
    cutoff, now = start + 15 * growth.DAY_MS, int(time.time() * 1000)
    pruned, began = 0, time.perf_counter()
    try:
        while pruned < target:
            runs, _events, _flows = await store.write(
                lambda tx: tx.prune(cutoff, now, upkeep.PRUNE_BATCH))
            pruned += runs
            if runs == 0:
                break
    finally:
        await store.close()
    seconds = time.perf_counter() - began
    return {"runs_deleted": pruned, "seconds": round(seconds, 1),
            "runs_per_s": round(pruned / max(seconds, 1e-9))}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--w3", type=int, default=5000, help="W3 runs per measurement")
    parser.add_argument("--latency", type=int, default=200,
                        help="single sends per measurement (event-to-start)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--list-calls", type=int, default=20,
                        help="calls per dashboard page timed")
    parser.add_argument("--list-only", action="store_true",
                        help="stop after the dashboard pages (no W3, latency or retention)")
    parser.add_argument("--prune", type=int, default=None,
                        help="runs to prune (default: 5%% of --runs)")
    result = main(parser.parse_args())
    growth.RESULTS.mkdir(exist_ok=True)
    (growth.RESULTS / "growth-w3-latest.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
