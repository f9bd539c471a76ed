"""Flow-control overhead: the 3-step workload with and without flow control, in one run.

    python bench/flow.py [--runs 2000] [--repeat 3]

Each variant runs 2,000 runs of a 3-step function on a fresh SQLite file (synchronous=FULL):
  baseline     no flow control
  concurrency  `concurrency=Concurrency(limit=50, key="event.data.k")` over 20 keys
               (runs go through the queue and a slot check instead of the direct fast path)
  throttle     `throttle=Throttle(limit=100000, period="1s")` (a GCRA decision per run,
               never actually delaying: the cost of the bookkeeping alone)
  throttled    `throttle=Throttle(limit=500, period="1s", burst=1)`: pacing really applies;
               reports achieved starts/s against the configured 500/s
Prints runs/s and CPU ms per run (the process's user + system time over the burst: what a
loaded machine distorts least) per variant, medians of --repeat, and their ratios to baseline.
Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import stepwell

VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "concurrency": {"concurrency": stepwell.Concurrency(limit=50, key="event.data.k")},
    "throttle": {"throttle": stepwell.Throttle(limit=100_000, period="1s")},
    "throttled": {"throttle": stepwell.Throttle(limit=500, period="1s", burst=1)},
}


def cpu_seconds() -> float:
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


async def run_variant(name: str, runs: int, senders: int = 20) -> tuple[float, float]:
    app = stepwell.App("bench")
    done = asyncio.Event()
    finished = 0

    async def body(i: int, n: int) -> int:
        return i + n

    @app.function(id="work", trigger="bench/go", retries=0, **VARIANTS[name])
    async def work(ctx: stepwell.Context, step: stepwell.Step) -> int:
        nonlocal finished
        total = 0
        for n in range(3):
            total += await step.run(f"s{n}", body, ctx.event.data["i"], n)
        finished += 1
        if finished == runs:
            done.set()
        return total

    with tempfile.TemporaryDirectory() as tmp:
        db = f"sqlite:///{Path(tmp) / 'flow.db'}"
        async with stepwell.Engine(app, db=db, max_concurrency=5000) as engine:
            pending = list(range(runs))

            async def sender() -> None:
                while pending:
                    i = pending.pop()
                    await engine.send("bench/go", {"i": i, "k": f"key-{i % 20}"})

            start, cpu = time.perf_counter(), cpu_seconds()
            await asyncio.gather(*(sender() for _ in range(senders)))
            await asyncio.wait_for(done.wait(), 600)
            elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu
            await engine.idle()
            completed = await engine.runs(status="completed", limit=runs + 1)
            assert len(completed) == runs, f"{name}: {len(completed)} of {runs} completed"
    return runs / elapsed, cpu * 1000 / runs


async def main(runs: int, repeat: int, variants: list[str]) -> dict[str, Any]:
    results: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeat):
        for name in variants:          # interleaved, so machine noise hits every variant alike
            rate, cpu_ms = await run_variant(name, runs)
            results[name].append(rate)
            cpu[name].append(cpu_ms)
    base = statistics.median(results["baseline"])
    base_cpu = statistics.median(cpu["baseline"])
    table = {}
    for name, values in results.items():
        median = statistics.median(values)
        table[name] = {"runs_per_s": round(median, 1), "min": round(min(values), 1),
                       "max": round(max(values), 1), "vs_baseline": round(median / base, 3),
                       "cpu_ms_per_run": round(statistics.median(cpu[name]), 3),
                       "cpu_vs_baseline": round(statistics.median(cpu[name]) / base_cpu, 3)}
    return {"runs": runs, "repeat": repeat, "load": os.getloadavg(), "variants": table}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated; baseline is always run")
    args = parser.parse_args()
    chosen = ["baseline", *[v for v in args.variants.split(",") if v and v != "baseline"]]
    result = asyncio.run(main(args.runs, args.repeat, chosen))
    print(json.dumps(result, indent=2))
