"""Cooperative cancellation of a step body that is running (issue 18.4): a long step (an LLM
stream, a slow report) stops when its run is cancelled, rather than running to its end for a
result nobody will record. See runtime/interrupts.py."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

import stepwell

DEADLINE_S = 30.0


async def until(condition: Any, what: str) -> None:
    """Poll `condition()` until it holds, failing after DEADLINE_S."""
    async def poll() -> None:
        while not condition():  # noqa: ASYNC110 - polling a plain predicate, not an event
            await asyncio.sleep(0.01)
    try:
        await asyncio.wait_for(poll(), DEADLINE_S)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def long_app(seen: list[str], started: threading.Event) -> stepwell.App:
    """`stream` never ends by itself: an async body that awaits forever, a `def` body that
    polls `ctx.cancelled`."""
    app = stepwell.App("cancel-running")

    @app.function(id="async-stream", trigger="t/async")
    async def async_stream(ctx: stepwell.Context, step: stepwell.Step) -> str:
        async def stream() -> str:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                seen.append(f"async body interrupted, ctx.cancelled={ctx.cancelled}")
                raise
            return "unreachable"
        await step.run("stream", stream)
        await step.run("after", lambda: seen.append("after ran"))
        return "done"

    @app.function(id="sync-stream", trigger="t/sync")
    async def sync_stream(ctx: stepwell.Context, step: stepwell.Step) -> str:
        never = threading.Event()

        def stream() -> str:
            started.set()
            while not ctx.cancelled:
                never.wait(0.01)
            seen.append("def body saw ctx.cancelled")
            return "partial"
        await step.run("stream", stream)
        await step.run("after", lambda: seen.append("after ran"))
        return "done"

    return app


async def assert_cancelled_without_result(engine: stepwell.Engine, run_id: str) -> None:
    run = await engine.get_run(run_id)
    assert run is not None and run.status == "cancelled"
    stream = [s for s in run.steps if s.id == "stream"]
    # The interrupted step recorded no result (what a `def` body returned is dropped).
    assert all(s.status != "completed" and s.output is None for s in stream), stream
    assert not [s for s in run.steps if s.id == "after"]


@pytest.mark.parametrize(("trigger", "expected"), [
    ("t/async", "async body interrupted, ctx.cancelled=True"),
    ("t/sync", "def body saw ctx.cancelled"),
], ids=["async-def-body-gets-CancelledError", "def-body-sees-ctx-cancelled"])
async def test_a_running_step_body_stops_when_its_run_is_cancelled(
        make_engine: Any, trigger: str, expected: str) -> None:
    seen: list[str] = []
    started = threading.Event()
    async with make_engine(long_app(seen, started)) as engine:
        await engine.send(trigger, {})
        await until(started.is_set, "the step body to start")
        [run] = await engine.runs()
        assert await engine.cancel(run.id, reason="user pressed stop")
        await until(lambda: seen, "the body to be interrupted")
        await asyncio.wait_for(engine.idle(), DEADLINE_S)
        assert seen == [expected]
        await assert_cancelled_without_result(engine, run.id)


async def test_a_cancellation_from_another_process_reaches_the_running_body(
        make_engine: Any, db_url: str) -> None:
    """The run is cancelled through a second engine on the same database (as `stepwell serve
    --no-worker`, or a second worker, would): the executing worker sees it by reading back the
    status of its long-running steps."""
    seen: list[str] = []
    started = threading.Event()
    async with make_engine(long_app(seen, started)) as engine:
        await engine.send("t/sync", {})
        await until(started.is_set, "the step body to start")
        [run] = await engine.runs()
        async with stepwell.Engine(db=db_url, worker=False) as other:
            assert await other.cancel(run.id)
        await until(lambda: seen, "the body to see the cancellation made elsewhere")
        assert seen == ["def body saw ctx.cancelled"]
        await assert_cancelled_without_result(engine, run.id)


async def test_ctx_cancelled_is_false_in_a_run_that_was_not_cancelled(make_engine: Any) -> None:
    app = stepwell.App("not-cancelled")
    observed: list[bool] = []

    @app.function(id="f", trigger="t/f")
    async def f(ctx: stepwell.Context, step: stepwell.Step) -> str:
        await step.run("one", lambda: observed.append(ctx.cancelled))
        observed.append(ctx.cancelled)
        return "ok"

    async with make_engine(app) as engine:
        await engine.send("t/f", {})
        await asyncio.wait_for(engine.idle(), DEADLINE_S)
        [run] = await engine.runs()
        assert run.status == "completed"
        assert observed and not any(observed)


async def test_a_plain_def_handler_s_async_step_is_interrupted_too(make_engine: Any) -> None:
    """A `def` handler's steps run in tasks of their own (SyncStep): those are stopped too."""
    app = stepwell.App("sync-handler")
    seen: list[str] = []
    started = threading.Event()

    @app.function(id="f", trigger="t/f")
    def f(ctx: stepwell.Context, step: stepwell.SyncStep) -> str:
        async def stream() -> None:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                seen.append("interrupted")
                raise
        step.run("stream", stream)
        step.run("after", lambda: seen.append("after ran"))
        return "done"

    async with make_engine(app) as engine:
        await engine.send("t/f", {})
        await until(started.is_set, "the step body to start")
        [run] = await engine.runs()
        assert await engine.cancel(run.id)
        await until(lambda: seen, "the body to be interrupted")
        await asyncio.wait_for(engine.idle(), DEADLINE_S)
        assert seen == ["interrupted"]
        await assert_cancelled_without_result(engine, run.id)
