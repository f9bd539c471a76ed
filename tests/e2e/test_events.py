"""Triggers, wait_for_event, send_event, invoke, cancellation, timeouts, cron, de-duplication."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import stepwell
from stepwell.testing import VirtualClock


async def only_run(engine: stepwell.Engine, event_id: str | list[str]) -> stepwell.Run:
    assert isinstance(event_id, str)
    [run] = await engine.runs(event_id=event_id)
    return run


async def test_wildcard_and_if_triggers(make_engine: Any) -> None:
    app = stepwell.App("t")

    @app.function(id="any-user", trigger="app/user.*")
    async def any_user(ctx: stepwell.Context, step: stepwell.Step) -> str:
        return ctx.event.name

    @app.function(id="big", trigger=stepwell.Event("app/order", if_="event.data.total > 100"))
    async def big(ctx: stepwell.Context, step: stepwell.Step) -> float:
        return float(ctx.event.data["total"])

    async with make_engine(app) as engine:
        e1 = await engine.send("app/user.created", {})
        e2 = await engine.send("app/users", {})
        e3 = await engine.send("app/order", {"total": 150.5})
        e4 = await engine.send("app/order", {"total": 99})
        e5 = await engine.send("app/order", {"total": "lots"})
        await engine.idle()
        assert [r.function_id for r in await engine.runs(event_id=e1)] == ["t/any-user"]
        assert await engine.runs(event_id=e2) == []
        run = await engine.wait((await only_run(engine, e3)).id)
        assert run.output == 150.5
        assert await engine.runs(event_id=e4) == []
        assert await engine.runs(event_id=e5) == []


async def test_wait_for_event_match_if_and_timeout(make_engine: Any,
                                                   clock: VirtualClock) -> None:
    app = stepwell.App("t")

    @app.function(id="waiter", trigger="shop/order.created")
    async def waiter(ctx: stepwell.Context, step: stepwell.Step) -> Any:
        payment = await step.wait_for_event(
            "wait-payment", event="shop/payment.success", match="data.orderId", timeout="24h",
            if_="async.data.amount >= 10")
        return None if payment is None else payment.data

    async with make_engine(app) as engine:
        run1 = await only_run(engine, await engine.send("shop/order.created", {"orderId": 1}))
        run2 = await only_run(engine, await engine.send("shop/order.created", {"orderId": 2}))
        await engine.idle()
        await clock.advance("1h")
        await engine.send("shop/payment.success", {"orderId": 2, "amount": 50})  # other order
        await engine.send("shop/payment.success", {"orderId": 1, "amount": 5})   # fails if_
        await engine.send("shop/payment.success", {"orderId": 1, "amount": 20})  # matches
        await engine.send("shop/payment.success", {"orderId": 1, "amount": 30})  # too late
        r1 = await engine.wait(run1.id)
        r2 = await engine.wait(run2.id)
        assert r1.output == {"orderId": 1, "amount": 20}
        assert r2.output == {"orderId": 2, "amount": 50}
        run3 = await only_run(engine, await engine.send("shop/order.created", {"orderId": 3}))
        await clock.advance("23h")
        assert (await engine.get_run(run3.id)).status == "running"  # type: ignore[union-attr]
        await clock.advance("1h")
        r3 = await engine.wait(run3.id)
    assert r3.status == "completed" and r3.output is None
    assert r3.steps[0].kind == "wait" and r3.steps[0].status == "completed"


@pytest.mark.counts_executions
async def test_send_event_triggers_functions_once(make_engine: Any) -> None:
    app = stepwell.App("t")
    sends = 0

    @app.function(id="producer", trigger="t/produce")
    async def producer(ctx: stepwell.Context, step: stepwell.Step) -> list[str]:
        nonlocal sends
        sends += 1
        ids = await step.send_event("fan-out", [{"name": "t/consume", "data": {"n": n}}
                                                for n in range(3)])
        await step.sleep("pause", "1m")     # beyond the prefetch horizon: replayed after it
        return ids

    @app.function(id="consumer", trigger="t/consume")
    async def consumer(ctx: stepwell.Context, step: stepwell.Step) -> int:
        return int(ctx.event.data["n"]) * 10

    async with make_engine(app) as engine:
        run = await only_run(engine, await engine.send("t/produce", {}))
        await engine.idle()
        clock: VirtualClock = engine._worker.clock  # type: ignore[assignment]
        await clock.advance("1m")
        run = await engine.wait(run.id)
        assert run.status == "completed" and len(run.output) == 3
        outputs = []
        for event_id in run.output:
            consumer_run = await engine.wait((await only_run(engine, event_id)).id)
            outputs.append(consumer_run.output)
    assert sorted(outputs) == [0, 10, 20]
    assert sends == 2  # replayed once after the sleep, but the events were sent once


async def test_invoke_returns_child_output_or_raises(make_engine: Any,
                                                     clock: VirtualClock) -> None:
    app = stepwell.App("t")

    @app.function(id="child", trigger="t/child-direct")
    async def child(ctx: stepwell.Context, step: stepwell.Step) -> int:
        if ctx.event.data.get("fail"):
            raise stepwell.NonRetriableError("child refuses")
        if ctx.event.data.get("slow"):
            await step.sleep("slow", "2h")
        return int(ctx.event.data["x"]) + 1

    @app.function(id="parent", trigger="t/parent")
    async def parent(ctx: stepwell.Context, step: stepwell.Step) -> dict[str, Any]:
        ok = await step.invoke("ok", function=child, data={"x": 1})
        by_id = await step.invoke("by-id", function="t/child", data={"x": 10})
        errors = []
        for sid, target, data in (("bad", child, {"fail": True}),
                                  ("slow", "child", {"slow": True, "x": 0}),
                                  ("missing", "no-such-fn", {})):
            try:
                await step.invoke(sid, function=target, data=data, timeout="1h")
            except stepwell.StepError as exc:
                errors.append(exc.name)
        return {"ok": ok, "by_id": by_id, "errors": errors}

    async with make_engine(app) as engine:
        run = await only_run(engine, await engine.send("t/parent", {}))
        await clock.advance("3h")
        run = await engine.wait(run.id)
    assert run.status == "completed"
    assert run.output == {"ok": 2, "by_id": 11,
                          "errors": ["NonRetriableError", "InngestInvokeTimeoutError",
                                     "FunctionNotFoundError"]}


async def test_cancel_on_event_and_engine_cancel(make_engine: Any, clock: VirtualClock) -> None:
    app = stepwell.App("t")
    after_sleep: list[str] = []

    @app.function(id="cancellable", trigger="t/start",
                  cancel_on=[stepwell.Cancel(event="t/stop", match="data.id")])
    async def cancellable(ctx: stepwell.Context, step: stepwell.Step) -> str:
        await step.sleep("long", "1d")
        await step.run("after", lambda: after_sleep.append(ctx.event.data["id"]))
        return "done"

    async with make_engine(app) as engine:
        r1 = await only_run(engine, await engine.send("t/start", {"id": "a"}))
        r2 = await only_run(engine, await engine.send("t/start", {"id": "b"}))
        r3 = await only_run(engine, await engine.send("t/start", {"id": "c"}))
        await engine.idle()
        await engine.send("t/stop", {"id": "a"})
        assert await engine.cancel(r2.id) is True
        assert await engine.cancel(r2.id) is False
        await clock.advance("1d")
        r1, r2, r3 = [await engine.wait(r.id) for r in (r1, r2, r3)]
    assert (r1.status, r2.status, r3.status) == ("cancelled", "cancelled", "completed")
    assert after_sleep == ["c"]
    assert r1.error is not None and "t/stop" in r1.error["message"]


async def test_finish_timeout_cancels_the_run(make_engine: Any, clock: VirtualClock) -> None:
    app = stepwell.App("t")

    @app.function(id="slowpoke", trigger="t/slow", timeouts=stepwell.Timeouts(finish="30m"))
    async def slowpoke(ctx: stepwell.Context, step: stepwell.Step) -> str:
        await step.sleep("nap", "1h")
        return "finished"

    async with make_engine(app) as engine:
        run = await only_run(engine, await engine.send("t/slow", {}))
        await clock.advance("2h")
        run = await engine.wait(run.id)
    assert run.status == "cancelled"
    assert run.error is not None and "timeouts.finish" in run.error["message"]


async def test_cron_fires_once_per_tick_in_its_time_zone(make_engine: Any,
                                                         clock: VirtualClock) -> None:
    app = stepwell.App("t")
    ticks: list[int] = []

    @app.function(id="hourly", trigger=stepwell.Cron("TZ=Europe/Paris 0 * * * *"))
    async def hourly(ctx: stepwell.Context, step: stepwell.Step) -> str:
        ticks.append(ctx.event.ts)
        return ctx.event.name

    async with make_engine(app) as engine:
        await clock.advance("3h")
        runs = await engine.runs(function_id="hourly")
    assert len(runs) == 3 and len(ticks) == 3
    assert all(t % 3_600_000 == 0 for t in ticks)
    assert {r.status for r in runs} == {"completed"}


async def test_event_id_deduplicated_for_24h(make_engine: Any, clock: VirtualClock) -> None:
    app = stepwell.App("t")

    @app.function(id="once", trigger="t/once")
    async def once(ctx: stepwell.Context, step: stepwell.Step) -> None:
        return None

    async with make_engine(app) as engine:
        first = await engine.send({"name": "t/once", "data": {}, "id": "evt-1"})
        second = await engine.send({"name": "t/once", "data": {"x": 1}, "id": "evt-1"})
        await engine.idle()
        assert first == second == "evt-1"
        assert len(await engine.runs(event_id="evt-1")) == 1
        stored = await engine.get_event("evt-1")
        assert stored is not None and stored.data == {}
        await clock.advance("25h")
        await engine.send({"name": "t/once", "data": {"x": 2}, "id": "evt-1"})
        await engine.idle()
        assert len(await engine.runs(event_id="evt-1")) == 2


@pytest.mark.parametrize("bad", [
    {"data": {}},
    {"name": "", "data": {}},
    {"name": "t/x", "data": [1, 2]},
    {"name": "t/x", "data": "text"},
    "just a string",
    {"name": "t/x", "data": {}, "surprise": 1},
])
async def test_bad_events_are_rejected_and_nothing_is_lost(make_engine: Any, bad: Any) -> None:
    app = stepwell.App("t")

    @app.function(id="f", trigger="t/x")
    async def f(ctx: stepwell.Context, step: stepwell.Step) -> None:
        return None

    async with make_engine(app) as engine:
        good = await engine.send("t/x", {"ok": True})
        with pytest.raises(stepwell.InvalidEventError):
            await engine.send(bad)
        with pytest.raises(stepwell.InvalidEventError):
            await engine.send([{"name": "t/x", "data": {}}, bad])
        await engine.idle()
        events = await engine.events()
    assert [e.id for e, _ in events] == [good]


async def test_logger_is_quiet_on_replay(make_engine: Any, clock: VirtualClock,
                                         caplog: pytest.LogCaptureFixture) -> None:
    app = stepwell.App("t")

    @app.function(id="chatty", trigger="t/chatty")
    async def chatty(ctx: stepwell.Context, step: stepwell.Step) -> None:
        ctx.logger.info("start")
        await step.run("a", lambda: 1)
        ctx.logger.info("after a")
        await step.sleep("nap", "1m")
        ctx.logger.info("after nap")

    caplog.set_level(logging.INFO, logger="stepwell.run")
    async with make_engine(app) as engine:
        run = await only_run(engine, await engine.send("t/chatty", {}))
        await clock.advance("1m")
        await engine.wait(run.id)
    messages = [r.getMessage() for r in caplog.records if r.name == "stepwell.run"]
    assert messages == ["start", "after a", "after nap"]


async def test_resolved_wait_resumes_without_waiting_for_a_poll(make_engine: Any,
                                                                clock: VirtualClock) -> None:
    """With polling effectively off, the run can only finish if the event wakes it directly."""
    app = stepwell.App("t")

    @app.function(id="w", trigger="t/start")
    async def w(ctx: stepwell.Context, step: stepwell.Step) -> bool:
        return (await step.wait_for_event("wait", event="t/go", timeout="1h")) is not None

    async with make_engine(app, poll_seconds=3600) as engine:
        run = await only_run(engine, await engine.send("t/start", {}))
        await clock.advance("1m")
        await engine.send("t/go", {})
        run = await engine.wait(run.id, timeout=10)
    assert run.output is True


async def test_cancelled_run_shows_interrupted_steps(make_engine: Any,
                                                     clock: VirtualClock) -> None:
    app = stepwell.App("t")

    @app.function(id="s", trigger="t/s")
    async def s(ctx: stepwell.Context, step: stepwell.Step) -> None:
        await step.sleep("nap", "1h")

    @app.function(id="p", trigger="t/p")
    async def p(ctx: stepwell.Context, step: stepwell.Step) -> None:
        await step.wait_for_event("pay", event="t/pay", timeout="1h")

    async with make_engine(app) as engine:
        sleeper = await only_run(engine, await engine.send("t/s", {}))
        waiter = await only_run(engine, await engine.send("t/p", {}))
        await clock.advance("10m")
        current = await engine.get_run(sleeper.id)
        assert current is not None and [st.status for st in current.steps] == ["sleeping"]
        await engine.cancel(sleeper.id)
        await engine.cancel(waiter.id)
        await clock.advance("2h")
        sleeper = await engine.wait(sleeper.id)
        waiter = await engine.wait(waiter.id)
    for run in (sleeper, waiter):
        [st] = run.steps
        assert st.status == "interrupted"
        assert st.ended_at == run.ended_at
