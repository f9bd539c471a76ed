"""`StepwellDurability`: the Pydantic AI capability that makes an agent's run durable on
stepwell, built on Pydantic AI's public durable-execution surface (`pydantic_ai.durable_exec`)
the way its own DBOS and Prefect integrations are.

Pydantic AI's base capability owns the agent-side machinery (wrapping toolsets, routing model
requests, event delivery, result encoding); an engine supplies where a durable unit runs. Here a
unit is one `step.run`: the step id is the unit's persisted name (`JournalOperationNamer`:
`<agent>__model.request`, `<agent>__function_toolset__<id>.call_tool:<tool>`), made unique per
occurrence by stepwell as every repeated step id is, so a replay matches the same units in the
same order. Values cross as JSON (`JSON_CODEC`: stepwell stores step results as JSON), and
a model request's unit reports its tokens (`stepwell.record_model_usage`).

The run is durable only inside `durable_run(step, ...)` (or `StepwellAgent.run`), which binds
the stepwell `Step` of the function run for the agent's run; elsewhere the capability is
transparent and the agent runs as usual.
"""

from __future__ import annotations

import contextvars
import datetime
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from pydantic_ai.agent import EventStreamHandler
from pydantic_ai.durable_exec import (
    JSON_CODEC,
    BaseDurabilityCapability,
    DurabilityEngineSpec,
    DurableOperationBackend,
    DurableOperationId,
    JournalCallableOperationBackend,
    ModelRequestId,
    RoleBasedOperationConfig,
    conversation_id_from_run_id,
)
from pydantic_ai.durable_exec._operation_backend import in_durable_unit
from pydantic_ai.tools import AgentDepsT

from stepwell.sdk.step import Step
from stepwell.sdk.usage import record_model_usage

__all__ = ["StepwellDurability", "current_scope", "durable_scope"]


@dataclass(slots=True)
class Scope:
    """One durable agent run inside a stepwell function run."""

    step: Step
    run_id: str
    # Agent runs started at each position, for replay-stable Pydantic AI run ids.
    runs: dict[str, int] = field(default_factory=dict)
    stream: str | None = None           # the durable stream topic model events go to


_scope: contextvars.ContextVar[Scope | None] = contextvars.ContextVar(
    "stepwell_pydantic_ai_scope", default=None)


def current_scope() -> Scope | None:
    return _scope.get()


@asynccontextmanager
async def durable_scope(step: Step, run_id: str, *, stream: str | None = None
                        ) -> AsyncIterator[Scope]:
    """Make agent runs inside durable on `step` (nesting keeps the outer scope's counters)."""
    outer = _scope.get()
    if outer is not None and outer.step is step:
        yield outer
        return
    scope = Scope(step, run_id, stream=stream)
    token = _scope.set(scope)
    try:
        yield scope
    finally:
        _scope.reset(token)


def _active() -> Scope:
    scope = _scope.get()
    if scope is None:
        raise RuntimeError("a stepwell durable unit ran outside `durable_run(step, ...)`")
    return scope


def _record_usage(payload: object) -> None:
    """A model request's JSON result (a `ModelResponse`): report its tokens on the step."""
    if not isinstance(payload, dict):
        return
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return
    record_model_usage(str(payload.get("model_name") or "unknown"),
                       input_tokens=int(usage.get("input_tokens") or 0),
                       output_tokens=int(usage.get("output_tokens") or 0))


class StepwellOperationBackend(JournalCallableOperationBackend[None]):
    """Runs each durable operation as one `step.run` of the current function run.

    stepwell retries a step with its function's `retries` and backoff, so there is no per-unit
    config (`None`): a model request that raises is retried, and a run that resumes after a
    crash gets the recorded result of every unit that completed instead of running it again."""

    async def execute(self, *, operation_id: DurableOperationId, name: str,
                      body: Callable[[], Awaitable[object]], cache_key: tuple[object, ...],
                      config: None) -> object:
        scope = _active()
        is_model = isinstance(operation_id, ModelRequestId)

        async def unit():  # type: ignore[no-untyped-def]  # no annotation: the JSON comes back
            payload = await body()
            if is_model:
                _record_usage(payload)
            return payload

        return await scope.step.run(name, unit)


class StepwellDurability(BaseDurabilityCapability[AgentDepsT]):
    """Capability that makes a Pydantic AI agent durable on stepwell: each model request and
    each tool call is a `step.run` (retried, memoized, replay-safe).

        durability = StepwellDurability()
        agent = Agent(model, name="support", capabilities=[durability], tools=[...])

        @app.function(id="support", trigger="support/asked")
        async def support(ctx, step):
            result = await durable_run(agent, step, ctx, ctx.event.data["question"])
            return result.output

    Args:
        models: further models, by id, a run may switch to (`agent.run(model=...)`): a model
            instance cannot cross a step boundary, so it is registered here.
        event_stream_handler: Pydantic AI's event handler: model events reach it live inside
            the model-request step, tool events in their own steps.
        name: the agent's name in step ids (default: the agent's `name`). Keep it stable:
            recorded runs find their steps by it.
    """

    engine_spec = DurabilityEngineSpec(
        engine_name="stepwell",
        durable_unit_noun="step",
        durable_unit_plural="steps",
        durable_container_noun="function run",
        codec=JSON_CODEC,
        unsupported_runtime_toolset_kinds=frozenset({"function", "mcp", "dynamic"}),
        wrapped_toolset_kinds=frozenset({"function", "mcp", "dynamic"}),
        toolset_lifecycles={"function": "enter-always", "mcp": "enter-in-durable-unit",
                            "dynamic": "enter-never"},
        tool_call_result_upgrade_lenient=False,
        journal_discovery=False,
        sequential_tools_in_durable_context=False,
        tool_config_key="stepwell",
    )

    def __init__(self, *, models: Mapping[str, Any] | None = None,
                 event_stream_handler: EventStreamHandler[AgentDepsT] | None = None,
                 name: str | None = None) -> None:
        super().__init__(models=models, event_stream_handler=event_stream_handler, name=name)

    @property
    def in_durable_context(self) -> bool:
        return _scope.get() is not None and not in_durable_unit()

    def get_durable_operation_backend(self) -> DurableOperationBackend[Any]:
        return StepwellOperationBackend(
            agent_name=self.name, default_model_id=self.default_model_id,
            config=RoleBasedOperationConfig(model=None, event=None, capability=None, tool=None))

    def get_default_run_id(self) -> str | None:
        scope = _scope.get()
        if scope is None or in_durable_unit():
            return None
        index = scope.runs.get(self.name, 0)
        scope.runs[self.name] = index + 1
        return f"{scope.run_id}:{self.name}:{index}"

    def get_default_conversation_id(self, run_id: str) -> str | None:
        return conversation_id_from_run_id(run_id) if self.in_durable_context else None

    async def get_run_start_time(self, run_id: str) -> datetime.datetime | None:
        scope = _scope.get()
        if scope is None or in_durable_unit():
            return None

        def started() -> str:
            return datetime.datetime.now(datetime.UTC).isoformat()

        # Recorded, so the agent's `timeout=` counts from the first attempt on every replay.
        when = await scope.step.run(f"{self.name}__run_start_time:{run_id}", started)
        return datetime.datetime.fromisoformat(when)
