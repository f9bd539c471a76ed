"""Declared types end to end at run time: step results rebuilt as the models and dataclasses
their callables return (first run and replay alike), `send(name, model)`, and `Event[Model]`
declarations validated at send, at trigger and in `wait_for_event`."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from pydantic import BaseModel

import stepwell
from stepwell.testing import VirtualClock


class User(BaseModel):
    id: int
    name: str


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Order(BaseModel):
    order_id: int
    total: float


class Paid(BaseModel):
    order_id: int
    amount: float


def get_user(user_id: int) -> User:
    return User(id=user_id, name=f"user-{user_id}")


async def get_points() -> list[Point]:
    return [Point(1, 2), Point(3, 4)]


@pytest.mark.counts_executions
async def test_step_results_come_back_as_declared_types_on_first_run_and_replay(
        make_engine: Any, clock: VirtualClock) -> None:
    app = stepwell.App("types")
    seen: list[tuple[str, ...]] = []

    @app.function(id="f", trigger="types/go")
    async def f(ctx: stepwell.Context, step: stepwell.Step) -> dict[str, Any]:
        user = await step.run("user", get_user, 7)
        points = await step.run("points", get_points)
        raw = await step.run("raw", lambda: {"id": 1, "name": "x"}, output_type=User)
        plain = await step.run("plain", lambda: {"a": [1, 2]})
        seen.append((type(user).__name__, type(points[0]).__name__, type(raw).__name__,
                     type(plain).__name__))
        await step.sleep("nap", "1h")
        return {"name": user.name, "x": points[1].x, "raw": raw.name}

    async with make_engine(app) as engine:
        event_id = await engine.send("types/go", {})
        await engine.idle()
        await clock.advance("1h")
        [listed] = await engine.runs(event_id=str(event_id))
        run = await engine.wait(listed.id)
        assert (run.status, run.output) == ("completed", {"name": "user-7", "x": 3, "raw": "x"})
        # Stored as JSON, handed back as the types: the same before and after the sleep.
        assert run.steps[0].output == {"id": 7, "name": "user-7"}
    assert seen == [("User", "Point", "User", "dict")] * 2


async def test_a_result_that_does_not_fit_its_type_fails_naming_the_field(
        make_engine: Any) -> None:
    app = stepwell.App("types")

    @app.function(id="f", trigger="types/go", retries=0)
    async def f(ctx: stepwell.Context, step: stepwell.Step) -> None:
        await step.run("user", lambda: {"id": "not a number", "name": "x"}, output_type=User)

    async with make_engine(app) as engine:
        event_id = await engine.send("types/go", {})
        await engine.idle()
        [run] = await engine.runs(event_id=str(event_id))
        assert run.status == "failed"
        assert run.error is not None
        assert "the result of step 'user' does not match User: id:" in run.error["message"]


async def test_send_accepts_models_and_typed_events_are_checked_at_send(
        make_engine: Any) -> None:
    app = stepwell.App("shop")
    order_created = stepwell.Event[Order]("shop/order.created")

    @app.function(id="f", trigger=order_created)
    async def f(ctx: stepwell.Context[Order], step: stepwell.Step) -> float:
        assert isinstance(ctx.event.data, Order)
        return ctx.event.data.total * 2

    async with make_engine(app) as engine:
        first = await engine.send("shop/order.created", Order(order_id=1, total=2.5))
        second = await engine.send(stepwell.Event[Order]("shop/order.created",
                                                         data=Order(order_id=2, total=1.0)))
        with pytest.raises(stepwell.InvalidEventError,
                           match=r"event 'shop/order.created' data does not match Order: "
                                 r"total: Input should be a valid number"):
            await engine.send("shop/order.created", {"order_id": 3, "total": "lots"})
        with pytest.raises(stepwell.InvalidEventError, match="order_id: Field required"):
            await engine.send(stepwell.Event[Order]("other/name", data={"total": 1}))
        await engine.idle()
        outputs = [(await engine.runs(event_id=str(e)))[0].output for e in (first, second)]
        assert outputs == [5.0, 2.0]
        assert (await engine.get_event(str(first))) is not None
        stored = await engine.get_event(str(first))
        assert stored is not None and stored.data == {"order_id": 1, "total": 2.5}


async def test_typed_trigger_data_from_elsewhere_is_checked_when_the_run_starts(
        make_engine: Any) -> None:
    """A sender that does not know the function (here: an engine without it) cannot check the
    data at send; the run then fails at once, without retries, naming the field."""
    app = stepwell.App("shop")

    @app.function(id="f", trigger=stepwell.Event[Order]("shop/order.created"), retries=3)
    async def f(ctx: stepwell.Context[Order], step: stepwell.Step) -> float:
        return ctx.event.data.total

    async with make_engine(worker=False) as sender:
        event_id = await sender.send("shop/order.created", {"order_id": "x", "total": 1})
    async with make_engine(app) as engine:
        await engine.idle()
        [run] = await engine.runs(event_id=str(event_id))
        assert run.status == "failed"
        assert run.error is not None
        assert "order_id: Input should be a valid integer" in run.error["message"]
        assert run.error["name"] == "DataMismatchError"


async def test_wait_for_event_returns_the_declared_model(make_engine: Any) -> None:
    app = stepwell.App("shop")
    paid = stepwell.Event[Paid]("shop/paid")

    @app.function(id="f", trigger="shop/order", retries=0)
    async def f(ctx: stepwell.Context, step: stepwell.Step) -> float:
        got = await step.wait_for_event("paid", event=paid, match="data.order_id",
                                        timeout="1h")
        assert got is not None
        assert isinstance(got.data, Paid)
        return got.data.amount

    async with make_engine(app) as engine:
        good = await engine.send("shop/order", {"order_id": 1})
        bad = await engine.send("shop/order", {"order_id": 2})
        await engine.idle()
        await engine.send("shop/paid", {"order_id": 1, "amount": 9.5})
        await engine.send("shop/paid", {"order_id": 2})       # no amount
        await engine.idle()
        [ok] = await engine.runs(event_id=str(good))
        [failed] = await engine.runs(event_id=str(bad))
        assert (ok.status, ok.output) == ("completed", 9.5)
        assert failed.status == "failed" and failed.error is not None
        assert "amount: Field required" in failed.error["message"]


async def test_the_http_api_refuses_typed_event_data_that_does_not_fit(make_engine: Any) -> None:
    from stepwell.service import Service
    from stepwell.service_errors import InvalidInput

    app = stepwell.App("shop")

    @app.function(id="f", trigger=stepwell.Event[Order]("shop/order.created"))
    async def f(ctx: stepwell.Context[Order], step: stepwell.Step) -> None:
        return None

    async with make_engine(app) as engine:
        service = Service(engine)
        with pytest.raises(InvalidInput, match="total: Input should be a valid number") as bad:
            await service.send_events({"name": "shop/order.created",
                                       "data": {"order_id": 1, "total": "x"}})
        assert bad.value.status == 400
        assert await engine.events() == []                  # nothing stored
        [ok] = await service.send_events({"name": "shop/order.created",
                                          "data": {"order_id": 1, "total": 2}})
        assert ok
