"""Durable streams: publish -> deliver latency and items/s, over HTTP, SQLite and Postgres.

Per backend and repetition, a fresh `stepwell start` process (the worker and the server in one
process, as a single-node deployment runs; SQLite `synchronous=FULL`, or a fresh Postgres
database) runs an app whose step body publishes items, each carrying the wall-clock time it was
published. A subscriber in this process (`AsyncClient.subscribe`, Server-Sent Events over a
keep-alive connection) records when each arrives.

- **paced**: 200 items, one every 5 ms (no queueing): latency p50 / p99 / max.
- **burst**: 2,000 items published back to back from one step body (each `await
  step.publish` waits for its commit before the next): items/s at the subscriber (first to last
  arrival) and latency p50 / p99.

Each publish is its own commit (`synchronous=FULL`: fsynced), so one publisher's burst rate is
bounded by its commit round trips; publishers in parallel share group commits. The load average
is printed with the results.

    .venv/bin/python bench/streams.py                 # SQLite and Postgres, 2 repetitions
    .venv/bin/python bench/streams.py --db sqlite --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

from stepwell.client import AsyncClient

APP = '''
import asyncio, time
import stepwell

app = stepwell.App("bench-streams")

@app.function(id="publisher", trigger="bench/publish")
async def publisher(ctx, step):
    count, gap = ctx.event.data["count"], ctx.event.data["gap_ms"] / 1000

    async def body():
        for n in range(count):
            await step.publish("items", {"n": n, "t": time.time()})
            if gap:
                await asyncio.sleep(gap)
    await step.run("publish", body)
'''
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(workdir: Path, db: str, port: int) -> subprocess.Popen[bytes]:
    log = workdir / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "stepwell", "start", "app.py:app",
                                 "--db", db, "--port", str(port)], cwd=workdir, stdout=out,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while b"running at " not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"stepwell start failed: {log.read_text()}")
        time.sleep(0.05)
    return proc


async def measure(url: str, count: int, gap_ms: int) -> dict[str, Any]:
    async with AsyncClient(url, timeout=60) as client:
        event_id = await client.send("bench/publish", {"count": count, "gap_ms": gap_ms})
        while not (runs := await client.runs(event_id=event_id)):  # noqa: ASYNC110 - polling HTTP
            await asyncio.sleep(0.01)
        latencies, arrivals = [], []

        async def consume() -> None:
            async for item in client.subscribe(f"run:{runs[0].id}"):
                now = time.time()
                arrivals.append(now)
                latencies.append((now - item["data"]["t"]) * 1000)
                if item["data"]["n"] == count - 1:
                    return
        await asyncio.wait_for(consume(), 300)
    latencies.sort()
    span = arrivals[-1] - arrivals[0]
    return {"items": count, "items_per_s": round((count - 1) / span) if span else None,
            "p50_ms": round(statistics.median(latencies), 2),
            "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1], 2),
            "max_ms": round(latencies[-1], 2)}


def fresh_db(kind: str, workdir: Path) -> tuple[str, Any]:
    if kind == "sqlite":
        return f"sqlite:///{workdir / 'bench.db'}", None
    name = f"bench_streams_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return f"postgresql://postgres@127.0.0.1:5432/{name}", drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="sqlite,postgres")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()}")
    rows = []
    for kind in args.db.split(","):
        for rep in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                workdir = Path(tmp)
                (workdir / "app.py").write_text(APP)
                db, drop = fresh_db(kind, workdir)
                port = free_port()
                proc = start(workdir, db, port)
                try:
                    url = f"http://127.0.0.1:{port}"
                    paced = asyncio.run(measure(url, 200, 5))
                    burst = asyncio.run(measure(url, 2000, 0))
                finally:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait()
                    if drop is not None:
                        drop()
            rows.append((kind, rep, paced, burst))
            print(f"{kind} #{rep}: paced {paced}  burst {burst}", flush=True)
    print(f"load average at end: {os.getloadavg()}")
    print("\n| db | paced p50 ms | p99 ms | burst items/s | burst p50 ms | p99 ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for kind in args.db.split(","):
        mine = [r for r in rows if r[0] == kind]

        def med(part: int, key: str, mine: list[Any] = mine) -> float:
            return round(statistics.median(r[part][key] for r in mine), 2)
        print(f"| {kind} | {med(2, 'p50_ms')} | {med(2, 'p99_ms')} | "
              f"{med(3, 'items_per_s'):,.0f} | {med(3, 'p50_ms')} | {med(3, 'p99_ms')} |")


if __name__ == "__main__":
    main()
