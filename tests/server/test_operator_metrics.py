"""`GET /metrics` for operators, scraped after real runs: backlog and oldest-item age per function
and per concurrency key, runs started and finished per function, step duration per function,
and the queue lag an autoscaler follows."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

import stepwell
from stepwell.runtime.stats import Backlog, backlog
from stepwell.server.app import create_app
from stepwell.service import Service
from stepwell.testing import VirtualClock


@asynccontextmanager
async def scraper(engine: stepwell.Engine) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(Service(engine)))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
        yield http


async def scrape(http: httpx.AsyncClient) -> dict[str, float]:
    """Each sample line of /metrics: `name{labels}` -> value."""
    reply = await http.get("/metrics")
    assert reply.status_code == 200, reply.text
    samples = {}
    for line in reply.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


async def until_running(engine: stepwell.Engine, count: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while len(await engine.runs(status="running")) < count:
        assert loop.time() < deadline, "the runs did not start"
        await asyncio.sleep(0.01)


async def until_true(condition: Any, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def until_scraped(http: httpx.AsyncClient, name: str, value: float
                        ) -> dict[str, float]:
    """The samples once `name` has `value` (polled, with a deadline)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while (samples := await scrape(http)).get(name) != value:
        assert loop.time() < deadline, f"{name} stayed at {samples.get(name)}, not {value}"
        await asyncio.sleep(0.01)
    return samples


def gated_app(gate: asyncio.Event, started: list[str] | None = None) -> stepwell.App:
    """Steps that wait for `gate`; each appends to `started` when it begins (a run can be
    `running` before its step has started: tests that time the steps wait for this)."""
    app = stepwell.App("ops")

    async def work() -> str:
        if started is not None:
            started.append("work")
        await gate.wait()
        return "done"

    @app.function(id="export", trigger="ops/export",
                  concurrency=stepwell.Concurrency(limit=1, key="event.data.customer"))
    async def export(ctx: stepwell.Context, step: stepwell.Step) -> str:
        return str(await step.run("work", work))

    @app.function(id="bulk", trigger="ops/bulk")
    async def bulk(ctx: stepwell.Context, step: stepwell.Step) -> str:
        return str(await step.run("work", work))

    return app


async def test_backlog_per_function_and_concurrency_key_then_throughput(
        make_engine: Any, clock: VirtualClock) -> None:
    gate = asyncio.Event()
    started: list[str] = []
    async with make_engine(gated_app(gate, started)) as engine, scraper(engine) as http:
        for customer in ["a", "a", "a", "b", "b"]:
            await engine.send("ops/export", {"customer": customer})
        await until_running(engine, 2)           # one per customer; the rest wait for a slot
        await until_true(lambda: len(started) == 2, "both first steps to start")
        # The first run of each customer was leased when it was created; the others are
        # parked once the worker has claimed them and found their slot taken.
        await until_scraped(http, "stepwell_queue_ready", 0)
        clock._set(clock.now() + 30_000)         # virtual time passes while they wait
        fn = 'function="ops/export"'
        # A worker may hold one of the waiting runs for an instant while it finds the slot
        # taken (a claim, then back to the queue): wait for the three to be back.
        samples = await until_scraped(http, f"stepwell_function_backlog{{{fn}}}", 3)
        assert samples[f"stepwell_function_backlog{{{fn}}}"] == 3
        assert samples[f"stepwell_function_backlog_oldest_seconds{{{fn}}}"] == 30.0
        keyed = {name: value for name, value in samples.items()
                 if name.startswith("stepwell_concurrency_backlog{")}
        assert sorted(keyed.values()) == [1, 2], keyed
        [busiest] = [name for name, value in keyed.items() if value == 2]
        assert re.search(r'key="[^"]*a"', busiest), busiest
        # Runs waiting for a concurrency slot are not waiting for a worker: no lag.
        assert samples["stepwell_queue_lag_seconds"] == 0.0
        assert samples[f"stepwell_function_runs_started_total{{{fn}}}"] == 2
        gate.set()
        await engine.idle()
        samples = await scrape(http)
    assert samples[f"stepwell_function_runs_started_total{{{fn}}}"] == 5
    assert samples[f'stepwell_function_runs_finished_total{{{fn},status="completed"}}'] == 5
    assert not [n for n in samples if n.startswith("stepwell_function_backlog")]
    # The two first steps waited 30 s for the gate; the three others ran at once.
    assert samples[f"stepwell_function_step_seconds_count{{{fn}}}"] == 5
    assert samples[f'stepwell_function_step_seconds_bucket{{{fn},le="10.0"}}'] == 3
    assert samples[f'stepwell_function_step_seconds_bucket{{{fn},le="30.0"}}'] == 5
    assert samples[f"stepwell_function_step_seconds_sum{{{fn}}}"] == 60.0


async def test_queue_lag_is_the_wait_of_ready_runs_no_worker_took(
        make_engine: Any, clock: VirtualClock) -> None:
    gate = asyncio.Event()
    async with make_engine(gated_app(gate), max_concurrency=1) as engine, \
            scraper(engine) as http:
        for _ in range(3):
            await engine.send("ops/bulk", {})
        await until_running(engine, 1)
        clock._set(clock.now() + 45_000)
        samples = await scrape(http)
        assert samples["stepwell_queue_lag_seconds"] == 45.0
        assert samples['stepwell_function_backlog{function="ops/bulk"}'] == 2
        assert samples['stepwell_function_backlog_oldest_seconds{function="ops/bulk"}'] == 45.0
        gate.set()
        await engine.idle()
        samples = await scrape(http)
    assert samples["stepwell_queue_lag_seconds"] == 0.0
    assert samples['stepwell_function_runs_finished_total{function="ops/bulk",'
                   'status="completed"}'] == 3


def test_concurrency_keys_beyond_the_busiest_are_summed_as_other() -> None:
    rows: list[tuple[str, str | None, int, int]] = [
        ("f", "k1", 5, 1_000), ("f", "k2", 3, 4_000), ("f", "k3", 2, 2_000),
        ("f", "k4", 1, 3_000), ("f", None, 4, 500), ("g", None, 1, 9_000)]
    functions, keys = backlog(rows, now=10_000, top=2)
    assert functions == {"f": Backlog(15, 9.5), "g": Backlog(1, 1.0)}
    assert keys == {("f", "k1"): Backlog(5, 9.0), ("f", "k2"): Backlog(3, 6.0),
                    ("f", "other"): Backlog(3, 8.0)}
