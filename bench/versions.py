"""The cost of versioned claims on W3: the same workload, unversioned vs versioned worker.

    python bench/versions.py [--repeat 5] [--runs 2000] [--postgres] [--backlog]

Runs `sw_bench.py` W3 (2,000 runs of a 3-step function, async bodies) in a fresh process per
repetition, alternating an unversioned app (`App("bench")`: the claim SQL is what it always
was) and a versioned one (`App("bench", version="v1")`: every claim checks each exec item's run
version by primary key, `runtime.versioning`), so both see the same machine load. In W3 the
sending process runs its new runs at once (leased in the sending transaction), so most runs
never pass through a claim; `--backlog` measures the claim itself: a non-worker engine queues
the runs first, then a worker starts and every run is claimed (`claim_due`) from the backlog,
timed from the worker's start to the last run's end. Prints, per
mode, the median runs/s, event-to-finish p50, CPU ms per run (the child's user+system time,
what a loaded machine distorts least), and the 1-minute load average before and after. Not a
test: no assertion on the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def one(mode: str, runs: int, postgres: bool, backlog: bool = False) -> dict[str, Any]:
    if backlog:
        return backlog_child(mode, runs, postgres)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        options = ["--option", "sync_steps=0"]
        if mode == "versioned":
            options += ["--option", "version=v1"]
        if postgres:
            options += ["--option", "db=postgres"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, str(HERE / "sw_bench.py"), "--workload", "W3", "-n",
                        str(runs), "--dir", tmp, "--out", str(out), *options], check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        result: dict[str, Any] = json.loads(out.read_text())
    cpu_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    result["cpu_ms_per_run"] = cpu_s * 1000 / runs
    return result


def backlog_child(mode: str, runs: int, postgres: bool) -> dict[str, Any]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    found = subprocess.run([sys.executable, __file__, "--child", mode, "--runs", str(runs),
                            *(["--postgres"] if postgres else [])],
                           check=True, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result: dict[str, Any] = json.loads(found.stdout)
    cpu_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    result["cpu_ms_per_run"] = cpu_s * 1000 / runs
    return result


async def drain_backlog(mode: str, runs: int, postgres: bool) -> dict[str, Any]:
    """In the child: queue `runs` W3 runs without a worker, then time one worker draining."""
    import time

    import common
    import sw_bench

    import stepwell

    version = "v1" if mode == "versioned" else None
    with tempfile.TemporaryDirectory() as tmp:
        name = f"stepwell_bench_versions_{os.getpid()}"
        base = "postgresql://postgres@127.0.0.1:5432"
        if postgres:
            sw_bench._fresh_postgres(base, name)
        db = f"{base}/{name}" if postgres else f"sqlite:///{tmp}/stepwell.db"
        try:
            app = sw_bench.make_app("W3", sync_steps=False, version=version)
            async with stepwell.Engine(app, db=db, worker=False) as sender:
                for i in range(runs):
                    await sender.send("bench/go", {"i": i})
            app = sw_bench.make_app("W3", sync_steps=False, version=version)
            worker = stepwell.Engine(app, db=db, max_concurrency=5000)
            start = time.perf_counter()
            async with worker:
                # The handler marks each run's end in memory: no polling query adds load.
                await common.until(lambda: len(common.MARKS.finished) == runs, 300.0,
                                   "the backlog to drain")
                seconds = time.perf_counter() - start
        finally:
            if postgres:
                sw_bench._drop_postgres(base, name)
    return {"runs_per_s": runs / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument("--backlog", action="store_true",
                        help="claim-bound: drain a queued backlog (every run claimed)")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import asyncio

        sys.path.insert(0, str(HERE))
        json.dump(asyncio.run(drain_backlog(args.child, args.runs, args.postgres)), sys.stdout)
        return
    load_before = os.getloadavg()[0]
    results: dict[str, list[dict[str, Any]]] = {"unversioned": [], "versioned": []}
    for _ in range(args.repeat):
        for mode in results:
            results[mode].append(one(mode, args.runs, args.postgres, args.backlog))
    load_after = os.getloadavg()[0]
    summary = {"db": "Postgres" if args.postgres else "SQLite", "runs": args.runs,
               "workload": "W3 backlog (claimed)" if args.backlog else "W3",
               "repeat": args.repeat, "load_1min": [round(load_before, 2),
                                                   round(load_after, 2)]}
    for mode, found in results.items():
        summary[mode] = {
            "runs_per_s": round(statistics.median(r["runs_per_s"] for r in found), 1),
            "runs_per_s_all": [round(r["runs_per_s"]) for r in found],
            **({} if args.backlog else {"finish_p50_ms": round(statistics.median(
                r["finish_p50_ms"] for r in found), 1)}),
            "cpu_ms_per_run": round(statistics.median(r["cpu_ms_per_run"] for r in found), 3)}
    base, versioned = summary["unversioned"], summary["versioned"]
    summary["ratio_runs_per_s"] = round(versioned["runs_per_s"] / base["runs_per_s"], 3)
    summary["ratio_cpu_per_run"] = round(versioned["cpu_ms_per_run"] / base["cpu_ms_per_run"], 3)
    json.dump(summary, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
