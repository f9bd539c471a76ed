"""End-to-end basics on the virtual clock: steps, memoization, sleeps, sync handlers."""

from __future__ import annotations

import asyncio
from typing import Any

import stepwell
from stepwell.testing import VirtualClock


async def test_three_step_run_completes_with_memoized_outputs(make_engine: Any) -> None:
    app = stepwell.App("t")
    calls: list[str] = []

    def double(x: int) -> int:
        calls.append("double")
        return x * 2

    async def add_one(x: int) -> int:
        calls.append("add")
        return x + 1

    @app.function(id="math", trigger="t/go")
    async def math(ctx: stepwell.Context, step: stepwell.Step) -> dict[str, int]:
        a = await step.run("double", double, ctx.event.data["n"])
        b = await step.run("add", add_one, a)
        c = await step.run("tuple", lambda: (a, b))
        return {"a": a, "b": b, "sum": sum(c)}

    async with make_engine(app) as engine:
        event_id = await engine.send("t/go", {"n": 5})
        [run] = await engine.runs(event_id=event_id)
        run = await engine.wait(run.id, timeout=10)
    assert run.status == "completed"
    assert run.output == {"a": 10, "b": 11, "sum": 21}
    assert [s.id for s in run.steps] == ["double", "add", "tuple"]
    assert all(s.status == "completed" and s.attempts == 1 for s in run.steps)
    assert calls == ["double", "add"]


async def test_sleep_suspends_until_virtual_time_passes(make_engine: Any,
                                                       clock: VirtualClock) -> None:
    app = stepwell.App("t")
    after: list[int] = []

    @app.function(id="sleepy", trigger="t/sleep")
    async def sleepy(ctx: stepwell.Context, step: stepwell.Step) -> str:
        await step.run("before", lambda: 1)
        await step.sleep("nap", "1h")
        await step.run("after", lambda: after.append(clock.now()))
        return "woke"

    async with make_engine(app) as engine:
        start = clock.now()
        event_id = await engine.send("t/sleep", {})
        await engine.idle()
        [run] = await engine.runs(event_id=event_id)
        assert run.status == "running"
        await clock.advance("59m")
        assert (await engine.get_run(run.id)).status == "running"  # type: ignore[union-attr]
        await clock.advance("1m")
        run = await engine.wait(run.id, timeout=10)
    assert run.status == "completed" and run.output == "woke"
    assert after == [start + 3_600_000]


async def test_sync_handler_and_sync_steps(make_engine: Any) -> None:
    app = stepwell.App("t")

    @app.function(id="sync", trigger="t/sync")
    def handler(ctx: stepwell.Context, step: stepwell.SyncStep) -> int:
        x = step.run("one", lambda: 1)
        step.sleep("zero", 0)
        return x + step.run("two", lambda: 2)

    async with make_engine(app) as engine:
        event_id = await engine.send("t/sync", {})
        [run] = await engine.runs(event_id=event_id)
        run = await engine.wait(run.id, timeout=10)
    assert run.status == "completed" and run.output == 3


async def test_parallel_steps_with_gather(make_engine: Any) -> None:
    app = stepwell.App("t")
    running = 0
    peak = 0

    async def fetch(name: str) -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        running -= 1
        return name.upper()

    @app.function(id="par", trigger="t/par")
    async def par(ctx: stepwell.Context, step: stepwell.Step) -> list[str]:
        return list(await asyncio.gather(step.run("a", fetch, "a"), step.run("b", fetch, "b")))

    async with make_engine(app) as engine:
        event_id = await engine.send("t/par", {})
        [run] = await engine.runs(event_id=event_id)
        run = await engine.wait(run.id, timeout=10)
    assert run.output == ["A", "B"]
    assert peak == 2
    assert sorted(s.id for s in run.steps) == ["a", "b"]
