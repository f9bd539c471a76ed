"""Events that could feed themselves (issue 10.1): what `*` matches, a run's own lifecycle
events, A-triggers-B-triggers-A chains, and the size limit on every stored event, the engine's
own lifecycle events included."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

import stepwell
from stepwell.core.models import MAX_EVENT_BYTES, InvalidEventError
from stepwell.runtime import driver
from stepwell.runtime.driver import MAX_EVENT_GENERATION, MAX_INVOKE_DEPTH

IDLE_DEADLINE_S = 60.0       # a loop never goes idle; a bounded run of events does, quickly


async def settle(engine: stepwell.Engine) -> None:
    """Wait until nothing is left to do; a self-feeding loop fails here instead of hanging."""
    await asyncio.wait_for(engine.idle(), IDLE_DEADLINE_S)


async def stored_events(engine: stepwell.Engine) -> list[stepwell.Event]:
    return [event for event, _ in await engine.events(limit=1000)]


def size(event: stepwell.Event) -> int:
    return len(json.dumps(event.to_dict(), separators=(",", ":")).encode())


async def test_a_star_function_is_not_triggered_by_its_own_finished_event(
        make_engine: Any) -> None:
    app = stepwell.App("loop")

    @app.function(id="all", trigger="*")
    async def every(ctx: stepwell.Context, step: stepwell.Step) -> dict[str, Any]:
        return {"echo": ctx.event.to_dict()}            # embeds the trigger: doubles each time

    async with make_engine(app) as engine:
        event_id = await engine.send("app/thing", {"x": "a" * 2000})
        await settle(engine)
        runs = await engine.runs()
        assert [r.event_id for r in runs] == [event_id]
        assert runs[0].status == "completed"
        # `*` is "every event of mine": no internal event was routed to it.
        assert [e.name for e in await stored_events(engine)] == ["app/thing"]


async def test_internal_events_need_a_trigger_that_names_the_namespace(
        make_engine: Any) -> None:
    app = stepwell.App("watch")
    seen: list[str] = []

    @app.function(id="work", trigger="job/run")
    async def work(ctx: stepwell.Context, step: stepwell.Step) -> str:
        return "done"

    @app.function(id="broad", trigger="i*")
    async def broad(ctx: stepwell.Context, step: stepwell.Step) -> None:
        seen.append(f"broad:{ctx.event.name}")

    @app.function(id="audit", trigger=["inngest/*", "job/run"])
    async def audit(ctx: stepwell.Context, step: stepwell.Step) -> None:
        seen.append(f"audit:{ctx.event.name}:{ctx.event.data.get('function_id')}")

    async with make_engine(app) as engine:
        await engine.send("job/run", {})
        await settle(engine)
    # `inngest/*` sees `work`'s finished event, but not its own: a run's lifecycle events never
    # trigger the function that emitted them, and runs they trigger emit none.
    assert sorted(seen) == ["audit:inngest/function.finished:watch/work", "audit:job/run:None"]


async def test_a_chain_of_finish_handlers_cannot_loop(make_engine: Any) -> None:
    """A finishes -> B (on A's finished event) -> would trigger A (on B's finished event)."""
    app = stepwell.App("ab")

    @app.function(id="a", trigger=["ab/go", stepwell.Event(
        "inngest/function.finished", if_="event.data.function_id == 'ab/b'")])
    async def a(ctx: stepwell.Context, step: stepwell.Step) -> dict[str, Any]:
        return {"from": ctx.event.to_dict()}

    @app.function(id="b", trigger=stepwell.Event(
        "inngest/function.finished", if_="event.data.function_id == 'ab/a'"))
    async def b(ctx: stepwell.Context, step: stepwell.Step) -> dict[str, Any]:
        return {"from": ctx.event.to_dict()}

    async with make_engine(app) as engine:
        await engine.send("ab/go", {})
        await settle(engine)
        runs = await engine.runs()
    assert sorted(r.function_id for r in runs) == ["ab/a", "ab/b"]
    assert all(r.status == "completed" for r in runs)


async def test_lifecycle_events_are_kept_within_the_event_size_limit(make_engine: Any) -> None:
    app = stepwell.App("big")
    finished: list[dict[str, Any]] = []

    @app.function(id="make", trigger="big/go")
    async def make(ctx: stepwell.Context, step: stepwell.Step) -> dict[str, Any]:
        return {"blob": "r" * (2 * 1024 * 1024), "input": ctx.event.data}

    @app.function(id="fail", trigger="big/fail", retries=0)
    async def fail(ctx: stepwell.Context, step: stepwell.Step) -> None:
        raise stepwell.NonRetriableError("e" * (4 * 1024 * 1024))

    @app.function(id="watch", trigger="inngest/function.finished")
    async def watch(ctx: stepwell.Context, step: stepwell.Step) -> None:
        finished.append(ctx.event.data)

    async with make_engine(app) as engine:
        ok_event = await engine.send("big/go", {"blob": "i" * (2 * 1024 * 1024)})
        await engine.send("big/fail", {})
        await settle(engine)
        events = await stored_events(engine)
        [made] = await engine.runs(event_id=str(ok_event))
        assert made.status == "completed" and len(made.output["blob"]) == 2 * 1024 * 1024
    assert {e.name for e in events} >= {"inngest/function.finished", "inngest/function.failed"}
    assert max(size(e) for e in events) <= MAX_EVENT_BYTES
    by_fn = {d["function_id"]: d for d in finished}
    # The largest part is replaced by a reference to the run; the rest is kept.
    result = by_fn["big/make"]["result"]
    assert result["_stepwell_truncated"] is True and f"/v1/runs/{made.id}" in result["message"]
    assert by_fn["big/make"]["event"]["data"]["blob"] == "i" * (2 * 1024 * 1024)
    assert by_fn["big/fail"]["error"]["_stepwell_truncated"] is True


async def test_events_over_the_size_limit_are_refused_at_send_and_in_steps(
        make_engine: Any) -> None:
    app = stepwell.App("send")

    @app.function(id="sender", trigger="send/go", retries=3)
    async def sender(ctx: stepwell.Context, step: stepwell.Step) -> None:
        await step.send_event("huge", {"name": "send/huge", "data": {"x": "h" * MAX_EVENT_BYTES}})

    async with make_engine(app) as engine:
        with pytest.raises(InvalidEventError, match="at most 3145728 bytes"):
            await engine.send("send/huge", {"x": "h" * MAX_EVENT_BYTES})
        event_id = await engine.send("send/go", {})
        await settle(engine)
        [listed] = await engine.runs(event_id=str(event_id))
        run = await engine.get_run(listed.id)
        names = [e.name for e in await stored_events(engine)]
    assert run is not None and run.status == "failed"
    assert run.error is not None and "at most 3145728 bytes" in run.error["message"]
    assert [(s.id, s.status, s.attempts) for s in run.steps] == [("huge", "failed", 1)]
    assert "send/huge" not in names


async def test_a_function_invoking_itself_stops_at_the_invoke_depth_limit(
        make_engine: Any) -> None:
    app = stepwell.App("rec")

    @app.function(id="down", trigger="rec/go", retries=0)
    async def down(ctx: stepwell.Context, step: stepwell.Step) -> int:
        depth = int(ctx.event.data.get("depth", 0))
        return int(await step.invoke("deeper", function="rec/down", data={"depth": depth + 1}))

    async with make_engine(app) as engine:
        await engine.send("rec/go", {})
        await settle(engine)
        runs = await engine.runs()
    assert len(runs) == MAX_INVOKE_DEPTH + 1
    # The deepest invoke failed; each parent's invoke step failed with its child's error.
    assert {(r.status, (r.error or {}).get("name")) for r in runs} == {
        ("failed", "InvokeDepthError")}
    assert all(f"at most {MAX_INVOKE_DEPTH} nested invokes" in (r.error or {})["message"]
               for r in runs)


async def test_functions_sending_each_other_events_stop_at_the_generation_limit(
        make_engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sends `ping/b`, B sends `ping/a`, ...: each event is one generation past the trigger
    of the run that sent it; the send that would pass the limit fails its step (no retries),
    and the loop ends. A function triggered meanwhile by an ordinary event is unaffected.
    (The limit is lowered to keep the test fast; the rule is the same at 100.)"""
    assert MAX_EVENT_GENERATION == 100
    limit = 12
    monkeypatch.setattr(driver, "MAX_EVENT_GENERATION", limit)
    app = stepwell.App("ping")

    @app.function(id="a", trigger="ping/a", retries=3)
    async def a(ctx: stepwell.Context, step: stepwell.Step) -> None:
        await step.send_event("to-b", stepwell.Event("ping/b", {"n": ctx.event.data["n"] + 1}))

    @app.function(id="b", trigger="ping/b", retries=3)
    async def b(ctx: stepwell.Context, step: stepwell.Step) -> None:
        await step.send_event("to-a", stepwell.Event("ping/a", {"n": ctx.event.data["n"] + 1}))

    @app.function(id="other", trigger="ping/other")
    async def other(ctx: stepwell.Context, step: stepwell.Step) -> str:
        return await step.run("work", lambda: "ok")

    async with make_engine(app) as engine:
        await engine.send("ping/a", {"n": 0})
        await engine.send("ping/other", {})
        await settle(engine)
        runs = await engine.runs(limit=1000)
        events = await stored_events(engine)
        loop = [r for r in runs if r.function_id in ("ping/a", "ping/b")]
        # Generations 0..limit: one run each; the last one's send is refused.
        assert len(loop) == limit + 1
        assert len([e for e in events if e.name in ("ping/a", "ping/b")]) == limit + 1
        [failed] = [r for r in loop if r.status == "failed"]
        assert all(r.status == "completed" for r in loop if r is not failed)
        detail = await engine.get_run(failed.id)
    assert detail is not None and detail.error is not None
    assert detail.error["name"] == "EventLoopError"
    message = detail.error["message"]
    assert f"at most {limit} generations" in message
    assert "'ping/b'" in message and "'ping/a'" in message        # the chain's events
    assert [s.attempts for s in detail.steps] == [1]               # not retried
    [done] = [r for r in runs if r.function_id == "ping/other"]
    assert done.status == "completed" and done.output == "ok"
