"""Timers: short sleeps stay in memory, timer items are leased ahead of their instant and resume
exactly on time, and none of it changes what a run does (cancellation, concurrency slots,
retries, parallel sleeps, crashes). On the virtual clock, on SQLite and Postgres."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import stepwell
from stepwell.store.base import QueueItem
from stepwell.testing import VirtualClock


async def exec_item(engine: stepwell.Engine, run_id: str) -> QueueItem | None:
    return await engine._worker.store.read(lambda tx: tx.get_item(f"exec:{run_id}"))


async def leased_here(engine: stepwell.Engine, run_id: str) -> bool:
    """Whether this engine leases the run's item, once its prefetch (a loop turn after the item
    is handed back, which `idle` need not wait for: the item is not ready) got to it; polled
    with a deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        item = await exec_item(engine, run_id)
        if item is not None and item.owner == engine._worker.owner:
            return True
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.01)


async def only_run(engine: stepwell.Engine, event_id: str | list[str]) -> stepwell.Run:
    assert isinstance(event_id, str)
    [run] = await engine.runs(event_id=event_id)
    return run


def sleeper_app(calls: list[str], clock: VirtualClock, sleep: str) -> stepwell.App:
    app = stepwell.App("t")

    @app.function(id="nap", trigger="t/nap")
    async def nap(ctx: stepwell.Context, step: stepwell.Step) -> int:
        calls.append("handler")
        await step.run("before", lambda: calls.append("before"))
        await step.sleep("nap", sleep)
        return await step.run("after", lambda: calls.append("after") or clock.now())

    return app


@pytest.mark.counts_executions
async def test_short_sleep_stays_in_memory(make_engine: Any, clock: VirtualClock) -> None:
    calls: list[str] = []
    async with make_engine(sleeper_app(calls, clock, "2s")) as engine:
        start = clock.now()
        run = await only_run(engine, await engine.send("t/nap", {}))
        await engine.idle()
        run = await engine.get_run(run.id)
        assert run is not None and run.status == "running"
        assert [s.status for s in run.steps] == ["completed", "sleeping"]
        item = await exec_item(engine, run.id)
        assert item is not None and item.owner == engine._worker.owner     # still leased: in memory
        await clock.advance("1999ms")
        assert calls == ["handler", "before"]
        await clock.advance("1ms")
        run = await engine.wait(run.id)
    assert run.status == "completed" and run.output == start + 2000
    assert calls == ["handler", "before", "after"]      # never replayed
    assert [s.status for s in run.steps] == ["completed", "completed", "completed"]


@pytest.mark.counts_executions
async def test_long_sleep_hands_the_run_back(make_engine: Any, clock: VirtualClock) -> None:
    calls: list[str] = []
    async with make_engine(sleeper_app(calls, clock, "1h")) as engine:
        start = clock.now()
        run = await only_run(engine, await engine.send("t/nap", {}))
        await engine.idle()
        item = await exec_item(engine, run.id)
        assert item is not None and item.owner is None and item.due_at == start + 3_600_000
        await clock.advance("1h")
        run = await engine.wait(run.id)
    assert run.output == start + 3_600_000
    assert calls == ["handler", "before", "handler", "after"]     # replayed after the sleep


@pytest.mark.counts_executions
async def test_timer_is_leased_ahead_and_resumes_at_its_instant(make_engine: Any,
                                                                clock: VirtualClock) -> None:
    calls: list[str] = []
    async with make_engine(sleeper_app(calls, clock, "30s"), prefetch_seconds=5) as engine:
        start = clock.now()
        run = await only_run(engine, await engine.send("t/nap", {}))
        await engine.idle()
        item = await exec_item(engine, run.id)
        assert item is not None and item.owner is None            # 30 s: beyond the horizon
        await clock.advance("26s")                                # now within 5 s of it
        item = await exec_item(engine, run.id)
        assert item is not None and item.owner == engine._worker.owner
        assert calls == ["handler", "before", "handler"]          # replayed up to the sleep
        run = await engine.get_run(run.id)
        assert run is not None and run.steps[-1].status == "sleeping"
        await clock.advance("3999ms")
        assert calls == ["handler", "before", "handler"]
        await clock.advance("1ms")
        run = await engine.wait(run.id)
    assert run.output == start + 30_000
    assert calls == ["handler", "before", "handler", "after"]


