"""Pydantic AI agents on stepwell (`stepwell.integrations.pydantic_ai`), without network: a
scripted `FunctionModel` and Pydantic AI's `TestModel`, on a real database (SQLite and
Postgres), on the virtual clock. The crash-and-resume case with a real SIGKILL is in
test_pydantic_ai_crash.py."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic_ai import Agent
from pydantic_ai.models.test import TestModel
from tests.integrations.agent_models import FIRST, SECOND, Journal, lookup_agent

import stepwell
from stepwell.integrations.pydantic_ai import (
    ApprovalRequest,
    StepwellAgent,
    StepwellApproval,
    StepwellDurability,
    stream_handler,
)
from stepwell.server.app import create_app
from stepwell.service import Service
from stepwell.testing import VirtualClock


def agent_app(agent: Agent[Any, Any], **run_options: Any) -> stepwell.App:
    app = stepwell.App("desk")
    durable = StepwellAgent(agent)

    @app.function(id="ask", trigger="desk/asked", retries=2)
    async def ask(ctx: stepwell.Context, step: stepwell.Step) -> dict[str, Any]:
        result = await durable.run(step, ctx, ctx.event.data["q"], **run_options)
        usage = result.usage
        return {"output": result.output, "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens}

    return app


@asynccontextmanager
async def served(make_engine: Any, app: stepwell.App
                 ) -> AsyncIterator[tuple[httpx.AsyncClient, stepwell.Engine]]:
    async with make_engine(app) as engine:
        transport = httpx.ASGITransport(app=create_app(Service(engine)))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            yield http, engine


async def start(engine: stepwell.Engine, question: str = "where is order 7?") -> str:
    event_id = await engine.send("desk/asked", {"q": question})
    [run] = await engine.runs(event_id=event_id)
    return run.id


async def until(predicate: Any, what: str, timeout: float = 20.0) -> None:
    """Poll a condition (in real time) with a deadline."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_an_agent_with_a_tool_runs_each_model_request_and_tool_call_as_a_step(
        make_engine: Any, tmp_path: Path) -> None:
    journal = Journal(tmp_path / "calls.log")
    async with served(make_engine, agent_app(lookup_agent(journal))) as (http, engine):
        run = await engine.wait(await start(engine), timeout=30)
        assert run.status == "completed", run.error
        assert run.output == {"output": "answer: order 7 shipped",
                              "input_tokens": FIRST.input_tokens + SECOND.input_tokens,
                              "output_tokens": FIRST.output_tokens + SECOND.output_tokens}
        assert [(s.id, s.status) for s in run.steps] == [
            ("clerk__model.request", "completed"),
            ("clerk__function_toolset__<agent>.call_tool:lookup", "completed"),
            ("clerk__model.request", "completed")]
        assert journal.lines() == ["model:0", "tool:7", "model:1"]
        # The run's view sums the tokens of its model requests.
        body = (await http.get(f"/v1/runs/{run.id}")).json()["data"]
        assert body["usage"] == {
            "input_tokens": 300, "output_tokens": 40, "requests": 2,
            "models": [{"model": "scripted-1", "input_tokens": 300, "output_tokens": 40,
                        "requests": 2}]}
        # ...and /metrics counts them per function and model.
        metrics = (await http.get("/metrics")).text
        labels = 'function="desk/ask",model="scripted-1"'
        assert f'stepwell_function_model_tokens_total{{direction="input",{labels}}} 300.0' \
            in metrics
        assert f'stepwell_function_model_tokens_total{{direction="output",{labels}}} 40.0' \
            in metrics
        assert f"stepwell_function_model_requests_total{{{labels}}} 2.0" in metrics


