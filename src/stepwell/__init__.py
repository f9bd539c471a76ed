"""stepwell: durable functions for Python, in the Inngest model.

Everything users need is importable from here; the subpackages are internals.

Names are loaded on first use (PEP 562): `import stepwell` alone costs almost nothing, so the
`stepwell` CLI's client commands (`send`, `runs ...`) start in a fraction of a second instead of
importing the engine, the storage backends and CEL to make one HTTP call.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stepwell.client import Client, ClientError
    from stepwell.core.config import (
        Batch,
        Cancel,
        Concurrency,
        ConfigError,
        Cron,
        Debounce,
        Priority,
        RateLimit,
        Singleton,
        Throttle,
        Timeouts,
    )
    from stepwell.core.models import Event, InvalidEventError, Run, StepInfo
    from stepwell.runtime.engine import Engine
    from stepwell.sdk.app import App, Function
    from stepwell.sdk.context import Context, FailureInfo
    from stepwell.sdk.errors import (
        InvalidStepError,
        NonDeterminismError,
        NonRetriableError,
        RetryAfterError,
        StepError,
    )
    from stepwell.sdk.step import Step, SyncStep
    from stepwell.sdk.usage import record_model_usage

# Public name -> the module that defines it.
_HOMES: dict[str, str] = {
    **dict.fromkeys(["Client", "ClientError"], "stepwell.client"),
    **dict.fromkeys(["Batch", "Cancel", "Concurrency", "ConfigError", "Cron", "Debounce",
                     "Priority", "RateLimit", "Singleton", "Throttle", "Timeouts"],
                    "stepwell.core.config"),
    **dict.fromkeys(["Event", "InvalidEventError", "Run", "StepInfo"], "stepwell.core.models"),
    "Engine": "stepwell.runtime.engine",
    **dict.fromkeys(["App", "Function"], "stepwell.sdk.app"),
    **dict.fromkeys(["Context", "FailureInfo"], "stepwell.sdk.context"),
    **dict.fromkeys(["InvalidStepError", "NonDeterminismError", "NonRetriableError",
                     "RetryAfterError", "StepError"], "stepwell.sdk.errors"),
    **dict.fromkeys(["Step", "SyncStep"], "stepwell.sdk.step"),
    "record_model_usage": "stepwell.sdk.usage",
}

__all__ = [
    "App",
    "Batch",
    "Cancel",
    "Client",
    "ClientError",
    "Concurrency",
    "ConfigError",
    "Context",
    "Cron",
    "Debounce",
    "Engine",
    "Event",
    "FailureInfo",
    "Function",
    "InvalidEventError",
    "InvalidStepError",
    "NonDeterminismError",
    "NonRetriableError",
    "Priority",
    "RateLimit",
    "RetryAfterError",
    "Run",
    "Singleton",
    "Step",
    "StepError",
    "StepInfo",
    "SyncStep",
    "Throttle",
    "Timeouts",
    "record_model_usage",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'stepwell' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value          # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
