"""Under the virtual clock (and `stepwell dev`) every run is replayed from its memos at each
suspension and at its end: a value computed outside a step and passed to one fails the run at
once, whatever the sleep length, with a message naming the step, the change and the fix."""

from __future__ import annotations

import uuid
from typing import Any

import stepwell
from stepwell.testing import VirtualClock


def make_app() -> stepwell.App:
    app = stepwell.App("det")

    @app.function(id="order", trigger="det/order")
    async def order(ctx: stepwell.Context, step: stepwell.Step) -> str:
        token = str(uuid.uuid4())                          # computed outside any step
        await step.run("reserve", lambda t: t[:4], token)
        await step.sleep("short-nap", "3s")                # spent in memory: no replay
        return "done"

    @app.function(id="stable", trigger="det/stable")
    async def stable(ctx: stepwell.Context, step: stepwell.Step) -> str:
        token = await step.run("make-token", lambda: str(uuid.uuid4()))
        await step.run("reserve", lambda t: t[:4], token)
        await step.sleep("long-nap", "2h")
        return "done"

    calls = {"n": 0}

    @app.function(id="branchy", trigger="det/branchy")
    def branchy(ctx: stepwell.Context, step: stepwell.SyncStep) -> str:
        calls["n"] += 1            # a plain def handler whose order flips on every execution
        flipped = ctx.event.data.get("shuffle") and calls["n"] % 2 == 0
        for name in ("b", "a") if flipped else ("a", "b"):
            step.run(name, lambda n=name: n)
        return "done"

    return app


async def test_an_argument_computed_outside_a_step_fails_the_run(make_engine: Any,
                                                                 clock: VirtualClock) -> None:
    async with make_engine(make_app()) as engine:
        assert engine._worker.check_determinism          # on by default under the virtual clock
        [run] = await engine.runs(event_id=await engine.send("det/order", {}))
        await engine.idle()
        await clock.advance("3s")
        run = await engine.wait(run.id, timeout=10)
    assert run.status == "failed" and run.error is not None
    assert run.error["name"] == "NonDeterminismError"
    message = run.error["message"]
    assert message.startswith("non-determinism: step 'reserve' is called with different "
                              "arguments on replay: argument 1 was '")
    assert "and is now '" in message
    assert "compute the value in a step" in message and "ctx.run_id" in message


async def test_deterministic_runs_pass_the_check(make_engine: Any, clock: VirtualClock) -> None:
    async with make_engine(make_app()) as engine:
        [run] = await engine.runs(event_id=await engine.send("det/stable", {}))
        await engine.idle()
        await clock.advance("2h")
        run = await engine.wait(run.id, timeout=10)
        [plain] = await engine.runs(event_id=await engine.send("det/branchy", {}))
        plain = await engine.wait(plain.id, timeout=10)
    assert run.status == "completed" and run.warnings == []
    assert plain.status == "completed"


async def test_an_order_that_depends_on_chance_fails_the_run(make_engine: Any) -> None:
    async with make_engine(make_app()) as engine:
        [run] = await engine.runs(event_id=await engine.send("det/branchy", {"shuffle": True}))
        run = await engine.wait(run.id, timeout=10)
    assert run.status == "failed" and run.error is not None
    assert run.error["message"].startswith(
        "non-determinism: step 'b' is reached at position 0 on replay but was recorded at "
        "position 1")


async def test_production_engines_do_not_replay_to_check(make_engine: Any,
                                                        clock: VirtualClock) -> None:
    """Without the check the same bug passes a short sleep: why the check exists."""
    async with make_engine(make_app(), check_determinism=False) as engine:
        [run] = await engine.runs(event_id=await engine.send("det/order", {}))
        await engine.idle()
        await clock.advance("3s")
        run = await engine.wait(run.id, timeout=10)
    assert run.status == "completed"
