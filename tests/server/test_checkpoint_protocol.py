"""The checkpoint API against a scripted SDK app: what a checkpointing TypeScript SDK does,
including what a healthy one rarely does (post a checkpoint twice, report an already
checkpointed step again, checkpoint through another process). The real SDK is exercised in
tests/inngest/test_checkpointing.py."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import uvicorn
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import stepwell
from stepwell.runtime.checkpoint import StaleDispatch

SDK = {"x-inngest-sdk": "inngest-js:v4.24.0", "content-type": "application/json"}
Script = Callable[[dict[str, Any]], Awaitable[tuple[int, Any]]]


class ScriptedApp:
    def __init__(self) -> None:
        self.url = ""
        self.bodies: list[dict[str, Any]] = []
        self.script: Script | None = None

    async def handle(self, request: Request) -> Response:
        body = json.loads(await request.body())
        self.bodies.append(body)
        assert self.script is not None
        status, payload = await self.script(body)
        return Response(json.dumps(payload), status_code=status, headers=SDK)


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedApp]:
    app = ScriptedApp()
    server_app = Starlette(routes=[Route("/api/inngest", app.handle, methods=["POST"])])
    sock = socket.create_server(("127.0.0.1", 0))
    app.url = f"http://127.0.0.1:{sock.getsockname()[1]}/api/inngest"
    server = uvicorn.Server(uvicorn.Config(server_app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    yield app
    server.should_exit = True
    await task
    sock.close()


def provider_for(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def registration(url: str) -> dict[str, Any]:
    return {"appName": "ck", "url": url, "sdk": "js:v4.24.0", "functions": [{
        "id": "ck-fn", "name": "fn", "triggers": [{"event": "ck/go"}],
        "steps": {"step": {"id": "step", "runtime": {"url": f"{url}?fnId=ck-fn&stepId=step"},
                           "retries": {"attempts": 0}}}}]}


def step_run(step_hash: str, data: Any) -> dict[str, Any]:
    return {"op": "StepRun", "id": step_hash, "displayName": step_hash.upper(), "data": data}


def checkpoint_body(call: dict[str, Any], *ops: dict[str, Any]) -> dict[str, Any]:
    ctx = call["ctx"]
    return {"run_id": ctx["run_id"], "fn_id": ctx["fn_id"], "qi_id": ctx["qi_id"],
            "steps": list(ops), "ts": 0}


async def run_once(engine: stepwell.Engine, app: ScriptedApp) -> stepwell.Run:
    await engine._worker.registrar.register(registration(app.url))
    event_id = await engine.send("ck/go", {})
    await engine.idle()
    [run] = await engine.runs(event_id=event_id)
    return await engine.wait(run.id)


async def test_a_checkpoint_posted_twice_is_stored_once(make_engine: Any,
                                                        scripted: ScriptedApp) -> None:
    answers: list[int] = []

    async def script(call: dict[str, Any]) -> tuple[int, Any]:
        assert call["ctx"]["fn_id"] and call["ctx"]["qi_id"]
        body = checkpoint_body(call, step_run("a", 1))
        answers.append(await engine._worker.checkpoint_async(call["ctx"]["run_id"], body))
        answers.append(await engine._worker.checkpoint_async(call["ctx"]["run_id"], body))
        # ... and reported once more in the answer (the SDK missed the checkpoint's reply).
        return 206, [step_run("a", 1), {"op": "RunComplete", "id": "done", "data": {"ok": 1}}]

    scripted.script = script
    async with make_engine() as engine:
        run = await run_once(engine, scripted)
    assert run.status == "completed" and run.output == {"ok": 1}
    assert answers == [1, 0]                       # stored by the first post only
    assert [(s.id, s.output) for s in run.steps] == [("A", 1)]
    assert len(scripted.bodies) == 1               # one call ran the run


async def test_checkpoint_through_another_process_is_lease_checked(
        make_engine: Any, scripted: ScriptedApp, db_url: str) -> None:
    """A second engine on the same database (another `stepwell serve` behind the same
    address) receives the checkpoint: it is committed under the calling worker's lease, and
    the caller sees it when the call returns."""

    async def script(call: dict[str, Any]) -> tuple[int, Any]:
        run_id = call["ctx"]["run_id"]
        if not call["steps"]:
            stored = await other._worker.checkpoint_async(run_id, checkpoint_body(
                call, step_run("a", "from-b")))
            assert stored == 1
            return 206, [{"op": "Sleep", "id": "nap", "displayName": "nap", "name": "0s"}]
        assert call["steps"]["a"] == {"data": "from-b"}
        return 200, {"a": call["steps"]["a"]["data"]}

    scripted.script = script
    here, there = InMemorySpanExporter(), InMemorySpanExporter()
    async with make_engine(tracer_provider=provider_for(here)) as engine, make_engine(
            worker=False, tracer_provider=provider_for(there)) as other:
        run = await run_once(engine, scripted)
    assert run.status == "completed" and run.output == {"a": "from-b"}
    assert [s.id for s in run.steps] == ["A", "nap"]
    # The step's span comes from the process that committed it, under the run span (the
    # call's span is the other process's).
    [root] = [s for s in here.get_finished_spans() if s.name.startswith("run ")]
    [step] = there.get_finished_spans()
    assert step.name == "step A" and step.parent is not None and root.context is not None
    assert step.parent.span_id == root.context.span_id


async def test_checkpoint_after_cancel_is_refused(make_engine: Any,
                                                  scripted: ScriptedApp) -> None:
    refused: list[str] = []

    async def script(call: dict[str, Any]) -> tuple[int, Any]:
        run_id = call["ctx"]["run_id"]
        await engine._worker.checkpoint_async(run_id, checkpoint_body(call, step_run("a", 1)))
        assert await engine.cancel(run_id)
        with pytest.raises(StaleDispatch) as info:
            await engine._worker.checkpoint_async(run_id, checkpoint_body(call, step_run("b", 2)))
        refused.append(str(info.value))
        return 400, {"name": "StaleDispatchError", "message": "stale", "stack": None}

    scripted.script = script
    async with make_engine() as engine:
        run = await run_once(engine, scripted)
    assert run.status == "cancelled"
    assert refused and "no longer holds the run" in refused[0]
    assert [s.id for s in run.steps] == ["A"]      # b was never stored
