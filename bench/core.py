"""Embedded throughput and latency: N runs of a 3-step function on SQLite (synchronous=FULL).

    python bench/core.py [--runs 2000] [--steps 3] [--concurrency 200]

Prints runs/s, steps/s and event-to-start / event-to-finish latency (p50/p99). Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import stepwell


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


async def main(runs: int, steps: int, senders: int, fsync: bool) -> dict[str, float]:
    app = stepwell.App("bench")
    sent_at: dict[int, float] = {}
    started_at: dict[int, float] = {}
    finished_at: dict[int, float] = {}
    done = asyncio.Event()

    def step_body(i: int, n: int) -> int:
        return i + n

    @app.function(id="work", trigger="bench/go", retries=0)
    async def work(ctx: stepwell.Context, step: stepwell.Step) -> int:
        i = ctx.event.data["i"]
        started_at.setdefault(i, time.perf_counter())
        total = 0
        for n in range(steps):
            total += await step.run(f"s{n}", step_body, i, n)
        finished_at[i] = time.perf_counter()
        if len(finished_at) == runs:
            done.set()
        return total

    with tempfile.TemporaryDirectory() as tmp:
        db = f"sqlite:///{Path(tmp) / 'bench.db'}"
        async with stepwell.Engine(app, db=db, fsync=fsync, max_concurrency=5000) as engine:
            # warm up
            queue: asyncio.Queue[int] = asyncio.Queue()
            for i in range(runs):
                queue.put_nowait(i)

            async def sender() -> None:
                while not queue.empty():
                    i = queue.get_nowait()
                    sent_at[i] = time.perf_counter()
                    await engine.send("bench/go", {"i": i})

            t0 = time.perf_counter()
            await asyncio.gather(*(sender() for _ in range(senders)))
            await asyncio.wait_for(done.wait(), 300)
            elapsed = time.perf_counter() - t0
            await engine.idle()
            completed = await engine.runs(status="completed", limit=runs + 10)
            assert len(completed) == runs, f"only {len(completed)} of {runs} runs completed"
    starts = [(started_at[i] - sent_at[i]) * 1000 for i in range(runs)]
    ends = [(finished_at[i] - sent_at[i]) * 1000 for i in range(runs)]
    return {
        "runs": runs, "steps_per_run": steps, "seconds": round(elapsed, 3),
        "runs_per_s": round(runs / elapsed, 1), "steps_per_s": round(runs * steps / elapsed, 1),
        "start_p50_ms": round(statistics.median(starts), 2),
        "start_p99_ms": round(percentile(starts, 0.99), 2),
        "finish_p50_ms": round(statistics.median(ends), 2),
        "finish_p99_ms": round(percentile(ends, 0.99), 2),
        "fsync": fsync,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=200,
                        help="concurrent senders (each awaits its send before the next)")
    parser.add_argument("--no-fsync", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(main(args.runs, args.steps, args.concurrency, not args.no_fsync))
    json.dump(result, sys.stdout, indent=2)
    print()
