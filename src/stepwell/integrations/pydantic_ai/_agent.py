"""`StepwellAgent`: run a Pydantic AI agent inside a stepwell function, durably.

    agent = Agent(model, name="support", capabilities=[StepwellDurability()], tools=[...])
    support = StepwellAgent(agent)

    @app.function(id="support", trigger="support/asked")
    async def answer(ctx, step):
        result = await support.run(step, ctx, ctx.event.data["question"])
        return result.output

`run` takes Pydantic AI's `Agent.run` arguments after `step` and `ctx`. Model output goes to a
durable stream with `stream=` (the events of each model request, published from inside its
step: see `stream_handler`).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Any, Generic

from pydantic_ai.agent import AbstractAgent
from pydantic_ai.messages import AgentStreamEvent
from pydantic_ai.run import AgentRunResult
from pydantic_ai.tools import AgentDepsT, RunContext
from pydantic_core import to_jsonable_python

from stepwell.integrations.pydantic_ai._durability import (
    StepwellDurability,
    current_scope,
    durable_scope,
)
from stepwell.sdk.context import Context
from stepwell.sdk.step import Step

__all__ = ["StepwellAgent", "event_json", "stream_handler"]


def event_json(event: AgentStreamEvent) -> dict[str, Any]:
    """An agent stream event as JSON (`event_kind`: part_start, part_delta, ...)."""
    data = to_jsonable_python(event)
    return data if isinstance(data, dict) else {"event": data}


def stream_handler(publish: Callable[[Step, str, dict[str, Any]], Awaitable[Any]] | None = None
                   ) -> Callable[[RunContext[Any], AsyncIterable[AgentStreamEvent]],
                                 Awaitable[None]]:
    """An `event_stream_handler` for `StepwellDurability` that sends every event of a durable
    run to the topic given as `StepwellAgent.run(..., stream=topic)` (nothing when none is).

    By default it publishes with `step.publish(topic, data)`, stepwell's durable streams
    (subscribers read them over HTTP and resume from an offset); `publish(step, topic, data)`
    replaces that. Model events are published live from inside the model request's step, so a
    replay, which reuses the step's result, publishes nothing again."""

    async def handle(ctx: RunContext[Any], events: AsyncIterable[AgentStreamEvent]) -> None:
        scope = current_scope()
        async for event in events:
            if scope is None or scope.stream is None:
                continue
            data = event_json(event)
            if publish is not None:
                await publish(scope.step, scope.stream, data)
                continue
            await scope.step.publish(scope.stream, data)

    return handle


class StepwellAgent(Generic[AgentDepsT]):
    """A Pydantic AI agent whose runs are durable when run inside a stepwell function.

    The agent must carry a `StepwellDurability` capability (it names the steps and routes them);
    a plain agent is refused here rather than silently run without durability."""

    def __init__(self, agent: AbstractAgent[AgentDepsT, Any]) -> None:
        if StepwellDurability.from_agent(agent) is None:
            raise TypeError(
                "StepwellAgent needs an agent with the StepwellDurability capability: "
                "Agent(..., name='<stable name>', capabilities=[StepwellDurability()])")
        self.agent = agent

    async def run(self, step: Step, ctx: Context[Any], user_prompt: Any = None, *,
                  stream: str | None = None, **kwargs: Any) -> AgentRunResult[Any]:
        """`agent.run(user_prompt, **kwargs)` with every model request and tool call a step
        of this stepwell run; `stream`: the durable stream topic for the run's events (with
        `StepwellDurability(event_stream_handler=stream_handler())`)."""
        async with durable_scope(step, ctx.run_id, stream=stream):
            return await self.agent.run(user_prompt, **kwargs)
