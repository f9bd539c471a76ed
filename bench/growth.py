"""Growth: the runs list, disk use and retention with a million finished runs (SQLite).

1. A fresh SQLite database (stepwell's own migrations) gets a few real runs of 3-step functions
   from the engine; their rows (event, run, 3 memos) are the templates.
2. `--runs` (1,000,000) copies of them, with new ids and times spread over 30 days, are inserted
   with the store's own column lists in transactions of 50,000 (the fill alone runs with
   `synchronous=OFF`; it is setup, not measured). 5 functions, 1% of the runs failed.
3. The dashboard's runs list through the service layer (`Service.list_runs_with_events`, what
   `GET /v1/runs` calls), `limit=100`, `outputs=false` as the dashboard asks: the first page,
   one function, one function and a status (Failed: rare, Completed: nearly all), one status;
   p50 / p95 of `--calls` calls each. Measured twice in the same run: without the indexes of
   migration 0011 (dropped: the schema before it) and with them.
4. Bytes per finished 3-step run on disk (database file after a WAL checkpoint / runs).
5. Retention: `prune` (the store's, as `upkeep.prune` calls it, batches of 1,000) deletes the
   oldest `--prune` runs (default 5% of them; all of a cutoff's older half took far too long,
   see bench/README.md); the report gives its rate, the file size, the free pages SQLite keeps
   for reuse and the file size after inserting as many new runs again (free pages are reused:
   the file does not grow).

    .venv/bin/python bench/growth.py                 # 1,000,000 runs: a few minutes
    .venv/bin/python bench/growth.py --runs 100000

JSON on stdout and in bench/results/growth-latest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import stepwell
from stepwell.runtime import upkeep
from stepwell.runtime.scripts import new_id
from stepwell.service import Service
from stepwell.store import open_store

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
FUNCTIONS = 5
DAY_MS = 86_400_000
# The runs indexes before migration 0011 (0001, 0006), to measure the list without it.
BEFORE_0011 = """
DROP INDEX IF EXISTS runs_by_time; DROP INDEX IF EXISTS runs_by_function_status_time;
DROP INDEX IF EXISTS runs_by_function; DROP INDEX IF EXISTS runs_by_status;
DROP INDEX IF EXISTS runs_by_function_status;
CREATE INDEX runs_by_function ON runs (function_id, created_at);
CREATE INDEX runs_by_status ON runs (status, created_at);
CREATE INDEX runs_by_function_status ON runs (function_id, status);
"""


def make_app() -> stepwell.App:
    app = stepwell.App("growth")

    async def body(i: int, n: int) -> dict[str, int]:
        return {"i": i, "n": n, "total": i * n}

    for f in range(FUNCTIONS):
        @app.function(id=f"fn-{f}", trigger=f"growth/fn-{f}", retries=0)
        async def work(ctx: stepwell.Context, step: stepwell.Step) -> dict[str, int]:
            total = 0
            for n in range(3):
                total += (await step.run(f"step-{n}", body, ctx.event.data["i"], n))["total"]
            return {"total": total}
    return app


async def seed(db: str) -> None:
    async with stepwell.Engine(make_app(), db=db) as engine:
        for f in range(FUNCTIONS):
            await engine.send(f"growth/fn-{f}", {"i": f, "order": f"order-{f}", "user": "u-1"})
        await engine.idle()


def columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


Rows = list[tuple[Any, ...]]


def templates(conn: Any, cols: tuple[list[str], list[str], list[str]]) -> tuple[
        list[dict[str, Any]], dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """The seeded completed runs (one per function), their events and their memos, as rows by
    column name (`conn`: a sqlite3 or psycopg connection; both backends share this)."""
    ev_cols, run_cols, memo_cols = cols
    runs = [dict(zip(run_cols, r, strict=True)) for r in conn.execute(
        f"SELECT {', '.join(run_cols)} FROM runs WHERE status='completed' LIMIT {FUNCTIONS}")]
    events = {r[0]: dict(zip(ev_cols, r, strict=True)) for r in conn.execute(
        f"SELECT {', '.join(ev_cols)} FROM events")}
    memos: dict[str, list[dict[str, Any]]] = {}
    for r in conn.execute(f"SELECT {', '.join(memo_cols)} FROM memos"):
        row = dict(zip(memo_cols, r, strict=True))
        memos.setdefault(row["run_id"], []).append(row)
    return runs, events, memos


def clone_batches(conn: Any, cols: tuple[list[str], list[str], list[str]], count: int,
                  start_ms: int, rng: random.Random, chunk: int = 50_000
                  ) -> Iterator[list[tuple[str, list[str], Rows]]]:
    """`count` finished runs cloned from the seeded ones (new ids, times spread over 30 days,
    1% failed), `chunk` runs at a time: per chunk, (table, columns, rows) of events, runs and
    memos, for the caller to write its backend's way."""
    ev_cols, run_cols, memo_cols = cols
    runs, events, memos = templates(conn, cols)
    for offset in range(0, count, chunk):
        ev_rows: Rows = []
        run_rows: Rows = []
        memo_rows: Rows = []
        for i in range(offset, min(count, offset + chunk)):
            template = runs[i % len(runs)]
            created = start_ms + int(i * 30 * DAY_MS / count)
            event = dict(events[template["event_id"]], id=new_id(), received_at=created,
                         ts=created)
            run = dict(template, id=new_id(), event_id=event["id"], created_at=created,
                       started_at=created + 1, ended_at=created + 9)
            if rng.random() < 0.01:
                run.update(status="failed", output=None,
                           error=json.dumps({"name": "Error", "message": "boom"}))
            ev_rows.append(tuple(event[c] for c in ev_cols))
            run_rows.append(tuple(run[c] for c in run_cols))
            for memo in memos[template["id"]]:
                memo_rows.append(tuple({**memo, "run_id": run["id"], "started_at": created + 2,
                                        "ended_at": created + 3}[c] for c in memo_cols))
        yield [("events", ev_cols, ev_rows), ("runs", run_cols, run_rows),
               ("memos", memo_cols, memo_rows)]


