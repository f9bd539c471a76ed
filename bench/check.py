"""How fast the deploy check replays histories: `stepwell check` against a SQLite (or
Postgres) database of N unfinished runs of a 10-step function, reading included, and the same
histories replayed from memory (the ceiling: no database). JSON on stdout.

    .venv/bin/python bench/check.py                      # 5,000 runs on SQLite
    .venv/bin/python bench/check.py --runs 20000 --db postgresql://postgres@127.0.0.1/bench
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from typing import Any

import stepwell
from stepwell import service_deploy
from stepwell.testing import VirtualClock

STEPS = 10


def make_app() -> stepwell.App:
    app = stepwell.App("bench")

    @app.function(id="order", trigger="bench/order", concurrency=None)
    async def order(ctx: stepwell.Context, step: stepwell.Step) -> str:
        total = 0
        for i in range(STEPS):
            total += await step.run(f"step-{i}", lambda i=i: i, i)
        await step.sleep("nap", "7d")
        return str(total)

    return app


async def fill(db: str, runs: int) -> None:
    app = make_app()
    async with stepwell.Engine(app, db=db, clock=VirtualClock(),
                               check_determinism=False) as engine:
        for start in range(0, runs, 500):
            await engine.send([stepwell.Event("bench/order", {"n": n})
                               for n in range(start, min(runs, start + 500))])
            await engine.idle()


async def measure(db: str, runs: int) -> dict[str, Any]:
    app = make_app()
    started = time.perf_counter()
    await fill(db, runs)
    filled = time.perf_counter() - started
    read_started = time.perf_counter()
    histories = await service_deploy.load_histories(db, sample=0,
                                                    function_ids=["bench/order"])
    read_s = time.perf_counter() - read_started
    cpu = time.process_time()
    in_memory = await service_deploy.check_histories([app], histories)
    cpu = time.process_time() - cpu
    full = await service_deploy.check_database([app], db, sample=0)
    assert full.ok and full.histories == runs, full.text()
    return {
        "runs": runs, "steps_per_run": STEPS + 1, "fill_s": round(filled, 2),
        "read_histories_per_s": round(runs / read_s),
        "replay_per_s_in_memory": round(runs / in_memory.seconds),
        # per second of this process's CPU time: what one idle core would do
        "replay_per_cpu_s_in_memory": round(runs / cpu),
        "check_per_s_with_database": round(runs / (full.seconds + read_s)),
        "load_1min": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5_000)
    parser.add_argument("--db", help="database URL (default: a fresh SQLite file)")
    args = parser.parse_args()
    db = args.db or f"sqlite:///{tempfile.mkdtemp()}/check.db"
    print(json.dumps(asyncio.run(measure(db, args.runs)), indent=2))


if __name__ == "__main__":
    main()
