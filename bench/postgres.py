"""Scale-out throughput on Postgres: the 3-step workload with 1, 2 and 4 worker processes.

    .venv/bin/python bench/postgres.py [--runs 2000] [--procs 1,2,4] [--mode local,remote]
        [--pg postgresql://postgres@127.0.0.1:5432/postgres] [--writers 2]

Every run is `step.run` x3 (async bodies), as the W3 workload of `bench/core.py`. Each
configuration gets a fresh database (`stepwell_bench`), created from the admin URL, and the server
keeps `synchronous_commit=on` (checked: the benchmark refuses to run otherwise).

Three modes:
- `local`: each worker process sends its share of the events itself (200 concurrent senders in
  all) and runs them: the fast path, where a new run is leased to the process that created it.
- `remote`: one producer process (an engine with `worker=False`, like an API server) sends all
  events at once; the worker processes only claim work from the queue, woken by LISTEN/NOTIFY.
  Latency here is mostly time spent in the backlog.
- `latency`: the same processes, but the producer sends one event every 20 ms (300 in all), so
  the workers are idle when each arrives: event-to-start latency of the NOTIFY wake-up path.

Printed per configuration: runs/s and steps/s over the whole window (first send to last finish,
across processes, on the host's monotonic clock), and event-to-start latency p50/p99 (from the
`send` call to the first line of the function body). Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg

import stepwell

STEPS = 3
SENDERS = 200
DB_NAME = "stepwell_bench"
LATENCY_EVENTS = 300
LATENCY_PAUSE_S = 0.02


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] if ordered else float("nan")


def with_db(admin_url: str, name: str) -> str:
    return f"{admin_url.rpartition('/')[0]}/{name}"


def fresh_database(admin_url: str) -> str:
    with closing(psycopg.connect(admin_url, autocommit=True)) as admin:
        setting = admin.execute("SHOW synchronous_commit").fetchone()
        if setting is None or setting[0] != "on":
            raise SystemExit(f"synchronous_commit is {setting}: the benchmark needs 'on'")
        admin.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {DB_NAME}")
    return with_db(admin_url, DB_NAME)


# --- one worker / producer process ----------------------------------------------------------


def build_app(started: dict[int, float], finished: dict[int, float]) -> stepwell.App:
    app = stepwell.App("bench")

    async def body(i: int, n: int) -> int:
        return i + n

    @app.function(id="work", trigger="bench/go", retries=0)
    async def work(ctx: stepwell.Context, step: stepwell.Step) -> int:
        i = ctx.event.data["i"]
        started.setdefault(i, time.monotonic())
        total = 0
        for n in range(STEPS):
            total += await step.run(f"s{n}", body, i, n)
        finished[i] = time.monotonic()
        return total

    return app


async def child(url: str, role: str, ids: list[int], senders: int, writers: int,
                expect: int, pause: float = 0.0) -> dict[str, Any]:
    """`role` is `both` (send and work), `send` (producer only) or `work` (worker only).
    Prints `ready`, waits for a line on stdin, sends its ids, and returns its measurements once
    `expect` runs are finished in the whole database (workers) or its events are sent."""
    started: dict[int, float] = {}
    finished: dict[int, float] = {}
    sent: dict[int, float] = {}
    engine = stepwell.Engine(build_app(started, finished), db=url, worker=role != "send",
                             max_concurrency=5000)
    if writers:
        engine._worker.store.writers = writers  # type: ignore[attr-defined]
    async with engine:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        queue = list(ids)

        async def sender() -> None:
            while queue:
                i = queue.pop()
                sent[i] = time.monotonic()
                await engine.send("bench/go", {"i": i})
                if pause:
                    await asyncio.sleep(pause)

        await asyncio.gather(*(sender() for _ in range(senders)))
        if role != "send":
            while True:
                done = await engine._worker.store.read(_count_completed)
                if done >= expect:
                    break
                await asyncio.sleep(0.02)
    return {"sent": sent, "started": started, "finished": finished}


def _count_completed(tx: Any) -> int:
    row = tx._one("SELECT count(*) FROM runs WHERE status = 'completed'")
    return int(row[0])


# --- the coordinator ------------------------------------------------------------------------


def run_config(admin_url: str, runs: int, procs: int, mode: str, writers: int
               ) -> dict[str, Any]:
    url = fresh_database(admin_url)
    roles: list[tuple[str, list[int], int]] = []
    pause = 0.0
    if mode == "local":
        for p in range(procs):
            roles.append(("both", list(range(p, runs, procs)), max(1, SENDERS // procs)))
    else:
        if mode == "latency":
            runs, pause = LATENCY_EVENTS, LATENCY_PAUSE_S
        roles.append(("send", list(range(runs)), 1 if pause else SENDERS))
        roles += [("work", [], 0) for _ in range(procs)]
    children = []
    for role, ids, senders in roles:
        spec = json.dumps({"url": url, "role": role, "ids": ids, "senders": senders,
                           "writers": writers, "expect": runs, "pause": pause})
        children.append(subprocess.Popen(
            [sys.executable, __file__, "--child", spec], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True))
    for proc in children:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ready", f"child failed to start: {line!r}"
    for proc in children:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = []
    for proc in children:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"child exited with {proc.returncode}"
        results.append(json.loads(out.strip().splitlines()[-1]))
    sent: dict[int, float] = {}
    started: dict[int, float] = {}
    finished: dict[int, float] = {}
    for result in results:
        sent.update({int(k): v for k, v in result["sent"].items()})
        started.update({int(k): v for k, v in result["started"].items()})
        finished.update({int(k): v for k, v in result["finished"].items()})
    assert len(finished) == runs, f"{len(finished)} of {runs} runs finished"
    window = max(finished.values()) - min(sent.values())
    latency = [(started[i] - sent[i]) * 1000 for i in range(runs)]
    return {"mode": mode, "procs": procs, "runs": runs, "seconds": round(window, 3),
            "runs_per_s": round(runs / window, 1),
            "steps_per_s": round(runs * STEPS / window, 1),
            "start_p50_ms": round(percentile(latency, 0.5), 2),
            "start_p99_ms": round(percentile(latency, 0.99), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--procs", default="1,2,4")
    parser.add_argument("--mode", default="local,remote,latency")
    parser.add_argument("--writers", type=int, default=0,
                        help="writer connections per process (default: the store's)")
    parser.add_argument("--pg", default=os.environ.get(
        "STEPWELL_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        result = asyncio.run(child(spec["url"], spec["role"], spec["ids"], spec["senders"],
                                   spec["writers"], spec["expect"], spec["pause"]))
        print(json.dumps(result))
        return
    rows = []
    for mode in args.mode.split(","):
        for procs in (int(p) for p in args.procs.split(",")):
            row = run_config(args.pg, args.runs, procs, mode, args.writers)
            print(json.dumps(row), flush=True)
            rows.append(row)
    with closing(psycopg.connect(args.pg, autocommit=True)) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
    print(f"\n{'mode':<7} {'procs':>5} {'runs/s':>8} {'steps/s':>8} {'start p50':>10} "
          f"{'start p99':>10}")
    for row in rows:
        print(f"{row['mode']:<7} {row['procs']:>5} {row['runs_per_s']:>8} "
              f"{row['steps_per_s']:>8} {row['start_p50_ms']:>8}ms {row['start_p99_ms']:>8}ms")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