def fill(path: Path, count: int, start_ms: int, rng: random.Random) -> float:
    """Insert `count` finished runs cloned from the seeded ones; seconds taken."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous=OFF")
    cols = (columns(conn, "events"), columns(conn, "runs"), columns(conn, "memos"))
    began = time.perf_counter()
    for batch in clone_batches(conn, cols, count, start_ms, rng):
        with conn:
            for table, names, rows in batch:
                conn.executemany(f"INSERT INTO {table} ({', '.join(names)}) VALUES "
                                 f"({', '.join('?' * len(names))})", rows)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - began


def pragmas(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        return {name: int(conn.execute(f"PRAGMA {name}").fetchone()[0])
                for name in ("page_size", "page_count", "freelist_count", "auto_vacuum")}
    finally:
        conn.close()


def file_bytes(path: Path) -> int:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


async def list_timings(db: str, calls: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    async with stepwell.Engine(make_app(), db=db, retention=None) as engine:
        service = Service(engine)
        pages = {
            "first page": {},
            "function": {"function_id": "growth/fn-2"},
            "function + Failed": {"function_id": "growth/fn-2", "status": "Failed"},
            "function + Completed": {"function_id": "growth/fn-2", "status": "Completed"},
            "status Failed": {"status": "Failed"},
        }
        for label, query in pages.items():
            times = []
            rows = 0
            for _ in range(calls):
                began = time.perf_counter()
                rows = len(await service.list_runs_with_events(limit=100, outputs=False,
                                                               **query))
                times.append((time.perf_counter() - began) * 1000)
            times.sort()
            out[label] = {"p50_ms": round(statistics.median(times), 2),
                          "p95_ms": round(times[int(0.95 * (len(times) - 1))], 2), "rows": rows}
    return out


def drop_0011(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(BEFORE_0011)
    conn.execute("ANALYZE")
    conn.close()


def create_0011(path: Path) -> None:
    sql = (Path(stepwell.__file__).parent / "store" / "migrations" / "sqlite" /
           "0011_runs_list.sql").read_text()
    conn = sqlite3.connect(path)
    conn.executescript(sql)
    conn.execute("ANALYZE")
    conn.close()


def report(label: str, value: Any) -> None:
    """Progress on stderr as each phase ends (a 1M run takes minutes)."""
    print(f"{label}: {json.dumps(value)} (load {os.getloadavg()[0]:.1f})", file=sys.stderr,
          flush=True)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(11)
    out: dict[str, Any] = {"runs": args.runs, "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="sw-growth-") as tmp:
        path = Path(tmp) / "growth.db"
        db = f"sqlite:///{path}"
        await seed(db)
        out["empty"] = await list_timings(db, args.calls)
        report("empty", out["empty"])
        start = int(time.time() * 1000) - 31 * DAY_MS
        out["fill_seconds"] = round(fill(path, args.runs, start, rng), 1)
        report("fill_seconds", out["fill_seconds"])
        drop_0011(path)
        size = file_bytes(path)
        out["file_bytes_without_0011"] = size
        out["bytes_per_run_without_0011"] = round(size / args.runs)
        for rep in (1, 2):          # before / after back to back, twice
            drop_0011(path)
            out[f"list_without_0011_{rep}"] = await list_timings(db, args.calls)
            report(f"list_without_0011_{rep}", out[f"list_without_0011_{rep}"])
            create_0011(path)
            out[f"list_with_0011_{rep}"] = await list_timings(db, args.calls)
            report(f"list_with_0011_{rep}", out[f"list_with_0011_{rep}"])
        size = file_bytes(path)
        out["file_bytes"] = size
        out["bytes_per_run"] = round(size / args.runs)
        out["pragmas_full"] = pragmas(path)
        report("bytes_per_run", out["bytes_per_run"])
        # Retention: prune the older half as upkeep does, then refill as many.
        store = open_store(db)
        await store.open()
        cutoff = start + 15 * DAY_MS
        now = int(time.time() * 1000)
        pruned = 0
        began = time.perf_counter()
        target = args.prune if args.prune is not None else args.runs // 20
        while pruned < target:
            runs, _events, _flows = await store.write(
                lambda tx: tx.prune(cutoff, now, upkeep.PRUNE_BATCH))
            pruned += runs
            if runs == 0:
                break
        seconds = time.perf_counter() - began
        out["prune"] = {"runs_deleted": pruned, "seconds": round(seconds, 1),
                        "runs_per_s": round(pruned / max(seconds, 1e-9))}
        report("prune", out["prune"])
        await store.close()
        out["after_prune"] = {"file_bytes": file_bytes(path), **pragmas(path)}
        report("after_prune", out["after_prune"])
        fill(path, pruned, start + 31 * DAY_MS, rng)
        out["after_refill"] = {"file_bytes": file_bytes(path), **pragmas(path)}
        report("after_refill", out["after_refill"])
    out["load_after"] = os.getloadavg()
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--prune", type=int, default=None,
                        help="runs to prune (default: 5%% of --runs)")
    result = asyncio.run(main(parser.parse_args()))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "growth-latest.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
