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
Each measurement runs in a fresh process. `--ref REF` measures stepwell at git ref REF as well
(`git archive REF src` on PYTHONPATH, as `bench/event_api.py --ref`), interleaved with the
working tree, so a change's before and after come from the same run:

    python bench/flow.py --variants concurrency --repeat 2 --ref HEAD~1

Not a test.
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


ROOT = Path(__file__).resolve().parent.parent


def export_ref(ref: str, into: Path) -> Path:
    archive = subprocess.run(["git", "archive", ref, "src"], cwd=ROOT, capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def measure(name: str, runs: int, src: Path | None) -> tuple[float, float]:
    """One variant in a fresh process (stepwell from `src` if given): (runs/s, CPU ms/run)."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src), *filter(None, [env.get("PYTHONPATH")])])
    done = subprocess.run([sys.executable, __file__, "--one", name, "--runs", str(runs)],
                          env=env, capture_output=True, text=True, check=True)
    rate, cpu_ms = json.loads(done.stdout.strip().splitlines()[-1])
    return rate, cpu_ms


def main(runs: int, repeat: int, variants: list[str], ref: str | None) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="sw-flow-bench-"))
    try:
        trees: dict[str, Path | None] = {"": None}
        if ref:
            trees[f"@{ref}"] = export_ref(ref, tmp)
        names = [name + tree for name in variants for tree in trees]
        results: dict[str, list[float]] = {name: [] for name in names}
        cpu: dict[str, list[float]] = {name: [] for name in names}
        loads = [os.getloadavg()[0]]
        for _ in range(repeat):
            for name in variants:      # interleaved, so machine noise hits every variant alike
                for tree, src in trees.items():
                    rate, cpu_ms = measure(name, runs, src)
                    results[name + tree].append(rate)
                    cpu[name + tree].append(cpu_ms)
                    loads.append(os.getloadavg()[0])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    table = {}
    for name, values in results.items():
        tree = name[name.index("@"):] if "@" in name else ""
        base = statistics.median(results["baseline" + tree])
        base_cpu = statistics.median(cpu["baseline" + tree])
        median = statistics.median(values)
        table[name] = {"runs_per_s": round(median, 1), "min": round(min(values), 1),
                       "max": round(max(values), 1), "vs_baseline": round(median / base, 3),
                       "cpu_ms_per_run": round(statistics.median(cpu[name]), 3),
                       "cpu_all": [round(c, 3) for c in cpu[name]],
                       "cpu_vs_baseline": round(statistics.median(cpu[name]) / base_cpu, 3)}
    return {"runs": runs, "repeat": repeat, "ref": ref,
            "load_1min": [min(loads), max(loads)], "variants": table}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated; baseline is always run")
    parser.add_argument("--ref", help="also measure stepwell at this git ref (the before)")
    parser.add_argument("--one", help=argparse.SUPPRESS)     # a child process: one variant
    args = parser.parse_args()
    if args.one:
        print(json.dumps(asyncio.run(run_variant(args.one, args.runs))))
        sys.exit(0)
    chosen = ["baseline", *[v for v in args.variants.split(",") if v and v != "baseline"]]
    print(json.dumps(main(args.runs, args.repeat, chosen, args.ref), indent=2))
