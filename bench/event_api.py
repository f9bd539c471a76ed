"""The HTTP event API (`POST /e/{key}`) against its ceiling, in the same run.

Per repetition, a fresh `stepwell serve` (SQLite file, `synchronous=FULL`, no app: the events
are validated, given ids and committed, and trigger nothing) and a bare Starlette app on the
same uvicorn protocol (httptools) that parses the JSON body and answers the same shape
(`{"ids": [...], "status": 200}`) without storing anything: the ceiling. Then for 1, 16 and 64
concurrent keep-alive clients, each sending its next request when the previous answer is in
(closed loop), for `--seconds`: single events and batches of 100, first to stepwell and then,
back to back, to the ceiling. The client is raw asyncio HTTP/1.1 with TCP_NODELAY (no pool
bookkeeping), so it is the servers that are measured.

Printed: events/s, request latency p50/p99, stepwell / ceiling, and the server's CPU ms per
1,000 events (what a loaded machine distorts least). `--ref REF` adds a third server, stepwell
at git ref REF (`git archive`, as `bench/run.py --stepwell-ref`), measured in the same run: the
before/after of a change.

    .venv/bin/python bench/event_api.py                      # 2 repetitions, ~1 minute
    .venv/bin/python bench/event_api.py --ref HEAD~3 --repeat 2

Results: bench/results/event-api-latest.json and event-api-latest.md.
"""

from __future__ import annotations

import argparse
import asyncio
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
import uuid
from pathlib import Path
from typing import Any

from sdk import cpu_seconds, load, percentile, process, wait_ok

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
LENGTH = re.compile(rb"(?i)content-length:\s*(\d+)")


