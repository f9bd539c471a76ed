"""What a person watching the terminal sees: one line per failed attempt and per run that did
not complete, naming the run, function, step, attempt k of n and what happens next; `ctx.logger`
lines carry the run's context; stored tracebacks start at the user's code."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import stepwell
from stepwell.testing import VirtualClock


def run_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "stepwell.run" and r.module == "runlog"]


async def test_failed_attempts_and_runs_are_logged_with_their_context(
        make_engine: Any, clock: VirtualClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    app = stepwell.App("logs")
    tries: dict[str, int] = {}

    def charge(run_id: str) -> str:
        tries[run_id] = tries.get(run_id, 0) + 1
        if tries[run_id] < 3:
            raise ValueError(f"card declined ({tries[run_id]})")
        return "charged"

    @app.function(id="pay", trigger="logs/pay", retries=3)
    async def pay(ctx: stepwell.Context, step: stepwell.Step) -> str:
        def noted() -> str:
            ctx.logger.info("charging the card")
            return charge(ctx.run_id)

        return str(await step.run("charge", noted))

    @app.function(id="doomed", trigger="logs/doomed", retries=0)
    async def doomed(ctx: stepwell.Context, step: stepwell.Step) -> None:
        await step.run("explode", lambda: 1 / 0)

    @app.function(id="napper", trigger="logs/nap")
    async def napper(ctx: stepwell.Context, step: stepwell.Step) -> None:
        await step.sleep("nap", "1d")

    async with make_engine(app, retry_interval_seconds=10) as engine:
        [pay_run] = await engine.runs(event_id=await engine.send("logs/pay", {}))
        await engine.idle()
        await clock.advance("10s")
        await clock.advance("20s")
        assert (await engine.wait(pay_run.id, timeout=10)).status == "completed"
        [doomed_run] = await engine.runs(event_id=await engine.send("logs/doomed", {}))
        assert (await engine.wait(doomed_run.id, timeout=10)).status == "failed"
        [nap_run] = await engine.runs(event_id=await engine.send("logs/nap", {}))
        await engine.idle()
        assert await engine.cancel(nap_run.id)
        await engine.idle()

    lines = run_lines(caplog)
    failed = [r for r in lines if getattr(r, "run_id", None) == pay_run.id]
    assert [r.levelname for r in failed] == ["WARNING", "WARNING"]
    first = failed[0].getMessage()
    assert first.startswith(f"run {pay_run.id} logs/pay: step 'charge' failed on attempt 1 of 4"
                            ": ValueError: card declined (1); next attempt at ")
    assert first.endswith("(in 10 s)")
    assert "attempt 2 of 4" in failed[1].getMessage() and "(in 20 s)" in failed[1].getMessage()
    assert failed[0].step_id == "charge" and failed[0].attempt == 1       # type: ignore[attr-defined]
    assert failed[0].max_attempts == 4                                     # type: ignore[attr-defined]

    doomed_lines = [r.getMessage() for r in lines if getattr(r, "run_id", None) == doomed_run.id]
    assert doomed_lines == [
        f"run {doomed_run.id} logs/doomed: step 'explode' failed on attempt 1 of 1, no retry: "
        "ZeroDivisionError: division by zero",
        f"run {doomed_run.id} logs/doomed failed: ZeroDivisionError: division by zero"]
    cancelled = [r for r in lines if getattr(r, "run_id", None) == nap_run.id]
    assert [(r.levelname, r.getMessage()) for r in cancelled] == [
        ("WARNING", f"run {nap_run.id} logs/napper cancelled: cancelled by request")]

    # ctx.logger: the run's id, function and step on the record (printed by the CLI formats).
    noted = [r for r in caplog.records if r.getMessage() == "charging the card"]
    assert len(noted) == 3
    assert {(r.run_id, r.function_id, r.step_id) for r in noted} == {  # type: ignore[attr-defined]
        (pay_run.id, "logs/pay", "charge")}


async def test_stored_tracebacks_start_at_the_users_code(make_engine: Any) -> None:
    app = stepwell.App("tb")

    def validate(order: dict[str, Any]) -> None:
        raise stepwell.NonRetriableError(f"order {order['id']} has no items")

    @app.function(id="check", trigger="tb/check")
    async def check(ctx: stepwell.Context, step: stepwell.Step) -> None:
        await step.run("validate", validate, ctx.event.data)

    async with make_engine(app) as engine:
        [run] = await engine.runs(event_id=await engine.send("tb/check", {"id": 7}))
        run = await engine.wait(run.id, timeout=10)
    [failed] = run.steps
    stack = failed.error["stack"] if failed.error else ""
    assert stack.startswith("Traceback (most recent call last):\n")
    frames = [line for line in stack.splitlines() if line.startswith('  File "')]
    assert frames and all("test_run_logs.py" in line for line in frames)   # no stepwell frames
    assert "in validate" in frames[-1]
    assert stack.rstrip().endswith("NonRetriableError: order 7 has no items")
