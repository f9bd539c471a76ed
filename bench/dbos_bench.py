"""DBOS Transact side of the benchmark: one workload, one fresh process, one JSON result.

    bench/.peers-venv/bin/python bench/dbos_bench.py --workload W3 -n 2000 --dir /tmp/x --out r.json

Mapping (DBOS has no event bus: the benchmark's "send an event" becomes the DBOS call that
durably starts or resumes a workflow):
- W1/W3/W10: an `async` `@DBOS.workflow()` calling N `async` `@DBOS.step()`s, started with
  `DBOS.start_workflow_async` (durable: it returns once the workflow is recorded);
- fan-out: no trigger routing in DBOS, so each "event" is 10 `start_workflow_async` calls
  (gathered) of 10 distinct one-step workflows;
- timers: `DBOS.sleep_async(1)` (durable sleep);
- wakeup: `DBOS.sleep_async(due - time.time())` (DBOS has no sleep-until; the durable sleep
  records its absolute end, so this is equivalent);
- waits: each workflow is started with its own id and calls `DBOS.recv_async(topic)`; the
  "matching event" is `DBOS.send_async(workflow_id, {"id": i}, topic)`, addressed by id (DBOS
  has no match-by-payload);
- memory: workflows in `DBOS.sleep_async(3600)`.

Options (`--option KEY=VALUE`): `db=sqlite` (default) or `db=postgres` with
`pg_url=postgresql://postgres@127.0.0.1:5432` (a fresh database per process).
On SQLite every connection DBOS opens gets `PRAGMA journal_mode=WAL` and
`PRAGMA synchronous=FULL` (through an SQLAlchemy `connect` listener; out of the box DBOS leaves
SQLite's defaults: rollback journal, synchronous=FULL). The values are read back and reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import common
import sqlalchemy as sa
from common import MARKS
from dbos import DBOS, SetWorkflowID
from sqlalchemy import event

APPLIED: dict[str, str] = {}


@event.listens_for(sa.Engine, "connect")
def _sqlite_pragmas(dbapi_conn: Any, record: Any) -> None:
    if type(dbapi_conn).__module__.startswith("sqlite3"):
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA synchronous=FULL")
        APPLIED["journal_mode"] = dbapi_conn.execute("PRAGMA journal_mode").fetchone()[0]
        sync = dbapi_conn.execute("PRAGMA synchronous").fetchone()[0]
        APPLIED["synchronous"] = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(sync, sync)


m = MARKS
STEPS = {"n": 0}


@DBOS.step()
async def body(i: int, n: int) -> int:
    return i + n


@DBOS.workflow()
async def work(i: int) -> int:
    m.start(i)
    total = 0
    for n in range(STEPS["n"]):
        total += await body(i, n)
    m.finish(i)
    return total


def _fan(k: int) -> Any:
    async def fan(i: int) -> int:
        m.start((i, k))
        out = await body(i, k)
        m.finish((i, k))
        return out
    fan.__name__ = fan.__qualname__ = f"fan_{k}"
    return DBOS.workflow(name=f"fan_{k}")(fan)


FANS = [_fan(k) for k in range(common.FANOUT_FUNCTIONS)]


@DBOS.workflow()
async def nap(i: int) -> None:
    m.before.setdefault(i, time.perf_counter())
    await DBOS.sleep_async(common.TIMER_SLEEP_S)
    m.woke.setdefault(i, time.perf_counter())


@DBOS.workflow()
async def herd(i: int, due: float) -> None:
    m.before.setdefault(i, time.time())
    await DBOS.sleep_async(max(0.0, due - time.time()))
    m.woke.setdefault(i, time.time())


@DBOS.workflow()
async def waiter(i: int) -> None:
    m.waiting.setdefault(i, time.perf_counter())
    got = await DBOS.recv_async("resume", timeout_seconds=3600)
    now = time.perf_counter()
    if not isinstance(got, dict) or got.get("id") != i:
        m.bad.append(f"workflow {i} received {got!r}")
    m.resumed.setdefault(i, now)


@DBOS.workflow()
async def warm(i: int) -> int:
    out = await body(i, 0)
    m.count += 1
    return out


@DBOS.workflow()
async def sleeper(i: int) -> None:
    m.count += 1
    await DBOS.sleep_async(common.MEMORY_SLEEP_S)


def _fresh_postgres(base: str, name: str) -> str:
    import psycopg

    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
        row = conn.execute("SHOW synchronous_commit").fetchone()
        APPLIED["synchronous_commit"] = row[0] if row else "?"
        row = conn.execute("SHOW fsync").fetchone()
        APPLIED["fsync"] = row[0] if row else "?"
    return f"{base}/{name}"


def _drop_postgres(base: str, name: str) -> None:
    import psycopg

    with contextlib.suppress(Exception), psycopg.connect(f"{base}/postgres",
                                                         autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def run(args: Any) -> dict[str, Any]:
    opts = common.options(args)
    db = opts.get("db", "sqlite")
    workload, n = args.workload, args.n
    if db == "postgres":
        url = _fresh_postgres(opts.get("pg_url", "postgresql://postgres@127.0.0.1:5432"),
                              f"stepwell_bench_dbos_{os.getpid()}")
    else:
        url = f"sqlite:///{Path(args.dir) / 'dbos.sqlite'}"
    logging.getLogger("dbos").setLevel(logging.ERROR)
    DBOS(config={"name": "bench", "system_database_url": url, "log_level": "ERROR"})
    DBOS.launch()
    try:
        return await _workload(args, workload, n, db)
    finally:
        DBOS.destroy(destroy_registry=False)
        if db == "postgres":
            _drop_postgres(opts.get("pg_url", "postgresql://postgres@127.0.0.1:5432"),
                           url.rsplit("/", 1)[1])


async def _workload(args: Any, workload: str, n: int, db: str) -> dict[str, Any]:
    result: dict[str, Any]
    if workload in common.STEPS:
        STEPS["n"] = common.STEPS[workload]
        first = await common.drive(n, lambda i: DBOS.start_workflow_async(work, i), args.senders)
        await common.until(lambda: len(m.finished) == n, args.timeout, "workflows to finish")
        result = common.throughput_result(n, STEPS["n"], first)
    elif workload == "fanout":
        async def fan_event(i: int) -> None:
            await asyncio.gather(*(DBOS.start_workflow_async(f, i) for f in FANS))

        first = await common.drive(n, fan_event, args.senders)
        total = n * common.FANOUT_FUNCTIONS
        await common.until(lambda: len(m.finished) == total, args.timeout, "fan-out workflows")
        result = common.fanout_result(n, first)
    elif workload == "timers":
        first = await common.drive(n, lambda i: DBOS.start_workflow_async(nap, i), args.senders)
        await common.until(lambda: len(m.woke) == n, args.timeout, "sleepers to wake")
        result = common.timers_result(n, first, common.TIMER_SLEEP_S)
    elif workload == "wakeup":
        due = time.time() + common.wakeup_margin(args)
        await common.drive(n, lambda i: DBOS.start_workflow_async(herd, i, due), args.senders,
                           record=False)
        await common.until(lambda: len(m.woke) == n, args.timeout, "the herd to wake")
        result = common.wakeup_result(n, due)
    elif workload == "waits":
        async def start(i: int) -> None:
            with SetWorkflowID(f"waiter-{i}"):
                await DBOS.start_workflow_async(waiter, i)

        first_start = await common.drive(n, start, args.senders, record=False)
        await common.until(lambda: len(m.waiting) == n, args.timeout, "workflows to wait")
        await asyncio.sleep(1.0)        # let the last recv calls register
        first_send = await common.drive(
            n, lambda i: DBOS.send_async(f"waiter-{i}", {"id": i}, "resume"), args.senders)
        await common.until(lambda: len(m.resumed) == n, args.timeout, "messages to match")
        result = common.waits_result(n, first_start, first_send)
    else:   # memory
        await common.drive(500, lambda i: DBOS.start_workflow_async(warm, i), args.senders,
                           record=False)
        await common.until(lambda: m.count == 500, args.timeout, "warm-up workflows")
        await asyncio.sleep(0.5)
        baseline = common.settled_rss()
        m.count = 0
        await common.drive(n, lambda i: DBOS.start_workflow_async(sleeper, i), args.senders,
                           record=False)
        await common.until(lambda: m.count >= n, args.timeout, "workflows to fall asleep")
        await asyncio.sleep(1.0)
        sleeping = common.settled_rss()
        peak = common.proc_status().get("VmHWM", 0)
        result = common.memory_result(n, baseline, sleeping, peak)
    from importlib.metadata import version

    result["settings"] = {"db": "Postgres" if db == "postgres" else "SQLite file",
                          **APPLIED, "dbos": version("dbos")}
    if m.bad:
        result["errors"] = m.bad[:5]
    return result


def main() -> None:
    args = common.worker_args(__doc__ or "")
    result = asyncio.run(run(args))
    common.write_result(args.out, result)
    os._exit(0)      # DBOS background threads (sleeping workflows) must not delay the exit


if __name__ == "__main__":
    main()
