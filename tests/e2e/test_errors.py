"""Retries, backoff, NonRetriableError, RetryAfterError, StepError and on_failure."""

from __future__ import annotations

from typing import Any

import pytest

import stepwell
from stepwell.core.backoff import retry_delay_ms
from stepwell.testing import VirtualClock


async def run_one(engine: stepwell.Engine, name: str, data: dict[str, Any]) -> stepwell.Run:
    event_id = await engine.send(name, data)
    [run] = await engine.runs(event_id=event_id)
    return run


async def test_step_retries_with_backoff_then_succeeds(make_engine: Any,
                                                       clock: VirtualClock) -> None:
    app = stepwell.App("t")
    attempts: list[tuple[int, int]] = []

    @app.function(id="flaky", trigger="t/flaky", retries=3)
    async def flaky(ctx: stepwell.Context, step: stepwell.Step) -> str:
        def call() -> str:
            attempts.append((ctx.attempt, clock.now()))
            if len(attempts) < 3:
                raise ConnectionError("upstream down")
            return "ok"

        return str(await step.run("call", call))

    async with make_engine(app) as engine:
        start = clock.now()
        run = await run_one(engine, "t/flaky", {})
        await engine.idle()
        assert [a for a, _ in attempts] == [0]
        await clock.advance("2h")
        run = await engine.wait(run.id, timeout=10)
    assert run.status == "completed" and run.output == "ok"
    assert [a for a, _ in attempts] == [0, 1, 2]
    first_delay = retry_delay_ms(1, seed=f"{run.id}:{_hash('call')}")
    assert attempts[1][1] - start == first_delay
    assert 15_000 <= first_delay < 45_000
    [step] = run.steps
    assert step.attempts == 3 and len(step.failures) == 2
    assert step.failures[0]["error"]["message"] == "upstream down"


def _hash(step_id: str) -> str:
    from stepwell.core.models import hash_step_id

    return hash_step_id(step_id, 0)


async def test_exhausted_retries_raise_catchable_step_error(make_engine: Any,
                                                            clock: VirtualClock) -> None:
    app = stepwell.App("t")

    def broken() -> None:
        raise ValueError("nope")

    @app.function(id="compensate", trigger="t/comp", retries=1)
    async def compensate(ctx: stepwell.Context, step: stepwell.Step) -> dict[str, Any]:
        try:
            await step.run("broken", broken)
        except stepwell.StepError as exc:
            undo = await step.run("undo", lambda: "undone")
            return {"caught": exc.name, "msg": exc.error["message"], "undo": undo}
        return {"caught": None}

    async with make_engine(app) as engine:
        run = await run_one(engine, "t/comp", {})
        await clock.advance("1h")
        run = await engine.wait(run.id, timeout=10)
    assert run.status == "completed"
    assert run.output == {"caught": "ValueError", "msg": "nope", "undo": "undone"}
    assert run.steps[0].status == "failed" and run.steps[0].attempts == 2


async def test_non_retriable_error_fails_at_once_and_on_failure_runs(
        make_engine: Any, clock: VirtualClock) -> None:
    app = stepwell.App("t")
    seen: list[Any] = []

    async def rollback(ctx: stepwell.Context, step: stepwell.Step) -> str:
        await step.run("rollback", lambda: seen.append(
            (ctx.error.message if ctx.error else None, ctx.event.name, ctx.event.data)))
        return "rolled back"

    @app.function(id="risky", trigger="t/risky", retries=5, on_failure=rollback)
    async def risky(ctx: stepwell.Context, step: stepwell.Step) -> None:
        def validate() -> None:
            raise stepwell.NonRetriableError("invalid payload")

        await step.run("validate", validate)

    async with make_engine(app) as engine:
        run = await run_one(engine, "t/risky", {"transferId": 9})
        run = await engine.wait(run.id, timeout=10)
        assert run.status == "failed"
        assert run.error is not None and "invalid payload" in run.error["message"]
        assert run.steps[0].attempts == 1
        await engine.idle()
        [failure_run] = await engine.runs(function_id="risky-failure")
        failure_run = await engine.wait(failure_run.id, timeout=10)
    assert failure_run.status == "completed" and failure_run.output == "rolled back"
    assert seen == [("invalid payload", "t/risky", {"transferId": 9})]


async def test_retry_after_error_sets_the_next_attempt_time(make_engine: Any,
                                                           clock: VirtualClock) -> None:
    app = stepwell.App("t")
    times: list[int] = []

    @app.function(id="limited", trigger="t/limited")
    async def limited(ctx: stepwell.Context, step: stepwell.Step) -> int:
        def call() -> int:
            times.append(clock.now())
            if len(times) == 1:
                raise stepwell.RetryAfterError("429", "10m")
            return len(times)

        return int(await step.run("call", call))

    async with make_engine(app) as engine:
        run = await run_one(engine, "t/limited", {})
        await clock.advance("9m")
        assert len(times) == 1
        await clock.advance("1m")
        run = await engine.wait(run.id, timeout=10)
    assert run.output == 2 and times[1] - times[0] == 600_000