@pytest.mark.counts_executions
async def test_prefetch_disabled(make_engine: Any, clock: VirtualClock) -> None:
    calls: list[str] = []
    async with make_engine(sleeper_app(calls, clock, "2s"), prefetch_seconds=0) as engine:
        run = await only_run(engine, await engine.send("t/nap", {}))
        await engine.idle()
        item = await exec_item(engine, run.id)
        assert item is not None and item.owner is None
        await clock.advance("2s")
        run = await engine.wait(run.id)
    assert run.status == "completed"
    assert calls == ["handler", "before", "handler", "after"]


async def test_cancelled_while_asleep_in_memory_runs_no_more_steps(
        make_engine: Any, clock: VirtualClock) -> None:
    calls: list[str] = []
    async with make_engine(sleeper_app(calls, clock, "2s")) as engine:
        run = await only_run(engine, await engine.send("t/nap", {}))
        await engine.idle()
        assert await engine.cancel(run.id)
        await clock.advance("5s")
        run = await engine.wait(run.id)
    assert run.status == "cancelled"
    assert "after" not in calls
    assert [s.id for s in run.steps] == ["before", "nap"]


async def test_cancelled_while_leased_ahead_runs_no_more_steps(
        make_engine: Any, clock: VirtualClock) -> None:
    calls: list[str] = []
    async with make_engine(sleeper_app(calls, clock, "10s")) as engine:
        run = await only_run(engine, await engine.send("t/nap", {}))
        await engine.idle()
        await clock.advance("6s")
        item = await exec_item(engine, run.id)
        assert item is not None and item.owner == engine._worker.owner
        assert await engine.cancel(run.id)
        await clock.advance("10s")
        run = await engine.wait(run.id)
    assert run.status == "cancelled" and "after" not in calls


async def test_a_sleeping_run_gives_up_its_concurrency_slot(make_engine: Any,
                                                            clock: VirtualClock) -> None:
    app = stepwell.App("t")
    order: list[str] = []

    @app.function(id="limited", trigger="t/go", concurrency=1)
    async def limited(ctx: stepwell.Context, step: stepwell.Step) -> None:
        name = ctx.event.data["name"]
        await step.run("start", lambda: order.append(f"{name} start"))
        await step.sleep("nap", "2s")
        await step.run("end", lambda: order.append(f"{name} end"))

    async with make_engine(app) as engine:
        first = await only_run(engine, await engine.send("t/go", {"name": "a"}))
        await engine.idle()
        second = await only_run(engine, await engine.send("t/go", {"name": "b"}))
        await engine.idle()
        # b starts while a sleeps: a sleeping run holds no slot, even for a 2 s sleep.
        assert order == ["a start", "b start"]
        item = await exec_item(engine, first.id)
        assert item is not None and item.owner is None
        await clock.advance("2s")
        await engine.wait(first.id)
        await engine.wait(second.id)
    assert sorted(order[2:]) == ["a end", "b end"]


async def test_retry_backoff_waits_for_its_instant(make_engine: Any,
                                                   clock: VirtualClock) -> None:
    app = stepwell.App("t")
    attempts: list[int] = []

    def flaky() -> str:
        attempts.append(clock.now())
        if len(attempts) == 1:
            raise stepwell.RetryAfterError("busy", "3s")
        return "ok"

    @app.function(id="flaky", trigger="t/go", retries=2)
    async def fn(ctx: stepwell.Context, step: stepwell.Step) -> str:
        out: str = await step.run("call", flaky)
        return out

    async with make_engine(app) as engine:
        run = await only_run(engine, await engine.send("t/go", {}))
        await engine.idle()
        assert await leased_here(engine, run.id)     # within the horizon: leased ahead
        await clock.advance("2999ms")
        assert len(attempts) == 1
        await clock.advance("1ms")
        run = await engine.wait(run.id)
    assert run.output == "ok"
    assert attempts[1] - attempts[0] == 3000


