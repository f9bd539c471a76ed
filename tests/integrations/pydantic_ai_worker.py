"""The worker process of test_pydantic_ai_crash.py; not a test module.

    python pydantic_ai_worker.py DB_PATH JOURNAL_PATH PHASE

One agent run (`desk/asked`, event id `ask-1`): the scripted model first calls `lookup`, then
`refund` (which needs a person's approval), then answers. Every model call, tool call and
approval notice is a line in JOURNAL (append-only, so a SIGKILL loses none). PHASE:

- `kill-in-model`: SIGKILL this process at the start of the second model call;
- `kill-in-wait`: SIGKILL it once the run waits for the approval;
- `approve`: approve with the token from the journal (`POST /v1/approvals/{token}` on this
  process's server app), wait for the run to complete, and print its output as JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import httpx
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.integrations.agent_models import Journal, tool_returns

import stepwell
from stepwell.integrations.pydantic_ai import (
    ApprovalRequest,
    StepwellAgent,
    StepwellApproval,
    StepwellDurability,
)
from stepwell.server.app import create_app
from stepwell.service import Service

USAGE = RequestUsage(input_tokens=100, output_tokens=10)


def build(journal: Journal, phase: str) -> stepwell.App:
    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        done = len(tool_returns(messages))
        journal.write(f"model:{done}")
        if done == 1 and phase == "kill-in-model":
            os.kill(os.getpid(), signal.SIGKILL)
        if done == 0:
            part: Any = ToolCallPart("lookup", {"order": 7})
        elif done == 1:
            part = ToolCallPart("refund", {"order": 7})
        else:
            part = TextPart(f"done: {tool_returns(messages)[-1].content}")
        return ModelResponse(parts=[part], usage=USAGE, model_name="scripted-2")

    def notify(request: ApprovalRequest) -> None:
        journal.write(f"notify:{request.token}")

    agent = Agent(FunctionModel(respond, model_name="scripted-2"), name="clerk",
                  capabilities=[StepwellDurability(), StepwellApproval(notify=notify)])

    @agent.tool_plain
    def lookup(order: int) -> str:
        journal.write("tool:lookup")
        return f"order {order} is late"

    @agent.tool_plain(requires_approval=True)
    def refund(order: int) -> str:
        journal.write("tool:refund")
        return f"refunded order {order}"

    durable = StepwellAgent(agent)
    app = stepwell.App("desk")

    @app.function(id="ask", trigger="desk/asked", retries=2)
    async def ask(ctx: stepwell.Context, step: stepwell.Step) -> str:
        result = await durable.run(step, ctx, ctx.event.data["q"])
        return str(result.output)

    return app


async def main(db: str, journal_path: str, phase: str) -> int:
    journal = Journal(Path(journal_path))
    engine = stepwell.Engine(build(journal, phase), db=f"sqlite:///{db}", lease_seconds=2.0)
    async with engine:
        await engine.send({"id": "ask-1", "name": "desk/asked", "data": {"q": "order 7?"}})
        [run] = await engine.runs(function_id="desk/ask")
        if phase == "kill-in-wait":
            while True:     # the notice is sent, then the wait recorded: kill after both
                current = await engine.get_run(run.id)
                if current is not None and any(s.id == "clerk__approval.wait"
                                               for s in current.steps):
                    os.kill(os.getpid(), signal.SIGKILL)
                await asyncio.sleep(0.02)
        if phase == "approve":
            [token] = [line.split(":", 1)[1] for line in journal.lines()
                       if line.startswith("notify:")]
            transport = httpx.ASGITransport(app=create_app(Service(engine)))
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
                answer = await http.post(f"/v1/approvals/{token}", json={"approved": True})
                if answer.status_code != 200:
                    print(answer.text, file=sys.stderr)
                    return 1
        finished = await engine.wait(run.id, timeout=60)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(
                app=create_app(Service(engine))), base_url="http://localhost") as http:
            usage = (await http.get(f"/v1/runs/{run.id}")).json()["data"]["usage"]
        print(json.dumps({"status": finished.status, "output": finished.output,
                          "usage": usage,
                          "steps": [[s.id, s.status, s.attempts] for s in finished.steps]}))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(*sys.argv[1:4])))