@pytest.mark.counts_executions
async def test_a_failed_model_call_is_retried_without_repeating_the_completed_ones(
        make_engine: Any, clock: VirtualClock, tmp_path: Path) -> None:
    journal = Journal(tmp_path / "calls.log")
    failures = iter([RuntimeError("the provider answered 503")])

    def flaky() -> None:
        error = next(failures, None)
        if error is not None:
            raise error

    agent = lookup_agent(journal, on_second=flaky)
    async with served(make_engine, agent_app(agent)) as (http, engine):
        run_id = await start(engine)
        await engine.idle()
        await clock.advance("1m")              # the retry's backoff
        run = await engine.wait(run_id, timeout=30)
        assert run.status == "completed", run.error
        # The first model request and the tool ran once; the second request twice (it failed).
        assert journal.lines() == ["model:0", "tool:7", "model:1", "model:1"]
        second = run.steps[-1]
        assert second.attempts == 2 and len(second.failures) == 1
        usage = (await http.get(f"/v1/runs/{run_id}")).json()["data"]["usage"]
        # The failed attempt raised before its response: it reported no tokens.
        assert (usage["input_tokens"], usage["requests"]) == (300, 2)


def approval_app(notes: list[ApprovalRequest], tmp_path: Path, timeout: str = "1h"
                 ) -> tuple[stepwell.App, Journal]:
    journal = Journal(tmp_path / "refunds.log")
    agent = Agent(TestModel(call_tools=["refund"]), name="refunds",
                  capabilities=[StepwellDurability(),
                                StepwellApproval(notify=notes.append, timeout=timeout)])

    @agent.tool_plain(requires_approval=True)
    def refund(order: int) -> str:
        journal.write(f"refund:{order}")
        return f"refunded order {order}"

    return agent_app(agent), journal


def parked_on_approval(engine: stepwell.Engine, run_id: str) -> Any:
    async def check() -> bool:
        run = await engine.get_run(run_id)
        return run is not None and any(s.id == "refunds__approval.wait" for s in run.steps)
    return check


async def start_refund_awaiting_approval(engine: stepwell.Engine) -> str:
    """Start the refund agent's run and wait until it waits for a human's decision."""
    run_id = await start(engine, "refund order 7")
    await until(parked_on_approval(engine, run_id), "the run to wait for approval")
    return run_id


@pytest.mark.counts_executions
async def test_an_approval_waits_for_the_signed_link_which_works_once(
        make_engine: Any, tmp_path: Path) -> None:
    notes: list[ApprovalRequest] = []
    app, journal = approval_app(notes, tmp_path)
    async with served(make_engine, app) as (http, engine):
        run_id = await start_refund_awaiting_approval(engine)
        [note] = notes
        assert note.run_id == run_id and note.path == f"/v1/approvals/{note.token}"
        assert [c["tool_name"] for c in note.calls] == ["refund"]
        assert journal.lines() == []                    # nothing refunded before approval
        assert (await engine.get_run(run_id)).status == "running"   # type: ignore[union-attr]

        # A forged token (another signature, or altered claims) is refused.
        claims, _, mac = note.token.partition(".")
        forged = f"{claims}.{'A' * len(mac)}"
        answer = await http.post(f"/v1/approvals/{forged}", json={"approved": True})
        assert answer.status_code == 403 and "signature" in answer.json()["error"]
        answer = await http.post("/v1/approvals/not-a-token", json={"approved": True})
        assert answer.status_code == 403
        # A bad body names what is allowed.
        answer = await http.post(note.path, json={"approve": "yes"})
        assert answer.status_code == 400 and '"approved"' in answer.json()["error"]

        answer = await http.post(note.path, json={"approved": True})
        assert answer.status_code == 200, answer.text
        assert answer.json()["data"] == {"run_id": run_id, "approved": True}
        run = await engine.wait(run_id, timeout=30)
        assert run.status == "completed", run.error
        assert "refunded order" in run.output["output"]
        assert len(journal.lines()) == 1                # the tool ran once, after approval

        again = await http.post(note.path, json={"approved": False})
        assert again.status_code == 409 and "works once" in again.json()["error"]
        assert len(notes) == 1                          # replays did not notify again


@pytest.mark.counts_executions
async def test_a_denied_call_is_not_made_and_the_model_is_told_why(
        make_engine: Any, tmp_path: Path) -> None:
    notes: list[ApprovalRequest] = []
    app, journal = approval_app(notes, tmp_path)
    async with served(make_engine, app) as (http, engine):
        run_id = await start_refund_awaiting_approval(engine)
        answer = await http.post(notes[0].path, json={"approved": False,
                                                      "reason": "over the limit"})
        assert answer.status_code == 200
        run = await engine.wait(run_id, timeout=30)
        assert run.status == "completed", run.error
        assert journal.lines() == []
        assert "over the limit" in run.output["output"]


