"""stepwell side of the benchmark: one workload, one fresh process, one JSON result.

    .venv/bin/python bench/sw_bench.py --workload W3 -n 2000 --dir /tmp/x --out r.json

Embedded engine on SQLite with `fsync=True` (`PRAGMA journal_mode=WAL`,
`PRAGMA synchronous=FULL`). Options (`--option KEY=VALUE`): `max_concurrency` (default 5000),
`sync_steps=1` (step bodies as plain `def`, run on the step thread pool, as `bench/core.py` did),
`fsync=0` (synchronous=NORMAL, for comparison only: not a durable setting), `tune_gc=0` (leave
the interpreter's GC thresholds alone, see Engine(tune_gc=)), `steps=N` (override
the step count of W1/W3/W10/latency, used by `bench/core.py`), `db=postgres` with
`pg_url=postgresql://postgres@127.0.0.1:5432` (a fresh database per process; the server's
synchronous_commit and fsync are read back and reported).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import common
from common import MARKS, Marks

import stepwell


def make_app(workload: str, *, sync_steps: bool, steps: int | None = None,
             version: str | None = None) -> stepwell.App:
    """The functions of one workload. Bodies record instants in `MARKS` (see `common`).
    `version`: `App(version=...)`, so the engine is a versioned worker (bench/versions.py)."""
    app = stepwell.App("bench", version=version)
    m = MARKS

    async def body_async(i: int, n: int) -> int:
        return i + n

    def body_sync(i: int, n: int) -> int:
        return i + n

    body: Any = body_sync if sync_steps else body_async

    if workload in common.STEPS:
        n_steps = common.STEPS[workload] if steps is None else steps

        @app.function(id="work", trigger="bench/go", retries=0)
        async def work(ctx: stepwell.Context, step: stepwell.Step) -> int:
            i = ctx.event.data["i"]
            m.start(i)
            total = 0
            for n in range(n_steps):
                total += await step.run(f"s{n}", body, i, n)
            m.finish(i)
            return total

    elif workload == "fanout":
        for k in range(common.FANOUT_FUNCTIONS):
            def define(k: int) -> None:
                @app.function(id=f"fan-{k}", trigger="bench/fan", retries=0)
                async def fan(ctx: stepwell.Context, step: stepwell.Step) -> int:
                    i = ctx.event.data["i"]
                    m.start((i, k))
                    out: int = await step.run("s0", body, i, k)
                    m.finish((i, k))
                    return out
            define(k)

    elif workload == "timers":
        @app.function(id="nap", trigger="bench/nap", retries=0)
        async def nap(ctx: stepwell.Context, step: stepwell.Step) -> None:
            i = ctx.event.data["i"]
            m.before.setdefault(i, time.perf_counter())
            await step.sleep("nap", common.TIMER_SLEEP_S)
            m.woke.setdefault(i, time.perf_counter())

    elif workload == "wakeup":
        @app.function(id="herd", trigger="bench/herd", retries=0)
        async def herd(ctx: stepwell.Context, step: stepwell.Step) -> None:
            i, due = ctx.event.data["i"], ctx.event.data["due"]
            m.before.setdefault(i, time.time())
            await step.sleep_until("herd", int(due * 1000))
            m.woke.setdefault(i, time.time())

    elif workload == "waits":
        @app.function(id="waiter", trigger="bench/wait", retries=0)
        async def waiter(ctx: stepwell.Context, step: stepwell.Step) -> None:
            i = ctx.event.data["id"]
            m.waiting.setdefault(i, time.perf_counter())
            got = await step.wait_for_event("resume", event="bench/resume", match="data.id",
                                            timeout="1h")
            now = time.perf_counter()
            if got is None or got.data.get("id") != i:
                m.bad.append(f"run {i} resumed with {got!r}")
            m.resumed.setdefault(i, now)

    elif workload == "memory":
        @app.function(id="warm", trigger="bench/warm", retries=0)
        async def warm(ctx: stepwell.Context, step: stepwell.Step) -> int:
            out: int = await step.run("s0", body, 0, 0)
            m.count += 1
            return out

        @app.function(id="sleeper", trigger="bench/sleep", retries=0)
        async def sleeper(ctx: stepwell.Context, step: stepwell.Step) -> None:
            m.count += 1
            await step.sleep("long", common.MEMORY_SLEEP_S)

    return app


async def run(args: Any) -> dict[str, Any]:
    opts = common.options(args)
    fsync = opts.get("fsync", "1") != "0"
    max_concurrency = int(opts.get("max_concurrency", "5000"))
    sync_steps = opts.get("sync_steps", "0") == "1"
    workload, n = args.workload, args.n
    steps = int(opts.get("steps", "0")) or common.STEPS.get(workload, 0)
    path = Path(args.dir) / "stepwell.db"
    postgres = opts.get("db", "sqlite") == "postgres"
    pg_base = opts.get("pg_url", "postgresql://postgres@127.0.0.1:5432")
    pg_name = f"stepwell_bench_sw_{os.getpid()}"
    pg_settings = _fresh_postgres(pg_base, pg_name) if postgres else {}
    db = f"{pg_base}/{pg_name}" if postgres else f"sqlite:///{path}"
    app = make_app(workload, sync_steps=sync_steps, steps=steps,
                   version=opts.get("version") or None)
    m: Marks = MARKS
    result: dict[str, Any]
    tune_gc = opts.get("tune_gc", "1") != "0"
    engine = stepwell.Engine(app, db=db, fsync=fsync, max_concurrency=max_concurrency,
                             tune_gc=tune_gc)
    try:
        result = await _workload(args, engine, workload, n, steps)
    finally:
        if postgres:
            _drop_postgres(pg_base, pg_name)
    if postgres:
        result["settings"] = {"db": "Postgres", **pg_settings,
                              "max_concurrency": max_concurrency}
    else:
        result["settings"] = {"db": "SQLite file", "journal_mode": _journal_mode(path),
                              "synchronous": "FULL" if fsync else "NORMAL",
                              "max_concurrency": max_concurrency}
    result["settings"]["step_bodies"] = "sync (thread pool)" if sync_steps else "async"
    result["settings"]["stepwell"] = str(Path(stepwell.__file__).parent)
    if m.bad:
        result["errors"] = m.bad[:5]
    return result


def _fresh_postgres(base: str, name: str) -> dict[str, str]:
    import psycopg

    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
        out = {}
        for setting in ("synchronous_commit", "fsync"):
            row = conn.execute(f"SHOW {setting}").fetchone()
            out[setting] = str(row[0]) if row else "?"
    return out


def _drop_postgres(base: str, name: str) -> None:
    import psycopg

    with contextlib.suppress(Exception), psycopg.connect(f"{base}/postgres",
                                                         autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _workload(args: Any, engine: stepwell.Engine, workload: str, n: int,
                    steps: int) -> dict[str, Any]:
    m: Marks = MARKS
    result: dict[str, Any]
    async with engine:
        if workload in common.STEPS:
            first = await common.drive(n, lambda i: engine.send("bench/go", {"i": i}),
                                       args.senders)
            await common.until(lambda: len(m.finished) == n, args.timeout, "runs to finish")
            result = common.throughput_result(n, steps, first)
            await engine.idle()
            done = await engine.runs(status="completed", limit=n + 10)
            if len(done) != n:
                m.bad.append(f"{len(done)} of {n} runs completed")
        elif workload == "fanout":
            first = await common.drive(n, lambda i: engine.send("bench/fan", {"i": i}),
                                       args.senders)
            total = n * common.FANOUT_FUNCTIONS
            await common.until(lambda: len(m.finished) == total, args.timeout,
                               "fan-out runs to finish")
            result = common.fanout_result(n, first)
        elif workload == "timers":
            first = await common.drive(n, lambda i: engine.send("bench/nap", {"i": i}),
                                       args.senders)
            await common.until(lambda: len(m.woke) == n, args.timeout, "sleepers to wake")
            result = common.timers_result(n, first, common.TIMER_SLEEP_S)
        elif workload == "wakeup":
            due = time.time() + common.wakeup_margin(args)
            await common.drive(n, lambda i: engine.send("bench/herd", {"i": i, "due": due}),
                               args.senders, record=False)
            await common.until(lambda: len(m.woke) == n, args.timeout, "the herd to wake")
            result = common.wakeup_result(n, due)
        elif workload == "waits":
            first_start = await common.drive(
                n, lambda i: engine.send("bench/wait", {"id": i}), args.senders, record=False)
            await common.until(lambda: len(m.waiting) == n, args.timeout, "runs to wait")
            await engine.idle()          # every wait is registered and its run suspended
            first_send = await common.drive(
                n, lambda i: engine.send("bench/resume", {"id": i}), args.senders)
            await common.until(lambda: len(m.resumed) == n, args.timeout, "waits to match")
            result = common.waits_result(n, first_start, first_send)
        else:   # memory
            await common.drive(500, lambda i: engine.send("bench/warm", {"i": i}),
                               args.senders, record=False)
            await common.until(lambda: m.count == 500, args.timeout, "warm-up runs")
            await engine.idle()
            baseline = common.settled_rss()
            m.count = 0
            await common.drive(n, lambda i: engine.send("bench/sleep", {"i": i}),
                               args.senders, record=False)
            await common.until(lambda: m.count >= n, args.timeout, "runs to fall asleep")
            await engine.idle()
            sleeping = common.settled_rss()
            peak = common.proc_status().get("VmHWM", 0)
            result = common.memory_result(n, baseline, sleeping, peak)
    return result


def _journal_mode(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        conn.close()


def main() -> None:
    args = common.worker_args(__doc__ or "")
    result = asyncio.run(run(args))
    common.write_result(args.out, result)


if __name__ == "__main__":
    main()
