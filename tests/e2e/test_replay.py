"""Loops, repeated ids, replay checks (non-determinism), sleep_until, in-flight cancellation."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import pytest

import stepwell
from stepwell.testing import VirtualClock


async def test_loops_with_repeated_and_dynamic_ids(make_engine: Any, clock: VirtualClock) -> None:
    app = stepwell.App("t")
    executed: list[str] = []

    def process(item: dict[str, Any]) -> int:
        executed.append(item["id"])
        return int(item["qty"]) * 2

    @app.function(id="loops", trigger="t/items")
    async def loops(ctx: stepwell.Context, step: stepwell.Step) -> dict[str, Any]:
        dynamic = [await step.run(f"process-item-{item['id']}", process, item)
                   for item in ctx.event.data["items"]]
        repeated = []
        for item in ctx.event.data["items"]:
            repeated.append(await step.run("same-id", lambda i=item: i["id"].upper()))
            await step.sleep("tick", "1m")
        return {"dynamic": dynamic, "repeated": repeated}

    items = [{"id": "a", "qty": 1}, {"id": "b", "qty": 2}, {"id": "c", "qty": 3}]
    async with make_engine(app) as engine:
        [run] = await engine.runs(event_id=await engine.send("t/items", {"items": items}))
        await clock.advance("5m")
        run = await engine.wait(run.id)
    assert run.output == {"dynamic": [2, 4, 6], "repeated": ["A", "B", "C"]}
    assert executed == ["a", "b", "c"]
    assert [s.id for s in run.steps] == [
        "process-item-a", "process-item-b", "process-item-c",
        "same-id", "tick", "same-id", "tick", "same-id", "tick"]
    assert run.warnings == []


@pytest.mark.counts_executions
async def test_changed_step_arguments_on_replay_are_flagged_not_reused(
        make_engine: Any, clock: VirtualClock) -> None:
    """A handler whose step inputs differ on replay (a non-deterministic value computed outside a
    step) must not silently get the memo recorded for other inputs."""
    app = stepwell.App("t")
    counter = {"n": 0}

    @app.function(id="nondet", trigger="t/nondet", retries=0)
    async def nondet(ctx: stepwell.Context, step: stepwell.Step) -> Any:
        counter["n"] += 1
        value = counter["n"]            # different on every replay: a bug in user code
        got = await step.run("use", lambda v: v * 10, value)
        await step.sleep("nap", "1m")
        return got

    async with make_engine(app) as engine:
        [run] = await engine.runs(event_id=await engine.send("t/nondet", {}))
        await clock.advance("1m")
        run = await engine.wait(run.id)
    assert run.status == "failed"
    assert run.error is not None and run.error["name"] == "NonDeterminismError"
    assert any("different arguments" in w for w in run.warnings)


@pytest.mark.counts_executions
async def test_reordered_steps_record_a_warning(make_engine: Any, clock: VirtualClock) -> None:
    app = stepwell.App("t")
    flip = {"on": False}

    @app.function(id="reorder", trigger="t/reorder")
    async def reorder(ctx: stepwell.Context, step: stepwell.Step) -> list[str]:
        order = ["x", "y"] if not flip["on"] else ["y", "x"]
        flip["on"] = True
        out = [await step.run(name, lambda n=name: n) for name in order]
        await step.sleep("nap", "1m")
        return out

    async with make_engine(app) as engine:
        [run] = await engine.runs(event_id=await engine.send("t/reorder", {}))
        await clock.advance("1m")
        run = await engine.wait(run.id)
    assert run.status == "completed"
    assert any("non-determinism" in w and "order" in w for w in run.warnings)


async def test_step_kind_change_is_not_reused(make_engine: Any, clock: VirtualClock) -> None:
    app = stepwell.App("t")
    version = {"v": 1}

    @app.function(id="kind", trigger="t/kind", retries=0)
    async def kind(ctx: stepwell.Context, step: stepwell.Step) -> Any:
        if version["v"] == 1:
            await step.sleep("thing", "1m")
        else:
            return await step.run("thing", lambda: "ran")
        version["v"] = 2
        await step.sleep("after", "1m")
        return None

    async with make_engine(app) as engine:
        [run] = await engine.runs(event_id=await engine.send("t/kind", {}))
        await clock.advance("5m")
        run = await engine.wait(run.id)
    assert run.status == "failed"
    assert run.error is not None and "was recorded as a 'sleep' step" in run.error["message"]


async def test_sleep_until_datetime_iso_and_past(make_engine: Any, clock: VirtualClock) -> None:
    app = stepwell.App("t")
    woke: list[int] = []
    start = clock.now()
    target = datetime.datetime.fromtimestamp((start + 7_200_000) / 1000, tz=datetime.UTC)

    @app.function(id="until", trigger="t/until")
    async def until(ctx: stepwell.Context, step: stepwell.Step) -> None:
        await step.sleep_until("past", start - 1000)
        await step.sleep_until("dt", target)
        await step.run("woke-1", lambda: woke.append(clock.now()))
        await step.sleep_until("iso", (target + datetime.timedelta(hours=1)).isoformat())
        await step.run("woke-2", lambda: woke.append(clock.now()))

    async with make_engine(app) as engine:
        [run] = await engine.runs(event_id=await engine.send("t/until", {}))
        await clock.advance("4h")
        run = await engine.wait(run.id)
    assert run.status == "completed"
    assert woke == [start + 7_200_000, start + 10_800_000]


async def test_cancel_takes_effect_between_steps(make_engine: Any) -> None:
    app = stepwell.App("t")
    started = asyncio.Event()
    release = asyncio.Event()
    ran_second: list[bool] = []

    async def slow() -> str:
        started.set()
        await release.wait()
        return "slow done"

    @app.function(id="inflight", trigger="t/inflight")
    async def inflight(ctx: stepwell.Context, step: stepwell.Step) -> None:
        await step.run("slow", slow)
        await step.run("second", lambda: ran_second.append(True))

    async with make_engine(app) as engine:
        [run] = await engine.runs(event_id=await engine.send("t/inflight", {}))
        await asyncio.wait_for(started.wait(), 10)
        assert await engine.cancel(run.id)
        release.set()
        await engine.idle()
        run = await engine.wait(run.id)
    assert run.status == "cancelled"
    assert ran_second == []
    assert run.steps == []   # the in-flight step's result was not committed after cancellation


async def test_function_ids_are_qualified_by_app(make_engine: Any) -> None:
    a, b = stepwell.App("a"), stepwell.App("b")

    @a.function(id="same", trigger="x/go")
    async def fa(ctx: stepwell.Context, step: stepwell.Step) -> str:
        return "a"

    @b.function(id="same", trigger="x/go")
    async def fb(ctx: stepwell.Context, step: stepwell.Step) -> str:
        return "b"

    async with make_engine(a, b) as engine:
        event_id = await engine.send("x/go", {})
        await engine.idle()
        runs = await engine.runs(event_id=event_id)
        assert sorted(r.function_id for r in runs) == ["a/same", "b/same"]
        [ra] = await engine.runs(function_id="a/same")
        assert (await engine.wait(ra.id)).output == "a"


async def test_rerun_with_edited_step_input_is_refused_for_native_functions(
        make_engine: Any) -> None:
    """Editing a step's input on rerun needs an SDK that takes the input from the server (the
    TypeScript SDK); a native function says so instead of running with its old arguments."""
    app = stepwell.App("t")

    @app.function(id="priced", trigger="t/priced")
    async def priced(ctx: stepwell.Context, step: stepwell.Step) -> Any:
        return await step.run("price", lambda qty: qty * 10, ctx.event.data["qty"])

    async with make_engine(app) as engine:
        [run] = await engine.runs(event_id=await engine.send("t/priced", {"qty": 2}))
        run = await engine.wait(run.id)
        assert run.output == 20
        with pytest.raises(ValueError, match="TypeScript SDK only"):
            await engine.replay(run.id, from_step="price", step_input=[7])
        assert len(await engine.runs()) == 1           # nothing was started


@pytest.mark.counts_executions
async def test_a_step_inserted_before_recorded_ones_records_a_warning(
        make_engine: Any, clock: VirtualClock) -> None:
    app = stepwell.App("t")
    version = {"v": 1}

    @app.function(id="ins", trigger="t/ins")
    async def ins(ctx: stepwell.Context, step: stepwell.Step) -> str:
        if version["v"] == 2:
            await step.run("inserted", lambda: "new")
        await step.run("a", lambda: "a")
        version["v"] = 2
        await step.sleep("nap", "1h")
        return "ok"

    async with make_engine(app) as engine:
        [run] = await engine.runs(event_id=await engine.send("t/ins", {}))
        await engine.idle()
        await clock.advance("1h")
        run = await engine.wait(run.id)
    assert any("order" in w for w in run.warnings)


@pytest.mark.counts_executions
async def test_swapped_steps_record_a_warning_on_the_virtual_clock(
        make_engine: Any, clock: VirtualClock) -> None:
    app = stepwell.App("t")
    version = {"v": 1}

    @app.function(id="swap", trigger="t/swap")
    async def swap(ctx: stepwell.Context, step: stepwell.Step) -> str:
        order = ["a", "b"] if version["v"] == 1 else ["b", "a"]
        for name in order:
            await step.run(name, lambda n=name: n)
        version["v"] = 2
        await step.sleep("nap", "1h")
        return "ok"

    async with make_engine(app) as engine:
        [run] = await engine.runs(event_id=await engine.send("t/swap", {}))
        await engine.idle()
        await clock.advance("1h")
        run = await engine.wait(run.id)
    assert any("order" in w for w in run.warnings)