def ceiling_server(http: str) -> None:
    """The bare endpoint: Starlette on uvicorn with the HTTP protocol `stepwell serve` uses
    (httptools; `--ceiling-http h11` for the one it used before), TCP_NODELAY on the accepted
    connections (a listening socket made with IPPROTO_TCP, so asyncio sets it)."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def send(request: Request) -> JSONResponse:
        body = json.loads(await request.body())
        count = len(body) if isinstance(body, list) else 1
        return JSONResponse({"ids": [uuid.uuid4().hex for _ in range(count)], "status": 200})

    app = Starlette(routes=[Route("/e/{key}", send, methods=["POST"]),
                            Route("/health", lambda r: JSONResponse({}), methods=["GET"])])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    print(f"ceiling on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(app, http=http, log_level="warning", timeout_keep_alive=5)
    asyncio.run(uvicorn.Server(config).serve(sockets=[sock]))


def body(batch: int) -> bytes:
    event = {"name": "bench/event.sent", "data": {"order": 123, "user": "u-1",
                                                  "items": [{"sku": "a-1", "qty": 2}]}}
    return json.dumps(event if batch == 1 else [event] * batch).encode()


async def drive(url: str, clients: int, batch: int, seconds: float) -> dict[str, Any]:
    host, port = url.removeprefix("http://").split(":")
    payload = body(batch)
    request = (f"POST /e/bench-key HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json"
               f"\r\ncontent-length: {len(payload)}\r\n\r\n").encode() + payload
    latencies: list[float] = []
    failures = 0
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal failures
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while time.perf_counter() < stop:
            sent = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            match = LENGTH.search(head)
            await reader.readexactly(int(match.group(1)) if match else 0)
            latencies.append(time.perf_counter() - sent)
            if not head.startswith(b"HTTP/1.1 200"):
                failures += 1
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    elapsed = time.perf_counter() - start
    return {"events_per_s": len(latencies) * batch / elapsed, "requests": len(latencies),
            "failures": failures, "p50_ms": percentile(latencies, 50) * 1000,
            "p99_ms": percentile(latencies, 99) * 1000}


def export_ref(ref: str, into: Path) -> Path:
    archive = subprocess.run(["git", "archive", ref, "src"], cwd=ROOT, capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def repetition(servers: dict[str, tuple[list[str], dict[str, str]]], concurrencies: list[int],
               batches: list[int], seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {"load_before": load(), "cells": []}
    with _started(servers) as running:
        for batch in batches:
            for clients in concurrencies:
                cell: dict[str, Any] = {"batch": batch, "clients": clients, "load": load()}
                for name, (proc, url) in running.items():   # back to back
                    cpu = cpu_seconds(proc.pid)
                    result = asyncio.run(drive(url, clients, batch, seconds))
                    events = max(1, result["requests"] * batch)
                    result["cpu_ms_per_1000"] = (cpu_seconds(proc.pid) - cpu) * 1e6 / events
                    cell[name] = result
                ratio = cell["stepwell"]["events_per_s"] / cell["ceiling"]["events_per_s"]
                cell["ratio"] = ratio
                extra = ""
                if "baseline" in cell:
                    extra = (f", baseline {cell['baseline']['events_per_s']:,.0f}/s "
                             f"(p50 {cell['baseline']['p50_ms']:.2f} ms)")
                print(f"  batch {batch:>3}, {clients:>2} clients: stepwell "
                      f"{cell['stepwell']['events_per_s']:,.0f} events/s (p50 "
                      f"{cell['stepwell']['p50_ms']:.2f} ms), ceiling "
                      f"{cell['ceiling']['events_per_s']:,.0f}/s -> {ratio:.0%}{extra}; "
                      f"load {cell['load']:.1f}", flush=True)
                out["cells"].append(cell)
    out["load_after"] = load()
    return out


class _started:
    """Start every server, wait until each answers; stop them all on exit."""

    def __init__(self, servers: dict[str, tuple[list[str], dict[str, str]]]) -> None:
        self.servers = servers
        self.contexts: list[Any] = []

    def __enter__(self) -> dict[str, tuple[subprocess.Popen[str], str]]:
        running = {}
        for name, (cmd, env) in self.servers.items():
            ctx = process(cmd, env, name)
            self.contexts.append(ctx)
            proc, url = ctx.__enter__()
            wait_ok(f"{url}/health")
            running[name] = (proc, url)
        return running

    def __exit__(self, *exc: object) -> None:
        for ctx in reversed(self.contexts):
            ctx.__exit__(None, None, None)


def cell_text(values: list[float], fmt: str = "{:,.0f}") -> str:
    med = statistics.median(values)
    half = (max(values) - min(values)) / 2
    return fmt.format(med) + (f" ± {fmt.format(half)}" if len(values) > 1 else "")


def table(reps: list[dict[str, Any]], with_baseline: bool) -> str:
    head = ("| body | clients | stepwell events/s | p50 ms | p99 ms | ceiling events/s | "
            "stepwell / ceiling | server CPU ms per 1,000 events |")
    rule = "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    if with_baseline:
        head += " baseline events/s | stepwell / baseline | baseline CPU ms per 1,000 |"
        rule += " ---: | ---: | ---: |"
    lines = [head, rule]
    for index, first in enumerate(reps[0]["cells"]):
        cells = [r["cells"][index] for r in reps]
        sw = [c["stepwell"] for c in cells]
        what = "1 event" if first["batch"] == 1 else f"{first['batch']} events"
        line = (f"| {what} | "
                f"{first['clients']} | {cell_text([s['events_per_s'] for s in sw])} | "
                f"{cell_text([s['p50_ms'] for s in sw], '{:.2f}')} | "
                f"{cell_text([s['p99_ms'] for s in sw], '{:.2f}')} | "
                f"{cell_text([c['ceiling']['events_per_s'] for c in cells])} | "
                f"{statistics.median(c['ratio'] for c in cells):.0%} | "
                f"{cell_text([s['cpu_ms_per_1000'] for s in sw])} |")
        if with_baseline:
            gain = statistics.median(c["stepwell"]["events_per_s"] / c["baseline"]["events_per_s"]
                                     for c in cells)
            line += (f" {cell_text([c['baseline']['events_per_s'] for c in cells])} | "
                     f"{gain:.2f}x | "
                     f"{cell_text([c['baseline']['cpu_ms_per_1000'] for c in cells])} |")
        lines.append(line)
    loads = [c["load"] for r in reps for c in r["cells"]]
    lines.append("")
    lines.append(f"1-minute load average during the run: {min(loads):.1f}–{max(loads):.1f}; "
                 f"{len(reps)} repetition(s), medians ± half the spread.")
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["--ceiling-server"]:
        ceiling_server(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,16,64")
    parser.add_argument("--batches", default="1,100")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--ref", help="also measure stepwell at this git ref (baseline)")
    parser.add_argument("--ceiling-http", default="httptools", choices=["httptools", "h11"],
                        help="the ceiling's uvicorn protocol (stepwell serves with httptools)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sw-event-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INNGEST_", "STEPWELL_"))}
    try:
        def serve(name: str, extra_env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
            db = tmp / f"{name}-{time.monotonic_ns()}.db"
            return ([sys.executable, "-m", "stepwell", "serve", "--db", f"sqlite:///{db}",
                     "--host", "127.0.0.1", "--port", "0"], {**env, **extra_env})

        reps = []
        for rep in range(args.repeat):
            print(f"repetition {rep + 1}/{args.repeat}", flush=True)
            servers = {"stepwell": serve("stepwell", {}),
                       "ceiling": ([sys.executable, str(Path(__file__).resolve()),
                                    "--ceiling-server", args.ceiling_http], env)}
            if args.ref:
                src = export_ref(args.ref, Path(tempfile.mkdtemp(dir=tmp)))
                servers["baseline"] = serve("baseline", {"PYTHONPATH": str(src)})
            reps.append(repetition(servers, [int(c) for c in args.clients.split(",")],
                                   [int(b) for b in args.batches.split(",")], args.seconds))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "event-api-latest.json").write_text(json.dumps(
        {"args": vars(args), "repetitions": reps}, indent=2))
    report = table(reps, bool(args.ref))
    (RESULTS / "event-api-latest.md").write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    main()
