"""A process that only sends events (`Engine(db=..., worker=False)` without the app) must not
swallow them: the events wait for a worker that knows the functions, even one started later."""

from __future__ import annotations

from typing import Any

import pytest

import stepwell


def shop_app(seen: list[Any]) -> stepwell.App:
    app = stepwell.App("shop")

    @app.function(id="confirm", trigger="shop/order.created")
    async def confirm(ctx: stepwell.Context, step: stepwell.Step) -> dict[str, Any]:
        seen.append(ctx.event.data["orderId"])
        return await step.run("confirm", lambda: {"confirmed": ctx.event.data["orderId"]})

    @app.function(id="ship", trigger="shop/order.paid")
    async def ship(ctx: stepwell.Context, step: stepwell.Step) -> str:
        paid = await step.wait_for_event("shipped", event="shop/order.shipped",
                                         match="data.orderId", timeout="1h")
        return "shipped" if paid is not None else "timed out"

    return app


@pytest.mark.counts_executions
async def test_events_sent_before_any_worker_start_runs_once_a_worker_starts(
        make_engine: Any) -> None:
    seen: list[Any] = []
    async with make_engine(worker=False) as sender:
        assert not sender._worker.routes_events
        first = await sender.send("shop/order.created", {"orderId": 1})
        second = await sender.send([{"name": "shop/order.created", "data": {"orderId": 2}}])
        assert await sender.runs() == []            # nobody routed them yet: no worker
    async with make_engine(shop_app(seen)) as worker:
        await worker.idle()
        runs = await worker.runs(event_id=str(first)) + await worker.runs(event_id=second[0])
        assert [r.status for r in runs] == ["completed", "completed"]
        assert sorted(r.output["confirmed"] for r in runs) == [1, 2]
    assert sorted(seen) == [1, 2]                   # each event routed once


async def test_a_sender_beside_a_running_worker_starts_runs_and_resolves_waits(
        make_engine: Any) -> None:
    seen: list[Any] = []
    async with make_engine(shop_app(seen)) as worker, make_engine(worker=False) as sender:
        paid = await sender.send("shop/order.paid", {"orderId": 7})
        await worker.idle()
        [run] = await worker.runs(event_id=str(paid))
        assert run.status == "running"              # waiting for the shipment
        await sender.send("shop/order.shipped", {"orderId": 7})
        await worker.idle()
        done = await worker.wait(run.id, timeout=30)
        assert (done.status, done.output) == ("completed", "shipped")


@pytest.mark.counts_executions
async def test_an_event_sent_twice_by_a_sender_is_routed_once(make_engine: Any) -> None:
    seen: list[Any] = []
    async with make_engine(shop_app(seen)) as worker, make_engine(worker=False) as sender:
        for _ in range(2):
            await sender.send({"name": "shop/order.created", "id": "evt-1",
                               "data": {"orderId": 3}})
        await worker.idle()
        assert [r.status for r in await worker.runs(event_id="evt-1")] == ["completed"]
    assert seen == [3]
