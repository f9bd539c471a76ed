"""W3 (1 event -> 3 async steps), native engine, one process: runs/s and CPU ms per run.

    python bench/w3.py [--db sqlite|postgres|both] [--runs 10000] [--repeat 3] [--ref REF]
                       [--ceiling] [--latency 300]

The workload of `bench/run.py`'s W3 (`bench/sw_bench.py`: 200 senders, `async def` step
bodies, `max_concurrency=5000`, SQLite `synchronous=FULL` / Postgres `synchronous_commit=on`,
a fresh database per measurement), each measurement in a fresh process. The CPU time is the
process's (all threads: user + system) from the first send to the last run's end, divided by
the runs: on a shared, loaded machine the figure that moves least (runs/s follows it on a quiet
one). `--ref REF` measures stepwell at git ref REF too (`git archive`, on PYTHONPATH),
interleaved with the working tree: the before and after of a change in one run.

`--ceiling` adds `bench/w3_ceiling.py`: the same rows written by a bare group-commit loop
(no engine), the rate the database and the driver allow. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PG_BASE = "postgresql://postgres@127.0.0.1:5432"


def cpu_seconds() -> float:
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


async def child(db_kind: str, runs: int, senders: int, *, url: str | None = None,
                latency: int = 0) -> dict[str, Any]:
    """One measurement: W3 on a fresh database of `db_kind`, or on the existing one at `url`
    (`bench/growth_w3.py`); then, with `latency`, that many single sends one after another,
    each waiting for its run to start (event-to-start unloaded)."""
    sys.path.insert(0, str(BENCH))
    import common
    import sw_bench
    from common import MARKS

    import stepwell

    app = sw_bench.make_app("W3", sync_steps=False)
    tmp = Path(tempfile.mkdtemp(prefix="sw-w3-"))
    pg_name = f"stepwell_bench_w3_{os.getpid()}"
    if url is not None:
        db = url
    elif db_kind == "postgres":
        sw_bench._fresh_postgres(PG_BASE, pg_name)
        db = f"{PG_BASE}/{pg_name}"
    else:
        db = f"sqlite:///{tmp / 'w3.db'}"
    out: dict[str, Any] = {}
    try:
        async with stepwell.Engine(app, db=db, fsync=True, max_concurrency=5000) as engine:
            start, cpu = time.perf_counter(), cpu_seconds()
            await common.drive(runs, lambda i: engine.send("bench/go", {"i": i}), senders)
            await common.until(lambda: len(MARKS.finished) == runs, 600, "runs to finish")
            elapsed, used = time.perf_counter() - start, cpu_seconds() - cpu
            out = {"runs_per_s": runs / elapsed, "cpu_ms_per_run": used * 1000 / runs}
            await engine.idle()
            waits, ends = [], []
            for i in range(runs, runs + latency):
                sent = time.perf_counter()
                await engine.send("bench/go", {"i": i})
                await common.until(lambda i=i: i in MARKS.finished, 60, "the run to finish")
                waits.append((MARKS.started[i] - sent) * 1000)
                ends.append((MARKS.finished[i] - sent) * 1000)
            if waits:
                out["start_p50_ms"] = statistics.median(waits)
                out["start_p99_ms"] = sorted(waits)[int(len(waits) * 0.99) - 1]
                out["finish_p50_ms"] = statistics.median(ends)
                out["finish_p99_ms"] = sorted(ends)[int(len(ends) * 0.99) - 1]
            await engine.idle()
    finally:
        if db_kind == "postgres" and url is None:
            sw_bench._drop_postgres(PG_BASE, pg_name)
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def export_ref(ref: str, into: Path) -> Path:
    archive = subprocess.run(["git", "archive", ref, "src"], cwd=ROOT, capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def measure(cmd: list[str], src: Path | None) -> dict[str, Any]:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src), *filter(None, [env.get("PYTHONPATH")])])
    done = subprocess.run([sys.executable, *cmd], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{cmd} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default="sqlite", choices=["sqlite", "postgres", "both"])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--senders", type=int, default=200)
    parser.add_argument("--ref", help="also measure stepwell at this git ref (the before)")
    parser.add_argument("--ceiling", action="store_true",
                        help="also measure the bare group-commit loop (bench/w3_ceiling.py)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)        # child: an existing database
    parser.add_argument("--latency", type=int, default=0,
                        help="then N single sends one after another, each waiting for its "
                             "run: event-to-start and event-to-finish (the body's last line, "
                             "as bench/run.py marks it) p50 / p99 ms")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(child(args.child, args.runs, args.senders, url=args.url,
                                           latency=args.latency))))
        return
    dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    tmp = Path(tempfile.mkdtemp(prefix="sw-w3-bench-"))
    cells: dict[str, list[dict[str, Any]]] = {}
    loads = [os.getloadavg()[0]]
    try:
        trees: dict[str, Path | None] = {"working tree": None}
        if args.ref:
            trees[args.ref] = export_ref(args.ref, tmp)
        for _ in range(args.repeat):
            for db in dbs:
                for tree, src in trees.items():
                    cmd = [__file__, "--child", db, "--runs", str(args.runs),
                           "--senders", str(args.senders), "--latency", str(args.latency)]
                    cells.setdefault(f"{db} {tree}", []).append(measure(cmd, src))
                    loads.append(os.getloadavg()[0])
                if args.ceiling:
                    cmd = [str(BENCH / "w3_ceiling.py"), "--db", db, "--runs", str(args.runs)]
                    cells.setdefault(f"{db} ceiling", []).append(measure(cmd, None))
                    loads.append(os.getloadavg()[0])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    table = {name: {key: round(statistics.median(c[key] for c in values), 3)
                    for key in ("runs_per_s", "cpu_ms_per_run", "start_p50_ms",
                                "finish_p50_ms", "finish_p99_ms")
                    if all(key in c for c in values)}
             | {"all_runs_per_s": [round(c["runs_per_s"]) for c in values],
                "all_cpu_ms_per_run": [round(c["cpu_ms_per_run"], 3) for c in values]}
             for name, values in cells.items()}
    print(json.dumps({"runs": args.runs, "repeat": args.repeat, "ref": args.ref,
                      "load_1min": [round(min(loads), 1), round(max(loads), 1)],
                      "cells": table}, indent=2))


if __name__ == "__main__":
    main()
