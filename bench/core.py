"""Embedded throughput and latency: N runs of an S-step function on SQLite (synchronous=FULL).

    python bench/core.py [--runs 2000] [--steps 3] [--concurrency 200] [--async-steps]

Prints runs/s, steps/s, event-to-start / event-to-finish latency (p50/p99) and the CPU ms per
run (all threads; the figure a loaded machine distorts least) as JSON. Not a
test. This is the stepwell-only quick check; `bench/run.py` runs the full comparison with the
peers (its W3 is this workload with `--async-steps`, in a fresh process per repetition).

By default the step bodies are plain `def` functions (stepwell runs them on its step thread
pool), as this script always did; `--async-steps` uses `async def` bodies, as `run.py` does for
every engine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sw_bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=200,
                        help="concurrent senders (each awaits its send before the next)")
    parser.add_argument("--no-fsync", action="store_true")
    parser.add_argument("--async-steps", action="store_true",
                        help="async step bodies (as bench/run.py) instead of plain def")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        worker_args = argparse.Namespace(
            workload="W1", n=args.runs, senders=args.concurrency, dir=tmp, out="",
            timeout=300.0,
            option=[f"steps={args.steps}", f"fsync={0 if args.no_fsync else 1}",
                    f"sync_steps={0 if args.async_steps else 1}"])
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        result = asyncio.run(sw_bench.run(worker_args))
        used = resource.getrusage(resource.RUSAGE_SELF)
    out = {key: result[key] for key in (
        "runs", "steps_per_run", "seconds", "runs_per_s", "steps_per_s", "start_p50_ms",
        "start_p99_ms", "finish_p50_ms", "finish_p99_ms")}
    # CPU time per run (all threads, setup included): what a loaded machine distorts least.
    out["cpu_ms_per_run"] = round((used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime)
                                  * 1000 / max(1, result["runs"]), 3)
    out["fsync"] = not args.no_fsync
    out["step_bodies"] = result["settings"]["step_bodies"]
    if "errors" in result:
        out["errors"] = result["errors"]
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