@pytest.mark.counts_executions
async def test_an_expired_approval_link_is_refused_and_the_call_denied(
        make_engine: Any, clock: VirtualClock, tmp_path: Path) -> None:
    notes: list[ApprovalRequest] = []
    app, journal = approval_app(notes, tmp_path, timeout="1h")
    async with served(make_engine, app) as (http, engine):
        run_id = await start_refund_awaiting_approval(engine)
        await clock.advance("2h")
        run = await engine.wait(run_id, timeout=30)
        assert run.status == "completed", run.error
        assert "No one approved" in run.output["output"] and journal.lines() == []
        answer = await http.post(notes[0].path, json={"approved": True})
        assert answer.status_code == 403 and "expired" in answer.json()["error"]


async def test_model_events_stream_live_from_the_model_step_and_not_again_on_replay(
        make_engine: Any) -> None:
    published: list[tuple[str, dict[str, Any]]] = []

    async def publish(step: stepwell.Step, topic: str, data: dict[str, Any]) -> None:
        published.append((topic, data))

    agent = Agent(TestModel(custom_output_text="hello there"), name="streamer",
                  capabilities=[StepwellDurability(event_stream_handler=stream_handler(publish))])
    async with served(make_engine, agent_app(agent, stream="answer")) as (_, engine):
        run = await engine.wait(await start(engine), timeout=30)
        assert run.status == "completed", run.error
        assert [s.id for s in run.steps] == ["streamer__model.request_stream"]
        kinds = [data["event_kind"] for _, data in published]
        assert {topic for topic, _ in published} == {"answer"}
        assert "part_start" in kinds and "final_result" in kinds
        text = "".join(re.findall(r"'content_delta': '([^']*)'", str(published))) or "".join(
            d["part"]["content"] for _, d in published if d["event_kind"] == "part_start")
        assert "hello" in text


async def test_model_events_go_to_the_run_s_durable_stream_by_default(
        make_engine: Any) -> None:
    agent = Agent(TestModel(custom_output_text="hello there"), name="streamer",
                  capabilities=[StepwellDurability(event_stream_handler=stream_handler())])
    async with served(make_engine, agent_app(agent, stream="answer")) as (_, engine):
        run = await engine.wait(await start(engine), timeout=30)
        assert run.status == "completed", run.error
        items = await engine.stream_items(f"run:{run.id}")
        assert items and {i["topic"] for i in items} == {"answer"}
        assert [i["offset"] for i in items] == list(range(1, len(items) + 1))
        assert {i["step"] for i in items} == {"streamer__model.request_stream"}
        kinds = [i["data"]["event_kind"] for i in items]
        assert "part_start" in kinds and "final_result" in kinds


@pytest.mark.counts_executions
async def test_a_decision_sent_before_the_run_waits_is_told_to_retry(
        make_engine: Any, tmp_path: Path) -> None:
    notes: list[ApprovalRequest] = []
    delivered = asyncio.Event()
    release = asyncio.Event()

    async def slow_notify(request: ApprovalRequest) -> None:
        notes.append(request)
        delivered.set()
        await release.wait()          # the wait is recorded only after the notice returns

    agent = Agent(TestModel(call_tools=["refund"]), name="refunds",
                  capabilities=[StepwellDurability(), StepwellApproval(notify=slow_notify)])
    journal = Journal(tmp_path / "refunds.log")

    @agent.tool_plain(requires_approval=True)
    def refund(order: int) -> str:
        journal.write(f"refund:{order}")
        return "refunded"

    async with served(make_engine, agent_app(agent)) as (http, engine):
        run_id = await start(engine, "refund order 7")
        await asyncio.wait_for(delivered.wait(), 20)
        early = await http.post(notes[0].path, json={"approved": True})
        assert early.status_code == 425 and "retry" in early.json()["error"]
        release.set()
        await until(parked_on_approval(engine, run_id), "the run to wait for approval")
        assert (await http.post(notes[0].path, json={"approved": True})).status_code == 200
        assert (await engine.wait(run_id, timeout=30)).status == "completed"
        assert len(journal.lines()) == 1
