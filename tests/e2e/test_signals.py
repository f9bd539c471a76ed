"""Native signals: `step.wait_for_signal` + `engine.send_signal` (the same machinery as the
official SDKs' `step.waitForSignal` / `POST /v1/signals`)."""

from __future__ import annotations

from typing import Any

import stepwell
from stepwell.testing import VirtualClock


def signal_app() -> stepwell.App:
    app = stepwell.App("t")

    @app.function(id="approval", trigger="t/ask", retries=0)
    async def approval(ctx: stepwell.Context, step: stepwell.Step) -> Any:
        try:
            got = await step.wait_for_signal(
                "approved", signal=f"approve-{ctx.event.data['doc']}", timeout="1h",
                on_conflict=ctx.event.data.get("on_conflict", "fail"))
        except stepwell.StepError as exc:
            return {"conflict": exc.error["message"]}
        return {"got": got}

    return app


async def ask(engine: stepwell.Engine, doc: int, **extra: Any) -> str:
    [run] = await engine.runs(event_id=await engine.send("t/ask", {"doc": doc, **extra}))
    return run.id


async def test_a_signal_resumes_the_waiting_run(make_engine: Any) -> None:
    async with make_engine(signal_app()) as engine:
        run_id = await ask(engine, 1)
        await engine.idle()
        assert await engine.send_signal("approve-1", {"by": "ada"}) == run_id
        run = await engine.wait(run_id)
        assert run.output == {"got": {"signal": "approve-1", "data": {"by": "ada"}}}
        assert await engine.send_signal("approve-1", {}) is None    # nobody waits any more


async def test_a_signal_nobody_waits_for_is_not_kept(make_engine: Any) -> None:
    async with make_engine(signal_app()) as engine:
        assert await engine.send_signal("approve-2", {}) is None
        run_id = await ask(engine, 2)
        await engine.idle()
        run = await engine.get_run(run_id)
        assert run is not None and run.status == "running"


async def test_the_wait_times_out_to_none(make_engine: Any, clock: VirtualClock) -> None:
    async with make_engine(signal_app()) as engine:
        run_id = await ask(engine, 3)
        await clock.advance("1h")
        run = await engine.wait(run_id)
    assert run.output == {"got": None}


async def test_conflicts_fail_or_replace(make_engine: Any, clock: VirtualClock) -> None:
    async with make_engine(signal_app()) as engine:
        first = await ask(engine, 4)
        await engine.idle()
        refused = await ask(engine, 4)                      # on_conflict="fail"
        refused_run = await engine.wait(refused)
        assert "already waiting for signal 'approve-4'" in refused_run.output["conflict"]
        taker = await ask(engine, 4, on_conflict="replace")
        await engine.idle()
        assert await engine.send_signal("approve-4", "yes") == taker
        assert (await engine.wait(taker)).output == {
            "got": {"signal": "approve-4", "data": "yes"}}
        await clock.advance("1h")                           # the replaced wait times out
        assert (await engine.wait(first)).output == {"got": None}
