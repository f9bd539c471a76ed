"""A durable AI agent on stepwell, offline:  python examples/agent.py

A Pydantic AI agent (`pip install 'stepwell[pydantic-ai]'`) answers a support question with
two tools: `order_status` (runs freely) and `refund` (a person must approve it). Run by a
stepwell function, every model request and tool call is a step: a crash or a deploy in the
middle resumes the agent where it was, without calling the model again for the turns it had
done. The refund waits, durably and holding no worker, until someone opens the approval link
(`POST /v1/approvals/{token}`), and each model request's tokens are added up on the run.

The model here is scripted (Pydantic AI's `FunctionModel`), so the example needs no API key or
network; use `Agent("openai:gpt-5.2", ...)` or any other model in a real app. The script starts
an engine on .stepwell/agent.db (recreated each time), asks, approves the refund the way a
person's click would, and prints the run's steps and token totals. Exits 0 when all went as
expected.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import httpx
from pydantic_ai import Agent
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage

import stepwell
from stepwell.integrations.pydantic_ai import (
    ApprovalRequest,
    StepwellAgent,
    StepwellApproval,
    StepwellDurability,
)

DB_PATH = Path(".stepwell") / "agent.db"
pending_approvals: list[ApprovalRequest] = []     # where this example's "email" goes
refunds: list[int] = []                           # the side effect a person must approve


def scripted_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Stands in for an LLM: look the order up, ask for a refund, then answer."""
    returns = [p for m in messages if isinstance(m, ModelRequest) for p in m.parts
               if isinstance(p, ToolReturnPart)]
    usage = RequestUsage(input_tokens=200 + 50 * len(returns), output_tokens=20)
    if not returns:
        part: Any = ToolCallPart("order_status", {"order_id": 1042})
    elif len(returns) == 1:
        part = ToolCallPart("refund", {"order_id": 1042})
    else:
        part = TextPart(f"Sorry for the delay. {returns[-1].content}.")
    return ModelResponse(parts=[part], usage=usage, model_name="scripted")


def notify(request: ApprovalRequest) -> None:
    """Deliver the approval link: in a real app, an email or a chat message with
    https://<your stepwell server>{request.path}."""
    pending_approvals.append(request)


agent = Agent(FunctionModel(scripted_model, model_name="scripted"), name="support",
              instructions="You are a support agent for an online shop.",
              capabilities=[StepwellDurability(), StepwellApproval(notify=notify, timeout="2d")])


@agent.tool_plain
def order_status(order_id: int) -> str:
    return f"order {order_id} is 9 days late"


@agent.tool_plain(requires_approval=True)
def refund(order_id: int) -> str:
    refunds.append(order_id)
    return f"order {order_id} was refunded"


support = StepwellAgent(agent)
app = stepwell.App("support")


@app.function(id="answer", trigger="support/question.asked")
async def answer(ctx: stepwell.Context, step: stepwell.Step) -> str:
    result = await support.run(step, ctx, ctx.event.data["question"])
    return str(result.output)


async def main() -> int:
    from stepwell.server.app import create_app  # the server's routes, served in process
    from stepwell.service import Service

    DB_PATH.parent.mkdir(exist_ok=True)
    DB_PATH.unlink(missing_ok=True)
    async with stepwell.Engine(app, db=f"sqlite:///{DB_PATH}") as engine:
        transport = httpx.ASGITransport(app=create_app(Service(engine)))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            event_id = await engine.send("support/question.asked",
                                         {"question": "Where is my order 1042?"})
            [run] = await engine.runs(event_id=event_id)
            for _ in range(500):                   # until the agent asks for approval
                if pending_approvals:
                    break
                await asyncio.sleep(0.02)
            [request] = pending_approvals
            print(f"approval requested for {[c['tool_name'] for c in request.calls]}: "
                  f"POST {request.path[:40]}...")
            # A person clicks "approve". (425: the link came a moment before the run recorded
            # its wait; a click that early is retried.)
            for _ in range(500):
                decided = await http.post(request.path, json={"approved": True})
                if decided.status_code != 425:
                    break
                await asyncio.sleep(0.02)
            print(f"approved: HTTP {decided.status_code}")
            done = await engine.wait(run.id, timeout=30)
            again = await http.post(request.path, json={"approved": True})
            print(f"the link used again: HTTP {again.status_code}")
            usage = (await http.get(f"/v1/runs/{run.id}")).json()["data"]["usage"]
    print(f"run {done.status}: {done.output}")
    for s in done.steps:
        print(f"  step {s.id:<52} {s.status}")
    print(f"tokens: {usage['input_tokens']} in, {usage['output_tokens']} out, "
          f"{usage['requests']} model requests")
    ok = (done.status == "completed" and refunds == [1042] and again.status_code == 409
          and usage["requests"] == 3)
    print("all as expected" if ok else "!! something went wrong: " + json.dumps(usage))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
