"""Tokens a step spent on models: what a step reports, and how the runtime collects it.

A `step.run` function that calls a model reports what the call cost with
`stepwell.record_model_usage(model, input_tokens=, output_tokens=)` (the Pydantic AI integration
does it for every model request; the server does it for `step.ai.infer`). The runtime opens a
collector around each attempt of the step and writes what was reported in the transaction that
records the attempt, so replays, which do not run the function, never count it again, and an
attempt that failed still counts what it spent.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

# The longest model name stored; longer names are cut (they label metrics and views).
MAX_MODEL_NAME = 200


@dataclass(slots=True)
class ModelUsage:
    """Tokens spent on one model: summed over `calls` requests."""

    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    calls: int = 0


_collector: contextvars.ContextVar[dict[str, ModelUsage] | None] = contextvars.ContextVar(
    "stepwell_model_usage", default=None)


def record_model_usage(model: str, *, input_tokens: int = 0, output_tokens: int = 0,
                       calls: int = 1) -> bool:
    """Report that the running step called `model` and spent these tokens (call it inside a
    `step.run` function, once per model request; the run's view and `/metrics` sum them).

    Returns whether it was recorded: outside a step (a unit test calling the function
    directly, a plain script) there is nothing to record it on, and the call does nothing."""
    collector = _collector.get()
    if collector is None:
        return False
    name = (str(model) or "unknown")[:MAX_MODEL_NAME]
    entry = collector.get(name)
    if entry is None:
        entry = collector[name] = ModelUsage(name)
    entry.input_tokens += max(0, int(input_tokens or 0))
    entry.output_tokens += max(0, int(output_tokens or 0))
    entry.calls += max(0, int(calls))
    return True


@contextmanager
def collecting_usage() -> Iterator[dict[str, ModelUsage]]:
    """Collect what `record_model_usage` reports inside (the runtime, around one attempt)."""
    found: dict[str, ModelUsage] = {}
    token = _collector.set(found)
    try:
        yield found
    finally:
        _collector.reset(token)
