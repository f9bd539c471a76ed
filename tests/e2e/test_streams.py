"""Durable streams from runs (issue 18.1): `step.publish` in the handler (once, even on
replay) and in step bodies (live, with retraction markers for failed attempts), read back in
order by offset, on every backend."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import stepwell
from stepwell.client import drop_retracted
from stepwell.core.streams import RETRACTED_TOPIC

DEADLINE_S = 60.0


@pytest.mark.counts_executions
async def test_handler_and_step_publishes_in_order_once_and_failed_attempts_retracted(
        make_engine: Any, clock: Any) -> None:
    app = stepwell.App("streams")
    tries: list[int] = []

    @app.function(id="writer", trigger="t/write", retries=2)
    async def writer(ctx: stepwell.Context, step: stepwell.Step) -> str:
        await step.publish("status", "started")                 # once, though replayed
        async def generate() -> str:
            tries.append(ctx.attempt)
            for token in ("Hel", "lo"):
                await step.publish("tokens", token)
            if ctx.attempt == 0:
                raise RuntimeError("the model stream broke")
            return "Hello"
        text = await step.run("generate", generate)
        await step.sleep("pause", "1m")                          # a replay after this
        await step.publish("status", "done", channel="user:42")
        await step.publish("status", {"text": text})
        return text

    async with make_engine(app) as engine:
        await engine.send("t/write", {})
        for _ in range(5):
            await asyncio.wait_for(engine.idle(), DEADLINE_S)
            await clock.advance("2m")
        await asyncio.wait_for(engine.idle(), DEADLINE_S)
        [run] = await engine.runs()
        assert run.status == "completed", run.error
        assert tries == [0, 1]
        items = await engine.stream_items(f"run:{run.id}")
        assert [i["offset"] for i in items] == list(range(1, len(items) + 1))
        assert [(i["topic"], i["data"]) for i in items] == [
            ("status", "started"), ("tokens", "Hel"), ("tokens", "lo"),
            (RETRACTED_TOPIC, {"run_id": run.id, "step": "generate", "attempt": 0}),
            ("tokens", "Hel"), ("tokens", "lo"), ("status", {"text": "Hello"})]
        assert [i["data"] for i in drop_retracted(items)] == ["started", "Hel", "lo",
                                                    {"text": "Hello"}]
        assert [(i["step"], i["attempt"]) for i in items[1:3]] == [("generate", 0)] * 2
        other = await engine.stream_items("user:42")
        assert [(i["offset"], i["data"], i["run_id"]) for i in other] == [(1, "done", run.id)]
        assert await engine.stream_items(f"run:{run.id}", after=6) == items[6:]


async def test_bad_names_and_data_fail_the_step_call_clearly(make_engine: Any) -> None:
    app = stepwell.App("bad-streams")
    errors: list[str] = []

    @app.function(id="f", trigger="t/f")
    async def f(ctx: stepwell.Context, step: stepwell.Step) -> None:
        for call in (lambda: step.publish("", 1), lambda: step.publish("t", 1, channel="a b"),
                     lambda: step.publish("t", {"x": object()})):
            try:
                await call()
            except Exception as exc:             # InvalidStepError, NotSerializableError
                errors.append(f"{type(exc).__name__}: {exc}")

    async with make_engine(app) as engine:
        await engine.send("t/f", {})
        await asyncio.wait_for(engine.idle(), DEADLINE_S)
        assert len(errors) == 3, errors
        assert "non-empty" in errors[0] and "may only have" in errors[1]
        assert "topic 't'" in errors[2]
        with pytest.raises(ValueError, match="may only have"):
            await engine.stream_token("no spaces allowed")