async def test_parallel_sleeps_each_wake_on_time(make_engine: Any, clock: VirtualClock) -> None:
    app = stepwell.App("t")
    woke: dict[str, int] = {}

    @app.function(id="par", trigger="t/go")
    async def par(ctx: stepwell.Context, step: stepwell.Step) -> dict[str, int]:
        async def branch(name: str, duration: str) -> None:
            await step.sleep(f"sleep-{name}", duration)
            await step.run(f"after-{name}", lambda: woke.setdefault(name, clock.now()))

        await asyncio.gather(branch("a", "1s"), branch("b", "3s"), branch("c", "20s"))
        return dict(woke)

    async with make_engine(app) as engine:
        start = clock.now()
        run = await only_run(engine, await engine.send("t/go", {}))
        await engine.idle()
        await clock.advance("30s")
        run = await engine.wait(run.id)
    assert run.status == "completed"
    assert {k: v - start for k, v in run.output.items()} == {"a": 1000, "b": 3000, "c": 20000}
    assert run.warnings == []      # branches interleave differently on replay: not a change


async def test_steps_in_parallel_with_a_long_sleep_run_at_once(make_engine: Any,
                                                               clock: VirtualClock) -> None:
    app = stepwell.App("t")
    ran: list[tuple[str, int]] = []

    @app.function(id="par", trigger="t/go")
    async def par(ctx: stepwell.Context, step: stepwell.Step) -> None:
        async def worker() -> None:
            for name in ("one", "two", "three"):
                await step.run(name, lambda n=name: ran.append((n, clock.now())))

        await asyncio.gather(step.sleep("nap", "1h"), worker())

    async with make_engine(app) as engine:
        start = clock.now()
        run = await only_run(engine, await engine.send("t/go", {}))
        await engine.idle()
        # Every step of the other branch ran without waiting for the sleep to end.
        assert ran == [("one", start), ("two", start), ("three", start)]
        await clock.advance("1h")
        run = await engine.wait(run.id)
    assert run.status == "completed" and run.warnings == []


async def test_a_wait_in_parallel_with_a_short_sleep_is_not_held_back(
        make_engine: Any, clock: VirtualClock) -> None:
    app = stepwell.App("t")
    seen: list[tuple[str, int]] = []

    @app.function(id="par", trigger="t/go")
    async def par(ctx: stepwell.Context, step: stepwell.Step) -> None:
        async def sleeper() -> None:
            await step.sleep("nap", "4s")

        async def waiter() -> None:
            got = await step.wait_for_event("ping", event="t/ping", timeout="1h")
            assert got is not None
            await step.run("pinged", lambda: seen.append(("pinged", clock.now())))

        await asyncio.gather(sleeper(), waiter())

    async with make_engine(app) as engine:
        start = clock.now()
        run = await only_run(engine, await engine.send("t/go", {}))
        await engine.idle()
        await clock.advance("1s")
        await engine.send("t/ping", {})
        await engine.idle()
        # The waiting branch goes on at once, while the other branch still sleeps.
        assert seen == [("pinged", start + 1000)]
        await clock.advance("3s")
        run = await engine.wait(run.id)
    assert run.status == "completed"


async def test_at_most_max_parked_runs_wait_in_memory(make_engine: Any,
                                                      clock: VirtualClock) -> None:
    calls: list[str] = []
    async with make_engine(sleeper_app(calls, clock, "2s"), max_parked=2) as engine:
        runs = [await only_run(engine, await engine.send("t/nap", {})) for _ in range(5)]
        await engine.idle()
        owners = [(await exec_item(engine, r.id)) for r in runs]
        in_memory = [i for i in owners if i is not None and i.owner == engine._worker.owner]
        assert len(in_memory) == 2
        await clock.advance("2s")
        done = [await engine.wait(r.id) for r in runs]
    assert all(r.status == "completed" for r in done)
    assert calls.count("after") == 5
