"""The runs list filtered by what running runs are doing, at size (SQLite and Postgres).

    .venv/bin/python bench/run_states.py                       # 1,000,000 finished + 50,000 running
    .venv/bin/python bench/run_states.py --finished 100000 --running 20000 --backends sqlite

1. A fresh database (stepwell's migrations) gets real runs from the engine: `bench/growth.py`'s
   5 finished 3-step runs, and one run in each state the runs list filters by: sleeping (1 day),
   waiting for an event (1 day), invoking (a child that sleeps), retrying (a step failing with a
   1-day `RetryAfterError`). Their rows (runs, memos, step failures, waits, queue items) are the
   templates.
2. `--finished` copies of the finished runs (`growth.clone_batches`: ids, times over 30 days),
   and `--running` copies of the state runs, newest last: by default 1% each sleeping, waiting,
   invoking, retrying and 0.2% orphaned (a warning; a function no worker defines), the rest
   running (a sleep that is over); `--mix sparse` makes it 0.1% each (a filter then reads
   far more runs than it shows), `--mix dense` 40% sleeping, 10% waiting and 10% retrying
   (filters that match most running runs). Postgres then gets VACUUM ANALYZE (what autovacuum does
   after a bulk load); SQLite keeps no statistics (stepwell never runs ANALYZE).
3. The dashboard's runs list through the service layer (`Service.find_runs`, what
   `GET /v1/runs` calls), `limit=100`, `outputs=false`, for each derived state, the first page
   and the page after it (its cursor); p50 / p95 of `--calls` calls each.

JSON on stdout and in bench/results/run-states-latest.json. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import growth
import growth_w3
import psycopg
import sw_bench

import stepwell
from stepwell.runtime.items import orphan_warning
from stepwell.runtime.scripts import new_id
from stepwell.service import Service
from stepwell.service_runs import RunFilters

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PG_BASE = "postgresql://postgres@127.0.0.1:5432"
STATES = ("sleeping", "waiting", "invoking", "retrying", "orphaned")
# The share of running runs in each state, per `--mix`.
MIXES = {
    "sparse": dict.fromkeys(STATES, 0.001),
    "some": {"sleeping": 0.01, "waiting": 0.01, "invoking": 0.01, "retrying": 0.01,
             "orphaned": 0.002},
    "dense": {"sleeping": 0.40, "waiting": 0.10, "retrying": 0.10},
}
TABLES = ("runs", "memos", "step_failures", "waits", "queue")


def states_app() -> stepwell.App:
    app = stepwell.App("states")

    @app.function(id="nap", trigger="states/nap")
    async def nap(ctx: stepwell.Context, step: stepwell.Step) -> None:
        await step.sleep("nap", "1d")

    @app.function(id="approve", trigger="states/approve")
    async def approve(ctx: stepwell.Context, step: stepwell.Step) -> None:
        await step.wait_for_event("approval", event="states/approved", match="data.order",
                                  timeout="1d")

    @app.function(id="parent", trigger="states/parent")
    async def parent(ctx: stepwell.Context, step: stepwell.Step) -> None:
        await step.invoke("child", function=nap, data={}, timeout="2d")

    @app.function(id="flaky", trigger="states/flaky", retries=3)
    async def flaky(ctx: stepwell.Context, step: stepwell.Step) -> None:
        def fail() -> None:
            raise stepwell.RetryAfterError("warming up", "1d")
        await step.run("charge", fail)

    return app


async def seed_states(db: str) -> dict[str, str]:
    """One real run per state; its id by state."""
    async with stepwell.Engine(states_app(), db=db, retention=None,
                               check_determinism=False) as engine:
        service = Service(engine)
        ids = {name: await engine.send(f"states/{event}", {"order": "o-1"}) for name, event in
               (("sleeping", "nap"), ("waiting", "approve"), ("invoking", "parent"),
                ("retrying", "flaky"))}
        out: dict[str, str] = {}
        deadline = time.monotonic() + 60
        while len(out) < len(ids):
            if time.monotonic() > deadline:
                raise SystemExit(f"seed runs never reached their states: {out}")
            for name, event_id in ids.items():
                [run] = await engine.runs(event_id=event_id)
                state = (await service.get_run(run.id))["state"]
                if state.get("filter") == name:
                    out[name] = run.id
            await asyncio.sleep(0.05)
    return out


def table_rows(conn: Any, mark: str, table: str, run_id: str) -> tuple[list[str], list[Any]]:
    column = "id" if table == "runs" else "run_id"
    cur = conn.execute(f"SELECT * FROM {table} WHERE {column} = {mark}", (run_id,))
    names = [d[0] for d in cur.description]
    return names, [list(row) for row in cur.fetchall()]


def clone_running(conn: Any, mark: str, templates: dict[str, str], count: int, mix: str,
                  start_ms: int, rng: random.Random) -> dict[str, int]:
    """`count` running runs copied from the state templates; how many of each."""
    shares = MIXES[mix]
    rows: dict[str, tuple[list[str], list[Any]]] = {}
    made = dict.fromkeys(("running", *STATES), 0)
    batches: dict[str, list[tuple[Any, ...]]] = {t: [] for t in TABLES}
    names_of: dict[str, list[str]] = {}
    for i in range(count):
        roll, state = rng.random(), "running"
        for name, share in shares.items():
            if roll < share:
                state = name
                break
            roll -= share
        made[state] += 1
        template = templates["sleeping" if state in ("running", "orphaned") else state]
        new = new_id()
        created = start_ms + i * 10
        for table in TABLES:
            names, found = rows.setdefault(f"{template}:{table}",
                                           table_rows(conn, mark, table, template))
            keep = [j for j, n in enumerate(names) if not (table in ("waits", "queue")
                                                            and n == "id")]
            names_of[table] = [names[j] for j in keep]
            for row in found:
                values = {n: (v.replace(template, new) if isinstance(v, str) else v)
                          for n, v in zip(names, row, strict=True)}
                if table == "runs":
                    values.update(created_at=created, started_at=created + 1)
                    if state == "orphaned":     # its function is defined nowhere
                        values["warnings"] = json.dumps([orphan_warning("states/gone")])
                        values["function_id"] = "states/gone"
                if table == "memos" and state == "running" and values["kind"] == "sleep":
                    values["due_at"] = created + 5       # the sleep is over: plain running
                batches[table].append(tuple(values[names[j]] for j in keep))
    for table, batch in batches.items():
        if batch:
            names = names_of[table]
            sql = (f"INSERT INTO {table} ({', '.join(names)}) VALUES "
                   f"({', '.join([mark] * len(names))})")
            if mark == "?":
                conn.executemany(sql, batch)
            else:
                with conn.cursor() as cur:
                    cur.executemany(sql, batch)
    return made


async def timings(db: str, calls: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    async with stepwell.Engine(states_app(), db=db, retention=None, worker=False,
                               check_determinism=False) as engine:
        service = Service(engine)
        for state in STATES:
            for which in ("first page", "second page"):
                times: list[float] = []
                rows = 0
                cursor = None
                if which == "second page":
                    cursor = (await service.find_runs(RunFilters(status=state, limit=100),
                                                      outputs=False))[1]
                    if cursor is None:
                        continue
                for _ in range(calls):
                    began = time.perf_counter()
                    page, _next = await service.find_runs(
                        RunFilters(status=state, limit=100, cursor=cursor), outputs=False)
                    times.append((time.perf_counter() - began) * 1000)
                    rows = len(page)
                times.sort()
                out[f"{state}, {which}"] = {
                    "p50_ms": round(statistics.median(times), 2),
                    "p95_ms": round(times[int(0.95 * (len(times) - 1))], 2), "rows": rows}
                print(f"  {state}, {which}: {out[f'{state}, {which}']}", file=sys.stderr)
    return out


async def bench_sqlite(args: argparse.Namespace, start_ms: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "states.db"
        db = f"sqlite:///{path}"
        await growth.seed(db)
        filled = growth.fill(path, args.finished, start_ms, random.Random(1))
        templates = await seed_states(db)
        conn = sqlite3.connect(path)
        with conn:
            made = clone_running(conn, "?", templates, args.running, args.mix,
                                 start_ms + 31 * growth.DAY_MS, random.Random(2))
        conn.close()
        print(f"sqlite: filled {args.finished} in {filled:.0f} s, running {made}",
              file=sys.stderr)
        return {"running": made, "pages": await timings(db, args.calls)}


async def bench_postgres(args: argparse.Namespace, start_ms: int) -> dict[str, Any]:
    name = "stepwell_run_states"
    sw_bench._fresh_postgres(PG_BASE, name)
    url = f"{PG_BASE}/{name}"
    try:
        await growth.seed(url)
        filled = growth_w3.fill(url, args.finished, start_ms, random.Random(1))
        templates = await seed_states(url)
        with psycopg.connect(url) as conn:
            made = clone_running(conn, "%s", templates, args.running, args.mix,
                                 start_ms + 31 * growth.DAY_MS, random.Random(2))
        growth_w3.vacuum(url)
        print(f"postgres: filled {args.finished} in {filled:.0f} s, running {made}",
              file=sys.stderr)
        return {"running": made, "pages": await timings(url, args.calls)}
    finally:
        sw_bench._drop_postgres(PG_BASE, name)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    start_ms = int(time.time() * 1000) - 40 * growth.DAY_MS
    out: dict[str, Any] = {"finished": args.finished, "running": args.running,
                           "mix": args.mix, "calls": args.calls}
    for backend in args.backends.split(","):
        out[backend] = await (bench_sqlite if backend == "sqlite" else bench_postgres)(
            args, start_ms)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--finished", type=int, default=1_000_000)
    parser.add_argument("--running", type=int, default=50_000)
    parser.add_argument("--mix", choices=sorted(MIXES), default="some")
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--backends", default="sqlite,postgres")
    result = asyncio.run(main(parser.parse_args()))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "run-states-latest.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
