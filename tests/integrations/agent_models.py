"""Shared by the Pydantic AI tests and their worker process: a scripted `FunctionModel` (first a
tool call, then the answer), with fixed token usage, that counts its calls in a file (so calls
made by a killed process are counted too). Not a test module."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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

from stepwell.integrations.pydantic_ai import StepwellDurability

FIRST = RequestUsage(input_tokens=120, output_tokens=15)
SECOND = RequestUsage(input_tokens=180, output_tokens=25)


class Journal:
    """Append-only lines, one `os.write` each (a SIGKILL never tears one)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, line: str) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)

    def lines(self) -> list[str]:
        return self.path.read_text().splitlines() if self.path.exists() else []


def tool_returns(messages: list[ModelMessage]) -> list[ToolReturnPart]:
    return [part for m in messages if isinstance(m, ModelRequest) for part in m.parts
            if isinstance(part, ToolReturnPart)]


def scripted_model(journal: Journal, *, tool: str = "lookup", args: dict[str, Any] | None = None,
                   on_second: Any = None) -> FunctionModel:
    """Call `tool` with `args`, then answer with what the tool returned. `on_second()` runs
    at the start of the second model call (a crash, a failure)."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        returns = tool_returns(messages)
        journal.write(f"model:{len(returns)}")
        if not returns:
            return ModelResponse(parts=[ToolCallPart(tool, args or {"order": 7})],
                                 usage=FIRST, model_name="scripted-1")
        if on_second is not None:
            on_second()
        return ModelResponse(parts=[TextPart(f"answer: {returns[-1].content}")],
                             usage=SECOND, model_name="scripted-1")

    return FunctionModel(respond, model_name="scripted-1")


def lookup_agent(journal: Journal, **model_options: Any) -> Agent[None, str]:
    agent = Agent(scripted_model(journal, **model_options), name="clerk",
                  capabilities=[StepwellDurability()])

    @agent.tool_plain
    def lookup(order: int) -> str:
        journal.write(f"tool:{order}")
        return f"order {order} shipped"

    return agent