async def test_error_outside_steps_is_retried_then_fails(make_engine: Any,
                                                        clock: VirtualClock) -> None:
    app = stepwell.App("t")
    calls: list[int] = []

    @app.function(id="body", trigger="t/body", retries=2)
    async def body(ctx: stepwell.Context, step: stepwell.Step) -> None:
        calls.append(ctx.attempt)
        raise RuntimeError("bug in handler")

    async with make_engine(app) as engine:
        run = await run_one(engine, "t/body", {})
        await clock.advance("3h")
        run = await engine.wait(run.id, timeout=10)
    assert run.status == "failed" and calls == [0, 1, 2]
    assert run.error is not None and run.error["name"] == "RuntimeError"


@pytest.mark.counts_executions
async def test_errors_outside_steps_are_counted_per_unit_of_work(make_engine: Any,
                                                                clock: VirtualClock) -> None:
    """As in Inngest, each unit of work (the code after the last recorded step) starts again
    at attempt 0: with retries=1, one transient error after each step is retried every time,
    and `ctx.attempt` outside steps is that unit's count."""
    app = stepwell.App("t")
    seen: list[tuple[str, int]] = []
    failed: set[str] = set()

    @app.function(id="units", trigger="t/units", retries=1)
    async def units(ctx: stepwell.Context, step: stepwell.Step) -> str:
        for name in ("one", "two", "three"):
            await step.run(name, lambda name=name: name)
            seen.append((name, ctx.attempt))
            if name not in failed:
                failed.add(name)
                raise ConnectionError(f"transient failure after step {name}")
        return "done"

    async with make_engine(app) as engine:
        run = await run_one(engine, "t/units", {})
        await clock.advance("3h")
        run = await engine.wait(run.id, timeout=10)
    assert run.status == "completed" and run.output == "done", run.error
    # A replay runs the code after earlier steps again; `ctx.attempt` there is the attempt of
    # the unit being retried (as the SDKs see it: one attempt per request).
    assert seen == [("one", 0), ("one", 1), ("two", 0), ("one", 1), ("two", 1),
                    ("three", 0), ("one", 1), ("two", 1), ("three", 1)], seen
    handler = [s for s in run.steps if s.id == "(handler)"]
    assert len(handler) == 3 and all(s.status == "failed" for s in handler), handler


async def test_non_serializable_step_output_fails_the_step_naming_it(make_engine: Any) -> None:
    app = stepwell.App("t")

    @app.function(id="bad-output", trigger="t/bad", retries=3)
    async def bad(ctx: stepwell.Context, step: stepwell.Step) -> None:
        await step.run("make-object", lambda: object())

    async with make_engine(app) as engine:
        run = await run_one(engine, "t/bad", {})
        run = await engine.wait(run.id, timeout=10)
    assert run.status == "failed"
    assert run.error is not None
    assert "make-object" in run.error["message"] and "object" in run.error["message"]
    assert run.steps[0].attempts == 1


@pytest.mark.parametrize("retries", [-1, 21, "3", 2.5])
def test_invalid_retries_rejected_at_definition(retries: Any) -> None:
    app = stepwell.App("t")
    with pytest.raises(stepwell.ConfigError, match=r"function 'f'.*'retries'"):
        app.function(id="f", trigger="t/x", retries=retries)


async def test_a_crashed_session_is_retried_with_backoff_and_the_run_resumes(
        make_engine: Any, monkeypatch: pytest.MonkeyPatch, clock: VirtualClock) -> None:
    """An executor bug must not strand a run: the crash is recorded on the run as a failed
    `(engine)` attempt and the run is retried after a backoff (tests/e2e/test_faults.py
    injects faults at every stage)."""
    from stepwell.runtime import items

    real_execute = items.RunSession.execute
    crashes: list[str] = []

    async def crash_once(self: Any) -> None:
        if not crashes:
            crashes.append(self.run_id)
            raise RuntimeError("executor bug")
        await real_execute(self)

    monkeypatch.setattr(items.RunSession, "execute", crash_once)
    app = stepwell.App("t")

    @app.function(id="fine", trigger="t/go")
    async def fine(ctx: stepwell.Context, step: stepwell.Step) -> str:
        return str(await step.run("s", lambda: "ok"))

    async with make_engine(app, clock=clock) as engine:
        [run] = await engine.runs(event_id=await engine.send("t/go", {}))
        await engine.idle()
        await clock.advance("1m")
        run = await engine.wait(run.id, timeout=20)
    assert crashes == [run.id]
    assert run.status == "completed" and run.output == "ok"
    [crash] = [s for s in run.steps if s.id == "(engine)"]
    assert "executor bug" in crash.failures[0]["error"]["message"]
