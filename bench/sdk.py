"""The official-SDK path: apps on the Inngest TypeScript SDK v4 (checkpointing on, the v4
default, and off) and the Python SDK, running on `stepwell serve`.

For each repetition and each app, a fresh `stepwell serve` (SQLite file with `synchronous=FULL`,
as everywhere in bench/) and a fresh app process are started and synced, then:

1. the ceiling: the app's own trivial-POST rate (`POST /_bench/noop`, 32 concurrent keep-alive
   connections for 2 s) divided by the HTTP exchanges one run costs the app (plain protocol: N + 1
   calls for N steps; checkpointing: 1 call + N checkpoint POSTs it makes);
2. for N = 1, 3, 10 steps: a burst of `--runs` events (`POST /e`, batches of 100), then the run
   list is polled until every run has ended (or `--timeout`). runs/s = runs finished / (last
   finish - first send); event->finish = a run's `ended_at` (server clock) - the moment its event
   was sent (same machine, same clock), p50/p99.

The table shows medians over repetitions (± half the min-max spread), runs/s as a ratio of the
ceiling measured in the same repetition and of the app-CPU bound (1,000 / the app's CPU ms per
run in the same burst: what one app process could do on a core of its own), how many runs
finished, the CPU time the server and the app processes used per finished run (what a shared,
loaded machine does not distort), and the load average.

    .venv/bin/python bench/sdk.py                       # 3 repetitions, ~10 minutes
    .venv/bin/python bench/sdk.py --repeat 1 --runs 200 --apps ts
    .venv/bin/python bench/sdk.py --serve-arg=--sdk-concurrency --serve-arg=64

Results: bench/results/sdk-latest.json (every number) and sdk-latest.md (the table).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
APPS: dict[str, dict[str, Any]] = {
    "ts": {"label": "TS v4, checkpointing", "app_id": "bench-ts", "checkpointing": True,
           "cmd": lambda: [shutil.which("node") or "node", str(HERE / "sdk_apps" / "ts_app.mjs")],
           "env": {}},
    "ts-plain": {"label": "TS v4, checkpointing off", "app_id": "bench-ts-plain",
                 "checkpointing": False,
                 "cmd": lambda: [shutil.which("node") or "node",
                                 str(HERE / "sdk_apps" / "ts_app.mjs")],
                 "env": {"CHECKPOINTING": "0"}},
    "py": {"label": "Python SDK (FastAPI)", "app_id": "bench-py", "checkpointing": False,
           "cmd": lambda: [sys.executable, str(HERE / "sdk_apps" / "py_app.py")], "env": {}},
}
URL_RE = re.compile(r"http://127\.0\.0\.1:(\d+)")


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def load() -> float:
    return os.getloadavg()[0]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (Linux /proc): per-run CPU cost is what a
    shared machine cannot distort."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def process(cmd: list[str], env: dict[str, str], what: str
            ) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Start `cmd`, wait for the first `http://127.0.0.1:PORT` it prints; always stopped."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        url = None
        seen = []
        while time.monotonic() < deadline and url is None:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                raise RuntimeError(f"{what} exited: {''.join(seen)[-2000:]}")
            seen.append(line)
            m = URL_RE.search(line)
            if m and m.group(1) != "0":
                url = m.group(0)
        if url is None:
            raise RuntimeError(f"{what} printed no URL: {''.join(seen)[-2000:]}")
        # Keep draining its output so it never blocks on a full pipe.
        import threading

        threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
        yield proc, url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_ok(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


async def noop_rate(app_url: str, seconds: float = 2.0, clients: int = 32) -> float:
    """Trivial POSTs/s the app answers over `clients` keep-alive connections. The client is
    raw asyncio HTTP/1.1 (no pool bookkeeping), so it is the app that is measured."""
    host, port = app_url.removeprefix("http://").split(":")
    request = (b"POST /_bench/noop HTTP/1.1\r\nhost: " + host.encode() +
               b"\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
    done = 0
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection(host, int(port))
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while time.perf_counter() < stop:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
            done += 1
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return done / (time.perf_counter() - start)


def parse_ms(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


async def all_finished_runs(client: httpx.AsyncClient, server: str, fn_id: str
                            ) -> list[dict[str, Any]]:
    """Every ended run of the function, page by page (a page holds at most 1,000)."""
    out: list[dict[str, Any]] = []
    params: dict[str, Any] = {"function_id": fn_id, "limit": 1000, "outputs": "false"}
    while True:
        response = await client.get(f"{server}/v1/runs", params=params)
        response.raise_for_status()
        page = response.json()
        out += [r for r in page["data"] if r["ended_at"]]
        cursor = page.get("metadata", {}).get("next_cursor")
        if not cursor:
            return out
        params["cursor"] = cursor


async def burst(server: str, fn_id: str, steps: int, runs: int, timeout: float
                ) -> dict[str, Any]:
    sent: dict[str, float] = {}
    async with httpx.AsyncClient(timeout=30) as client:
        first = time.time()
        for start in range(0, runs, 100):
            batch = [{"name": f"bench/steps.{steps}", "data": {"i": i}}
                     for i in range(start, min(runs, start + 100))]
            now = time.time()
            response = await client.post(f"{server}/e/bench", json=batch)
            response.raise_for_status()
            for event_id in response.json()["ids"]:
                sent[event_id] = now
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:          # cheap counts while it runs
            await asyncio.sleep(0.5)
            response = await client.get(f"{server}/v1/stats/functions")
            response.raise_for_status()
            stats = next((f for f in response.json()["data"]
                          if f["id"].endswith(f"-steps-{steps}")), {})
            counts = stats.get("counts", {})
            done = sum(counts.get(s, 0) for s in ("Completed", "Failed", "Cancelled"))
            # Counts stop at 1,000 per status ("capped"): past that, ask whether any run of
            # the function is still unfinished instead.
            if stats.get("capped") and done >= 1000:
                response = await client.get(f"{server}/v1/runs", params={
                    "function_id": fn_id, "status": "queued,running", "limit": 1,
                    "outputs": "false"})
                response.raise_for_status()
                if not response.json()["data"]:
                    break
            elif done >= runs:
                break
        finished = await all_finished_runs(client, server, fn_id)
    ends = {r["event_id"]: parse_ms(r["ended_at"]) for r in finished}
    latencies = [end - sent[eid] for eid, end in ends.items() if end and eid in sent]
    last = max((e for e in ends.values() if e), default=first)
    failed = sum(1 for r in finished if r["status"] != "Completed")
    return {"runs": runs, "finished": len(finished), "failed": failed,
            "runs_per_s": len(finished) / max(1e-9, last - first),
            "p50_ms": percentile(latencies, 50) * 1000,
            "p99_ms": percentile(latencies, 99) * 1000}


def repetition(app_key: str, steps_list: list[int], runs: int, timeout: float,
               serve_args: list[str]) -> dict[str, Any]:
    spec = APPS[app_key]
    tmp = Path(tempfile.mkdtemp(prefix="sw-sdk-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INNGEST_", "STEPWELL_"))}
    out: dict[str, Any] = {"app": app_key, "load_before": load(), "steps": {}}
    try:
        serve_cmd = [sys.executable, "-m", "stepwell", "serve", "--db",
                     f"sqlite:///{tmp / 'stepwell.db'}", "--host", "127.0.0.1", "--port", "0",
                     *serve_args]
        with process(serve_cmd, env, "stepwell serve") as (serve_proc, server):
            wait_ok(f"{server}/health")
            app_env = {**env, "PORT": "0", "INNGEST_DEV": server, "INNGEST_BASE_URL": server,
                       **spec["env"]}
            with process(spec["cmd"](), app_env, app_key) as (app_proc, app):
                wait_ok(f"{app}/api/inngest")
                synced = httpx.post(f"{server}/v1/apps/sync",
                                    json={"url": f"{app}/api/inngest"}, timeout=60)
                synced.raise_for_status()
                out["noop_per_s"] = asyncio.run(noop_rate(app))
                for steps in steps_list:
                    cpu = cpu_seconds(serve_proc.pid), cpu_seconds(app_proc.pid)
                    result = asyncio.run(burst(server, f"{spec['app_id']}-steps-{steps}", steps,
                                               runs, timeout))
                    done = max(1, result["finished"])
                    result["server_cpu_ms_per_run"] = (
                        cpu_seconds(serve_proc.pid) - cpu[0]) * 1000 / done
                    result["app_cpu_ms_per_run"] = (
                        cpu_seconds(app_proc.pid) - cpu[1]) * 1000 / done
                    calls = steps + 1           # N+1 calls, or 1 call + N checkpoints
                    result["calls_per_run"] = calls
                    result["ceiling_runs_per_s"] = out["noop_per_s"] / calls
                    result["of_ceiling"] = result["runs_per_s"] / result["ceiling_runs_per_s"]
                    # The other bound, from the same burst: one app process (single-threaded
                    # Node or one uvicorn worker) on a whole core of its own, at the CPU the
                    # SDK spent per run. The trivial-POST ceiling leaves out what the SDK does
                    # per call; this one does not.
                    result["app_cpu_bound_runs_per_s"] = 1000 / max(
                        1e-9, result["app_cpu_ms_per_run"])
                    result["of_app_cpu_bound"] = (result["runs_per_s"]
                                                  / result["app_cpu_bound_runs_per_s"])
                    out["steps"][str(steps)] = result
                    print(f"  {app_key} N={steps}: {result['finished']}/{runs} finished, "
                          f"{result['runs_per_s']:.1f} runs/s "
                          f"({result['of_ceiling']:.0%} of {result['ceiling_runs_per_s']:.0f}), "
                          f"p50 {result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms, "
                          f"CPU/run: server {result['server_cpu_ms_per_run']:.1f} ms, "
                          f"app {result['app_cpu_ms_per_run']:.1f} ms",
                          flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out["load_after"] = load()
    return out


def median_spread(values: list[float]) -> str:
    values = [v for v in values if v == v]
    if not values:
        return "-"
    med = statistics.median(values)
    half = (max(values) - min(values)) / 2
    fmt = (lambda v: f"{v:,.0f}") if med >= 100 else (lambda v: f"{v:.1f}")
    return f"{fmt(med)} ± {fmt(half)}" if len(values) > 1 else fmt(med)


def table(reps: list[dict[str, Any]], apps: list[str], steps_list: list[int], runs: int) -> str:
    lines = [f"| app | steps | runs/s | ceiling runs/s | of ceiling | finished of {runs:,} | "
             "event→finish p50 ms | p99 ms | CPU ms/run: server | app | "
             "app-CPU bound runs/s | of it |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for app in apps:
        mine = [r for r in reps if r["app"] == app]
        for steps in steps_list:
            rows = [r["steps"][str(steps)] for r in mine if str(steps) in r["steps"]]
            if not rows:
                continue
            of = [r["of_ceiling"] * 100 for r in rows]
            lines.append(
                f"| {APPS[app]['label']} | {steps} | "
                f"{median_spread([r['runs_per_s'] for r in rows])} | "
                f"{median_spread([r['ceiling_runs_per_s'] for r in rows])} | "
                f"{statistics.median(of):.0f}% | "
                f"{min(r['finished'] for r in rows):,} (min) | "
                f"{median_spread([r['p50_ms'] for r in rows])} | "
                f"{median_spread([r['p99_ms'] for r in rows])} | "
                f"{median_spread([r['server_cpu_ms_per_run'] for r in rows])} | "
                f"{median_spread([r['app_cpu_ms_per_run'] for r in rows])} | "
                f"{median_spread([r['app_cpu_bound_runs_per_s'] for r in rows])} | "
                f"{statistics.median(r['of_app_cpu_bound'] * 100 for r in rows):.0f}% |")
    loads = [r["load_before"] for r in reps] + [r["load_after"] for r in reps]
    lines.append("")
    lines.append(f"Load average (1 min) during the run: {min(loads):.1f}–{max(loads):.1f}; "
                 f"{len(reps) // max(1, len(apps))} repetition(s); medians ± half the spread.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apps", default="ts,ts-plain,py")
    parser.add_argument("--steps", default="1,3,10")
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds a burst may take before the unfinished runs are counted")
    parser.add_argument("--serve-arg", action="append", default=[],
                        help="extra `stepwell serve` argument (repeatable)")
    args = parser.parse_args()
    apps = [a for a in args.apps.split(",") if a]
    steps_list = [int(s) for s in args.steps.split(",")]
    reps = []
    for rep in range(args.repeat):
        for app in apps:            # apps back to back within a repetition
            print(f"repetition {rep + 1}/{args.repeat}: {APPS[app]['label']}", flush=True)
            reps.append(repetition(app, steps_list, args.runs, args.timeout, args.serve_arg))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sdk-latest.json").write_text(json.dumps(
        {"args": vars(args), "repetitions": reps}, indent=2))
    report = table(reps, apps, steps_list, args.runs)
    (RESULTS / "sdk-latest.md").write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    main()
