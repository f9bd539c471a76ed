"""Model usage (tokens) outside the Pydantic AI integration: `stepwell.record_model_usage` in
a plain `step.run` (a failed attempt counts too, a replay never twice), the providers' response
shapes `step.ai.infer` reads, and how `stepwell runs show` prints a run's totals. The SDK apps'
`step.ai.infer` end to end: tests/inngest/server_step_scenarios.py (`_check_ai`)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

import stepwell
from stepwell.cli_client import show_run
from stepwell.core.protocol import Op
from stepwell.runtime.gateway import infer_usage
from stepwell.server.app import create_app
from stepwell.service import Service
from stepwell.testing import VirtualClock


@pytest.mark.counts_executions
async def test_tokens_a_step_reports_are_the_runs_usage_failed_attempts_included(
        make_engine: Any, clock: VirtualClock) -> None:
    app = stepwell.App("bot")
    attempts: list[int] = []

    def call_model(prompt: str) -> str:
        attempts.append(1)
        assert stepwell.record_model_usage("gpt-5", input_tokens=50, output_tokens=5)
        if len(attempts) == 1:
            raise ConnectionError("the provider hung up after answering")
        stepwell.record_model_usage("gpt-5", input_tokens=10, output_tokens=1)
        stepwell.record_model_usage("small", input_tokens=3, output_tokens=2, calls=2)
        return f"re: {prompt}"

    @app.function(id="chat", trigger="bot/said", retries=2)
    async def chat(ctx: stepwell.Context, step: stepwell.Step) -> str:
        reply: str = await step.run("reply", call_model, ctx.event.data["text"])
        await step.sleep("pause", "1m")        # a replay after this reuses the step's result
        return reply

    async with make_engine(app) as engine:
        transport = httpx.ASGITransport(app=create_app(Service(engine)))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            [run] = await engine.runs(event_id=await engine.send("bot/said", {"text": "hi"}))
            await engine.idle()
            await clock.advance("2m")
            await clock.advance("2m")
            finished = await engine.wait(run.id, timeout=30)
            assert finished.status == "completed" and len(attempts) == 2
            body = (await http.get(f"/v1/runs/{run.id}")).json()["data"]
    assert body["usage"] == {
        "input_tokens": 113, "output_tokens": 13, "requests": 5,
        "models": [{"model": "gpt-5", "input_tokens": 110, "output_tokens": 11, "requests": 3},
                   {"model": "small", "input_tokens": 3, "output_tokens": 2, "requests": 2}]}
    shown = show_run(body)
    assert "tokens    113 in, 13 out, 5 model requests (gpt-5 110/11, small 3/2)" in shown


def test_outside_a_step_nothing_is_recorded() -> None:
    assert stepwell.record_model_usage("gpt-5", input_tokens=1) is False


def infer_op(body: dict[str, Any]) -> Op:
    return Op("h", "AIGateway", opts={"body": body, "format": "openai-chat"})


@pytest.mark.parametrize(("response", "expected"), [
    ({"model": "gpt-4o-2026", "usage": {"prompt_tokens": 9, "completion_tokens": 4}},
     ("gpt-4o-2026", 9, 4)),                                                # OpenAI chat
    ({"model": "o9", "usage": {"input_tokens": 12, "output_tokens": 30}}, ("o9", 12, 30)),
    ({"type": "message", "model": "claude-x", "usage": {"input_tokens": 5, "output_tokens": 6}},
     ("claude-x", 5, 6)),                                                   # Anthropic
    ({"modelVersion": "gemini-3", "usageMetadata": {"promptTokenCount": 7,
                                                    "candidatesTokenCount": 8}},
     ("gemini-3", 7, 8)),                                                   # Gemini
    ({"usage": {"prompt_tokens": 2}}, ("asked-model", 2, 0)),              # the request's model
])
def test_ai_infer_reads_each_providers_usage(response: dict[str, Any],
                                             expected: tuple[str, int, int]) -> None:
    [usage] = infer_usage(infer_op({"model": "asked-model"}), response).values()
    assert (usage.model, usage.input_tokens, usage.output_tokens, usage.calls) == (*expected, 1)


@pytest.mark.parametrize("response", [{"choices": []}, {"usage": "lots"}, [1, 2], None,
                                      {"usage": {"prompt_tokens": "many"}}])
def test_a_response_without_usable_usage_records_none(response: Any) -> None:
    assert infer_usage(infer_op({"model": "m"}), response) == {}
