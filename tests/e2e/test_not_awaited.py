"""A forgotten `await` on a step fails the run with an error that names the step and the fix,
instead of completing with `"<coroutine object Step.run ...>"` as its output."""

from __future__ import annotations

import asyncio
from typing import Any

import stepwell


async def test_a_step_called_without_await_fails_the_run_naming_it(make_engine: Any) -> None:
    app = stepwell.App("await")
    ran: list[str] = []

    @app.function(id="forgot", trigger="await/forgot")
    async def forgot(ctx: stepwell.Context, step: stepwell.Step) -> str:
        await step.run("first", lambda: ran.append("first"))
        step.run("charge", lambda: ran.append("charge"))       # no await: never runs
        return "done"

    @app.function(id="returned", trigger="await/returned")
    async def returned(ctx: stepwell.Context, step: stepwell.Step) -> Any:
        return step.run("compute", lambda: 42)                  # returned un-awaited

    @app.function(id="gathered", trigger="await/gathered")
    async def gathered(ctx: stepwell.Context, step: stepwell.Step) -> list[int]:
        a, b = await asyncio.gather(step.run("a", lambda: 1), step.run("b", lambda: 2))
        return [a, b]

    async with make_engine(app) as engine:
        runs = {}
        for name in ("forgot", "returned", "gathered"):
            [run] = await engine.runs(event_id=await engine.send(f"await/{name}", {}))
            runs[name] = await engine.wait(run.id, timeout=10)
    forgot_run = runs["forgot"]
    assert forgot_run.status == "failed" and forgot_run.error is not None
    assert forgot_run.error["name"] == "StepNotAwaitedError"
    assert forgot_run.error["message"].startswith(
        "step 'charge' was called but never awaited, so it never ran: put `await` before")
    assert ran == ["first"]
    returned_run = runs["returned"]
    assert returned_run.status == "failed" and returned_run.error is not None
    assert "step 'compute' was called but never awaited" in returned_run.error["message"]
    assert runs["gathered"].status == "completed" and runs["gathered"].output == [1, 2]
