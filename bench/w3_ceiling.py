"""W3's writes with no engine: the storage layer's ceiling for `bench/w3.py`.

    python bench/w3_ceiling.py --db sqlite|postgres [--runs 10000] [--senders 200]

Each of `senders` tasks plays runs one after another, and a run is the five transactions the
engine commits for a W3 run (read off a traced W3 run: `bench/w3.py` documents them), with the
same `Tx` calls and the same rows:

1. ingest: the event, the waits it could resolve (none), the run, its exec item leased to us;
2. three checkpoints: the lease renewed (compare-and-set), the step's memo;
3. the end: the lease renewed, the run finished, its waits and queue items deleted.

They go through the store's own group commit (`Store.write`) on a fresh database of the same
settings (`synchronous=FULL` / `synchronous_commit=on`), so what is left out is the runtime:
sessions, steps, the send API, routing and flow control, effects. On one process and two
cores this is the rate the database, the driver and the group commit allow; W3 divided by it
is the share the runtime leaves. Prints one JSON line: runs/s and CPU ms per run. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import sw_bench

from stepwell.core.models import Event, Memo, hash_step_id
from stepwell.runtime.scripts import new_id
from stepwell.store import open_store
from stepwell.store.base import RunRow, Tx

PG_BASE = "postgresql://postgres@127.0.0.1:5432"
OWNER = "ceiling:1"
LEASE_MS = 30_000
STEPS = [hash_step_id(f"s{n}", 0) for n in range(3)]


def cpu_seconds() -> float:
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def one_run(store: Any, i: int) -> None:
    event = Event("bench/go", {"i": i}, id=new_id(), ts=now_ms())
    run_id = new_id()

    def ingest(tx: Tx) -> int | None:
        now = now_ms()
        tx.insert_event(event, now, now - 1, True)
        tx.find_waits(event.name, [])
        tx.insert_run(RunRow(run_id, "bench/work", [event.id], now, status="running",
                             started_at=now))
        return tx.enqueue("exec", f"exec:{run_id}", now, run_id=run_id, owner=OWNER,
                          lease_until=now + LEASE_MS, priority_at=now)

    item = await store.write(ingest)
    assert item is not None
    for n, step_hash in enumerate(STEPS):
        started = now_ms()
        memo = Memo(step_hash, f"s{n}", "run", n, data=i + n, fingerprint="0" * 16,
                    attempts=1, started_at=started, ended_at=started)

        def checkpoint(tx: Tx, memo: Memo = memo) -> bool:
            return (tx.renew_lease(item, OWNER, now_ms() + LEASE_MS)
                    and tx.insert_memo(run_id, memo))

        assert await store.write(checkpoint)

    def end(tx: Tx) -> bool:
        if not tx.renew_lease(item, OWNER, now_ms() + LEASE_MS):
            return False
        if not tx.finish_run(run_id, "completed", now_ms(), output=3 * i + 3):
            return False
        tx.delete_items(run_id=run_id)
        tx.delete_run_waits(run_id)
        return True

    assert await store.write(end)


async def measure(url: str, runs: int, senders: int) -> dict[str, Any]:
    store = open_store(url, fsync=True)
    await store.open()
    try:
        todo = list(range(runs - 1, -1, -1))

        async def sender() -> None:
            while todo:
                await one_run(store, todo.pop())

        start, cpu = time.perf_counter(), cpu_seconds()
        await asyncio.gather(*(sender() for _ in range(min(senders, runs))))
        elapsed, used = time.perf_counter() - start, cpu_seconds() - cpu
    finally:
        await store.close()
    return {"runs_per_s": runs / elapsed, "cpu_ms_per_run": used * 1000 / runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default="sqlite", choices=["sqlite", "postgres"])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--senders", type=int, default=200)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sw-w3-ceiling-"))
    name = f"stepwell_bench_ceiling_{os.getpid()}"
    try:
        if args.db == "postgres":
            sw_bench._fresh_postgres(PG_BASE, name)
            url = f"{PG_BASE}/{name}"
        else:
            url = f"sqlite:///{tmp / 'ceiling.db'}"
        print(json.dumps(asyncio.run(measure(url, args.runs, args.senders))))
    finally:
        if args.db == "postgres":
            sw_bench._drop_postgres(PG_BASE, name)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
